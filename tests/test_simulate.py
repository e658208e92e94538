"""The traffic simulator: deterministic drops in each operator's format, ground truth beside them."""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
import zlib
from collections import Counter, defaultdict
from datetime import date, datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from voicefw_assets.operators import load_operator_configs
from voicefw_assets.settings import REPO_ROOT
from voicefw_assets.simulate import simulate

CPD = 2000
DIALECT = "quote = '\"', escape = '\"'"
A_COLUMNS = load_operator_configs(REPO_ROOT / "operator_configs")["operator_a"].csv.columns


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("dirty")
    return home, simulate(home, days=3, calls_per_day=CPD, seed=7)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, dict]:
    home = tmp_path_factory.mktemp("clean")
    return home, simulate(home, days=2, calls_per_day=CPD, seed=11, dirt=False)


def landing_files(home: Path, op: str) -> list[Path]:
    return sorted((home / "landing" / op).iterdir())


def text_of(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.name.endswith(".gz") else data).decode()


def rows_of(path: Path) -> tuple[list[str] | None, list[list[str]], list[str]]:
    """(header, well-formed rows, malformed lines). No value spans lines, so lines parse one by one."""
    lines = text_of(path).splitlines()
    header = None
    if path.parent.name != "operator_a" and lines:
        header = next(csv.reader([lines[0]]))
        lines = lines[2:] if path.parent.name == "operator_b" else lines[1:]
    width = len(header) if header else len(A_COLUMNS)
    good, bad = [], []
    for line in lines:
        try:
            row = next(csv.reader([line], strict=True))
        except csv.Error:
            bad.append(line)
            continue
        (good if len(row) == width else bad).append(row if len(row) == width else line)
    return header, good, bad


def readable(home: Path, op: str) -> list[Path]:
    """Files a loader can read in full: not empty, not the truncated gzip."""
    out = []
    for p in landing_files(home, op):
        try:
            text_of(p)
        except (EOFError, OSError, zlib.error):
            continue
        if p.stat().st_size:
            out.append(p)
    return out


def records(home: Path, op: str, files: list[Path] | None = None) -> list[dict]:
    out = []
    for p in files or readable(home, op):
        header, good, _ = rows_of(p)
        names = header or list(A_COLUMNS)
        out += [dict(zip(names, r), _file=p.name) for r in good]
    return out


CALL_ID = {"operator_a": "uniqueid", "operator_b": "globalCallID_callId", "operator_c": "call_id"}
OPS = tuple(CALL_ID)


def truth(home: Path, op: str) -> dict[str, dict]:
    out = {}
    for p in sorted((home / "ground_truth" / op).glob("*.csv")):
        with p.open() as f:
            for r in csv.DictReader(f):
                assert r["call_id"] not in out, "a call is in the ground truth twice"
                out[r["call_id"]] = r | {"_day": p.stem}
    return out


def digests(home: Path) -> dict[str, str]:
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(home.rglob("*")) if p.is_file()}


def test_same_arguments_same_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sa = simulate(a, days=2, calls_per_day=1500, seed=3)
    sb = simulate(b, days=2, calls_per_day=1500, seed=3)
    simulate(c, days=2, calls_per_day=1500, seed=4)
    assert sa == sb | {"home": str(a)}
    da = digests(a)
    assert len(da) > 30 and da == digests(b)
    assert da != digests(c)
    assert not [p for p in a.rglob("*.part")], "temporary files were left behind"


