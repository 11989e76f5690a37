"""PostgreSQL from Debian's packages: Dagster's storage and FerretDB's backend.

Every connection needs the password generated in `{state}/secrets/postgres-password` (SCRAM,
never `trust`); the cluster's folder is its server user's only.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

from enrollment_pipeline.stack.process import (
    PRIVATE_UMASK,
    Daemon,
    ServiceError,
    as_user,
    private_dir,
    run_checked,
    stored_secret,
)

DATABASES = ("dagster", "ferretdb")
DB_USER = "enrollment"
MAX_CONNECTIONS = 300
# Written over the cluster's own at every start: a password for every connection, local too.
PG_HBA = """# Written by `enrollment-pipeline stack up`: every connection needs the password.
local all all scram-sha-256
host all all all scram-sha-256
"""
SCRAM_ITERATIONS = 4096


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
    """One PostgreSQL cluster in `{state}/postgres`, on loopback, password (SCRAM) auth."""

    name = "postgres"

    def __init__(self, state_dir: Path, host: str, port: int, timeout_s: float) -> None:
        self.state_dir = state_dir
        self.dir = state_dir / "postgres"
        self.data = self.dir / "data"
        self.password_file = state_dir / "secrets" / "postgres-password"
        # The SCRAM verifier last given to the role: the password in force is the file's.
        self.applied_marker = self.dir / "password-verifier"
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
        """The server and user, without the password (for display)."""
        return f"postgresql://{DB_USER}@{self.host}:{self.port}"

    @property
    def password(self) -> str:
        return stored_secret(self.password_file)

    def url(self, database: str) -> str:
        """A client's URL for `database`, with the password (a secret)."""
        return f"postgresql://{DB_USER}:{self.password}@{self.host}:{self.port}/{database}"

    def prepare_state_dir(self) -> None:
        """The state folder is its owner's (0700). As root the server runs as `postgres`, who
        must pass through it to its own folder: then it is group `postgres` with only the
        group's search bit (0710), which lists nothing and opens nothing else."""
        if not self.state_dir.is_dir():
            private_dir(self.state_dir)
        user = _server_user()
        if user is None:
            self.state_dir.chmod(0o700)
            return
        entry = pwd.getpwnam(user)
        if self.state_dir.stat().st_gid != entry.pw_gid:
            os.chown(self.state_dir, -1, entry.pw_gid)
        self.state_dir.chmod(0o710)

    def up(self) -> None:
        if self.daemon.already_up(
            self.is_ready,
            host=self.host,
            port=self.port,
            setting="STACK_POSTGRES_PORT",
            timeout_s=self.timeout_s,
        ):
            if not self._password_applied(self.password):
                raise ServiceError(
                    "postgres: the running server was started without its password (an "
                    "earlier version trusted local connections); run `enrollment-pipeline "
                    "stack down`, then `stack up`"
                )
            return
        bin_dir = find_bin_dir()
        user = _server_user()
        self.prepare_state_dir()
        private_dir(self.dir)
        if user:
            _check_reachable(self.dir, user)
            _chown(self.dir, user)
        password = self.password
        if not (self.data / "PG_VERSION").exists():
            run_checked(
                "postgres initdb",
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    DB_USER,
                    # Refuses everyone until PG_HBA is written, below, before the first start;
                    # the role's password is set in single-user mode (initdb would need it in
                    # a file the `postgres` user can read).
                    "--auth=reject",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                log_file=self.daemon.log_file,
                **as_user(user),
                timeout_s=120,
                umask=PRIVATE_UMASK,
            )
        self._write_as(user, self.data / "pg_hba.conf", PG_HBA)
        if not self._password_applied(password):
            self._apply_password(bin_dir, user, password)
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
                "-c",
                "password_encryption=scram-sha-256",
            ],
            user=user,
        )
        self.daemon.wait_ready(proc, self.is_ready, timeout_s=self.timeout_s)
        for database in DATABASES:
            self.ensure_database(database)

    def _password_applied(self, password: str) -> bool:
        """True when the role's verifier (kept in the marker) is this password's."""
        try:
            verifier = self.applied_marker.read_text().strip()
            salt = base64.b64decode(verifier.split("$")[1].split(":")[1])
        except (FileNotFoundError, IndexError, ValueError):
            return False
        return hmac.compare_digest(verifier, scram_verifier(password, salt))

    def _apply_password(self, bin_dir: Path, user: str | None, password: str) -> None:
        """Give the role its password in single-user mode (no connection, so no auth needed):
        a new cluster, or one an earlier version made with `trust`. Only the SCRAM verifier
        leaves this process, never the password."""
        verifier = scram_verifier(password, os.urandom(16))
        statement = f"ALTER ROLE \"{DB_USER}\" WITH PASSWORD '{verifier}'\n"
        single = subprocess.run(
            [str(bin_dir / "postgres"), "--single", "-D", str(self.data), "postgres"],
            input=statement,
            capture_output=True,
            text=True,
            check=False,
            **as_user(user),
            umask=PRIVATE_UMASK,
            timeout=120,
        )
        if single.returncode != 0 or "ERROR" in single.stderr:
            raise ServiceError(
                "postgres: setting the password of the role in single-user mode failed: "
                f"{single.stderr.strip()[-1500:]}"
            )
        self._write_as(user, self.applied_marker, verifier + "\n")

    def _write_as(self, user: str | None, path: Path, text: str) -> None:
        """Write a file of the cluster, 0600, owned by its server user."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
        if user:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def is_ready(self) -> bool:
        probe = subprocess.run(
            [str(find_bin_dir() / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
            check=False,
        )
        return probe.returncode == 0

    def ensure_database(self, database: str) -> None:
        """Create `database` when missing (the server runs)."""
        bin_dir = find_bin_dir()
        psql = [str(bin_dir / "psql"), "-h", self.host, "-p", str(self.port), "-U", DB_USER]
        psql += ["-d", "postgres", "-w"]
        env = {**os.environ, "PGPASSWORD": self.password}  # never on a command line
        exists = subprocess.run(
            [*psql, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
            capture_output=True,
            text=True,
            check=False,
            env=env,
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
                env=env,
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


def scram_verifier(password: str, salt: bytes) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of `password` (what `pg_authid` keeps)."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (
        f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt).decode()}"
        f"${b64(stored_key).decode()}:{b64(server_key).decode()}"
    )


def _check_reachable(path: Path, user: str) -> None:
    """Every folder above the cluster must let `user` pass, or initdb fails obscurely."""
    entry = pwd.getpwnam(user)
    for parent in path.resolve().parents:
        mode = parent.stat()
        passes = (
            mode.st_uid == entry.pw_uid
            or mode.st_mode & 0o001
            or (mode.st_gid == entry.pw_gid and mode.st_mode & 0o010)
        )
        if not passes:
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
