"""cdr_drop_sensor against a real landing folder and a real (ephemeral) Dagster instance."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from dagster import SensorResult, build_sensor_context, instance_for_test

from datetime import timedelta

from resources.landing import LandingZone
from resources.warehouse import Warehouse
from sensors import cdr_drop_sensor
from sensors.cdr_drop import Cursor, build_cdr_drop_sensor
from voicefw_assets.partitions import LOADED_OPERATORS, split_operator_day

REPO_ROOT = Path(__file__).resolve().parent.parent
HEADER = "call_id,time_start,time_connect,time_end,src_number,dst_number,orig_gw,term_gw,sip_code,q850_cause,disconnect_initiator,duration,ring_ms\n"
BASE_NS = 1_900_000_000_000_000_000  # 2030-03-17: mtimes after any ctime here, so they alone set the order


def cdr_line(call_id: str, day: str) -> str:
    return f"{call_id},{day}T10:00:00+00:00,,{day}T10:00:05+00:00,447700900123,4915112345678,gw1,gw2,487,,orig,0,5000\n"


def drop(home: Path, operator: str, name: str, body: str, mtime_ns: int) -> Path:
    path = home / "landing" / operator / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def tick(sensor, instance, cursor: str | None) -> SensorResult:
    ctx = build_sensor_context(instance=instance, cursor=cursor, resources={"landing": LandingZone(), "warehouse": Warehouse()})
    result = sensor(ctx)
    assert isinstance(result, SensorResult)
    return result


def covered(request) -> list[str]:
    """The operator-day keys a run request covers: its partition, or every key of its range (the
    days of these tests are consecutive calendar days, new to the instance, so sorted)."""
    if request.partition_key is not None:
        return [str(request.partition_key)]
    (op0, d0), (op1, d1) = (split_operator_day(request.tags[f"dagster/asset_partition_range_{end}"]) for end in ("start", "end"))
    ops = [o for o in sorted(LOADED_OPERATORS) if op0 <= o <= op1]
    return [f"{d0 + timedelta(days=i)}|{o}" for i in range((d1 - d0).days + 1) for o in ops]


def ingest(result: SensorResult) -> list:
    """The tick's ingest run requests (a tick may also ask for a feed's freshness check)."""
    return [r for r in result.run_requests if r.job_name == "ingest_cdrs"]


def partitions(result: SensorResult) -> list[str]:
    return sorted(k for r in ingest(result) for k in covered(r))


def test_backlog_of_10000_files_is_worked_off_in_capped_ticks(home):
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    t0 = time.perf_counter()
    for i in range(10_000):
        drop(home, "operator_c", f"sw_{i:05d}.csv", HEADER + cdr_line(f"c{i}", days[i % 3]), BASE_NS + i * 1_000_000)
    print(f"\ncreated 10,000 files in {time.perf_counter() - t0:.2f} s")
    sensor = build_cdr_drop_sensor(max_runs_per_tick=25, max_peeks_per_tick=100)

    with instance_for_test() as instance:
        t0 = time.perf_counter()
        first = tick(sensor, instance, None)
        print(f"tick 1 over 10,000 files: {time.perf_counter() - t0:.2f} s")
        assert sorted(partitions(first)) == [f"{d}|operator_c" for d in days]
        c1 = Cursor.parse(first.cursor).marks["operator_c"]
        assert c1.arrived_ns == BASE_NS + 99 * 1_000_000  # exactly the first 100 files were handled
        assert len(c1.at_arrival) == 1
        # one run for the tick: the three days of operator_c are one partition range
        assert len(ingest(first)) == 1 and ingest(first)[0].tags["voicefw/files"] == "100"
        assert {r.partitions_def_name: sorted(r.partition_keys) for r in first.dynamic_partitions_requests} == {
            "cdr_operators": ["operator_c"], "cdr_days": days}

        t0 = time.perf_counter()
        second = tick(sensor, instance, first.cursor)
        print(f"tick 2 over 10,000 files: {time.perf_counter() - t0:.2f} s")
        c2 = Cursor.parse(second.cursor).marks["operator_c"]
        assert c2.arrived_ns == BASE_NS + 199 * 1_000_000
        # same partitions (new files touched them) but new run keys: nothing of tick 1 is re-requested
        assert sorted(partitions(second)) == sorted(partitions(first))
        assert not {r.run_key for r in ingest(first)} & {r.run_key for r in ingest(second)}


def test_operator_days_per_tick_are_capped_and_the_cursor_resumes(home):
    for i in range(10):
        drop(home, "operator_c", f"day_{i}.csv", HEADER + cdr_line(f"d{i}", f"2026-11-{i + 1:02d}"), BASE_NS + i)
    sensor = build_cdr_drop_sensor(max_runs_per_tick=4)
    seen: list[str] = []
    cursor = None
    with instance_for_test() as instance:
        for expected in (4, 4, 2):
            result = tick(sensor, instance, cursor)
            assert len(partitions(result)) == expected and len(ingest(result)) == 1
            seen += partitions(result)
            cursor = result.cursor
        assert seen == [f"2026-11-{d:02d}|operator_c" for d in range(1, 11)]
        done = tick(sensor, instance, cursor)
        assert not done.run_requests
        assert "no new files" in done.skip_reason.skip_message
        assert done.cursor == cursor


def test_identical_redrop_requests_nothing_and_a_changed_file_does(home):
    body = HEADER + cdr_line("x1", "2026-11-05") + cdr_line("x2", "2026-11-06")
    path = drop(home, "operator_c", "a.csv", body, BASE_NS)
    drop(home, "operator_c", "b.csv", HEADER + cdr_line("y1", "2026-11-07"), BASE_NS + 5)
    with instance_for_test() as instance:
        first = tick(cdr_drop_sensor, instance, None)
        assert sorted(partitions(first)) == ["2026-11-05|operator_c", "2026-11-06|operator_c", "2026-11-07|operator_c"]

        path.unlink()  # re-drop: same name, same bytes, same mtime (e.g. rsync -t)
        drop(home, "operator_c", "a.csv", body, BASE_NS)
        redrop = tick(cdr_drop_sensor, instance, first.cursor)
        assert not redrop.run_requests and redrop.skip_reason is not None

        # with the cursor lost, the same files give the same run keys: Dagster dedups those runs
        reset = tick(cdr_drop_sensor, instance, None)
        assert {r.run_key for r in ingest(reset)} == {r.run_key for r in ingest(first)}

        with path.open("a") as fh:  # a late append changes size and mtime: its days run again
            fh.write(cdr_line("x3", "2026-11-06"))
        os.utime(path, ns=(BASE_NS + 10, BASE_NS + 10))
        changed = tick(cdr_drop_sensor, instance, redrop.cursor)
        assert sorted(partitions(changed)) == ["2026-11-05|operator_c", "2026-11-06|operator_c"]
        assert not {r.run_key for r in ingest(changed)} & {r.run_key for r in ingest(first)}


def test_unknown_operator_and_bad_files_are_quarantined_with_a_reason(home):
    drop(home, "operator_zz", "calls.csv", HEADER + cdr_line("z1", "2026-11-01"), BASE_NS)
    drop(home, "operator_c", "broken.csv.gz", "this is not gzip", BASE_NS + 1)
    drop(home, "operator_c", "ancient.csv", HEADER + cdr_line("old", "1999-01-01"), BASE_NS + 2)
    drop(home, "operator_c", "notes.txt", "hello", BASE_NS + 3)
    drop(home, "operator_c", "empty.csv", "", BASE_NS + 4)
    drop(home, "operator_c", ".upload.csv.part", "half a fi", BASE_NS + 5)
    good = drop(home, "operator_c", "good.csv", HEADER + cdr_line("g1", "2026-11-02"), BASE_NS + 6)

    with instance_for_test() as instance:
        result = tick(cdr_drop_sensor, instance, None)
    assert partitions(result) == ["2026-11-02|operator_c"]
    reasons = {Path(q["from"]).name: q["reason"] for q in LandingZone().quarantined()}
    assert set(reasons) == {"calls.csv", "broken.csv.gz", "ancient.csv", "notes.txt"}
    assert "operator_configs/operator_zz.yaml" in reasons["calls.csv"]
    assert "gzip" in reasons["broken.csv.gz"]  # the reason registration gives: not gzip data
    assert "partition day" in reasons["ancient.csv"]
    assert "matches none of" in reasons["notes.txt"]
    assert (home / "quarantine" / "operator_zz" / "calls.csv").exists()
    assert good.exists() and (home / "landing" / "operator_c" / "empty.csv").exists()
    assert (home / "landing" / "operator_c" / ".upload.csv.part").exists()  # not a file yet

    with instance_for_test() as instance:  # only quarantines, no data: a skip that says so
        drop(home, "operator_yy", "x.csv", "a,b\n1,2\n", BASE_NS + 100)
        only_bad = tick(cdr_drop_sensor, instance, result.cursor)
    assert not only_bad.run_requests
    assert "1 quarantined" in only_bad.skip_reason.skip_message
    assert json.loads(only_bad.cursor)["operator_yy"]["arrived_ns"] == BASE_NS + 100


def test_requested_partitions_exist_once_the_tick_adds_its_days(home):
    """Operators and days are dynamic partitions: the tick that requests a run adds its new ones."""
    from voicefw_assets.partitions import cdr_partitions

    drop(home, "operator_c", "a.csv", HEADER + cdr_line("p1", "2026-11-03"), BASE_NS)
    with instance_for_test() as instance:
        result = tick(cdr_drop_sensor, instance, None)
        for add in result.dynamic_partitions_requests:  # the operator and the day
            instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        keys = [r.partition_key for r in ingest(result)]
        assert keys and set(map(str, keys)) <= set(cdr_partitions.get_partition_keys(dynamic_partitions_store=instance))
        assert ingest(result)[0].partition_key.keys_by_dimension == {"operator": "operator_c", "date": "2026-11-03"}


def test_a_config_newer_than_the_code_location_holds_only_its_folder(home, tmp_path, monkeypatch):
    """operator_configs/new_op.yaml exists on disk but the loaded partitions predate it: its files
    wait for a reload (not quarantined, watermark unmoved) while other operators go on."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO_ROOT / "operator_configs", configs)
    shutil.copy(configs / "operator_c.yaml", configs / "new_op.yaml")
    monkeypatch.setenv("VOICEFW_OPERATOR_CONFIGS", str(configs))
    waiting = drop(home, "new_op", "w.csv", HEADER + cdr_line("n1", "2026-11-01"), BASE_NS)
    drop(home, "operator_c", "c.csv", HEADER + cdr_line("c1", "2026-11-02"), BASE_NS + 1)

    with instance_for_test() as instance:
        result = tick(cdr_drop_sensor, instance, None)
        assert partitions(result) == ["2026-11-02|operator_c"]
        assert waiting.exists() and not LandingZone().quarantined()
        assert set(json.loads(result.cursor)) == {"operator_c"}
        held = tick(cdr_drop_sensor, instance, result.cursor)
        assert not held.run_requests and "reload" in held.skip_reason.skip_message


