"""Real switch output on loopback: Debian `kamailio` as the proxy, SIPp (`sip-tester`) on both ends.

`place_calls(plan, workdir)` starts a throwaway Kamailio (its own dir, free UDP ports, no system
service) that accounts through `acc` into `db_text` tables (`acc`, `missed_calls`, `acc_cdrs`) and
`db_flatstore` files at once, one SIPp callee per behaviour, one SIPp caller per (scenario, source
address), places every planned call, stops everything and returns where the files are with what
each side saw of each call:

- SIPp logs one line per event with `gettimeofday` (`<call-id>|invite|<s>.<us>|...`);
- Kamailio logs `VFW|<call-id>|<event>|<$TV(Sn)>|...` with the very values it puts into the
  `setup_tv` / `answer_tv` / `end_tv` columns, so an expectation does not come from the file it checks.

The source address is the ingress trunk: callers bind 127.0.0.x (all of 127/8 is loopback on Linux).
"""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "kamailio.cfg"
SCENARIOS = HERE / "sipp"
PROXY_IP = "127.0.0.1"

# db_text tables: the first line declares the columns (README.db_text, "Internal format of a dbtext
# table"); the columns are the stock ones of /usr/share/kamailio/dbtext/kamailio plus the extras the
# config logs (db_extra / cdr_extra / time_attr / time_exten).
_ACC_EVENT = (
    "id(int,auto) method(string) from_tag(string) to_tag(string) callid(string) sip_code(string) "
    "sip_reason(string) time(int) time_sec(int,null) time_usec(int,null) src_user(string,null) "
    "src_domain(string,null) src_ip(string,null) src_port(string,null) dst_ouser(string,null) "
    "dst_user(string,null) dst_domain(string,null) setup_tv(string,null)"
)
TABLES = {
    "acc": _ACC_EVENT,
    "missed_calls": _ACC_EVENT,
    "acc_cdrs": (
        "id(int,auto) start_time(int) end_time(int) duration(double) callid(string,null) "
        "src_user(string,null) dst_user(string,null) src_ip(string,null) setup_tv(string,null) "
        "answer_tv(string,null) end_tv(string,null) sip_code(string,null) sip_reason(string,null) "
        "release_side(string,null)"
    ),
    "version": "table_name(str) table_version(int)",
}
VERSIONS = {"acc": 5, "missed_calls": 4, "acc_cdrs": 2}
# db_flatstore writes no header: its fields come in the order acc inserts them, which is the order
# declared above without `id` (acc: method ... time, time_attr, time_exten, db_extra; cdrs: start_time,
# end_time, duration, cdr_extra).
FLATSTORE_COLUMNS = {t: [d.split("(")[0] for d in TABLES[t].split(" ")][1:] for t in ("acc", "missed_calls", "acc_cdrs")}

REASONS = {404: "Not Found", 480: "Temporarily Unavailable", 486: "Busy Here", 503: "Service Unavailable",
           603: "Decline: not\\now|later"}  # odd but legal reason text: exercises both formats' escaping


def free_udp_port(host: str = PROXY_IP) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class PlannedCall:
    """One call to place. `kind` says what happens:

    answered (caller hangs up after `hold_ms`), answered_callee_bye (callee hangs up after
    `hold_ms`), cancelled (caller hangs up after ringing `ring_ms`), rejected (callee answers
    `code` after ringing), no_answer (rings until the proxy's INVITE timer gives up: 408),
    blocked (the proxy itself refuses it: it never reaches a callee).
    """

    caller: str
    callee: str
    kind: str
    trunk_ip: str = "127.0.0.2"
    ring_ms: int = 1000  # cancelled: exact; answered/rejected: the callee rings ring_ms + 0..ring_spread_ms
    hold_ms: int = 1500  # answered: exact; answered_callee_bye: hold_ms + 0..hold_spread_ms
    code: int = 486
    ring_spread_ms: int = 499
    hold_spread_ms: int = 499
    truth: str = "normal"  # ground truth for the detector: normal / flash
    scenario: str = ""
    campaign: str = ""
    stream: str = "calls"  # calls of one stream come from one SIPp caller, at its rate

    def callee_key(self) -> tuple | None:
        match self.kind:
            case "blocked":
                return None
            case "answered":
                return ("answer", self.ring_ms, self.ring_spread_ms, 0, 0, 0)
            case "answered_callee_bye":
                return ("answer_callee_bye", self.ring_ms, self.ring_spread_ms, self.hold_ms, self.hold_spread_ms, 0)
            case "rejected":
                return ("reject", self.ring_ms, self.ring_spread_ms, 0, 0, self.code)
            case "cancelled" | "no_answer":
                return ("ring", 0, 0, 0, 0, 0)
        raise ValueError(f"unknown call kind {self.kind!r}")

    def caller_key(self) -> tuple:
        scenario = "uac_cancel" if self.kind == "cancelled" else "uac_wait"
        hold = self.hold_ms if self.kind == "answered" else 24 * 3_600_000  # others: the callee ends it
        return (self.stream, scenario, self.trunk_ip, hold)


