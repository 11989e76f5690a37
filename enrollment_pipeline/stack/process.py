"""Start, find and stop the stack's server processes by pid file.

`stack up` must return while the servers keep running, and a later `stack down` (another
process) must stop exactly what it started. Test-oriented launchers such as mirakuru kill
their children when the launching interpreter exits, so the stack keeps its own pid files
and checks `/proc/<pid>/cmdline` before it signals anything, so a recycled pid is never hit.

The state folder holds personal data (events, emails, leads) and secrets: every folder the
stack makes is its owner's only (0700), every file 0600, and its servers run with umask 077.
"""

from __future__ import annotations

import os
import pwd
import secrets
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# What the stack's servers and set-up commands create is readable by their owner only.
PRIVATE_UMASK = 0o077


class ServiceError(RuntimeError):
    """A service failed to install, start or answer; the message names it and its log."""


@dataclass(frozen=True)
class Daemon:
    """One server process of the stack: its name, pid file, log file and identity marker."""

    name: str
    pid_file: Path
    log_file: Path
    # A string the process's command line must contain (a path in its state folder):
    # the check that the pid in the file is still ours.
    marker: str
    stop_signal: int = signal.SIGTERM

    def pid(self) -> int | None:
        """The pid of the running process, or None (stale pid files are removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        cmdline = _cmdline(pid)
        for _ in range(20):  # empty while the process is in the middle of exec
            if cmdline != "" or not _alive(pid):
                break
            time.sleep(0.005)
            cmdline = _cmdline(pid)
        if cmdline and self.marker in cmdline:
            return pid
        if cmdline != "":  # gone, or another program now has that pid: the file is stale
            self.pid_file.unlink(missing_ok=True)
        return None

    def start(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> subprocess.Popen:
        """Start the process detached (own session), output appended to the log file; what
        it creates is its owner's only (umask 077)."""
        private_dir(self.pid_file.parent)
        with private_append(self.log_file) as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {self.name}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                    cwd=cwd,
                    start_new_session=True,
                    umask=PRIVATE_UMASK,
                    **as_user(user),
                )
            except OSError as exc:
                raise ServiceError(f"{self.name}: cannot run {argv[0]!r}: {exc}") from exc
        write_private(self.pid_file, str(proc.pid))
        return proc

    def log(self, message: str) -> None:
        """One line in the service's log, e.g. why the stack restarted it."""
        with private_append(self.log_file) as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n".encode())

    def already_up(
        self, is_ready: Callable[[], bool], *, host: str, port: int, setting: str, timeout_s: float
    ) -> bool:
        """True when started earlier (once it answers); an error when a stranger has the port."""
        if self.pid() is not None:
            self.wait_ready(None, is_ready, timeout_s=timeout_s)
            return True
        if port_open(host, port):
            raise ServiceError(
                f"{self.name}: port {host}:{port} is taken by another process; "
                f"set {setting} to a free port"
            )
        return False

    def wait_ready(
        self, proc: subprocess.Popen | None, is_ready: Callable[[], bool], *, timeout_s: float
    ) -> None:
        """Poll `is_ready` until it holds; fail fast if the process dies, or at the deadline.

        `proc` is the process just started, or None for one started earlier (checked by pid).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = proc.poll() is not None if proc is not None else self.pid() is None
            if exited:
                self.pid_file.unlink(missing_ok=True)
                code = f" with code {proc.returncode}" if proc is not None else ""
                raise ServiceError(
                    f"{self.name} exited{code} during start-up; "
                    f"see its log {self.log_file}:\n" + tail(self.log_file)
                )
            try:
                if is_ready():
                    return
            except Exception:  # a not-yet-ready server answers with all kinds of errors
                pass
            time.sleep(0.25)
        self.stop(timeout_s=10)
        raise ServiceError(
            f"{self.name} did not become ready within {timeout_s:.0f} s; "
            f"see its log {self.log_file}:\n" + tail(self.log_file)
        )

    def stop(self, *, timeout_s: float = 60.0) -> bool:
        """Signal the process, wait for it to exit, SIGKILL at the deadline. True if it ran."""
        pid = self.pid()
        if pid is None:
            return False
        _signal(pid, self.stop_signal)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            _signal(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join("    " + line for line in text[-lines:])


def run_checked(
    name: str, argv: Sequence[str], *, log_file: Path, timeout_s: float = 900, **kwargs
) -> None:
    """Run a set-up command (download, build, format) to completion, output to the log.

    Commands that write into the state folder pass `umask=PRIVATE_UMASK`."""
    with private_append(log_file) as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
                **kwargs,
            )
        except FileNotFoundError as exc:
            raise ServiceError(f"{name}: {argv[0]!r} is not installed ({exc})") from exc
        except subprocess.TimeoutExpired as exc:
            raise ServiceError(f"{name}: {argv[0]} timed out; see {log_file}") from exc
    if result.returncode != 0:
        raise ServiceError(
            f"{name}: `{' '.join(argv[:3])} …` failed with exit code {result.returncode}; "
            f"see its log {log_file}:\n" + tail(log_file)
        )


def as_user(user: str | None) -> dict[str, Any]:
    """subprocess arguments to run as `user` with that user's own group and none of ours
    (`user=` alone keeps root's groups)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def private_dir(path: Path) -> Path:
    """`path` as a folder of its owner only (0700), with any missing parents made the same."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode passes through the umask; an older folder may be open
    return path


def private_append(path: Path) -> BinaryIO:
    """`path` opened for appending, created 0600 (and made 0600 if it was older and open)."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def write_private(path: Path, text: str) -> None:
    """Write `path` whole, readable by its owner only (0600), through a rename."""
    private_dir(path.parent)
    staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    staged.replace(path)


def stored_secret(path: Path) -> str:
    """The secret kept in `path` (0600), generated on first use: 32 URL-safe characters."""
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        value = secrets.token_urlsafe(24)
        write_private(path, value + "\n")
    return value


def restrict_tree(root: Path) -> None:
    """Take group and other permissions off everything below `root` (not `root` itself):
    folders and files a stack of an earlier version left readable by others."""
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
                    continue  # a link has no mode of its own; PostgreSQL sets its socket's
                if mode & 0o077:
                    os.chmod(path, stat.S_IMODE(mode) & 0o700)
            except FileNotFoundError:
                pass  # a server removed it meanwhile


def _cmdline(pid: int) -> str | None:
    """The command line of `pid`; "" for a zombie or a process in the middle of exec."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _alive(pid: int) -> bool:
    """Running. A zombie (exited, not yet reaped) is not, unless it is only the group leader
    gone ahead while other threads still run, as the JVM's main thread does at shutdown."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state != "Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    """Collect the exit status when we are the parent (a long-lived test process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # started by another `stack up`: init reaps it


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