def test_a_file_moved_in_with_an_old_mtime_is_still_seen(home, tmp_path):
    """`mv` keeps a file's old mtime; its ctime (set by the rename) marks its arrival."""
    drop(home, "operator_c", "new.csv", HEADER + cdr_line("n1", "2026-11-02"), time.time_ns())
    with instance_for_test() as instance:
        first = tick(cdr_drop_sensor, instance, None)
        assert partitions(first) == ["2026-11-02|operator_c"]
        old = tmp_path / "old.csv"
        old.write_text(HEADER + cdr_line("o1", "2026-11-04"))
        os.utime(old, ns=(BASE_NS - 10**18, BASE_NS - 10**18))  # an mtime years before the watermark
        time.sleep(0.02)
        shutil.move(old, home / "landing" / "operator_c" / "old.csv")
        moved = tick(cdr_drop_sensor, instance, first.cursor)
        assert partitions(moved) == ["2026-11-04|operator_c"]


def test_a_silent_feed_is_overdue_with_its_last_file_and_its_return_gets_checked(home, monkeypatch):
    """landing/<operator> is observed with its newest file's arrival; a feed silent for longer than
    VOICEFW_FEED_MAX_SILENCE_H fails Dagster's freshness check with that time; when files come
    back, the drop sensor asks for the check to run again."""
    from datetime import datetime, timezone

    from dagster import AssetKey, AssetSelection, build_last_update_freshness_checks, materialize

    from voicefw_assets.assets.feeds import feed_key, feed_specs

    monkeypatch.setenv("VOICEFW_FEED_MAX_SILENCE_H", str(1 / 3600))  # one second
    first = drop(home, "operator_c", "a.csv", HEADER + cdr_line("f1", "2026-11-02"), time.time_ns())
    arrived = max(first.stat().st_mtime_ns, first.stat().st_ctime_ns)
    checks = build_last_update_freshness_checks(assets=[feed_key("operator_c")], lower_bound_delta=timedelta(seconds=1))
    with instance_for_test() as instance:
        t1 = tick(cdr_drop_sensor, instance, None)
        (obs,) = t1.asset_events
        meta = {k: v.value for k, v in obs.metadata.items()}
        assert obs.asset_key == AssetKey(["landing", "operator_c"]) and meta["last_file"] == "a.csv"
        assert meta["dagster/last_updated_timestamp"] == pytest.approx(arrived / 1e9, abs=1e-3)
        assert {r.job_name for r in t1.run_requests} == {"ingest_cdrs", "check_feed_freshness"}  # first files of the feed
        instance.report_runless_asset_event(obs)

        time.sleep(1.5)  # silent for longer than allowed: re-observed, same last file
        t2 = tick(cdr_drop_sensor, instance, t1.cursor)
        assert not t2.run_requests and [e.asset_key for e in t2.asset_events] == [feed_key("operator_c")]
        assert t2.asset_events[0].metadata["last_file"].value == "a.csv"
        instance.report_runless_asset_event(t2.asset_events[0])
        result = materialize([*feed_specs, *checks], selection=AssetSelection.checks(*checks), instance=instance, raise_on_error=False)
        (evaluation,) = result.get_asset_check_evaluations()
        assert not evaluation.passed and "overdue" in evaluation.description
        assert evaluation.metadata["dagster/last_updated_timestamp"].value == pytest.approx(arrived / 1e9, abs=1e-3)
        stamp = datetime.fromtimestamp(arrived / 1e9, tz=timezone.utc).isoformat(timespec="seconds")
        assert t2.asset_events[0].metadata["last_file_arrived"].value == stamp

        drop(home, "operator_c", "b.csv", HEADER + cdr_line("f2", "2026-11-03"), time.time_ns())
        t3 = tick(cdr_drop_sensor, instance, t2.cursor)
        (recheck,) = [r for r in t3.run_requests if r.job_name == "check_feed_freshness"]
        assert [k.asset_key for k in recheck.asset_check_keys] == [feed_key("operator_c")]