@dataclass
class CallRecord:
    """What SIPp (the caller) and Kamailio (the proxy, from its log) saw of one call."""

    call_id: str
    plan: PlannedCall
    sipp: dict[str, list[str]] = field(default_factory=dict)  # event -> fields after the call-id
    proxy: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class SwitchRun:
    workdir: Path
    dbtext: Path
    flatstore: Path
    calls: list[CallRecord]
    proxy_port: int
    proxy_log: Path

    def table(self, name: str) -> Path:
        """The db_text file of a table."""
        return self.dbtext / name

    def flatstore_files(self, table: str) -> list[Path]:
        """db_flatstore's `<table>_<process rank>.log` files of a table."""
        pattern = re.compile(rf"^{re.escape(table)}_[0-9]+\.log$")
        return sorted(p for p in self.flatstore.iterdir() if pattern.match(p.name))


class Kamailio:
    """A throwaway Kamailio on 127.0.0.1:<free port> with its own db_text/flatstore directories."""

    def __init__(self, workdir: Path, *, fr_inv_ms: int = 3000, children: int = 2,
                 defines: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.dbtext = workdir / "dbtext"
        self.flatstore = workdir / "flatstore"
        self.log = workdir / "kamailio.log"
        self.port = free_udp_port()
        self.fr_inv_ms = fr_inv_ms
        self.children = children
        self.defines = defines  # extra `-A` preprocessor defines, e.g. WITH_BLOCKLIST
        self.proc: subprocess.Popen | None = None

    def prepare(self) -> None:
        self.dbtext.mkdir(parents=True, exist_ok=True)
        self.flatstore.mkdir(parents=True, exist_ok=True)
        for name, declaration in TABLES.items():
            path = self.dbtext / name
            if not path.exists():
                path.write_text(declaration + "\n")
        versions = self.dbtext / "version"
        versions.write_text(TABLES["version"] + "\n" + "".join(f"{t}:{v}\n" for t, v in VERSIONS.items()))

    def command(self) -> list[str]:
        return [
            "kamailio", "-DD", "-E", "-f", str(CONFIG),
            "-l", f"udp:{PROXY_IP}:{self.port}", "-n", str(self.children),
            "-Y", str(self.workdir), "-w", str(self.workdir),
            "-A", f'TEXT_CONNECTION="text=>text://{self.dbtext}"',
            "-A", f'FLAT_CONNECTION="flat=>flatstore:{self.flatstore}"',
            "-A", f"FR_INV_MS={self.fr_inv_ms}",
            *(arg for d in self.defines for arg in ("-A", d)),
        ]  # fmt: skip

    def start(self) -> None:
        self.prepare()
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )
        out.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if self._answers_options():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kamailio did not answer on {PROXY_IP}:{self.port}:\n{self.log.read_text()[-3000:]}")

    def _answers_options(self) -> bool:
        """An OPTIONS request answered (405 from our route) means the proxy listens."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((PROXY_IP, 0))
            s.settimeout(0.3)
            here = s.getsockname()[1]
            tag = time.monotonic_ns()
            msg = (
                f"OPTIONS sip:probe@{PROXY_IP}:{self.port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {PROXY_IP}:{here};branch=z9hG4bKprobe{tag}\r\n"
                f"From: <sip:probe@{PROXY_IP}>;tag=probe\r\nTo: <sip:probe@{PROXY_IP}>\r\n"
                f"Call-ID: probe-{tag}@voicefw\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            try:
                s.sendto(msg, (PROXY_IP, self.port))
                return s.recv(4096).startswith(b"SIP/2.0 ")
            except OSError:
                return False

    def stop(self) -> None:
        """SIGTERM and wait: db_text writes its tables back to disk only at shutdown."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> Kamailio:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _scenario(name: str, **subst: str) -> str:
    text = (SCENARIOS / f"{name}.xml").read_text()
    for key, value in subst.items():
        text = text.replace(f"@{key}@", value)
    return text


