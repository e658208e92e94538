"""The `redis_server` fixture: a throwaway redis-server per test (serving.testing.RedisServer)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serving.testing import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
