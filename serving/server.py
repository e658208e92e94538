"""Run the scoring service under uvicorn (`voicefw serve` calls run_server).

One worker is the default and the recommendation: the online history is per process, so with N
workers each would see only the calls routed to it and the history features would undercount
(by about a factor N). One uvicorn worker with uvloop + httptools uses ~110-160 µs of CPU per
single-call request and ~30-45 µs per call in batches (benchmarks/serving.py, docs/serving.md);
scale out by running one sidecar per switch or per operator, each with its own exact history,
rather than by adding workers to one sidecar.
"""

from __future__ import annotations

import logging

import uvicorn

from serving.api import create_app


def app_factory():
    """uvicorn --factory entry point: settings come from the environment (VOICEFW_*, DAGSTER_HOME)."""
    return create_app()


def run_server(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    if workers > 1:
        logging.getLogger("voicefw.serving").warning(
            "%d workers: each keeps its own call history, so history features see only ~1/%d of the calls",
            workers, workers,
        )
    uvicorn.run(
        "serving.server:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="info",
        lifespan="on",
    )


if __name__ == "__main__":  # python -m serving.server [host] [port] [workers]
    import sys

    args = sys.argv[1:]
    run_server(
        args[0] if args else "127.0.0.1",
        int(args[1]) if len(args) > 1 else 8000,
        int(args[2]) if len(args) > 2 else 1,
    )
