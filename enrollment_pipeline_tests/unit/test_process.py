"""The stack's process handling, with real (tiny) processes."""

from __future__ import annotations

import os
import sys
import time

import pytest

from enrollment_pipeline.stack.process import Daemon, ServiceError


def _daemon(tmp_path, name="sleeper") -> Daemon:
    return Daemon(
        name=name,
        pid_file=tmp_path / "run" / f"{name}.pid",
        log_file=tmp_path / "logs" / f"{name}.log",
        marker=str(tmp_path),
    )


def _sleeper(marker) -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(60)", str(marker)]


def test_a_process_that_dies_at_start_names_itself_and_its_log(tmp_path):
    daemon = _daemon(tmp_path, "crasher")
    proc = daemon.start(["sh", "-c", f"echo cannot bind {tmp_path}; exit 3"])
    with pytest.raises(ServiceError) as caught:
        daemon.wait_ready(proc, lambda: False, timeout_s=10)
    message = str(caught.value)
    assert "crasher exited with code 3" in message
    assert str(daemon.log_file) in message
    assert "cannot bind" in message
    assert daemon.pid() is None


def test_start_find_and_stop_by_pid(tmp_path):
    daemon = _daemon(tmp_path)
    proc = daemon.start(_sleeper(tmp_path))
    daemon.wait_ready(proc, lambda: True, timeout_s=5)
    assert daemon.pid() == proc.pid
    assert daemon.stop(timeout_s=5) is True
    proc.wait(timeout=5)
    assert daemon.pid() is None
    assert daemon.stop() is False


def test_a_recycled_pid_is_never_signalled(tmp_path):
    daemon = _daemon(tmp_path)
    daemon.pid_file.parent.mkdir(parents=True)
    daemon.pid_file.write_text(str(os.getpid()))  # a live process that is not ours
    assert daemon.pid() is None
    assert not daemon.pid_file.exists()
    assert daemon.stop() is False


def test_never_ready_times_out_and_stops_the_process(tmp_path):
    daemon = _daemon(tmp_path, "silent")
    proc = daemon.start(_sleeper(tmp_path))
    started = time.monotonic()
    with pytest.raises(ServiceError, match="silent did not become ready within 1 s"):
        daemon.wait_ready(proc, lambda: False, timeout_s=1)
    assert time.monotonic() - started < 15
    proc.wait(timeout=5)
    assert daemon.pid() is None