_FINAL = """  <recv response="{code}" optional="true" next="failed">
    <action><gettimeofday assign_to="ts,tu"/><log message="[call_id]|final|[$ts]|[$tu]|{code}"/></action>
  </recv>"""
FAILURE_CODES = (404, 408, 480, 486, 487, 500, 503, 603)

_OK = """      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]vfwb[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Record-Route:]
      Contact: <sip:callee@[local_ip]:[local_port];transport=[transport]>"""
_SDP = """      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000"""


def _uniform(lo: int, spread: int) -> str:
    return f'  <pause distribution="uniform" min="{lo}" max="{lo + spread}"/>'


_CSEQ = '<action><ereg regexp=".*" search_in="hdr" header="CSeq:" assign_to="cseq"/></action>'


def callee_outcome(kind: str, ring: int, ring_spread: int, hold: int, hold_spread: int, code: int) -> str:
    """The scenario steps after the 180 for one callee behaviour."""
    if kind in ("answer", "answer_callee_bye"):
        steps = [
            _uniform(ring, ring_spread),
            f'  <send retrans="500">\n    <![CDATA[\n      SIP/2.0 200 OK\n{_OK}\n{_SDP}\n    ]]>\n  </send>',
            '  <recv request="ACK" rrs="true" crlf="true"/>',
        ]
        if kind == "answer":  # the caller's ACK and BYE may overtake each other through the proxy
            steps[-1] = '  <recv request="ACK" optional="true" rrs="true" crlf="true"/>'
            steps += ['  <recv request="BYE"/>',
                      f"  <send>\n    <![CDATA[\n      SIP/2.0 200 OK\n{_OK}\n      Content-Length: 0\n    ]]>\n  </send>"]
        else:
            steps[-1] = (
                '  <recv request="ACK" rrs="true" crlf="true"><action>'
                '<ereg regexp=".*" search_in="hdr" header="From:" assign_to="caller"/>'
                '<ereg regexp=".*" search_in="hdr" header="To:" assign_to="callee"/></action></recv>'
            )
            steps += [
                _uniform(hold, hold_spread),
                '  <send retrans="500">\n    <![CDATA[\n      BYE [next_url] SIP/2.0\n'
                "      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n      [routes]\n"
                "      From: [$callee];tag=[pid]vfwb[call_number]\n      To: [$caller]\n"
                "      Call-ID: [call_id]\n      CSeq: 1 BYE\n      Max-Forwards: 70\n      Content-Length: 0\n"
                "    ]]>\n  </send>",
                '  <recv response="200" crlf="true"/>',
            ]
        return "\n".join(steps)
    if kind == "reject":
        return "\n".join([
            _uniform(ring, ring_spread),
            f"  <send>\n    <![CDATA[\n      SIP/2.0 {code} {REASONS.get(code, 'Rejected')}\n{_OK}\n"
            "      Content-Length: 0\n    ]]>\n  </send>",
            '  <recv request="ACK" crlf="true"/>',
        ])  # fmt: skip
    if kind == "ring":  # until the caller or the proxy's INVITE timer cancels
        return "\n".join([
            '  <recv request="CANCEL"/>',
            f"  <send>\n    <![CDATA[\n      SIP/2.0 200 OK\n{_OK}\n      Content-Length: 0\n    ]]>\n  </send>",
            "  <send>\n    <![CDATA[\n      SIP/2.0 487 Request Terminated\n      [last_Via:]\n      [last_From:]\n"
            "      [last_To:];tag=[pid]vfwb[call_number]\n      [last_Call-ID:]\n      CSeq: [$cseq]\n"
            "      Content-Length: 0\n    ]]>\n  </send>",
            '  <recv request="ACK" crlf="true"/>',
        ])  # fmt: skip
    raise ValueError(kind)


