"""Secrets reach Dagster resources only as `dg.EnvVar`: resolved at launch, never shown."""

from __future__ import annotations

import os

import dagster as dg


def secret_env(name: str) -> dg.EnvVar | None:
    """`dg.EnvVar(name)` when the variable is set, else None (the setting is optional)."""
    return dg.EnvVar(name) if os.environ.get(name) else None
