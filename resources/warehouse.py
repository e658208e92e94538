"""The DuckDB warehouse: one file, one writer at a time, UTC everywhere.

DuckDB lets a single process hold the file; a second process cannot even open it read-only.
So every connection takes an exclusive file lock first and waits its turn: two runs on
different partitions both succeed, one after the other. The `pool` tag on the assets shows the
same limit in the Dagster UI and lets the run queue hold steps back before they block here.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from dagster import ConfigurableResource, get_dagster_logger

from voicefw_assets.settings import paths

WAREHOUSE_POOL = "duckdb_warehouse"


class WarehouseBusy(Exception):
    """Another process writes the warehouse right now."""


class Warehouse(ConfigurableResource):
    """A DuckDB file. `path` empty means $VOICEFW_HOME/warehouse.duckdb."""

    path: str = ""
    lock_timeout_s: float = 3600.0
    threads: int = 0  # 0 = DuckDB's default (all cores)
    memory_limit: str = "2GB"

    @property
    def file(self) -> Path:
        return Path(self.path) if self.path else paths().warehouse

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive connection; waits (bounded) for any other writer to finish."""
        file = self.file
        file.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(file.with_name(file.name + ".lock"), self.lock_timeout_s) as got:
            if not got:
                raise TimeoutError(f"warehouse {file} is held by another writer")
            con = duckdb.connect(str(file))
            try:
                self._configure(con)
                yield con
            finally:
                con.close()

    @contextmanager
    def peek(self) -> Iterator[duckdb.DuckDBPyConnection | None]:
        """A read-only connection for callers that must not wait (a sensor tick): None when there is
        no warehouse yet, WarehouseBusy when a writer holds it at this moment."""
        file = self.file
        if not file.exists():
            yield None
            return
        with _exclusive_lock(file.with_name(file.name + ".lock"), timeout_s=0.0, log_wait=False) as got:
            if not got:
                raise WarehouseBusy(f"{file} is being written")
            con = duckdb.connect(str(file), read_only=True)
            try:
                con.execute("SET TimeZone = 'UTC'")
                yield con
            finally:
                con.close()

    def _configure(self, con: duckdb.DuckDBPyConnection) -> None:
        # parameters, not string formatting: paths may hold quotes (VOICEFW_HOME=/srv/o'brien)
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET memory_limit = ?", [self.memory_limit])
        con.execute("SET temp_directory = ?", [str(self.file.parent / ".duckdb_tmp")])
        if self.threads:
            con.execute("SET threads = ?", [int(self.threads)])


@contextmanager
def _exclusive_lock(lock_path: Path, timeout_s: float, log_wait: bool = True) -> Iterator[bool]:
    """flock the file, waiting up to timeout_s (TimeoutError after it, unless the timeout is 0:
    then yields False at once when the lock is taken)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout_s <= 0:
                    yield False
                    return
                if not waited and log_wait:
                    get_dagster_logger().info(f"waiting for the warehouse lock {lock_path} (another run is writing)")
                waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"warehouse lock {lock_path} still held after {timeout_s:.0f}s") from None
                time.sleep(0.2)
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock
