"""A throwaway PostgreSQL server for tests (pytest plugin: `pytest_plugins = ["tests.postgres"]`).

Nothing on the machine is assumed to run: the session fixture initdb's a cluster in a temp dir,
starts it on 127.0.0.1 with a free port (unix socket in the same dir), and removes it at the end.
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS user.
Binaries come from /usr/lib/postgresql/<newest>/bin; `.ci/postgres.sh install` puts them there.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO_ROOT / ".ci" / "postgres.sh"

# The env var names docker/dagster.yaml reads its storage settings from.
PG_ENV = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str
    socket_dir: Path
    data_dir: Path

    def env(self, dbname: str | None = None) -> dict[str, str]:
        """Values for the env vars of docker/dagster.yaml."""
        return dict(
            zip(PG_ENV, (self.host, str(self.port), self.user, self.password, dbname or self.dbname), strict=True)
        )

    def connect(self, dbname: str | None = None):
        """A psycopg2 connection over TCP with the password (what Dagster does)."""
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=dbname or self.dbname
        )

    def create_database(self, name: str) -> str:
        con = self.connect()
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return name


def pg_bindir() -> Path:
    """Newest installed server binaries; installs them (idempotently) when missing."""

    def find() -> Path | None:
        dirs = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if (d / "initdb").exists() and (d / "pg_ctl").exists()]
        return max(dirs, key=lambda d: int(d.parent.name)) if dirs else None

    found = find()
    if found is None:
        subprocess.run(["bash", str(SETUP_SCRIPT), "install"], check=True, stdin=subprocess.DEVNULL)
        found = find()
    if found is None:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(cmd: list[str]) -> list[str]:
    """As root, run as `postgres` (the server refuses root); otherwise as ourselves."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(_as_owner(cmd), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class _Cluster:
    bindir: Path
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    def start(self, user: str, password: str, dbname: str) -> PostgresServer:
        pwfile = self.root / "pwfile"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        _run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", user, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync"],
            cwd=self.root,
        )  # fmt: skip
        pwfile.unlink()
        for attempt in range(3):  # a free port can be taken between probing and binding
            port = free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.root} -c fsync=off -c full_page_writes=off"
            try:
                _run(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                     "-o", opts, "-w", "-t", "60", "start"],
                    cwd=self.root,
                )  # fmt: skip
                break
            except RuntimeError:
                if attempt == 2:
                    log = self.root / "server.log"
                    raise RuntimeError(f"postgres did not start:\n{log.read_text() if log.exists() else ''}") from None
        server = PostgresServer("127.0.0.1", port, user, password, dbname, self.root, self.data)
        _run([str(self.bindir / "createdb"), "-h", str(self.root), "-p", str(port), "-U", user, dbname], cwd=self.root)
        return server

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]),
                cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL on 127.0.0.1 for the whole session, with database `voicefw_test`."""
    # Not pytest's tmp dirs: they are 0700 under root's tree, which the postgres user cannot enter.
    cluster = _Cluster(pg_bindir(), Path(tempfile.mkdtemp(prefix="voicefw-pg-")))
    try:
        yield cluster.start(user="voicefw", password=secrets.token_hex(12), dbname="voicefw_test")
    finally:
        cluster.stop()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> str:
    """A fresh, empty database per test (so Dagster storages never see another test's rows)."""
    name = "t_" + secrets.token_hex(6)
    return postgres_server.create_database(name)
