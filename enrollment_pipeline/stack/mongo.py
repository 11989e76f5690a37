"""The MongoDB wire server: `mongod` when installed, else FerretDB v1 built from source.

FerretDB comes in three builds, chosen with STACK_MONGO_ENGINE (see benchmarks/README.md for
the measurements behind the default):

- `ferretdb` (the default without mongod): on PostgreSQL, with the reviewed patches in
  `patches/` applied: `_id` lookups use the primary-key index, and an update command no longer
  holds one backend connection per statement until it ends.
- `ferretdb-stock`: the same release without patches (every query scans the collection).
- `ferretdb-sqlite`: the patched build on its SQLite backend (no PostgreSQL needed).

With `auth` (STACK_SECURE), a second server in `{state}/secure-mongo` requires a user and
password: FerretDB v1 in its SCRAM mode (`--test-enable-new-auth`: every command but the
handshake, `ping` and `buildInfo` needs an authenticated connection; the user is created by
`--setup-*` on the first start, in the `admin` database), or `mongod --auth` (the user is
created through its localhost exception). Its FerretDB keeps its data in a PostgreSQL database
of its own (`ferretdb_secure`), since two FerretDB processes must not share one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from enrollment_pipeline.stack.process import (
    Daemon,
    ServiceError,
    port_open,
    private_dir,
    run_checked,
    stored_secret,
)

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_ENGINES = ("ferretdb", "ferretdb-stock", "ferretdb-sqlite")
PATCHES_DIR = Path(__file__).parent / "patches"
# FerretDB's PostgreSQL pool. Unpatched, each update statement of a command holds one
# connection until the command ends (see lib/mongo/writes.py), and the default pool of 50 is
# shared by every client: room for many concurrent writers. PostgreSQL's max_connections is
# set to match.
FERRETDB_POOL_MAX_CONNS = 200
# How long a health check waits for `ping`: a server that takes longer is hung.
PING_TIMEOUT_MS = 3_000
# The user of the secured server, and the database that holds it (the URI's authSource).
AUTH_USER = "enrollment"
AUTH_SOURCE = "admin"


@dataclass(frozen=True)
class MongoAuth:
    """Where the secured server's password is kept."""

    password_file: Path

    @property
    def password(self) -> str:
        return stored_secret(self.password_file)


def choose_engine(engine: str) -> str:
    """`auto` means mongod when it is on PATH, else the patched FerretDB."""
    if engine == "auto":
        return "mongod" if shutil.which("mongod") else "ferretdb"
    if engine == "mongod" and not shutil.which("mongod"):
        raise ServiceError("mongo: STACK_MONGO_ENGINE=mongod but `mongod` is not on PATH")
    return engine


def ferretdb_patches(version: str) -> list[Path]:
    return sorted(PATCHES_DIR.glob(f"ferretdb-{version}-*.patch"))


def ferretdb_build_name(engine: str, version: str) -> str:
    """The cache folder of a build: version, patch set (by content) and backend."""
    if engine == "ferretdb-stock":
        return f"ferretdb-{version}"
    patches = ferretdb_patches(version)
    if not patches:
        raise ServiceError(
            f"mongo: no patches for FerretDB {version} in {PATCHES_DIR}; use "
            "STACK_MONGO_ENGINE=ferretdb-stock for an unpatched build of another version"
        )
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in patches)).hexdigest()[:10]
    backend = "-sqlite" if engine == "ferretdb-sqlite" else ""
    return f"ferretdb-{version}-patched-{digest}{backend}"


class MongoWire:
    """One MongoDB-protocol server on loopback, its data in `{state}/mongo`."""

    name = "mongo"

    def __init__(
        self,
        *,
        engine: str,
        state_dir: Path,
        cache_dir: Path,
        ferretdb_version: str,
        host: str,
        port: int,
        postgres_url: str,
        timeout_s: float,
        auth: MongoAuth | None = None,
    ) -> None:
        self.engine = choose_engine(engine)
        self.auth = auth
        self.name = "secure-mongo" if auth else "mongo"
        self.dir = state_dir / self.name
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.ferretdb_version = ferretdb_version
        self.ferretdb_bin = (
            cache_dir / ferretdb_build_name(self.engine, ferretdb_version) / "ferretdb"
            if self.engine in FERRETDB_ENGINES
            else None
        )
        self.postgres_url = postgres_url
        self.daemon = Daemon(
            name=f"{self.name} ({self.engine})",
            pid_file=state_dir / "run" / f"{self.name}.pid",
            log_file=state_dir / "logs" / f"{self.name}.log",
            marker=str(self.dir),
        )

    @property
    def needs_postgres(self) -> bool:
        return self.engine in ("ferretdb", "ferretdb-stock")

    @property
    def anonymous_uri(self) -> str:
        return f"mongodb://{self.host}:{self.port}/"

    @property
    def uri(self) -> str:
        """The clients' URI: with the user and password (a secret) for the secured server."""
        if self.auth is None:
            return self.anonymous_uri
        # The path names the authSource (no `?`: `export $(stack env --secure)` takes it as is).
        return f"mongodb://{AUTH_USER}:{self.auth.password}@{self.host}:{self.port}/{AUTH_SOURCE}"

    @property
    def port_setting(self) -> str:
        return "STACK_MONGO_SECURE_PORT" if self.auth else "STACK_MONGO_PORT"

    def install(self) -> None:
        """Build FerretDB from the Go module proxy once per build (mongod needs nothing)."""
        if self.ferretdb_bin is None or self.ferretdb_bin.exists():
            return
        if shutil.which("go") is None:
            raise ServiceError(
                "mongo: neither `mongod` nor Go is installed; FerretDB is built with Go"
            )
        log = self.daemon.log_file.with_name("ferretdb-build.log")
        self.ferretdb_bin.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-mod=mod -buildvcs=false",
        }
        module = f"{FERRETDB_MODULE}@{self.ferretdb_version}"
        with tempfile.TemporaryDirectory(dir=self.ferretdb_bin.parent) as work:
            download = subprocess.run(
                ["go", "mod", "download", "-json", module],
                capture_output=True,
                text=True,
                check=False,
                env=env,
                cwd=work,
                timeout=900,
            )
            if download.returncode != 0:
                raise ServiceError(
                    f"mongo: `go mod download {module}` failed: "
                    f"{(download.stdout + download.stderr)[-2000:]}"
                )
            # The module omits build/version/version.txt, which its version package embeds:
            # build from a writable copy with that file written, or the binary panics at start.
            source = Path(work) / "src"
            shutil.copytree(json.loads(download.stdout)["Dir"], source)
            for path in [source, *source.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)
            (source / "build" / "version" / "version.txt").write_text(self.ferretdb_version)
            if self.engine != "ferretdb-stock":
                for patch in ferretdb_patches(self.ferretdb_version):
                    run_checked(
                        f"ferretdb patch {patch.name}",
                        ["patch", "-p1", "--forward", "--batch", "-i", str(patch)],
                        log_file=log,
                        timeout_s=60,
                        cwd=source,
                    )
            # Without the SQLite backend unless asked: it halves the download and the build.
            tags = [] if self.engine == "ferretdb-sqlite" else ["-tags=ferretdb_no_sqlite"]
            staged = Path(work) / "ferretdb"
            build = ["go", "build", "-trimpath", "-ldflags=-s -w", *tags, "-o", str(staged)]
            run_checked(
                "ferretdb build",
                [*build, "./cmd/ferretdb"],
                log_file=log,
                timeout_s=1500,
                cwd=source,
                env=env,
            )
            staged.rename(self.ferretdb_bin)

    def up(self) -> None:
        if self.state() == "hung":
            # Alive but deaf (FerretDB's backend pool exhausted, say): only a restart helps.
            self.daemon.log(f"{self.daemon.name} did not answer ping: restarting it")
            self.daemon.stop(timeout_s=10)
        if self.daemon.already_up(
            self.is_ready,
            host=self.host,
            port=self.port,
            setting=self.port_setting,
            timeout_s=self.timeout_s,
        ):
            self._check_user()
            return
        self.install()
        private_dir(self.dir)
        # Secrets go by environment (readable by the owner only), never on a command line.
        env = {"DO_NOT_TRACK": "1"}
        if self.engine == "mongod":
            private_dir(self.dir / "db")
            argv = [
                "mongod",
                "--dbpath",
                str(self.dir / "db"),
                "--bind_ip",
                self.host,
                "--port",
                str(self.port),
                *(["--auth"] if self.auth else []),
            ]
        else:
            assert self.ferretdb_bin is not None
            if self.engine == "ferretdb-sqlite":
                private_dir(self.dir / "sqlite")
                backend = ["--handler=sqlite", f"--sqlite-url=file:{self.dir / 'sqlite'}/"]
            else:
                pool = f"pool_max_conns={FERRETDB_POOL_MAX_CONNS}"
                backend = ["--handler=postgresql"]
                env["FERRETDB_POSTGRESQL_URL"] = f"{self.postgres_url}?{pool}"
            if self.auth:
                backend += [
                    "--test-enable-new-auth",
                    f"--setup-database={AUTH_SOURCE}",
                    f"--setup-username={AUTH_USER}",
                ]
                env["FERRETDB_SETUP_PASSWORD"] = self.auth.password
            argv = [
                str(self.ferretdb_bin),
                f"--listen-addr={self.host}:{self.port}",
                *backend,
                f"--state-dir={self.dir}",
                "--telemetry=disable",
                "--debug-addr=-",
                "--log-level=error",  # WARN logs a full dump of every unsupported endSessions
            ]
        proc = self.daemon.start(argv, env=env)
        self.daemon.wait_ready(proc, self.is_ready, timeout_s=self.timeout_s)
        self._check_user()

    def _check_user(self) -> None:
        """The secured server takes its user's password (mongod: the user is created first)."""
        if self.auth is None:
            return
        from pymongo import MongoClient
        from pymongo.errors import OperationFailure

        def authenticated_ping() -> None:
            with MongoClient[dict[str, object]](
                self.uri, serverSelectionTimeoutMS=PING_TIMEOUT_MS
            ) as client:
                client.admin.command("ping")

        try:
            authenticated_ping()
            return
        except OperationFailure as exc:
            if self.engine != "mongod":
                raise ServiceError(
                    f"{self.name}: the server refuses its user {AUTH_USER!r} with the password "
                    f"in {self.auth.password_file} ({exc.code}); FerretDB creates the user on "
                    f"its first start only: remove its data (PostgreSQL database "
                    f"ferretdb_secure, or {self.dir}) to start again"
                ) from exc
        with MongoClient[dict[str, object]](
            self.anonymous_uri, serverSelectionTimeoutMS=PING_TIMEOUT_MS
        ) as client:
            try:  # mongod's localhost exception: the first user may be created anonymously
                client.admin.command(
                    "createUser", AUTH_USER, pwd=self.auth.password, roles=["root"]
                )
            except OperationFailure as exc:
                raise ServiceError(
                    f"{self.name}: mongod refuses its user {AUTH_USER!r} with the password in "
                    f"{self.auth.password_file} and cannot create it ({exc.code})"
                ) from exc
        authenticated_ping()

    def is_ready(self) -> bool:
        """Listens and answers `ping` within PING_TIMEOUT_MS (a hung server does not)."""
        if not port_open(self.host, self.port):
            return False
        from pymongo import MongoClient

        with MongoClient[dict[str, object]](
            self.anonymous_uri,  # `ping` needs no user, also on the secured server
            serverSelectionTimeoutMS=PING_TIMEOUT_MS,
            connectTimeoutMS=PING_TIMEOUT_MS,
            socketTimeoutMS=PING_TIMEOUT_MS,
        ) as client:
            client.admin.command("ping")
        return True

    def state(self) -> str:
        """`running`, `stopped`, or `hung`: the process lives but does not answer `ping`."""
        if self.daemon.pid() is None:
            return "stopped"
        try:
            return "running" if self.is_ready() else "hung"
        except Exception:  # a timeout or a dropped connection: it does not answer
            return "hung"

    def down(self) -> bool:
        return self.daemon.stop(timeout_s=30)
