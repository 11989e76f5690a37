"""The code location: every definition under `enrollment_pipeline/defs/`."""

from pathlib import Path

import dagster as dg

from enrollment_pipeline.lib.settings_errors import check
from enrollment_pipeline.settings import PipelineSettings


@dg.definitions
def defs() -> dg.Definitions:
    # Every variable first, all bad ones in one message (one line each, naming the
    # variable), rather than the first module that happens to read one.
    check(PipelineSettings)
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
