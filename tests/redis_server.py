"""A throwaway redis-server for tests: a free loopback port, a temp dir, nothing on the machine
assumed to run (`.ci/redis.sh install` puts the binary there; this module calls it if missing).

`RedisServer` can be stopped (SIGKILL, as a crash) and started again on the same port, with or
without its data (an append-only file in its dir), which the serving tests need.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.testing import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO_ROOT / ".ci" / "redis.sh"


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        subprocess.run(["bash", str(SETUP_SCRIPT), "install"], check=True, stdin=subprocess.DEVNULL)
        found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server not found after .ci/redis.sh install")
    return found


class RedisServer:
    def __init__(self, persist: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="voicefw-redis-"))
        self.port = free_port()
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
                "--protected-mode", "no", "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.dir / "redis.log"
        raise RuntimeError(f"redis-server did not start: {log.read_text() if log.exists() else ''}")

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