def test_several_files_per_operator_day_rotated_on_end_time(dirty):
    home, summary = dirty
    for op in OPS:
        per_day = Counter(re.search(r"(\d{8})", p.name).group(1) for p in landing_files(home, op))
        for d in ("20261101", "20261102", "20261103"):
            assert per_day[d] > 1, (op, d, per_day)
    # files hold the calls that ENDED in their window, so a day's first files hold calls started the day before
    first = records(home, "operator_a", [home / "landing/operator_a/Master-20261102-0000Z.csv"])
    assert first and all("2026-11-02 00:00:00" <= r["end"] < "2026-11-02 04:00:00" for r in first)  # GMT = UTC
    started_before = 0
    for op, pattern in (("operator_a", "*-20261102-0000Z.csv"), ("operator_a", "*-20261103-0000Z.csv"),
                        ("operator_b", "*_202611020000_*.csv"), ("operator_b", "*_202611030000_*.csv"),
                        ("operator_c", "*_20261102T0000Z.csv*"), ("operator_c", "*_20261103T0000Z.csv*")):
        day = pattern.split("2026")[1][2:4]
        for r in records(home, op, sorted((home / "landing" / op).glob(pattern))):
            try:
                if op == "operator_a":
                    start = datetime.strptime(r["start"], "%Y-%m-%d %H:%M:%S").isoformat()
                elif op == "operator_b":
                    start = datetime.fromtimestamp(int(r["dateTimeOrigination"]), timezone.utc).isoformat()
                else:
                    start = _utc(r["time_start"]).astimezone(timezone.utc).isoformat()
            except ValueError:
                continue  # a planted bad timestamp
            started_before += start.startswith("2026-11-") and start[8:10] < day
    assert started_before > 0


def test_ground_truth_beside_landing_and_covers_every_clean_call(clean):
    home, summary = clean
    assert summary["calls"] == sum(summary["truth"].values()) > 3000
    assert set(summary["truth"]) == {"normal", "flash", "wangiri", "callback"}
    for p in (home / "landing").rglob("*"):
        assert "ground_truth" not in str(p) and not p.name.endswith(".part")
    for op in OPS:
        assert sorted(p.name for p in (home / "ground_truth" / op).iterdir()) == ["2026-11-01.csv", "2026-11-02.csv"]
        gt = truth(home, op)
        ids = Counter(r[CALL_ID[op]] for r in records(home, op))
        assert max(ids.values()) == 1
        assert set(ids) == set(gt), "without dirt, the landing and the ground truth list the same calls"
        assert {r["operator"] for r in gt.values()} == {op}
        assert {r["truth"] for r in gt.values()} <= {"normal", "flash", "wangiri", "callback"}
        flash = [r for r in gt.values() if r["truth"] == "flash"]
        assert flash and all(r["campaign"].startswith("flash-") for r in flash)


def duck_rows(path: Path, columns: list[str], header: bool) -> list[tuple]:
    """Read a drop the way the mapping does: the dialect spelled out, nothing sniffed, bad rows skipped."""
    cols = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in columns) + "}"
    return duckdb.connect().execute(
        f"SELECT * FROM read_csv('{path}', columns = {cols}, header = {str(header).lower()}, delim = ',', "
        f"{DIALECT}, auto_detect = false, null_padding = false, ignore_errors = true)").fetchall()


def test_formats_read_with_duckdb(dirty):
    home, _ = dirty
    for op in OPS:
        for p in readable(home, op):
            header, good, bad = rows_of(p)
            names = header or list(A_COLUMNS)
            rows = duck_rows(p, names, header is not None)
            if op == "operator_b":  # the type row reads as a row: the config drops it (extra_header_rows: 1)
                assert rows[0][names.index("cdrRecordType")] == "INTEGER" if rows else not good
                rows = rows[1:]
            rows = [tuple("" if v is None else v for v in r) for r in rows]
            assert sorted(rows) == sorted(tuple(r) for r in good), p.name
    a = (home / "landing/operator_a/Master-20261101-1200Z.csv").read_text()
    assert a.startswith('"') and ',"0","NO ANSWER","DOCUMENTATION",' in a, "Asterisk quotes every field"
    b = next(p for p in landing_files(home, "operator_b") if "-" not in p.name)
    header, good, _ = rows_of(b)
    for need in ("cdrRecordType", "globalCallID_callManagerId", "globalCallID_callId", "origLegCallIdentifier",
                 "dateTimeOrigination", "callingPartyNumber", "originalCalledPartyNumber", "finalCalledPartyNumber",
                 "origCause_value", "destCause_value", "dateTimeConnect", "dateTimeDisconnect", "duration",
                 "origDeviceName", "destDeviceName", "origIpAddr", "huntPilotDN"):
        assert need in header
    assert len(header) >= 55
    types = b.read_text().splitlines()[1].split(",")
    assert set(types) <= {"INTEGER", "UNIQUEIDENTIFIER"} | {f"VARCHAR({n})" for n in (32, 50, 64, 128, 129, 2048)}
    orders = {tuple(rows_of(p)[0]) for p in readable(home, "operator_b")}
    assert len(orders) > 1, "CUCM column order varies between files"
    gz = [p for p in readable(home, "operator_c") if p.name.endswith(".csv.gz")]
    assert gz and gz[0].read_bytes()[:2] == b"\x1f\x8b"
    plain = [p for p in readable(home, "operator_c") if p.name.endswith(".csv")]
    assert plain and plain[0].read_text().startswith("call_id,time_start,time_connect,time_end,src_number")


