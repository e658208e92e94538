"""Run the scoring service under uvicorn (`voicefw serve` calls run_server).

Workers: with the in-process history (VOICEFW_ONLINE_STORE=memory, the default) exactly one, since
N workers would each see ~1/N of the calls; with the Redis store (`redis://host:port/db`) any
number, every worker and replica sharing one history and one set of rate-limit counters.

Client addresses: uvicorn rewrites the peer from X-Forwarded-For only for requests from
VOICEFW_TRUSTED_PROXIES (none by default). Its own default would trust 127.0.0.1, so a local
client could rotate the header to escape the per-client rate limit.
"""

from __future__ import annotations

import uvicorn

from serving.api import create_app
from serving.settings import ServingSettings


def app_factory():
    """uvicorn --factory entry point: settings come from the environment (VOICEFW_*, DAGSTER_HOME)."""
    return create_app()


def uvicorn_options(settings: ServingSettings) -> dict:
    """The uvicorn settings every way of running the service uses (here, tests, benchmark)."""
    trusted = settings.trusted_proxies
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": ",".join(trusted) if trusted else "",
            "access_log": False, "lifespan": "on", "server_header": False}


def check_workers(settings: ServingSettings, workers: int) -> None:
    if workers > 1 and settings.online_store == "memory":
        raise SystemExit(
            f"--workers {workers} needs a shared online store: set VOICEFW_ONLINE_STORE=redis://host:port/db "
            "(with the in-process history each worker would see only part of the calls)")


def run_server(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    settings = ServingSettings.from_env()
    check_workers(settings, workers)
    uvicorn.run(
        "serving.server:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level="info",
        **uvicorn_options(settings),
    )


if __name__ == "__main__":  # python -m serving.server [host] [port] [workers]
    import sys

    args = sys.argv[1:]
    run_server(
        args[0] if args else "127.0.0.1",
        int(args[1]) if len(args) > 1 else 8000,
        int(args[2]) if len(args) > 2 else 1,
    )
