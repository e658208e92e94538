"""Serving benchmark: voicefw's scoring sidecar vs `mlflow models serve`, same LightGBM model.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--redis-workers 2] [--batch 100] [--pin] [--no-mlflow]

One run measures, in turn: voicefw with the in-process history (1 worker), voicefw with the Redis
store (a throwaway redis-server on loopback, `--redis-workers` uvicorn workers), and MLflow.
Builds a real bundle (200 rounds, 31 leaves, as model_config.yaml) from synthetic calls, announces
it as a `serving_model` materialization in a throwaway Dagster instance, starts the service with
run_server on 127.0.0.1, and loads it from a second process: wrk (Debian package `wrk`) with Lua
scripts that send a distinct call per request (new call_id, later start_time, varied numbers, so
the online history grows as in production), or, without wrk, a fixed-count asyncio/httpx client.
Then it serves the same booster with `mlflow models serve` (optional 'bench' extra) and loads it
the same way. Prints req/s, p50 and p99 for single and batch scoring. Numbers, not assertions:
the targets (2 cores): in-process store >= 7,000 req/s single-call (one worker); 2 workers + Redis
>= 3,000 req/s with p99 <= 10 ms at 16 connections; batch >= 50,000 calls/s with the in-process
store. `--pin` puts each server on core 0 and wrk on core 1 (taskset).
Results and what limits them: docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from serving.synthetic import build_bundle, record_serving_model, synthetic_calls  # noqa: E402
from serving.testing import RedisServer, ServerProcess, free_port, wait_http  # noqa: E402

T0 = 1772539200  # 2026-03-03T12:00:00Z
SINGLE_LUA = r"""
counter = 0
local t0 = T0  -- each phase starts after the previous one's calls: the history sees time move forward
local ops = {"operator_a", "operator_b", "operator_c"}
request = function()
  counter = counter + 1
  local t = t0 + counter * 0.005
  local ts = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. string.format(".%06dZ", math.floor((t % 1) * 1e6))
  local body = string.format(
    '{"operator":"operator_a","call_id":"s%d","start_time":"%s","a_number":"020 7%03d %04d","b_number":"07700 9%05d","ingress_trunk":"trunk-%d"}',
    counter, ts, math.random(0, 999), math.random(0, 9999), math.random(0, 99999), math.random(0, 7))
  return wrk.format("POST", "/v1/score", {["Content-Type"] = "application/json"}, body)
end
"""

BATCH_LUA = r"""
counter = 0
local t0 = T0
request = function()
  local parts = {}
  for i = 1, BATCH do
    counter = counter + 1
    local t = t0 + counter * 0.005
    local ts = os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. string.format(".%06dZ", math.floor((t % 1) * 1e6))
    parts[i] = string.format(
      '{"operator":"operator_a","call_id":"b%d","start_time":"%s","a_number":"020 7%03d %04d","b_number":"07700 9%05d","ingress_trunk":"trunk-%d"}',
      counter, ts, math.random(0, 999), math.random(0, 9999), math.random(0, 99999), math.random(0, 7))
  end
  return wrk.format("POST", "/v1/score/batch", {["Content-Type"] = "application/json"},
    '{"calls":[' .. table.concat(parts, ",") .. ']}')
end
"""

STATIC_LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = BODY
"""


def _unit_ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)\b", value)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]


def _cpu_seconds(pid: int | None) -> float:
    """CPU time used by the server process and its children (uvicorn workers)."""
    if pid is None:
        return float("nan")
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs if p.is_running())


PIN: dict[str, int] = {}  # --pin: {"server": core, "client": core}


def pin_server(pid: int) -> None:
    """--pin: the server process on one core (the load generator gets the other)."""
    if PIN:
        os.sched_setaffinity(pid, {PIN["server"]})


def run_wrk(url: str, script: str, connections: int, duration: int, workdir: Path, pid: int | None = None) -> dict:
    lua = workdir / f"bench-{abs(hash(script)) % 10**8}.lua"
    lua.write_text(script)
    cpu0 = _cpu_seconds(pid)
    out = subprocess.run(
        (["taskset", "-c", str(PIN["client"])] if PIN else []) + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s", "-s", str(lua), url],
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    cpu = _cpu_seconds(pid) - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = _unit_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # anchored: "68.50%" (a stdev) is not it
    p99 = _unit_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else "",
            # server CPU per request: what a free core would sustain, whatever else runs on the machine
            "cpu_us": cpu / total * 1e6 if total else float("nan")}


PY_CLIENT = r"""
import asyncio, json, sys, time, httpx
url, body_path, conns, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bodies = json.load(open(body_path))
lat, bad = [], 0
async def worker(client, idx):
    global bad
    for i in range(idx, total, conns):
        t = time.perf_counter()
        r = await client.post(url, content=bodies[i % len(bodies)], headers={"content-type": "application/json"})
        lat.append(time.perf_counter() - t)
        bad += r.status_code != 200
async def main():
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=conns)) as c:
        t = time.perf_counter()
        await asyncio.gather(*(worker(c, k) for k in range(conns)))
        return time.perf_counter() - t
wall = asyncio.run(main())
lat.sort()
print(json.dumps({"rps": total / wall, "p50_ms": lat[len(lat)//2]*1e3, "p99_ms": lat[int(len(lat)*0.99)]*1e3, "non2xx": bad, "socket_errors": ""}))
"""