def _utc(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def test_call_semantics_per_operator(clean):
    home, _ = clean
    gt = {op: truth(home, op) for op in OPS}
    by_scenario: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for op in OPS:
        for r in records(home, op):
            by_scenario[(op, gt[op][r[CALL_ID[op]]]["scenario"])].append(r)
    for r in by_scenario[("operator_a", "answered")] + by_scenario[("operator_a", "flash")]:
        start, end = (datetime.fromisoformat(r[k]) for k in ("start", "end"))
        assert int(r["duration"]) == (end - start).total_seconds()
        assert r["disposition"] in ("ANSWERED", "NO ANSWER")
        assert (r["answer"] == "") == (r["disposition"] == "NO ANSWER") == (r["billsec"] == "0" and r["answer"] == "")
        assert re.fullmatch(r"SIP/[a-z0-9-]+-[0-9a-f]{8}", r["channel"])
        assert re.fullmatch(r'"[^"]*" <[^>]*>', r["clid"])
    assert all(r["disposition"] == "NO ANSWER" for r in by_scenario[("operator_a", "flash")])
    b = by_scenario
    assert all((r["origCause_value"], r["destCause_value"], r["dateTimeConnect"]) == ("16", "0", "0")
               for r in b[("operator_b", "flash")] + b[("operator_b", "short_cancel")])
    assert all(r["destCause_value"] == "17" and r["dateTimeConnect"] == "0" for r in b[("operator_b", "busy")])
    assert all(r["destCause_value"] == "19" for r in b[("operator_b", "no_answer")])
    for r in b[("operator_b", "answered")]:
        assert r["dateTimeConnect"] != "0"
        assert int(r["duration"]) == int(r["dateTimeDisconnect"]) - int(r["dateTimeConnect"])
        assert sorted((r["origCause_value"], r["destCause_value"])) in (["0", "16"], ["0", "41"])
    for r in b[("operator_c", "flash")]:
        assert (r["sip_code"], r["disconnect_initiator"], r["time_connect"], r["duration"]) == ("487", "orig", "", "0")
        setup = (int(r["pdd_ms"]) + int(r["ring_ms"])) / 1000
        assert 0.3 <= setup <= 6
        assert abs((_utc(r["time_end"]) - _utc(r["time_start"])).total_seconds() - setup) < 1  # some gateways drop ms
    for r in b[("operator_c", "answered")]:
        assert r["sip_code"] == "200" and _utc(r["time_start"]) < _utc(r["time_connect"]) <= _utc(r["time_end"])
    offsets = Counter(re.search(r"(Z|[+-]\d\d:\d\d)$", r["time_start"]).group(1) for r in records(home, "operator_c"))
    assert {"Z", "+00:00", "+01:00", "-05:00"} <= set(offsets)
    # numbers as each operator writes them
    a_src = [r["src"] for r in records(home, "operator_a")]
    assert any(s.startswith("07") for s in a_src) and any(s.startswith("00") for s in a_src)
    assert any(s.startswith("+") for s in a_src)
    b_num = [r["callingPartyNumber"] for r in records(home, "operator_b")]
    assert any(s.startswith("015") for s in b_num) and any(s.startswith("0049") for s in b_num)


def _e164(raw: str, op: str) -> str:
    digits = re.sub(r"\D", "", raw)
    if raw.startswith("+"):
        return digits
    if digits.startswith("00"):
        return digits[2:]
    if op == "operator_c":
        return digits
    return {"operator_a": "44", "operator_b": "49"}[op] + digits[1:]


def test_one_population_reached_through_all_operators(clean):
    home, _ = clean
    b_col = {"operator_a": "dst", "operator_b": "finalCalledPartyNumber", "operator_c": "dst_number"}
    called = {op: {_e164(r[b_col[op]], op) for r in records(home, op)} for op in OPS}
    assert len(called["operator_a"] & called["operator_b"]) > 10
    assert len(called["operator_a"] & called["operator_c"]) > 10
    # flash and genuine short missed calls both exist: "short and unanswered" alone is not the answer
    scen = Counter(r["scenario"] for op in OPS for r in truth(home, op).values())
    for s in ("short_cancel", "dialer_abandon", "flash", "otp_voice", "wangiri", "return_call"):
        assert scen[s] > 0, s


def test_asterisk_local_time_across_the_dst_change(tmp_path):
    simulate(tmp_path, days=2, calls_per_day=3000, seed=5, start_date=date(2026, 10, 24), operators=("operator_a",))
    london = ZoneInfo("Europe/London")
    rows = records(tmp_path, "operator_a")
    assert not (tmp_path / "landing" / "operator_b").exists()
    fmt = "%Y-%m-%d %H:%M:%S"
    ambiguous = 0
    for r in rows:
        epoch = int(r["uniqueid"].split(".")[0])  # Asterisk's uniqueid starts with the UTC epoch
        if r["start"] == "" or not r["start"][0].isdigit() or r["start"].startswith("0000"):
            continue
        try:
            local = datetime.strptime(r["start"], fmt)
        except ValueError:
            continue  # a bad timestamp planted as dirt
        assert datetime.fromtimestamp(epoch, london).strftime(fmt) == r["start"]
        assert datetime.fromtimestamp(epoch + int(r["duration"]), london).strftime(fmt) == r["end"]
        candidates = {int(local.replace(tzinfo=london, fold=f).timestamp()) for f in (0, 1)}
        assert epoch in candidates
        ambiguous += len(candidates) == 2
    utc_hours = Counter(datetime.fromtimestamp(int(r["uniqueid"].split(".")[0]), timezone.utc).strftime("%m-%d %H")
                        for r in rows)
    assert utc_hours["10-25 00"] and utc_hours["10-25 01"], "calls on both sides of the repeated hour"
    assert ambiguous > 0
    bst = [r for r in rows if r["start"].startswith("2026-10-24 12:")]
    assert bst and all(datetime.fromtimestamp(int(r["uniqueid"].split(".")[0]), timezone.utc).hour == 11 for r in bst)


def test_dirt_is_there(dirty):
    home, summary = dirty
    d = summary["dirt"]
    for op in OPS:
        files = landing_files(home, op)
        sizes = [p.stat().st_size for p in files]
        assert 0 in sizes, f"{op}: an empty file"
        digest = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.stat().st_size)
        assert max(digest.values()) == 2, f"{op}: one file re-sent under another name"
        assert d[f"{op}:bad_timestamp"] > 0 and d[f"{op}:duplicate_row"] > 0
        # duplicates inside a file
        dup_in_file = False
        malformed = []
        for p in readable(home, op):
            header, good, bad = rows_of(p)
            names = header or list(A_COLUMNS)
            ids = Counter(r[names.index(CALL_ID[op])] for r in good)
            dup_in_file |= bool(ids) and max(ids.values()) > 1
            malformed += bad
        assert dup_in_file
        assert len(malformed) >= 3 and any(line.endswith('"unterminated') for line in malformed)
        # ground truth covers each readable clean call once; planted rows are not in it
        gt = truth(home, op)
        ids = {r[CALL_ID[op]] for r in records(home, op)}
        assert set(gt) <= ids
        assert 0 < len(ids - set(gt)) <= d[f"{op}:bad_timestamp"] + d.get(f"{op}:malformed_row", 0)
    raw = "\n".join(text_of(p) for op in OPS for p in readable(home, op))
    for needle in ("sip:+", " (0)", "anonymous", "tel:+", "Restricted"):
        assert needle in raw, needle
    assert re.search(r'"0\d{3}-\d{3}-\d', raw), "dashed national numbers"
    headers_only = [p for op in ("operator_b", "operator_c") for p in landing_files(home, op) if "header-only" in p.name]
    assert [len(p.read_text().splitlines()) for p in sorted(headers_only)] == [2, 1]
    partial = [p for p in landing_files(home, "operator_c") if p.name.endswith("-partial.csv.gz")]
    assert len(partial) == 1
    with pytest.raises((EOFError, OSError, zlib.error)):
        gzip.decompress(partial[0].read_bytes())
    cmr = [r for r in records(home, "operator_b") if r["cdrRecordType"] == "2"]
    assert len(cmr) == d["operator_b:cmr_row"] > 0
    bad_ts = [r for r in records(home, "operator_a") if not re.fullmatch(r"2026-1[01]-\d\d \d\d:\d\d:\d\d", r["start"])]
    assert bad_ts


