"""PostgreSQL from Debian's packages: Dagster's storage and FerretDB's backend."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from enrollment_pipeline.stack.process import Daemon, ServiceError, run_checked

DATABASES = ("dagster", "ferretdb")
DB_USER = "enrollment"
MAX_CONNECTIONS = 300


def find_bin_dir() -> Path:
    """The newest Debian PostgreSQL bin folder, or the one holding `postgres` on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version_key)
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    raise ServiceError(
        "postgres: no PostgreSQL server found; install Debian's package: "
        "apt-get install -y postgresql"
    )


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name.split(".")[0])
    except ValueError:
        return 0


class Postgres:
    """One PostgreSQL cluster in `{state}/postgres`, on loopback, trust auth."""

    name = "postgres"

    def __init__(self, state_dir: Path, host: str, port: int, timeout_s: float) -> None:
        self.dir = state_dir / "postgres"
        self.data = self.dir / "data"
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.daemon = Daemon(
            name="postgres",
            pid_file=state_dir / "run" / "postgres.pid",
            log_file=state_dir / "logs" / "postgres.log",
            marker=str(self.data),
            # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for clients to leave.
            stop_signal=signal.SIGINT,
        )

    @property
    def url_base(self) -> str:
        return f"postgresql://{DB_USER}@{self.host}:{self.port}"

    def url(self, database: str) -> str:
        return f"{self.url_base}/{database}"

    def up(self) -> None:
        if self.daemon.already_up(
            self.is_ready,
            host=self.host,
            port=self.port,
            setting="STACK_POSTGRES_PORT",
            timeout_s=self.timeout_s,
        ):
            return
        bin_dir = find_bin_dir()
        user = _server_user()
        self.dir.mkdir(parents=True, exist_ok=True)
        if user:
            _check_reachable(self.dir, user)
            _chown(self.dir, user)
        if not (self.data / "PG_VERSION").exists():
            run_checked(
                "postgres initdb",
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                log_file=self.daemon.log_file,
                user=user,
                timeout_s=120,
            )
        proc = self.daemon.start(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-h",
                self.host,
                "-k",
                str(self.dir),
                "-c",
                "fsync=on",
                "-c",
                # FerretDB's pool (stack/mongo.py) plus Dagster's storage and the tools.
                f"max_connections={MAX_CONNECTIONS}",
            ],
            user=user,
        )
        self.daemon.wait_ready(proc, self.is_ready, timeout_s=self.timeout_s)
        for database in DATABASES:
            self._ensure_database(bin_dir, database, user)

    def is_ready(self) -> bool:
        probe = subprocess.run(
            [str(find_bin_dir() / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
            check=False,
        )
        return probe.returncode == 0

    def _ensure_database(self, bin_dir: Path, database: str, user: str | None) -> None:
        psql = [str(bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", DB_USER]
        psql += ["-d", "postgres"]
        exists = subprocess.run(
            [*psql, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
            capture_output=True,
            text=True,
            check=False,
        )
        if exists.returncode != 0:
            raise ServiceError(
                f"postgres: cannot query the server on {self.host}:{self.port}: "
                f"{exists.stderr.strip()}; see {self.daemon.log_file}"
            )
        if exists.stdout.strip() != "1":
            run_checked(
                f"postgres createdb {database}",
                [*psql, "-c", f'CREATE DATABASE "{database}"'],
                log_file=self.daemon.log_file,
                timeout_s=60,
            )

    def down(self) -> bool:
        return self.daemon.stop()


def _server_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` system user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ServiceError(
            "postgres: running as root needs the `postgres` system user, which Debian's "
            "postgresql package creates (apt-get install -y postgresql)"
        ) from exc
    return "postgres"


def _check_reachable(path: Path, user: str) -> None:
    """Every folder above the cluster must let `user` pass, or initdb fails obscurely."""
    entry = pwd.getpwnam(user)
    for parent in path.resolve().parents:
        mode = parent.stat()
        if mode.st_uid != entry.pw_uid and not mode.st_mode & 0o001:
            raise ServiceError(
                f"postgres: the `{user}` user cannot enter {parent} (mode "
                f"{oct(mode.st_mode & 0o777)}); set STACK_STATE_DIR to a folder outside it"
            )


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