def run_python_client(url: str, bodies: list[str], connections: int, total: int, workdir: Path) -> dict:
    """Fallback without wrk: a fixed number of requests from an asyncio client in another process."""
    (workdir / "client.py").write_text(PY_CLIENT)
    (workdir / "bodies.json").write_text(json.dumps(bodies))
    out = subprocess.run([sys.executable, str(workdir / "client.py"), url, str(workdir / "bodies.json"),
                          str(connections), str(total)], capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fixed_bodies(batch: int, n: int = 200) -> tuple[list[str], list[str]]:
    single, batches = [], []
    for i in range(n):
        call = {"operator": "operator_a", "call_id": f"p{i}", "start_time": f"2026-03-03T12:{i // 60:02d}:{i % 60:02d}Z",
                "a_number": f"07{100 + i:03d} {i:06d}", "b_number": f"07700 9{i:05d}", "ingress_trunk": "trunk-1"}
        single.append(json.dumps(call))
        batches.append(json.dumps({"calls": [dict(call, call_id=f"p{i}-{k}") for k in range(batch)]}))
    return single, batches


def announce(workdir: Path, bundle_path: Path, version: str) -> Path:
    """A throwaway Dagster home whose serving_model materialization is the bundle."""
    home = workdir / "dagster_home"
    if not home.exists():
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
        from dagster import DagsterInstance

        with DagsterInstance.get() as instance:
            record_serving_model(instance, bundle_path, version)
    return home


def bench_voicefw(args, workdir: Path, home: Path, workers: int, store: str, batch: bool) -> dict:
    env = {"DAGSTER_HOME": str(home), "VOICEFW_POLL_INTERVAL_S": "5", "VOICEFW_MAX_BATCH": str(max(args.batch, 1000)),
           "VOICEFW_ONLINE_STORE": store}
    results = {}
    with ServerProcess(env, workers=workers, log_path=workdir / f"voicefw-{workers}.log") as srv:
        deadline = time.monotonic() + 120
        while sum(__import__("httpx").get(srv.url + "/readyz", headers={"Connection": "close"}).status_code == 200
                  for _ in range(4 * workers)) < 4 * workers and time.monotonic() < deadline:
            time.sleep(0.2)  # every worker ready (fresh connections reach them all)
        pin_server(srv.proc.pid)
        for child in __import__("psutil").Process(srv.proc.pid).children(recursive=True):
            pin_server(child.pid)
        pid = srv.proc.pid
        if shutil.which("wrk"):
            day = 86_400  # warm-up, single and batch phases on consecutive days of event time (2026-03-02..04)
            run_wrk(srv.url, SINGLE_LUA.replace("T0", str(T0 - day)), 16, 2, workdir)  # warm-up
            redis_client = __import__("redis").Redis.from_url(store) if store.startswith("redis") else None
            if redis_client is not None:
                redis_client.config_resetstat()
            results["single"] = run_wrk(srv.url, SINGLE_LUA.replace("T0", str(T0)), 16, args.duration, workdir, pid)
            if redis_client is not None:  # Redis's own time per script call (single calls only)
                stats = redis_client.info("commandstats")
                results["single"]["redis_us"] = sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")) / max(
                    1, sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")))
            if batch:
                script = BATCH_LUA.replace("BATCH", str(args.batch)).replace("T0", str(T0 + day))
                results["batch"] = run_wrk(srv.url, script, 4, args.duration, workdir, pid)
        else:
            single, batches = _fixed_bodies(args.batch)
            results["single"] = run_python_client(srv.url + "/v1/score", single, 16, 20_000, workdir)
            if batch:
                results["batch"] = run_python_client(srv.url + "/v1/score/batch", batches, 4, 400, workdir)
        metrics = __import__("httpx").get(srv.url + "/metrics").text
        results["errors"] = re.findall(r'^voicefw_requests_total\{endpoint="[^"]+",status="(5\d\d)"\} (\S+)', metrics, re.M)
    return results


MLFLOW_SAVE = r"""
import sys, lightgbm as lgb, mlflow.lightgbm
mlflow.lightgbm.save_model(lgb.Booster(model_file=sys.argv[1]), sys.argv[2])
"""


def bench_mlflow(args, workdir: Path, bundle_path: Path, feature_names: list[str]) -> dict | str:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    if not mlflow_bin.exists():
        return "mlflow not installed (pip install -e '.[bench]')"
    model_dir = workdir / "mlflow_model"
    subprocess.run([sys.executable, "-c", MLFLOW_SAVE, str(bundle_path / "model.txt"), str(model_dir)],
                   check=True, capture_output=True, timeout=300)
    port = free_port()
    log = (workdir / "mlflow.log").open("wb")
    proc = subprocess.Popen(
        [str(mlflow_bin), "models", "serve", "-m", str(model_dir), "-h", "127.0.0.1", "-p", str(port),
         "--env-manager", "local", "-w", str(args.workers)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # mlflow execs `uvicorn` by name: the venv's bin must be on PATH
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/ping", timeout_s=120, ok=(200,))
        for p in [proc.pid, *(c.pid for c in __import__("psutil").Process(proc.pid).children(recursive=True))]:
            pin_server(p)  # mlflow execs uvicorn (and its workers) as children
        row = [0.0] * len(feature_names)
        single = json.dumps({"dataframe_split": {"columns": feature_names, "data": [row]}})
        batch = json.dumps({"dataframe_split": {"columns": feature_names, "data": [row] * args.batch}})
        check = __import__("httpx").post(url + "/invocations", content=single, headers={"content-type": "application/json"})
        if check.status_code != 200:
            return f"mlflow answered {check.status_code}: {check.text[:200]}"
        results = {}
        if shutil.which("wrk"):
            lua = lambda body: STATIC_LUA.replace("BODY", json.dumps(body))  # noqa: E731
            run_wrk(url + "/invocations", lua(single), 16, 2, workdir)
            results["single"] = run_wrk(url + "/invocations", lua(single), 16, args.duration, workdir, proc.pid)
            results["batch"] = run_wrk(url + "/invocations", lua(batch), 4, args.duration, workdir, proc.pid)
        else:
            results["single"] = run_python_client(url + "/invocations", [single], 16, 1000, workdir)
            results["batch"] = run_python_client(url + "/invocations", [batch], 4, 100, workdir)
        return results
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--redis-workers", type=int, default=2, help="uvicorn workers sharing the Redis store")
    ap.add_argument("--batch", type=int, default=100, help="calls per batch request")
    ap.add_argument("--no-mlflow", action="store_true")
    ap.add_argument("--pin", action="store_true", help="servers on core 0, wrk on core 1 (taskset)")
    args = ap.parse_args()
    if args.pin and os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):
        PIN.update(server=0, client=1)

    workdir = Path(tempfile.mkdtemp(prefix="voicefw-bench-"))
    redis_server = None
    try:
        t = time.time()
        version, bundle_path = build_bundle(workdir / "models", synthetic_calls(n_per_day=5000), rounds=200, num_leaves=31)
        feature_names = json.loads((bundle_path / "features.json").read_text())["feature_names"]
        print(f"bundle {version}: 200 rounds x 31 leaves, {len(feature_names)} features ({time.time() - t:.1f}s)")
        print(f"load generator: {'wrk -t1 (Debian)' if shutil.which('wrk') else 'asyncio/httpx client'}; "
              f"{os.cpu_count()} cores; pinned {PIN or 'no'}; load average {os.getloadavg()}")
        home = announce(workdir, bundle_path, version)
        rows = [("voicefw memory, 1 worker", bench_voicefw(args, workdir, home, 1, "memory", batch=True))]
        redis_server = RedisServer().start()
        rows.append((f"voicefw redis, {args.redis_workers} workers",
                     bench_voicefw(args, workdir, home, args.redis_workers, redis_server.url, batch=True)))
        if not args.no_mlflow:
            args.workers = 1
            rows.append(("mlflow models serve, 1 w", bench_mlflow(args, workdir, bundle_path, feature_names)))
        print(f"\n{'server':28} {'mode':18} {'req/s':>9} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}"
              f" {'cpu us/req':>10} {'calls/s/core':>12}")
        for name, res in rows:
            if isinstance(res, str):
                print(f"{name:28} {res}")
                continue
            for mode, n in (("single (16 conn)", 1), (f"batch {args.batch} (4 conn)", args.batch)):
                r = res.get(mode.split()[0])
                if r is None:
                    continue
                cpu = r.get("cpu_us", float("nan"))
                print(f"{name:28} {mode:18} {r['rps']:9.0f} {r['rps'] * n:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                      f"{r['non2xx']:8d} {cpu:10.0f} {n * 1e6 / cpu:12.0f} {r['socket_errors']}"
                      + (f"  + Redis {r['redis_us']:.0f} us/call" if "redis_us" in r else ""))
        if not args.no_mlflow and not isinstance(rows[-1][1], str):
            for name, res in rows[:-1]:
                print(f"single-call throughput, {name} / mlflow: {res['single']['rps'] / rows[-1][1]['single']['rps']:.1f}x")
        print(f"5xx answers: {[(name, res['errors']) for name, res in rows[:2]]}")
        print(f"load average (1/5/15 min) at the end: {os.getloadavg()}")
        print("calls/s/core = calls per second one free core would sustain (server CPU time per request, all"
              " workers; Redis's own CPU is not in it)")
    finally:
        if redis_server is not None:
            redis_server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