def test_clean_run_has_no_dirt(clean):
    home, summary = clean
    assert summary["dirt"] == {}
    for op in OPS:
        for p in landing_files(home, op):
            assert p.stat().st_size > 0
            header, good, bad = rows_of(p)
            assert not bad and good
    raw = "\n".join(text_of(p) for op in OPS for p in landing_files(home, op))
    assert "anonymous" not in raw and "sip:" not in raw


def test_drops_map_with_the_operator_configs(tmp_path, monkeypatch):
    """End to end with the mapping: every ground-truth call maps, and only planted dirt is rejected."""
    from resources.landing import LandingZone
    from voicefw_assets import ingest
    from voicefw_assets.operators import operator_configs

    monkeypatch.setenv("VOICEFW_HOME", str(tmp_path))
    monkeypatch.setenv("VOICEFW_START_DATE", "2026-11-01")
    summary = simulate(tmp_path, days=2, calls_per_day=1500, seed=9)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    zone = LandingZone(root=str(tmp_path / "landing"), quarantine_root=str(tmp_path / "quarantine"), settle_s=0)
    for op, config in operator_configs().items():
        ingest.sync_landing(con, config, zone)
        for day in (date(2026, 11, 1), date(2026, 11, 2), date(2026, 11, 3)):
            ingest.map_partition(con, config, day)
    con.execute(f"CREATE TABLE gt AS SELECT * FROM read_csv('{tmp_path}/ground_truth/*/*.csv', all_varchar = true)")
    missing = con.execute("SELECT count(*) FROM gt ANTI JOIN mapped_cdrs USING (operator, call_id)").fetchone()[0]
    extra = con.execute("SELECT count(*) FROM mapped_cdrs ANTI JOIN gt USING (operator, call_id)").fetchone()[0]
    assert (missing, extra) == (0, 0)
    assert con.execute("SELECT count(*) FROM mapped_cdrs").fetchone()[0] == summary["calls"]
    rejected = con.execute("SELECT operator, reason FROM rejected_cdrs").fetchall()
    d = summary["dirt"]
    planted = sum(v for k, v in d.items() if k.endswith(("_row", "bad_timestamp")))
    assert len(rejected) == planted
    # the canonical outcome of each kind of call
    rows = dict(con.execute("""
        SELECT g.scenario || '/' || m.operator, list(DISTINCT m.disposition ORDER BY m.disposition)
        FROM mapped_cdrs m JOIN gt g USING (operator, call_id)
        WHERE g.scenario IN ('flash', 'busy', 'answered') GROUP BY ALL""").fetchall())
    assert rows["flash/operator_b"] == rows["flash/operator_c"] == ["cancelled"]
    assert rows["flash/operator_a"] == ["no_answer"]  # Asterisk cannot tell a cancel from no answer
    assert all(rows[f"busy/{op}"] == ["busy"] and rows[f"answered/{op}"] == ["answered"] for op in OPS)