class _Procs:
    """SIPp processes of one run, each in its own session so a kill reaches nothing else."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], cwd: Path) -> subprocess.Popen:
        out = (cwd / f"{name}.out").open("wb")
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        self.procs.append((name, proc, cwd / f"{name}.out"))
        return proc

    def kill_all(self) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _sipp_base(scenario_file: Path, log_file: Path) -> list[str]:
    return ["sipp", "-sf", str(scenario_file), "-trace_logs", "-log_file", str(log_file), "-trace_err", "-trace_msg", "-message_file", str(log_file.with_suffix(".msg")),
            "-error_file", str(log_file.with_suffix(".err")), "-nostdin"]


def _read_events(path: Path) -> dict[str, dict[str, list[str]]]:
    events: dict[str, dict[str, list[str]]] = defaultdict(dict)
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            events[parts[0]].setdefault(parts[1], parts[2:])
    return events


def _proxy_events(log: Path) -> dict[str, dict[str, list[str]]]:
    events: dict[str, dict[str, list[str]]] = defaultdict(dict)
    for line in log.read_text(errors="replace").splitlines():
        i = line.find("VFW|")
        if i >= 0:
            parts = line[i:].split("|")
            events[parts[1]].setdefault(parts[2], parts[3:])
    return events


def place_calls(
    plan: list[PlannedCall],
    workdir: Path,
    *,
    rates: dict[str, float] | None = None,
    default_rate: float = 10.0,
    starts: dict[str, float] | None = None,
    fr_inv_ms: int = 3000,
    call_id_format: str = "%u-%p@%s",
    timeout_s: float = 600.0,
    proxy_defines: tuple[str, ...] = (),
) -> SwitchRun:
    """Place `plan` through a fresh Kamailio and return what both sides logged, in plan order.

    `rates`: calls per second of each stream (shared by its SIPp callers in proportion to their
    calls); `starts`: seconds after the first caller at which a stream begins (bursts)."""
    late = [c for c in plan if c.kind in ("answered", "answered_callee_bye", "rejected", "cancelled")
            and c.ring_ms + (0 if c.kind == "cancelled" else c.ring_spread_ms) >= fr_inv_ms - 500]
    if late:  # the proxy would cancel them (408) before they could happen as planned
        raise ValueError(f"{len(late)} call(s) ring longer than fr_inv_ms={fr_inv_ms} allows, e.g. {late[0]}")
    workdir.mkdir(parents=True, exist_ok=True)
    procs = _Procs()
    with Kamailio(workdir, fr_inv_ms=fr_inv_ms, defines=proxy_defines) as proxy:
        try:
            callee_addr = _start_callees(plan, workdir, procs)
            callers = _caller_specs(plan, workdir, proxy.port, callee_addr, rates or {}, default_rate,
                                    call_id_format)
            starts = starts or {}
            t0 = time.monotonic()
            for stream, name, cmd in sorted(callers, key=lambda c: starts.get(c[0], 0.0)):
                delay = starts.get(stream, 0.0) - (time.monotonic() - t0)
                if delay > 0:
                    time.sleep(delay)
                procs.start(name, cmd, workdir)
            _wait(procs, timeout_s)
        finally:
            procs.kill_all()
    sipp: dict[str, dict[str, list[str]]] = {}
    by_index: dict[int, str] = {}
    for _, name, _ in callers:
        for cid, events in _read_events(workdir / f"{name}.log").items():
            sipp[cid] = events
            if "invite" in events:
                by_index[int(events["invite"][4])] = cid
    missing = [i for i in range(len(plan)) if i not in by_index]
    if missing:
        raise RuntimeError(f"SIPp logged no INVITE for {len(missing)} planned call(s), e.g. {plan[missing[0]]}")
    proxy_events = _proxy_events(proxy.log)
    records = [CallRecord(by_index[i], call, sipp[by_index[i]], proxy_events.get(by_index[i], {}))
               for i, call in enumerate(plan)]
    return SwitchRun(workdir, proxy.dbtext, proxy.flatstore, records, proxy.port, proxy.log)


def _start_callees(plan, workdir: Path, procs: _Procs) -> dict[tuple, str]:
    counts: dict[tuple, int] = defaultdict(int)
    for call in plan:
        if call.callee_key() is not None:
            counts[call.callee_key()] += 1
    addr: dict[tuple | None, str] = {None: "127.0.0.1:9"}  # blocked calls: never forwarded
    for i, (key, n) in enumerate(sorted(counts.items())):
        kind, ring, ring_spread, hold, hold_spread, _ = key
        name = f"callee{i}_{kind}"
        scen = workdir / f"{name}.xml"
        scen.write_text(_scenario("uas", OUTCOME=callee_outcome(*key), INVITE_ACTIONS=_CSEQ if kind == "ring" else "",
                                  RING_MIN=str(ring), RING_MAX=str(ring + ring_spread), HOLD_MS=str(hold)))
        port = free_udp_port()
        procs.start(name, [*_sipp_base(scen, workdir / f"{name}.log"), "-i", PROXY_IP, "-p", str(port),
                           "-m", str(n)], workdir)
        addr[key] = f"{PROXY_IP}:{port}"
    time.sleep(0.3)  # SIPp binds before it reads anything; give it a moment before the first INVITE
    return addr


def _caller_specs(plan, workdir, proxy_port, callee_addr, rates, default_rate, call_id_format):
    """(stream, name, command) of one SIPp caller per (stream, scenario, trunk, hold); the injection
    file carries each call's numbers, callee address, ring time and its index in the plan."""
    groups: dict[tuple, list[tuple[int, PlannedCall]]] = defaultdict(list)
    per_stream: dict[str, int] = defaultdict(int)
    for i, call in enumerate(plan):
        groups[call.caller_key()].append((i, call))
        per_stream[call.stream] += 1
    failures = "\n".join(_FINAL.format(code=c) for c in FAILURE_CODES)
    specs = []
    for n, ((stream, scenario, trunk_ip, hold), calls) in enumerate(groups.items()):
        name = f"caller{n}_{stream}"
        scen = workdir / f"{name}.xml"
        scen.write_text(_scenario(scenario, FAILURES=failures, HOLD_MS=str(hold)))
        inf = workdir / f"{name}.csv"
        with inf.open("w", newline="") as fh:
            fh.write("SEQUENTIAL\n")
            for i, call in calls:
                fh.write(f"{call.caller};{call.callee};{callee_addr[call.callee_key()]};{call.ring_ms};{i}\n")
        rate = rates.get(stream, default_rate) * len(calls) / per_stream[stream]
        specs.append((stream, name, [
            *_sipp_base(scen, workdir / f"{name}.log"), f"{PROXY_IP}:{proxy_port}", "-i", trunk_ip,
            "-p", str(free_udp_port(trunk_ip)), "-inf", str(inf), "-m", str(len(calls)),
            "-r", f"{rate * 1000:.0f}", "-rp", "1000000", "-l", "5000", "-cid_str", call_id_format,
        ]))  # fmt: skip
    return specs


def _wait(procs: _Procs, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for name, proc, out in procs.procs:
        left = max(0.1, deadline - time.monotonic())
        try:
            proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{name} did not finish in {timeout_s:.0f} s: {out.read_text()[-2000:]}") from None
        if proc.returncode != 0:
            err = out.with_suffix(".err")
            detail = err.read_text()[-3000:] if err.exists() else out.read_text()[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{detail}")