def test_landing_is_append_only(tmp_path, capsys):
    """A second run over days already simulated is refused before anything is written; a run that
    continues the first never replaces a file (a taken name gets a numbered sibling) and brings
    call ids of its own."""
    from voicefw_assets.cli import main
    from voicefw_assets.simulate import SimulationRefused

    simulate(tmp_path, days=2, calls_per_day=800, seed=3)
    before = digests(tmp_path)
    with pytest.raises(SimulationRefused, match="already holds simulated days"):
        simulate(tmp_path, days=2, calls_per_day=800, seed=4, start_date=date(2026, 11, 2))
    assert main(["simulate", "--home", str(tmp_path), "--days", "1", "--start-date", "2026-11-01"]) == 2
    assert "refused: " in capsys.readouterr().err
    assert digests(tmp_path) == before
    taken = tmp_path / "landing" / "operator_a" / "Master-20261103-0400Z.csv"
    taken.write_text("someone else's drop\n")
    before = digests(tmp_path)
    summary = simulate(tmp_path, days=1, calls_per_day=800, seed=4, start_date=date(2026, 11, 3))
    after = digests(tmp_path)
    assert all(after[k] == v for k, v in before.items()), "a landed file changed"
    assert "Master-20261103-0400Z-2.csv" in {p.name for p in (tmp_path / "landing" / "operator_a").iterdir()}
    assert summary["files"]["operator_a"] > 3
    ids = defaultdict(set)
    for p in sorted((tmp_path / "ground_truth").rglob("*.csv")):
        with p.open() as fh:
            day_ids = {(r["operator"], r["call_id"]) for r in csv.DictReader(fh)}
        ids[p.stem] |= day_ids
    assert not (ids["2026-11-03"] & (ids["2026-11-01"] | ids["2026-11-02"]))


def test_scenario_knobs():
    """Trunk concentration (from a day on), burst intensity, late ranges and unseen countries do what they say."""
    import numpy as np

    from voicefw_assets.simulate import FLASH, OPS, UNSEEN_SPACES, Scenario, Simulator

    sc = Scenario(trunk_concentration=0.9, concentrate_from_day=2, intensity=60, late_ranges=2, new_countries=2)
    sim = Simulator(4, 3000, 5, date(2026, 11, 1), OPS, False, sc)
    days = [sim.day_calls(d) for d in range(4)]
    on_first = [float(np.mean(d["tin"] == 0)) for d in days]
    assert max(on_first[:2]) < 0.5 and min(on_first[2:]) > 0.85
    base = len(Simulator(4, 3000, 5, date(2026, 11, 1), OPS, False).campaigns)
    late = set(range(base, len(sim.campaigns)))  # the scenario's extra providers come after the everyday ones
    assert len(late) == 4 and all(sim.campaigns[i].first_day == 2 and sim.campaigns[i].kind == "flash" for i in late)
    for d in range(4):
        present = set(np.unique(days[d]["camp"][days[d]["truth"] == FLASH]))
        assert bool(present & late) == (d >= 2)
    unseen = {sim.campaigns[i].cc for i in late} & {cc for cc, _, _ in UNSEEN_SPACES}
    earlier = set(np.unique(np.concatenate([days[d]["a_cc"] for d in range(2)])))
    assert len(unseen) == 2 and not (unseen & earlier)
    # intensity: a (non-rotating) campaign's calls of one range come at about 60 a minute within a burst
    c = next(i for i in late if not sim.campaigns[i].rotate)
    t = np.sort(days[3]["t0"][(days[3]["camp"] == c) & (days[3]["truth"] == FLASH)])
    gaps = np.diff(t)
    per_range = 60_000 / np.median(gaps[gaps < 60_000]) / len(sim.campaigns[c].prefixes)
    assert 30 < per_range < 120
