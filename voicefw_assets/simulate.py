"""Traffic simulator: operator CDR drops with ground truth, for demos, tests and benchmarks.

Why it looks the way it does:
- One shared subscriber population is reached through all three operators, so B-number history
  spans operators, and the hard negatives (people who cancel after one ring, call-centre dialers,
  family abroad calling from wangiri-looking countries, voice OTPs from flash ranges) make
  "short and unanswered" a weak rule on its own.
- Calls are generated a UTC day at a time as numpy arrays; DuckDB renders each operator's text
  columns in SQL and Arrow's CSV writer writes them (about twice as fast as DuckDB's COPY here),
  so memory stays at about one day of calls and 10 M calls take minutes.
- Dirt (malformed lines, bad timestamps, odd number spellings, withheld callers, duplicates,
  empty / header-only / re-sent / truncated files) is extra: the ground truth lists each clean
  call once, keyed by (operator, call_id) exactly as the mapping will produce it.
- Files rotate on call END time, as switches do: the first file of a day holds calls that
  started the day before. Every file is written to ``name.part`` and renamed, so a watching
  sensor never sees half a file. Ground truth goes to ``home/ground_truth``, never to landing.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

DAY_S = 86_400
TRUTHS = ("normal", "flash", "wangiri", "callback")
NORMAL, FLASH, WANGIRI, CALLBACK = range(4)
# internal disposition codes; operators render them in their own vocabulary
ANSWERED, NO_ANSWER, BUSY, CANCELLED, FAILED = range(5)
CALLER, CALLEE, NETWORK = range(3)
# dirt kinds: 0 is a clean call; the others are extra rows that are not in the ground truth
CLEAN, DUP, BAD_TS, CMR, MALFORMED = range(5)
OPS = ("operator_a", "operator_b", "operator_c")
HOME_CC = {"operator_a": 44, "operator_b": 49, "operator_c": None}
ROTATE_S = {"operator_a": 4 * 3600, "operator_b": 6 * 3600, "operator_c": 3 * 3600}

SCENARIOS = (
    "answered", "short_answered", "voicemail", "no_answer", "caller_gave_up", "short_cancel", "busy",
    "failed", "return_call", "retry", "dialer_answered", "dialer_no_answer", "dialer_abandon", "dialer_busy",
    "otp_voice", "flash", "flash_answered", "flash_failed", "flash_busy", "wangiri", "wangiri_answered",
    "wangiri_failed", "wangiri_callback", "callback_no_answer", "flash_simbox", "bank_otp",
)
SC = {s: i for i, s in enumerate(SCENARIOS)}

# hourly load (UTC, Europe-centred): quiet nights, two daytime peaks
DIURNAL = np.array([0.14, 0.08, 0.05, 0.04, 0.04, 0.07, 0.2, 0.5, 0.85, 1.0, 1.0, 0.95,
                    0.9, 0.95, 1.0, 1.0, 0.95, 0.9, 0.85, 0.75, 0.6, 0.45, 0.32, 0.2])
BUSINESS = np.where((np.arange(24) >= 8) & (np.arange(24) <= 19), 1.0, 0.02)
EVENING_NIGHT = np.array([0.8, 0.9, 0.7, 0.5, 0.3, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05,
                          0.05, 0.05, 0.05, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.9])

# (country code, share of subscribers, [(national prefix, digits after it, weight)], is-mobile per prefix)
COUNTRIES = (
    (44, 0.40, (("74", 8, 2), ("75", 8, 3), ("77", 8, 4), ("78", 8, 4), ("79", 8, 4), ("20", 8, 2),
                ("161", 7, 1), ("121", 7, 1))),
    (49, 0.38, (("151", 8, 3), ("152", 8, 2), ("160", 7, 1), ("170", 7, 2), ("171", 7, 2), ("176", 8, 3),
                ("30", 8, 2), ("89", 8, 1), ("40", 8, 1), ("221", 7, 1))),
    (33, 0.05, (("6", 8, 3), ("7", 8, 1), ("1", 8, 1))),
    (34, 0.04, (("6", 8, 1),)),
    (39, 0.03, (("3", 9, 1),)),
    (31, 0.03, (("6", 8, 1),)),
    (1, 0.05, (("212", 7, 1), ("646", 7, 1), ("415", 7, 1))),
    # family and friends abroad, in the same number spaces wangiri uses
    (53, 0.004, (("5", 7, 1),)),
    (252, 0.003, (("61", 7, 1),)),
    (216, 0.004, (("9", 7, 1), ("2", 7, 1))),
    (7, 0.006, (("9", 9, 1),)),
    # callers from the same countries the OTP providers' ranges come from
    (62, 0.006, (("8", 10, 1),)),
    (234, 0.004, (("80", 8, 1), ("81", 8, 1))),
    (370, 0.003, (("6", 7, 1),)),
    (371, 0.002, (("2", 7, 1),)),
    (852, 0.003, (("5", 7, 1), ("9", 7, 1))),
    (420, 0.003, (("7", 8, 1),)),
    (255, 0.002, (("7", 8, 1),)),
    (48, 0.006, (("5", 8, 1),)),
    (40, 0.005, (("7", 8, 1),)),
    (90, 0.005, (("5", 9, 1),)),
    (91, 0.006, (("9", 9, 1),)),
)
NAMES = ("Alice Smith", "Ben Jones", "Chloe Taylor", "Daniel Brown", "Emma Wilson", "Finn Evans", "Grace Thomas",
         "Harry Roberts", "Isla Walker", "Jack Wright", "Katie Hughes", "Liam Green", "Mia Hall", "Noah Wood",
         "Olivia Clarke", "Paul Mueller", "Anna Schmidt", "Lukas Schneider", "Lea Fischer", "Jonas Weber",
         "Sophie Meyer", "Felix Wagner", "Marie Becker", "Leon Hoffmann", "Julia Koch", "Tom Richter")
# international premium-looking ranges: (cc, national prefix, digits after it)
WANGIRI_RANGES = ((882, "16", 8), (881, "6", 8), (53, "5", 7), (7, "8", 9), (252, "90", 6), (216, "9", 7),
                  (232, "76", 6), (675, "7", 7), (44, "70", 8), (222, "4", 7))
# flash OTP providers' number spaces: (cc, national significant length, leading digits)
FLASH_SPACES = ((44, 10, "7"), (49, 11, "15"), (33, 9, "7"), (7, 10, "9"), (62, 11, "8"), (234, 10, "8"),
                (370, 8, "6"), (371, 8, "2"), (852, 8, "5"), (31, 9, "6"), (420, 9, "7"), (255, 9, "7"))

TRUNKS = {  # ingress lists (domestic, international), egress list
    "operator_a": (("bt-ix-01", "bt-ix-02", "vf-uk-01", "ee-uk-01"),
                   ("bics-lon-01", "tata-lon-01", "ibasis-lon-01", "lumen-lon-02"),
                   ("ims-core-01", "ims-core-02", "ported-out-01")),
    "operator_b": (("SIP_DTAG_FRA1", "SIP_DTAG_BER1", "SIP_VDF_DUS1", "SIP_TEF_MUC1"),
                   ("SIP_BICS_FRA1", "SIP_TATA_FRA1", "SIP_IBASIS_FRA1", "SIP_ORANGE_FRA1"),
                   ("SIP_IMS_FRA1", "SIP_IMS_BER1", "GW_ISDN_HAM1")),
    "operator_c": ((), ("GW-LON-01", "GW-LON-02", "GW-FRA-01", "GW-AMS-01", "GW-NYC-01", "GW-SIN-01",
                        "GW-DXB-01", "GW-MIA-01"),
                   ("TERM-UK-VF", "TERM-UK-BT", "TERM-DE-DTAG", "TERM-DE-VDF", "TERM-FR-ORANGE",
                    "TERM-ES-MOV", "TERM-IT-TIM", "TERM-NL-KPN", "TERM-US-ATT", "TERM-INTL-BICS")),
}
# operator_c gateways stamp times in their own offset; some with milliseconds
GW_OFFSET_MIN = (0, 0, 60, 60, -300, 480, 240, -300)
GW_OFFSET_STR = ("Z", "+00:00", "+01:00", "+01:00", "-05:00", "+08:00", "+04:00", "-05:00")
GW_MILLIS = (1, 0, 1, 0, 1, 1, 0, 0)


def _trunk_names(op: str) -> list[str]:
    dom, intl, egress = TRUNKS[op]
    return [*dom, *intl, *egress]


def _route_op(rng: np.random.Generator, b_cc: np.ndarray) -> np.ndarray:
    """Which operator carries a call: mostly the B-number's home network, else transit."""
    u = rng.random(len(b_cc))
    op = np.where(u < 0.7, 2, np.where(u < 0.85, 0, 1))
    op = np.where(b_cc == 44, np.where(u < 0.65, 0, np.where(u < 0.9, 2, 1)), op)
    op = np.where(b_cc == 49, np.where(u < 0.65, 1, np.where(u < 0.9, 2, 0)), op)
    return op.astype(np.int8)


def _home_op(cc: np.ndarray) -> np.ndarray:
    return np.where(cc == 44, 0, np.where(cc == 49, 1, 2)).astype(np.int8)


def _times(rng: np.random.Generator, n: int, day0: int, profile: np.ndarray) -> np.ndarray:
    """Call start times (epoch ms) following an hourly profile."""
    hour = rng.choice(24, size=n, p=profile / profile.sum())
    return (day0 + hour * 3600) * 1000 + rng.integers(0, 3_600_000, n)


def _lognormal_ms(rng, n, median_s, sigma, lo, hi) -> np.ndarray:
    return (np.clip(rng.lognormal(np.log(median_s), sigma, n), lo, hi) * 1000).astype(np.int64)


def _uniform_ms(rng, n, lo, hi) -> np.ndarray:
    return (rng.uniform(lo, hi, n) * 1000).astype(np.int64)


@dataclass
class Population:
    """Subscribers shared by all operators: numbers, and how much each calls and is called."""

    cc: np.ndarray
    nsn: np.ndarray
    mobile: np.ndarray
    cum_out: np.ndarray
    cum_in: np.ndarray
    _mobiles: dict = field(default_factory=dict)

    @classmethod
    def build(cls, rng: np.random.Generator, size: int) -> Population:
        shares = np.array([c[1] for c in COUNTRIES])
        counts = rng.multinomial(size, shares / shares.sum())
        cc, nsn, mobile = [], [], []
        for (code, _, prefixes), n in zip(COUNTRIES, counts):
            w = np.array([p[2] for p in prefixes], dtype=float)
            pick = rng.choice(len(prefixes), size=n, p=w / w.sum())
            for i, (prefix, rest, _) in enumerate(prefixes):
                m = int((pick == i).sum())
                nsn.append(int(prefix) * 10**rest + rng.integers(0, 10**rest, m))
                cc.append(np.full(m, code, np.int16))
                landline = (code in (44, 49) and not prefix.startswith(("7", "15", "16", "17"))) or (code, prefix) == (33, "1")
                mobile.append(np.full(m, not landline))
        out = rng.lognormal(0, 1.1, size)  # most people call now and then, a few a lot
        inn = rng.lognormal(0, 1.0, size)
        return cls(np.concatenate(cc), np.concatenate(nsn), np.concatenate(mobile),
                   np.cumsum(out) / out.sum(), np.cumsum(inn) / inn.sum())

    def draw(self, rng, n, cum) -> np.ndarray:
        return np.minimum(np.searchsorted(cum, rng.random(n)), len(cum) - 1)

    def mobiles(self, countries: Sequence[int]) -> np.ndarray:
        """Mobile subscribers of some countries, ordered by number (sequential dialling walks it)."""
        key = tuple(sorted(countries))
        if key not in self._mobiles:
            idx = np.flatnonzero(self.mobile & np.isin(self.cc, key))
            self._mobiles[key] = idx[np.argsort(self.nsn[idx], kind="stable")]
        return self._mobiles[key]


@dataclass
class Campaign:
    name: str
    kind: str  # flash, wangiri, dialer
    cc: int
    prefix: int  # the range: number = prefix * 10**tail + varying tail (prefixes: more of them)
    tail: int
    share: float  # of calls_per_day on an active day
    first_day: int
    last_day: int
    trunks: tuple[int, int, int]  # ingress trunk index per operator
    trunks2: tuple[int, int, int]
    targets: tuple[int, ...] = (44, 49)
    ring_max: float = 2.2
    burst: float = 0.0  # fraction of calls in bursts
    voice_share: float = 0.0  # legit answered calls from the same range (voice OTP)
    pool: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # fixed A-numbers (wangiri)
    sequential: bool = False
    slow: bool = False
    prefixes: tuple[int, ...] = ()  # a provider spreads over several ranges
    simbox: bool = False  # A-numbers anywhere in a national mobile space, on a domestic trunk
    rotate: bool = False  # moves through its prefixes over the day (4 h each) instead of mixing them


@dataclass(frozen=True)
class Scenario:
    """Knobs that stress detection (benchmarks/detection.py runs a matrix of them). The defaults are
    the everyday traffic `make run` simulates; volume is `calls_per_day` itself.

    - trunk_concentration: share of each operator's calls (normal and campaign) moved onto its first
      ingress trunk, from day `concentrate_from_day` on: one busy ingress carries most traffic, so a
      campaign on it is a small share of that trunk (and a shift between training and later days).
    - intensity: calls per minute per A-range while a campaign bursts; then every range-based
      (not slow, not SIM-farm) flash campaign sends all its calls in bursts at that rate. None:
      today's mix of spread and bursts.
    - late_ranges: extra flash providers whose ranges appear only in the last two days.
    - new_countries: extra flash providers, only in the last two days, from countries that appear
      nowhere else in the traffic (nor in any earlier day).
    """

    trunk_concentration: float = 0.0
    concentrate_from_day: int = 0
    intensity: float | None = None
    late_ranges: int = 0
    new_countries: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.trunk_concentration <= 1:
            raise ValueError("trunk_concentration must be within [0, 1]")
        if self.intensity is not None and self.intensity <= 0:
            raise ValueError("intensity must be positive (calls per minute per range)")
        if self.late_ranges < 0 or self.new_countries < 0 or self.concentrate_from_day < 0:
            raise ValueError("late_ranges, new_countries and concentrate_from_day must be >= 0")


# flash providers from countries nothing else in the traffic comes from: (cc, national length, leading digits)
UNSEEN_SPACES = ((998, 9, "9"), (976, 8, "8"), (679, 7, "7"), (592, 7, "6"), (263, 9, "7"), (856, 10, "20"))


def _intl_trunk(rng: np.random.Generator, op: str) -> int:
    dom, intl, _ = TRUNKS[op]
    return len(dom) + int(rng.integers(len(intl)))


def _range_campaign(rng: np.random.Generator, name: str, space: tuple[int, int, str], share: float,
                    first_day: int, last_day: int) -> Campaign:
    """A flash provider's ranges: a few prefixes of one number space, a varying tail of 4-6 digits."""
    cc, length, lead = space
    tail = int(rng.integers(4, 7))
    head = length - tail - len(lead)
    prefixes = tuple(int(lead + "".join(str(d) for d in rng.integers(0, 10, head))) for _ in range(int(rng.integers(1, 7))))
    tr = tuple(_intl_trunk(rng, op) for op in OPS)
    tr2 = tuple(_intl_trunk(rng, op) for op in OPS)
    return Campaign(
        name=name, kind="flash", cc=cc, prefix=prefixes[0], tail=tail, share=share, first_day=first_day,
        last_day=last_day, trunks=tr, trunks2=tr2,
        targets=tuple(rng.choice([44, 49, 33, 34, 39, 31], size=int(rng.integers(1, 4)), replace=False)),
        ring_max=float(rng.uniform(1.4, 3.2)), burst=float(rng.uniform(0, 0.7)),
        voice_share=float(rng.uniform(0.05, 0.4)) if rng.random() < 0.6 else 0.0, prefixes=prefixes)


def _extra_campaigns(rng: np.random.Generator, days: int, scenario: Scenario, first_index: int) -> list[Campaign]:
    """The scenario's extra flash providers, active in the last two days only (a separate random
    stream, so the everyday campaigns of a seed stay the same)."""
    out = []
    first = max(0, days - 2)
    spaces = [FLASH_SPACES[int(rng.integers(len(FLASH_SPACES)))] for _ in range(scenario.late_ranges)]
    unseen = rng.permutation(len(UNSEEN_SPACES))
    spaces += [UNSEEN_SPACES[int(unseen[i % len(UNSEEN_SPACES)])] for i in range(scenario.new_countries)]
    for i, space in enumerate(spaces):
        share = float(rng.uniform(0.002, 0.01))
        out.append(_range_campaign(rng, f"flash-{first_index + i + 1:02d}", space, share, first, days - 1))
    return out


def _campaigns(rng: np.random.Generator, days: int) -> list[Campaign]:
    """Flash, wangiri and dialer campaigns, fixed for the whole simulation by the seed."""
    out: list[Campaign] = []

    def span() -> tuple[int, int]:
        if rng.random() < 0.6 or days <= 2:
            return 0, days - 1
        a = int(rng.integers(0, days - 1))
        return a, int(rng.integers(a, days))

    n_flash = 15
    weights = rng.lognormal(0, 0.9, n_flash)
    slow = np.zeros(n_flash, bool)
    slow[rng.choice(n_flash, 5, replace=False)] = True
    simbox = np.zeros(n_flash, bool)
    simbox[rng.choice(np.flatnonzero(~slow), 3, replace=False)] = True
    rotate = ~slow & ~simbox & (rng.random(n_flash) < 0.3)
    weights[slow] = 0
    weights = weights / weights.sum() * 0.07
    for i in range(n_flash):
        a, b = span()
        name, share = f"flash-{i + 1:02d}", 0.0004 if slow[i] else float(weights[i])
        if not simbox[i]:
            c = _range_campaign(rng, name, FLASH_SPACES[int(rng.integers(len(FLASH_SPACES)))], share, a, b)
            out.append(replace(c, burst=0.0, slow=True) if slow[i] else replace(c, rotate=bool(rotate[i])))
            continue
        # SIM farm / grey route: CLIs spoofed anywhere in a national mobile space, on a domestic trunk.
        # A call like that is a subscriber's call at setup, except that the farm fires in bursts when
        # the provider routes a batch to it: only the trunk's sudden short-unanswered wave shows it.
        cc, length, lead = ((44, 10, "7"), (49, 11, "1"))[int(rng.integers(2))]
        second = ("4", "5", "7", "8", "9") if cc == 44 else ("5", "6", "7")
        home = OPS[0 if cc == 44 else 1]
        dom = int(rng.integers(len(TRUNKS[home][0])))
        tr = tuple(dom if op == home else _intl_trunk(rng, op) for op in OPS)
        out.append(Campaign(
            name=name, kind="flash", cc=cc, prefix=int(lead + second[0]), tail=length - 2, share=share,
            first_day=a, last_day=b, trunks=tr, trunks2=tr,
            targets=tuple(rng.choice([44, 49, 33, 34, 39, 31], size=int(rng.integers(1, 4)), replace=False)),
            ring_max=float(rng.uniform(1.4, 3.2)), burst=1.0, prefixes=tuple(int(lead + d) for d in second), simbox=True))
    for i in range(6):
        cc, prefix, rest = WANGIRI_RANGES[int(rng.integers(len(WANGIRI_RANGES)))]
        keep = int(rng.integers(2, 5))  # the pool: a handful of numbers sharing a block
        pool = int(prefix) * 10**rest + int(rng.integers(0, 10 ** (rest - keep))) * 10**keep
        pool = pool + rng.choice(10**keep, size=int(rng.integers(3, 30)), replace=False)
        a, b = span()
        tr = tuple(_intl_trunk(rng, op) for op in OPS)
        out.append(Campaign(
            name=f"wangiri-{i + 1:02d}", kind="wangiri", cc=cc, prefix=int(prefix), tail=rest,
            share=float(rng.uniform(0.002, 0.005)), first_day=a, last_day=b, trunks=tr, trunks2=tr,
            targets=(44, 49), ring_max=float(rng.uniform(2.0, 4.0)), pool=pool, sequential=bool(rng.random() < 0.5)))
    for i, (cc, prefix, tail) in enumerate(((44, 3300, 3), (44, 8001, 2), (49, 69123, 3), (49, 8005, 3))):
        dom = TRUNKS[OPS[0 if cc == 44 else 1]][0]
        tr = (int(rng.integers(len(dom))), int(rng.integers(len(dom))), _intl_trunk(rng, "operator_c"))
        out.append(Campaign(name=f"dialer-{i + 1:02d}", kind="dialer", cc=cc, prefix=prefix * 10**4 + int(rng.integers(10**4)),
                            tail=tail, share=0.008, first_day=0, last_day=days - 1, trunks=tr, trunks2=tr,
                            targets=(cc,)))
    for i, (cc, prefix) in enumerate(((44, 2038), (49, 6995))):
        # a bank's voice OTPs: many B-numbers from one small range, in login peaks, but answered and
        # read out -- high velocity and B-spread that is NOT fraud
        home = OPS[0 if cc == 44 else 1]
        dom = int(rng.integers(len(TRUNKS[home][0])))
        tr = tuple(dom if op == home else _intl_trunk(rng, op) for op in OPS)
        out.append(Campaign(name=f"bank-{i + 1:02d}", kind="bank", cc=cc, prefix=prefix * 10**4 + int(rng.integers(10**4)),
                            tail=3, share=float(rng.uniform(0.003, 0.008)), first_day=0, last_day=days - 1,
                            trunks=tr, trunks2=tr, targets=(cc,), burst=float(rng.uniform(0.2, 0.6))))
    return out


class Batch:
    """Column arrays for a set of calls; concatenated at the end of a day."""

    COLS = {"op": np.int8, "t0": np.int64, "pdd": np.int64, "ring": np.int64, "dur": np.int64, "disp": np.int8,
            "rel": np.int8, "var": np.int8, "a_cc": np.int16, "a_nsn": np.int64, "a_sub": np.int32,
            "b_cc": np.int16, "b_nsn": np.int64, "b_sub": np.int32, "tin": np.int16, "tout": np.int16,
            "truth": np.int8, "scen": np.int8, "camp": np.int16}

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, **cols) -> None:
        n = len(cols["t0"])
        part = {}
        for name, dtype in self.COLS.items():
            v = cols.get(name, -1 if name in ("a_sub", "b_sub", "camp") else 0)
            part[name] = np.broadcast_to(np.asarray(v), (n,)).astype(dtype)
        self.parts.append(part)

    def frame(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate([p[k] for p in self.parts]) if self.parts else np.zeros(0, t)
                for k, t in self.COLS.items()}


class Simulator:
    def __init__(self, days: int, calls_per_day: int, seed: int, start: date, ops: Sequence[str], dirt: bool,
                 scenario: Scenario = Scenario()):
        self.days, self.cpd, self.seed, self.start, self.dirt = days, calls_per_day, seed, start, dirt
        self.scenario = scenario
        self.ops = [op for op in OPS if op in ops]
        unknown = set(ops) - set(OPS)
        if unknown:
            raise ValueError(f"unknown operators {sorted(unknown)}; the simulator knows {OPS}")
        rng = np.random.default_rng([seed, 1])
        self.pop = Population.build(rng, int(np.clip(calls_per_day * 2, 5000, 4_000_000)))
        self.campaigns = _campaigns(rng, days)
        self.campaigns += _extra_campaigns(np.random.default_rng([seed, 8]), days, scenario, len(self.campaigns))
        self.camp_names = [c.name for c in self.campaigns]

    # ---------------------------------------------------------------- traffic
    def _egress(self, op: np.ndarray, b_cc: np.ndarray, b_nsn: np.ndarray) -> np.ndarray:
        """Egress trunk: stable per B-number (its network), by country for the carrier."""
        h = (b_nsn * 2654435761) >> 7
        e_a = 4 + 4 + h % 3
        e_b = 4 + 4 + h % 3
        c_idx = np.select([b_cc == 44, b_cc == 49, b_cc == 33, b_cc == 34, b_cc == 39, b_cc == 31, b_cc == 1],
                          [h % 2, 2 + h % 2, 4, 5, 6, 7, 8], 9)
        return np.select([op == 0, op == 1], [e_a, e_b], 8 + c_idx).astype(np.int16)

    def _ingress(self, rng, op: np.ndarray, a_cc: np.ndarray) -> np.ndarray:
        domestic = ((op == 0) & (a_cc == 44)) | ((op == 1) & (a_cc == 49))
        r = rng.integers(0, 8, len(op))
        t = np.where(domestic, r % 4, 4 + r % 4)
        gw_p = np.array([0.2, 0.15, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05])
        gw = rng.choice(8, size=len(op), p=gw_p)
        return np.where(op == 2, gw, t).astype(np.int16)

    def _normal_outcomes(self, rng, n: int) -> dict[str, np.ndarray]:
        names = ["answered", "short_answered", "voicemail", "no_answer", "caller_gave_up", "short_cancel",
                 "busy", "failed"]
        p = np.array([0.66, 0.04, 0.04, 0.08, 0.06, 0.045, 0.05, 0.025])
        k = rng.choice(len(names), size=n, p=p / p.sum())
        pdd = _lognormal_ms(rng, n, 1.2, 0.5, 0.1, 8)
        ring = np.select(
            [k == 0, k == 1, k == 2, k == 3, k == 4, k == 5],
            [_lognormal_ms(rng, n, 7, 0.5, 0.5, 40), _uniform_ms(rng, n, 2, 10), _uniform_ms(rng, n, 18, 30),
             _uniform_ms(rng, n, 25, 60), _uniform_ms(rng, n, 4, 25), _uniform_ms(rng, n, 0.2, 2.4)], 0)
        body = np.where(rng.random(n) < 0.92, rng.lognormal(np.log(75), 1.15, n), 300 * (rng.pareto(1.3, n) + 1))
        dur = np.select([k == 0, k == 1, k == 2],
                        [np.clip(body, 1, 6 * 3600) * 1000, _uniform_ms(rng, n, 0.5, 6),
                         _lognormal_ms(rng, n, 20, 0.6, 3, 120)], 0).astype(np.int64)
        disp = np.array([ANSWERED, ANSWERED, ANSWERED, NO_ANSWER, CANCELLED, CANCELLED, BUSY, FAILED])[k]
        u = rng.random(n)
        rel = np.select([disp == ANSWERED, disp == CANCELLED, disp == BUSY],
                        [np.where(u < 0.55, CALLER, np.where(u < 0.98, CALLEE, NETWORK)), CALLER, CALLEE], NETWORK)
        scen = np.array([SC[s] for s in names])[k]
        return dict(pdd=pdd, ring=ring, dur=dur, disp=disp, rel=rel, scen=scen, var=rng.integers(0, 100, n))

    def _normal(self, rng, batch: Batch, day: int, day0: int) -> None:
        weekend = (self.start + timedelta(days=day)).weekday() >= 5
        n = int(self.cpd * 0.83 * (0.8 if weekend else 1.0) * rng.lognormal(0, 0.05))
        pop = self.pop
        a = pop.draw(rng, n, pop.cum_out)
        b = pop.draw(rng, n, pop.cum_in)
        b = np.where(a == b, (b + 1) % len(pop.cc), b)
        t0 = _times(rng, n, day0, DIURNAL)
        out = self._normal_outcomes(rng, n)
        op = _route_op(rng, pop.cc[b])
        batch.add(op=op, t0=t0, a_cc=pop.cc[a], a_nsn=pop.nsn[a], a_sub=a, b_cc=pop.cc[b], b_nsn=pop.nsn[b],
                  b_sub=b, tin=self._ingress(rng, op, pop.cc[a]), tout=self._egress(op, pop.cc[b], pop.nsn[b]),
                  truth=NORMAL, **out)
        # people answer missed calls: the callee rings back, or the caller tries again
        missed = np.flatnonzero(np.isin(out["disp"], (NO_ANSWER, CANCELLED, BUSY)))
        back = missed[rng.random(len(missed)) < 0.3]
        again = missed[rng.random(len(missed)) < 0.2]
        for idx, swap, scen in ((back, True, "return_call"), (again, False, "retry")):
            m = len(idx)
            end = t0[idx] + out["pdd"][idx] + out["ring"][idx]
            x, y = (b[idx], a[idx]) if swap else (a[idx], b[idx])
            o = self._normal_outcomes(rng, m)
            o["scen"] = np.where(o["scen"] == SC["answered"], SC[scen], o["scen"])
            op2 = _route_op(rng, pop.cc[y])
            batch.add(op=op2, t0=end + _lognormal_ms(rng, m, 150, 1.3, 5, 6 * 3600), a_cc=pop.cc[x], a_nsn=pop.nsn[x],
                      a_sub=x, b_cc=pop.cc[y], b_nsn=pop.nsn[y], b_sub=y, tin=self._ingress(rng, op2, pop.cc[x]),
                      tout=self._egress(op2, pop.cc[y], pop.nsn[y]), truth=NORMAL, **o)

    def _campaign_times(self, rng, c: Campaign, n: int, day0: int, profile: np.ndarray) -> np.ndarray:
        """Start times: a share `c.burst` in bursts of 20-300 calls over 1-10 minutes, the rest spread
        over the day. With the scenario's `intensity`, a flash campaign sends everything in bursts
        whose rate per live range is that intensity."""
        intensity = self.scenario.intensity if c.kind == "flash" and not (c.slow or c.simbox) else None
        n_burst = n if intensity else int(n * c.burst)
        t = _times(rng, n - n_burst, day0, profile)
        if n_burst:
            size = int(rng.integers(20, 300))
            centres = _times(rng, max(1, n_burst // size), day0, profile)
            width = rng.uniform(60_000, 600_000, len(centres))
            if intensity:
                live = 1 if c.rotate else len(c.prefixes or (c.prefix,))
                width[:] = n_burst / len(centres) / (intensity * live) * 60_000
            which = rng.integers(0, len(centres), n_burst)
            t = np.concatenate([t, centres[which] + (rng.random(n_burst) * width[which]).astype(np.int64)])
        return t

    def _campaign(self, rng, batch: Batch, c: Campaign, ci: int, day: int, day0: int) -> None:
        """One campaign's calls of the day (and, for wangiri, the victims who call back)."""
        if not (c.first_day <= day <= c.last_day):
            return
        pop = self.pop
        n = int(max(c.share * self.cpd, 8 if c.slow else 0) * rng.lognormal(0, 0.3))
        if c.kind == "dialer":
            self._dialer(rng, batch, c, ci, n, day0)
            return
        if c.kind == "bank":
            self._bank(rng, batch, c, ci, n, day0)
            return
        targets = pop.mobiles(c.targets)
        if len(targets) == 0:
            return
        if c.kind == "wangiri":
            runs = int(rng.integers(1, 4))
            starts = _times(rng, runs, day0, EVENING_NIGHT)
            which = rng.integers(0, runs, n)
            t0 = starts[which] + rng.integers(0, int(rng.integers(20, 120)) * 60_000, n)
            if c.sequential:
                first = int(rng.integers(0, max(1, len(targets) - n)))
                b = targets[(first + np.arange(n)) % len(targets)]
            else:
                b = rng.choice(targets, n)
            a_nsn = c.pool[np.minimum(rng.zipf(1.5, n) - 1, len(c.pool) - 1)]
        else:
            t0 = self._campaign_times(rng, c, n, day0, DIURNAL)
            b = rng.choice(targets, n)
            a_nsn = self._range_numbers(rng, c, t0)
        op = _route_op(rng, pop.cc[b])
        tin = np.where(rng.random(n) < 0.7, np.array(c.trunks)[op], np.array(c.trunks2)[op])
        u = rng.random(n)
        if c.kind == "flash":
            k = np.select([u < 0.03, u < 0.08, u < 0.10], [1, 2, 3], 0)  # answered, failed, busy, else cancelled
            scen = np.array([SC["flash"], SC["flash_answered"], SC["flash_failed"], SC["flash_busy"]])[k]
            if c.simbox:
                scen = np.where(k == 0, SC["flash_simbox"], scen)
            truth = FLASH
            pdd = _lognormal_ms(rng, n, 0.6, 0.4, 0.1, 3)
            ring = np.where(k == 0, _uniform_ms(rng, n, 0.3, c.ring_max), np.where(k == 1, _uniform_ms(rng, n, 0.5, 2), 0))
        else:
            k = np.select([u < 0.05, u < 0.15], [1, 2], 0)
            scen = np.array([SC["wangiri"], SC["wangiri_answered"], SC["wangiri_failed"]])[k]
            truth = WANGIRI
            pdd = _lognormal_ms(rng, n, 1.0, 0.4, 0.1, 4)
            ring = np.where(k == 0, _uniform_ms(rng, n, 0.8, c.ring_max), np.where(k == 1, _uniform_ms(rng, n, 1, 4), 0))
        disp = np.array([CANCELLED, ANSWERED, FAILED, BUSY])[k]
        dur = np.where(disp == ANSWERED, _uniform_ms(rng, n, 0.3, 4), 0)
        rel = np.select([disp == CANCELLED, disp == ANSWERED, disp == BUSY], [CALLER, CALLER, CALLEE], NETWORK)
        batch.add(op=op, t0=t0, pdd=pdd, ring=ring, dur=dur, disp=disp, rel=rel, var=rng.integers(0, 100, n),
                  a_cc=c.cc, a_nsn=a_nsn, b_cc=pop.cc[b], b_nsn=pop.nsn[b], b_sub=b, tin=tin,
                  tout=self._egress(op, pop.cc[b], pop.nsn[b]), truth=truth, scen=scen, camp=ci)
        if c.kind == "flash" and c.voice_share:
            self._otp_voice(rng, batch, c, ci, int(n * c.voice_share), targets, day0)
        if c.kind == "wangiri":
            victims = np.flatnonzero((disp == CANCELLED) & (rng.random(n) < 0.07))
            self._callbacks(rng, batch, c, ci, b[victims], a_nsn[victims], t0[victims] + pdd[victims] + ring[victims])

    @staticmethod
    def _range_numbers(rng, c: Campaign, t0: np.ndarray) -> np.ndarray:
        """A-numbers of a campaign's calls starting at t0 (epoch ms): one of its range prefixes (a
        random one, or for a rotating provider the one of the 4-hour slot), then a varying tail."""
        n = len(t0)
        prefixes = np.array(c.prefixes or (c.prefix,), dtype=np.int64)
        pick = (t0 // (4 * 3_600_000)) % len(prefixes) if c.rotate else rng.integers(0, len(prefixes), n)
        return prefixes[pick] * 10**c.tail + rng.integers(0, 10**c.tail, n)

    def _otp_voice(self, rng, batch, c: Campaign, ci: int, m: int, targets, day0) -> None:
        """Legitimate voice OTPs from a flash range: answered and read out, so a range is not a verdict."""
        if m == 0:
            return
        b = rng.choice(targets, m)
        op = _route_op(rng, self.pop.cc[b])
        t0 = _times(rng, m, day0, DIURNAL)
        batch.add(op=op, t0=t0, pdd=_lognormal_ms(rng, m, 0.8, 0.4, 0.1, 3),
                  ring=_lognormal_ms(rng, m, 5, 0.4, 1, 20), dur=_uniform_ms(rng, m, 12, 45), disp=ANSWERED,
                  rel=CALLER, var=rng.integers(0, 100, m), a_cc=c.cc,
                  a_nsn=self._range_numbers(rng, c, t0), b_cc=self.pop.cc[b],
                  b_nsn=self.pop.nsn[b], b_sub=b, tin=np.array(c.trunks)[op],
                  tout=self._egress(op, self.pop.cc[b], self.pop.nsn[b]), truth=NORMAL, scen=SC["otp_voice"], camp=ci)

    def _callbacks(self, rng, batch, c: Campaign, ci: int, victims, wangiri_nsn, seen_ms) -> None:
        """Some victims call the number back: answered, long and expensive."""
        m = len(victims)
        if m == 0:
            return
        pop = self.pop
        answered = rng.random(m) < 0.85
        op = np.where(rng.random(m) < 0.85, _home_op(pop.cc[victims]), 2).astype(np.int8)
        b_cc = np.full(m, c.cc, np.int16)
        batch.add(op=op, t0=seen_ms + _lognormal_ms(rng, m, 600, 1.2, 20, 20 * 3600),
                  pdd=_lognormal_ms(rng, m, 2.0, 0.4, 0.2, 8), ring=_uniform_ms(rng, m, 3, 12),
                  dur=np.where(answered, _lognormal_ms(rng, m, 120, 0.8, 5, 3600), 0),
                  disp=np.where(answered, ANSWERED, NO_ANSWER), rel=np.where(answered, CALLEE, NETWORK),
                  var=rng.integers(0, 100, m), a_cc=pop.cc[victims], a_nsn=pop.nsn[victims], a_sub=victims,
                  b_cc=b_cc, b_nsn=wangiri_nsn, tin=self._ingress(rng, op, pop.cc[victims]),
                  tout=self._egress(op, b_cc, wangiri_nsn), truth=CALLBACK,
                  scen=np.where(answered, SC["wangiri_callback"], SC["callback_no_answer"]), camp=ci)

    def _dialer(self, rng, batch, c: Campaign, ci: int, n: int, day0: int) -> None:
        """Call-centre dialers: many distinct B-numbers from a small range, short abandons included."""
        pop = self.pop
        cands = np.flatnonzero(pop.cc == c.cc)
        b = rng.choice(cands, n)
        k = rng.choice(4, size=n, p=[0.35, 0.4, 0.15, 0.1])  # answered, no answer, abandon, busy
        ring = np.select([k == 0, k == 1, k == 2], [_lognormal_ms(rng, n, 8, 0.4, 1, 25),
                                                    _uniform_ms(rng, n, 15, 28), _uniform_ms(rng, n, 1.5, 6)], 0)
        disp = np.array([ANSWERED, CANCELLED, CANCELLED, BUSY])[k]
        op = np.where(rng.random(n) < 0.8, _home_op(np.full(n, c.cc)), 2).astype(np.int8)
        batch.add(op=op, t0=_times(rng, n, day0, BUSINESS), pdd=_lognormal_ms(rng, n, 1.0, 0.4, 0.1, 4), ring=ring,
                  dur=np.where(k == 0, _lognormal_ms(rng, n, 90, 0.9, 3, 3600), 0), disp=disp,
                  rel=np.select([k == 0, k == 3], [np.where(rng.random(n) < 0.5, CALLER, CALLEE), CALLEE], CALLER),
                  var=rng.integers(0, 100, n), a_cc=c.cc, a_nsn=c.prefix * 10**c.tail + rng.integers(0, 10**c.tail, n),
                  b_cc=pop.cc[b], b_nsn=pop.nsn[b], b_sub=b, tin=np.array(c.trunks)[op],
                  tout=self._egress(op, pop.cc[b], pop.nsn[b]), truth=NORMAL,
                  scen=np.array([SC["dialer_answered"], SC["dialer_no_answer"], SC["dialer_abandon"],
                                 SC["dialer_busy"]])[k], camp=ci)

    def _bank(self, rng, batch: Batch, c: Campaign, ci: int, n: int, day0: int) -> None:
        """A bank's voice OTPs (hard negatives): a small range calling many customers, in login peaks;
        mostly answered and read out (15-45 s), some unanswered after a long ring, a few busy."""
        pop = self.pop
        b = rng.choice(np.flatnonzero(pop.cc == c.cc), n)
        k = rng.choice(3, size=n, p=[0.82, 0.13, 0.05])  # answered, no answer, busy
        ring = np.select([k == 0, k == 1], [_lognormal_ms(rng, n, 6, 0.4, 1, 25), _uniform_ms(rng, n, 20, 40)], 0)
        disp = np.array([ANSWERED, NO_ANSWER, BUSY])[k]
        op = np.where(rng.random(n) < 0.85, _home_op(np.full(n, c.cc)), 2).astype(np.int8)
        batch.add(op=op, t0=self._campaign_times(rng, c, n, day0, BUSINESS + 0.1), pdd=_lognormal_ms(rng, n, 0.8, 0.4, 0.1, 3),
                  ring=ring, dur=np.where(k == 0, _uniform_ms(rng, n, 15, 45), 0), disp=disp,
                  rel=np.select([k == 0, k == 2], [CALLER, CALLEE], NETWORK), var=rng.integers(0, 100, n), a_cc=c.cc,
                  a_nsn=c.prefix * 10**c.tail + rng.integers(0, 10**c.tail, n), b_cc=pop.cc[b], b_nsn=pop.nsn[b], b_sub=b,
                  tin=np.array(c.trunks)[op], tout=self._egress(op, pop.cc[b], pop.nsn[b]), truth=NORMAL,
                  scen=SC["bank_otp"], camp=ci)

    def day_calls(self, day: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 2, day])
        day0 = int(datetime.combine(self.start + timedelta(days=day), datetime.min.time(), timezone.utc).timestamp())
        batch = Batch()
        self._normal(rng, batch, day, day0)
        for ci, c in enumerate(self.campaigns):
            self._campaign(rng, batch, c, ci, day, day0)
        f = batch.frame()
        share = self.scenario.trunk_concentration if day >= self.scenario.concentrate_from_day else 0.0
        if share:  # one busy ingress per operator (its first trunk) takes this share of every kind of call
            moved = np.random.default_rng([self.seed, 9, day]).random(len(f["tin"])) < share
            f["tin"] = np.where(moved, 0, f["tin"]).astype(f["tin"].dtype)
        keep = np.isin(f["op"], [OPS.index(op) for op in self.ops])
        return {k: v[keep] for k, v in f.items()}


# ------------------------------------------------------------------------------------------ rendering
def _lst(values: Sequence) -> str:
    """A DuckDB list literal, for lookups like names[i + 1]."""
    return "[" + ", ".join("'" + str(v).replace("'", "''") + "'" if isinstance(v, str) else str(v)
                           for v in values) + "]"


def _num_sql(p: str, home: int | None, national_below: int) -> str:
    """A number as the operator writes it; `{p}fmt` picks the dirty spellings, 9 = withheld."""
    cc, ns, st, f = f"CAST({p}_cc AS VARCHAR)", f"CAST({p}_nsn AS VARCHAR)", f"{p}st", f"{p}fmt"
    if home is None:
        plain = f"CASE WHEN {st} < 6 THEN '00' || {cc} || {ns} ELSE {cc} || {ns} END"
        dashed = f"'00' || {cc} || '-' || substr({ns}, 1, 3) || '-' || substr({ns}, 4)"
    else:
        plain = (f"CASE WHEN {p}_cc = {home} AND {st} < {national_below} THEN '0' || {ns} "
                 f"WHEN {p}_cc = {home} AND {st} = 8 THEN '00' || {cc} || {ns} "
                 f"WHEN {st} % 2 = 0 THEN '00' || {cc} || {ns} ELSE '+' || {cc} || {ns} END")
        dashed = (f"CASE WHEN {p}_cc = {home} THEN '0' || substr({ns}, 1, 3) || '-' || substr({ns}, 4, 3) || '-' "
                  f"|| substr({ns}, 7) ELSE '00' || {cc} || '-' || substr({ns}, 1, 3) || '-' || substr({ns}, 4) END")
    withheld = "CASE WHEN r64 % 3 = 0 THEN 'Restricted' ELSE 'anonymous' END" if home is None else "'anonymous'"
    return (f"CASE {f} WHEN 0 THEN {plain} "
            f"WHEN 1 THEN '+' || {cc} || ' ' || substr({ns}, 1, 3) || ' ' || substr({ns}, 4, 3) || ' ' || substr({ns}, 7) "
            f"WHEN 2 THEN {dashed} "
            f"WHEN 3 THEN '+' || {cc} || ' (0)' || substr({ns}, 1, 2) || ' ' || substr({ns}, 3) "
            f"WHEN 4 THEN 'sip:+' || {cc} || {ns} || '@sbc' || CAST(r64 % 4 AS VARCHAR) || '.carrier.example' "
            f"WHEN 5 THEN 'tel:+' || {cc} || {ns} "
            f"ELSE {withheld} END")


def _bad_ts(col: str, variants: Sequence[str]) -> str:
    return f"CASE WHEN dirt = {BAD_TS} THEN {_lst(variants)}[r64 % {len(variants)} + 1] ELSE {col} END"


def _cols_a(tz: str = "Europe/London") -> list[tuple[str, str]]:
    """Asterisk cdr_csv: times in local wall-clock seconds, answer empty when unanswered."""
    trunks = _lst(_trunk_names("operator_a"))
    src, dst = _num_sql("a", 44, 10), _num_sql("b", 44, 10)

    def local(ms: str) -> str:
        return f"strftime(timezone('{tz}', to_timestamp({ms} // 1000)), '%Y-%m-%d %H:%M:%S')"

    name = f"CASE WHEN afmt = 9 THEN 'Anonymous' WHEN a_sub >= 0 THEN {_lst(NAMES)}[a_sub % {len(NAMES)} + 1] ELSE ({src}) END"
    disp = ("CASE disp WHEN 0 THEN 'ANSWERED' WHEN 1 THEN 'NO ANSWER' WHEN 2 THEN 'BUSY' WHEN 3 THEN 'NO ANSWER' "
            "ELSE CASE WHEN var % 3 = 0 THEN 'CONGESTION' ELSE 'FAILED' END END")
    egress = f"'SIP/' || {trunks}[tout + 1]"
    return [
        ("accountcode", "''"),
        ("src", src),
        ("dst", dst),
        ("dcontext", "'from-trunk'"),
        ("clid", f"'\"' || ({name}) || '\" <' || ({src}) || '>'"),
        ("channel", f"'SIP/' || {trunks}[tin + 1] || '-' || format('{{:08x}}', r64 & 4294967295)"),
        ("dstchannel", f"CASE WHEN disp = 4 AND var % 2 = 0 THEN '' "  # failed before an egress channel existed
                       f"ELSE {egress} || '-' || format('{{:08x}}', (r64 >> 31) & 4294967295) END"),
        ("lastapp", "'Dial'"),
        ("lastdata", f"{egress} || '/' || ({dst}) || ',60,tT'"),
        ("start", _bad_ts(local("t0"), ("2026-11-31 25:61:00", "", "0000-00-00 00:00:00", "31/10/2026 10:00:00"))),
        ("answer", f"CASE WHEN disp = 0 THEN {local('ta')} ELSE '' END"),
        ("end", local("te")),
        ("duration", "CAST(te // 1000 - t0 // 1000 AS VARCHAR)"),
        ("billsec", "CAST(CASE WHEN disp = 0 THEN te // 1000 - ta // 1000 ELSE 0 END AS VARCHAR)"),
        ("disposition", disp),
        ("amaflags", "'DOCUMENTATION'"),
        ("uniqueid", "CAST(t0 // 1000 AS VARCHAR) || '.' || CAST(seq AS VARCHAR)"),
        ("userfield", "''"),
    ]


def _ip(trunk: str) -> tuple[str, str]:
    """CUCM writes IPv4 as a signed little-endian integer; newer releases add the dotted form."""
    a, b, c, d = "10", f"(20 + {trunk})", "1", "(10 + seq % 4)"
    as_int = f"CAST(((({d}) * 16777216 + {c} * 65536 + ({b}) * 256 + {a} + 2147483648) % 4294967296) - 2147483648 AS VARCHAR)"
    return as_int, f"'{a}.' || CAST({b} AS VARCHAR) || '.{c}.' || CAST({d} AS VARCHAR)"


def _cols_b() -> list[tuple[str, str, str]]:
    """CUCM CDR columns: (name, type-row entry, SQL). Integers are rendered as text too."""
    trunks = _lst(_trunk_names("operator_b"))
    a, b = _num_sql("a", 49, 8), _num_sql("b", 49, 8)
    orig_cause = "CASE WHEN disp = 3 OR (disp = 0 AND rel = 0) THEN 16 ELSE 0 END"
    dest_cause = ("CASE WHEN disp = 1 THEN 19 WHEN disp = 2 THEN 17 WHEN disp = 0 AND rel = 1 THEN 16 "
                  "WHEN disp = 0 AND rel = 2 THEN 41 WHEN disp = 4 THEN [1, 34, 38, 41, 127][var % 5 + 1] ELSE 0 END")
    cm = "CAST(1 + seq % 3 AS VARCHAR)"
    oip, oip4 = _ip("tin")
    dip, dip4 = _ip("tout")
    port = "CAST(16384 + (r64 % 8000) * 2 AS VARCHAR)"
    i, v = "INTEGER", "VARCHAR(50)"
    zero, empty = "'0'", "''"
    return [
        ("cdrRecordType", i, f"CASE WHEN dirt = {CMR} THEN '2' ELSE '1' END"),
        ("globalCallID_callManagerId", i, cm),
        ("globalCallID_callId", i, "CAST(seq AS VARCHAR)"),
        ("origLegCallIdentifier", i, "CAST(20000000 + 2 * seq AS VARCHAR)"),
        ("dateTimeOrigination", i, _bad_ts("CAST(t0 // 1000 AS VARCHAR)", ("-1", "0", "99999999999", "4294967295"))),
        ("origNodeId", i, cm),
        ("origSpan", i, zero),
        ("origIpAddr", i, oip),
        ("callingPartyNumber", v, a),
        ("callingPartyUnicodeLoginUserID", "VARCHAR(128)", empty),
        ("origCause_location", i, zero),
        ("origCause_value", i, f"CAST({orig_cause} AS VARCHAR)"),
        ("origPrecedenceLevel", i, "'4'"),
        ("origMediaTransportAddress_IP", i, oip),
        ("origMediaTransportAddress_Port", i, port),
        ("origMediaCap_payloadCapability", i, "CASE WHEN disp = 0 THEN '4' ELSE '0' END"),
        ("origMediaCap_maxFramesPerPacket", i, "CASE WHEN disp = 0 THEN '20' ELSE '0' END"),
        ("origMediaCap_g723BitRate", i, zero),
        ("destLegIdentifier", i, "CAST(20000001 + 2 * seq AS VARCHAR)"),
        ("destNodeId", i, cm),
        ("destSpan", i, zero),
        ("destIpAddr", i, dip),
        ("originalCalledPartyNumber", v, f"CASE WHEN var % 10 = 7 THEN '' ELSE {b} END"),
        ("finalCalledPartyNumber", v, b),
        ("finalCalledPartyUnicodeLoginUserID", "VARCHAR(128)", empty),
        ("destCause_location", i, zero),
        ("destCause_value", i, f"CAST({dest_cause} AS VARCHAR)"),
        ("destPrecedenceLevel", i, "'4'"),
        ("destMediaTransportAddress_IP", i, dip),
        ("destMediaTransportAddress_Port", i, f"CAST(20000 + (r64 % 7000) * 2 AS VARCHAR)"),
        ("destMediaCap_payloadCapability", i, "CASE WHEN disp = 0 THEN '4' ELSE '0' END"),
        ("destMediaCap_maxFramesPerPacket", i, "CASE WHEN disp = 0 THEN '20' ELSE '0' END"),
        ("destMediaCap_g723BitRate", i, zero),
        ("dateTimeConnect", i, "CASE WHEN disp = 0 THEN CAST(ta // 1000 AS VARCHAR) ELSE '0' END"),
        ("dateTimeDisconnect", i, "CAST(te // 1000 AS VARCHAR)"),
        ("lastRedirectDn", v, empty),
        ("pkid", "UNIQUEIDENTIFIER", "format('{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}', seq % 4294967296, r64 % 65536, "
                                     "(r64 >> 16) % 4096, (r64 >> 28) % 4096, (r64 >> 8) % 281474976710656)"),
        ("originalCalledPartyNumberPartition", v, "'PT_INBOUND'"),
        ("callingPartyNumberPartition", v, empty),
        ("finalCalledPartyNumberPartition", v, "'PT_INBOUND'"),
        ("lastRedirectDnPartition", v, empty),
        ("duration", i, "CAST(CASE WHEN disp = 0 THEN te // 1000 - ta // 1000 ELSE 0 END AS VARCHAR)"),
        ("origDeviceName", "VARCHAR(129)", f"{trunks}[tin + 1]"),
        ("destDeviceName", "VARCHAR(129)", f"{trunks}[tout + 1]"),
        ("origCallTerminationOnBehalfOf", i, "CASE WHEN rel = 0 THEN '12' ELSE '0' END"),
        ("destCallTerminationOnBehalfOf", i, "CASE WHEN rel = 1 THEN '12' ELSE '0' END"),
        ("origCalledPartyRedirectOnBehalfOf", i, zero),
        ("lastRedirectRedirectOnBehalfOf", i, zero),
        ("origCalledPartyRedirectReason", i, zero),
        ("lastRedirectRedirectReason", i, zero),
        ("destConversationId", i, zero),
        ("globalCallId_ClusterID", v, "'StandAloneCluster'"),
        ("joinOnBehalfOf", i, zero),
        ("comment", "VARCHAR(2048)", empty),
        ("authCodeDescription", v, empty),
        ("authorizationLevel", i, zero),
        ("clientMatterCode", "VARCHAR(32)", empty),
        ("origDTMFMethod", i, "'3'"),
        ("destDTMFMethod", i, "'3'"),
        ("callSecuredStatus", i, zero),
        ("origConversationId", i, zero),
        ("origMediaCap_Bandwidth", i, "CASE WHEN disp = 0 THEN '64' ELSE '0' END"),
        ("destMediaCap_Bandwidth", i, "CASE WHEN disp = 0 THEN '64' ELSE '0' END"),
        ("authorizationCodeValue", "VARCHAR(32)", empty),
        ("outpulsedCallingPartyNumber", v, a),
        ("outpulsedCalledPartyNumber", v, b),
        ("origIpv4v6Addr", "VARCHAR(64)", oip4),
        ("destIpv4v6Addr", "VARCHAR(64)", dip4),
        ("origVideoCap_Codec", i, zero),
        ("destVideoCap_Codec", i, zero),
        ("huntPilotDN", v, empty),
        ("huntPilotPartition", v, empty),
        ("calledPartyPatternUsage", i, "'2'"),
        ("IncomingProtocolID", i, "'1'"),
        ("OutgoingProtocolID", i, "'1'"),
        ("IncomingICID", v, empty),
        ("currentRoutingReason", i, zero),
        ("origRoutingReason", i, zero),
        ("lastRedirectingRoutingReason", i, zero),
    ]


def _cols_c() -> list[tuple[str, str]]:
    """Wholesale switch: ISO-8601 in the gateway's own offset, ms timers, SIP and Q.850 codes."""
    trunks = _lst(_trunk_names("operator_c"))

    def iso(ms: str) -> str:
        wall = f"strftime(make_timestamp(({ms} + {_lst(GW_OFFSET_MIN)}[tin + 1] * 60000) * 1000), '%Y-%m-%dT%H:%M:%S')"
        frac = f"CASE WHEN {_lst(GW_MILLIS)}[tin + 1] = 1 THEN '.' || lpad(CAST({ms} % 1000 AS VARCHAR), 3, '0') ELSE '' END"
        return f"{wall} || {frac} || {_lst(GW_OFFSET_STR)}[tin + 1]"

    sip = ("CASE disp WHEN 0 THEN 200 WHEN 3 THEN 487 WHEN 2 THEN CASE WHEN var % 10 = 0 THEN 603 ELSE 486 END "
           "WHEN 1 THEN CASE WHEN var % 3 = 0 THEN 408 ELSE 480 END ELSE [404, 500, 503, 502, 403][var % 5 + 1] END")
    codes = {200: ("OK", 16), 487: ("Request Terminated", 16), 486: ("Busy Here", 17), 603: ("Decline", 21),
             480: ("Temporarily Unavailable", 19), 408: ("Request Timeout", 18), 404: ("Not Found", 1),
             500: ("Server Internal Error", 41), 503: ("Service Unavailable", 34), 502: ("Bad Gateway", 38),
             403: ("Forbidden", 21)}
    reason = f"CASE {sip} " + " ".join(f"WHEN {k} THEN '{r}'" for k, (r, _) in codes.items()) + " END"
    q850 = f"CASE {sip} " + " ".join(f"WHEN {k} THEN {q}" for k, (_, q) in codes.items()) + " END"
    initiator = ("CASE WHEN disp = 1 THEN CASE WHEN var % 3 = 0 THEN 'switch' ELSE 'term' END "
                 "ELSE ['orig', 'term', 'switch'][rel + 1] END")
    return [
        ("call_id", "format('{:016x}-{:08x}', r64, seq)"),
        ("time_start", _bad_ts(iso("t0"), ("2026-02-30T10:00:00Z", "not-a-time", "", "2026-11-01 25:61:00"))),
        ("time_connect", f"CASE WHEN disp = 0 THEN {iso('ta')} END"),
        ("time_end", iso("te")),
        ("src_number", _num_sql("a", None, 0)),
        ("dst_number", _num_sql("b", None, 0)),
        ("orig_gw", f"{trunks}[tin + 1]"),
        ("term_gw", f"{trunks}[tout + 1]"),
        ("pdd_ms", "pdd"),
        ("ring_ms", "ring"),
        ("sip_code", sip),
        ("sip_reason", reason),
        ("q850_cause", q850),
        ("disconnect_initiator", initiator),
        ("duration", "CASE WHEN disp = 0 THEN CAST(ceil(dur / 1000) AS BIGINT) ELSE 0 END"),
    ]


CALL_ID_SQL = {
    "operator_a": "CAST(t0 // 1000 AS VARCHAR) || '.' || CAST(seq AS VARCHAR)",
    "operator_b": "CAST(seq AS VARCHAR)",
    "operator_c": "format('{:016x}-{:08x}', r64, seq)",
}
SEQ_BASE = {"operator_a": 1000, "operator_b": 1_000_000, "operator_c": 1}
SEQ_PER_START_DAY = 10_000_000  # call-id sequences start further on for later start dates: runs that follow each other never reuse an id


def _seq_base(op: str, start: date) -> int:
    """First call sequence number of a run starting at `start` (kept below 2**31, as CUCM's ids are)."""
    return SEQ_BASE[op] + ((start - date(2020, 1, 1)).days % 200) * SEQ_PER_START_DAY


def _atomic(path: Path) -> Path:
    """The temporary name a file is written under before the rename that publishes it."""
    return path.with_name(path.name + ".part")


def _publish(tmp: Path, path: Path, rename: bool = True) -> Path:
    """Publish a finished temporary file WITHOUT ever replacing an existing one (landing is
    append-only: a hard link fails if the name is taken). A taken name gets a numbered sibling
    (``name-2.csv``) when `rename`, else the run stops. Returns the published path."""
    stem, ext = path.name.split(".", 1) if "." in path.name else (path.name, "")
    candidates = [path] + ([path.with_name(f"{stem}-{k}.{ext}" if ext else f"{stem}-{k}") for k in range(2, 100)] if rename else [])
    try:
        for target in candidates:
            try:
                os.link(tmp, target)
                return target
            except FileExistsError:
                continue
        raise FileExistsError(f"{path} already exists; the simulator never overwrites a file")
    finally:
        tmp.unlink(missing_ok=True)


class Writer:
    """Holds pending calls in DuckDB and writes each operator's files as their rotation windows close.

    DuckDB renders the text columns; Arrow's CSV writer writes them (twice as fast as COPY here).
    """

    def __init__(self, sim: Simulator, home: Path):
        self.sim, self.home = sim, Path(home)
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.seq = {op: _seq_base(op, sim.start) for op in OPS}
        self.files: dict[str, list[str]] = {op: [] for op in sim.ops}
        self.rows: Counter = Counter()
        self.truth: Counter = Counter()
        self.dirt: Counter = Counter()
        self.created = False
        cols_b = [(n, t, f"CAST(({s}) AS BIGINT)" if t == "INTEGER" else s) for n, t, s in _cols_b()]
        rng = np.random.default_rng([sim.seed, 4])
        self.layouts_b = [[cols_b[j] for j in rng.permutation(len(cols_b))] for _ in range(3)]
        self.cols = {"operator_a": _cols_a(), "operator_b": [(n, s) for n, _, s in cols_b], "operator_c": _cols_c()}

    # --------------------------------------------------------------- day frames
    def add_day(self, day: int, calls: dict[str, np.ndarray]) -> None:
        sim = self.sim
        rng = np.random.default_rng([sim.seed, 3, day])
        n = len(calls["t0"])
        calls["ta"] = calls["t0"] + calls["pdd"] + calls["ring"]
        calls["te"] = calls["ta"] + calls["dur"]
        calls["r64"] = rng.integers(0, 2**62, n, dtype=np.int64)
        calls["ast"] = rng.integers(0, 10, n).astype(np.int8)
        calls["bst"] = rng.integers(0, 10, n).astype(np.int8)
        calls["afmt"] = np.zeros(n, np.int8)
        calls["bfmt"] = np.zeros(n, np.int8)
        calls["dirt"] = np.zeros(n, np.int8)
        if sim.dirt:
            odd = rng.random(n) < 0.025
            calls["afmt"] = np.where(odd, rng.integers(1, 6, n), 0).astype(np.int8)
            withheld = (rng.random(n) < 0.012) & (calls["truth"] == NORMAL) & (calls["camp"] < 0)
            calls["afmt"][withheld] = 9
            calls["bfmt"] = np.where(rng.random(n) < 0.02, rng.integers(1, 6, n), 0).astype(np.int8)
        # call ids: per operator, in start order
        order = np.lexsort((calls["t0"], calls["op"]))
        calls = {k: v[order] for k, v in calls.items()}
        calls["seq"] = np.zeros(n, np.int64)
        for oi, op in enumerate(OPS):
            idx = np.flatnonzero(calls["op"] == oi)
            calls["seq"][idx] = self.seq[op] + np.arange(len(idx))
            self.seq[op] += len(idx)
        if sim.dirt:
            calls = self._dirt_rows(rng, calls)
        rot = np.array([ROTATE_S[op] * 1000 for op in OPS])[calls["op"]]
        calls["win"] = calls["te"] // rot
        day_calls = pa.table(calls)
        if not self.created:
            self.con.execute("CREATE TABLE pending AS SELECT * FROM day_calls LIMIT 0")
            self.created = True
        self.con.execute("INSERT INTO pending SELECT * FROM day_calls")

    def _dirt_rows(self, rng, calls: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copies of some calls: exact duplicates, bad timestamps, CUCM CMRs, rows to mangle."""
        extra = []
        for oi, op in enumerate(OPS):
            idx = np.flatnonzero(calls["op"] == oi)
            if len(idx) == 0:
                continue
            k = max(2, len(idx) // 2000)
            kinds = [(DUP, k), (BAD_TS, k), (MALFORMED, max(3, k))] + ([(CMR, 2 * k)] if op == "operator_b" else [])
            for kind, m in kinds:
                pick = rng.choice(idx, size=min(m, len(idx)), replace=False)
                part = {key: v[pick].copy() for key, v in calls.items()}
                part["dirt"][:] = kind
                if kind in (BAD_TS, MALFORMED):  # new rows: their own call ids
                    part["seq"] = self.seq[op] + np.arange(len(pick))
                    self.seq[op] += len(pick)
                if kind == MALFORMED:  # all into one plain-text file, so the open quote can end it
                    rot = ROTATE_S[op] * 1000
                    wins = calls["te"][idx] // rot
                    plain = idx[np.isin(wins, [w for w in np.unique(wins) if not _gz(self.sim.seed, op, int(w), rot)])]
                    anchor = int(calls["te"][plain[0] if len(plain) else idx[0]])
                    shift = anchor - part["te"] + np.arange(len(pick))
                    for key in ("t0", "ta", "te"):
                        part[key] = part[key] + shift
                extra.append(part)
        return {k: np.concatenate([calls[k]] + [e[k] for e in extra]) for k in calls}

    # --------------------------------------------------------------- ground truth
    def ground_truth(self, day: int) -> None:
        sim = self.sim
        d = sim.start + timedelta(days=day)
        lo = int(datetime.combine(d, datetime.min.time(), timezone.utc).timestamp()) * 1000
        camp = _lst(sim.camp_names)
        for op in sim.ops:
            oi = OPS.index(op)
            out = self.home / "ground_truth" / op / f"{d.isoformat()}.csv"
            out.parent.mkdir(parents=True, exist_ok=True)
            table = self.con.sql(f"""
                SELECT '{op}' AS operator, {CALL_ID_SQL[op]} AS call_id, {_lst(TRUTHS)}[truth + 1] AS truth,
                       {_lst(SCENARIOS)}[scen + 1] AS scenario, CASE WHEN camp >= 0 THEN {camp}[camp + 1] END AS campaign
                FROM pending WHERE op = {oi} AND dirt = {CLEAN} AND t0 >= {lo} AND t0 < {lo + DAY_S * 1000}
                ORDER BY t0, seq""").to_arrow_table()
            tmp = _atomic(out)
            pcsv.write_csv(table, tmp, pcsv.WriteOptions(quoting_style="none"))
            _publish(tmp, out, rename=False)
            self.truth.update({t: c for t, c in Counter(table.column("truth").to_pylist()).items()})

    # --------------------------------------------------------------- landing files
    def flush(self, until_ms: int | None) -> dict[str, list[Path]]:
        """Write every window that closed before `until_ms` (all of them when None)."""
        written: dict[str, list[Path]] = {}
        for op in self.sim.ops:
            oi, rot = OPS.index(op), ROTATE_S[op] * 1000
            cond = f"op = {oi}" + ("" if until_ms is None else f" AND (win + 1) * {rot} <= {until_ms}")
            select = ", ".join(f'{s} AS "{n}"' for n, s in self.cols[op])
            # insertion order is preserved (DuckDB's default), so the sort happens once, on narrow rows
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE cur AS SELECT * FROM pending WHERE {cond} "
                             "ORDER BY win, te, seq, dirt")
            table = self.con.sql(f"SELECT {select}, win AS _win, dirt AS _dirt FROM cur").to_arrow_table()
            self.con.execute(f"DELETE FROM pending WHERE {cond}")
            wins = table.column("_win").to_numpy()
            bounds = np.flatnonzero(np.diff(wins)) + 1
            written[op] = [self._write_window(op, int(wins[lo]), rot, table.slice(lo, hi - lo))
                           for lo, hi in zip([0, *bounds], [*bounds, len(wins)]) if hi > lo]
        return written

    def _name(self, op: str, w: int, rot: int) -> tuple[str, bool]:
        t = datetime.fromtimestamp(w * rot // 1000, timezone.utc)
        if op == "operator_a":
            return f"Master-{t:%Y%m%d-%H%M}Z.csv", False
        if op == "operator_b":
            return f"cdr_StandAloneCluster_01_{t:%Y%m%d%H%M}_{w % 100000}.csv", False
        gz = _gz(self.sim.seed, op, w, rot)
        return f"wholesale_{t:%Y%m%dT%H%M}Z.csv" + (".gz" if gz else ""), gz

    def _header(self, op: str, w: int) -> tuple[list[str], bytes]:
        """Column order and the header lines of one file; CUCM's order varies between files."""
        if op == "operator_b":
            layout = self.layouts_b[int(np.random.default_rng([self.sim.seed, 6, w]).integers(3))]
            names = [n for n, _, _ in layout]
            text = ",".join(f'"{n}"' for n in names) + "\n" + ",".join(t for _, t, _ in layout) + "\n"
            return names, text.encode()
        names = [n for n, _ in self.cols[op]]
        return names, (b"" if op == "operator_a" else (",".join(names) + "\n").encode())

    def _write_window(self, op: str, w: int, rot: int, table: pa.Table) -> Path:
        name, gz = self._name(op, w, rot)
        path = self.home / "landing" / op / name
        path.parent.mkdir(parents=True, exist_ok=True)
        names, header = self._header(op, w)
        dirt = table.column("_dirt").to_numpy()
        mangle = dirt == MALFORMED
        good = table.filter(pa.array(~mangle)) if mangle.any() else table
        good = good.select(names)
        quoting = {"operator_a": "all_valid", "operator_b": "needed", "operator_c": "none"}[op]
        tmp = _atomic(path)
        with open(tmp, "wb") as f:
            out = io.BytesIO() if gz else f
            out.write(header)
            pcsv.write_csv(good, out, pcsv.WriteOptions(include_header=False, quoting_style=quoting))
            if gz:  # a carrier's gzip is whole or truncated, never hand-mangled
                f.write(gzip.compress(out.getvalue(), compresslevel=3, mtime=0))
            elif mangle.any():
                f.write(_malformed(op, table.filter(pa.array(mangle)).select(names).to_pylist()).encode())
        path = _publish(tmp, path)
        bad_rows = 0 if gz else int(mangle.sum())
        self.rows[op] += good.num_rows
        for kind in (DUP, BAD_TS, CMR):
            self.dirt[f"{op}:{('clean', 'duplicate_row', 'bad_timestamp', 'cmr_row')[kind]}"] += int((dirt == kind).sum())
        self.dirt[f"{op}:malformed_row"] += bad_rows
        self.files[op].append(path.name)
        return path

    def header_only(self, op: str, path: Path) -> Path:
        return _write_bytes(self._header(op, 0)[1], path)


def _gz(seed: int, op: str, w: int, rot: int) -> bool:
    """The carrier gzips some drops, the second of each day always."""
    if op != "operator_c":
        return False
    return bool(np.random.default_rng([seed, 5, w]).random() < 0.4) or (w % (DAY_S * 1000 // rot)) == 1


def _malformed(op: str, rows: list[dict]) -> str:
    """Rows no CSV reader should accept as they are: extra or missing fields, an unterminated quote."""
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL if op == "operator_a" else csv.QUOTE_MINIMAL, lineterminator="\n")
    for i, row in enumerate(rows):
        fields = ["" if v is None else str(v) for v in row.values()]
        if i == len(rows) - 1:  # an open quote swallows what follows it, so it only ever ends the file
            buf.write(",".join(f'"{f}"' for f in fields[: len(fields) // 2]) + ',"unterminated\n')
        elif i % 2 == 0:
            writer.writerow(fields + ["surplus", "7"])
        else:
            writer.writerow(fields[: len(fields) // 2])
    return buf.getvalue()


def _write_bytes(data: bytes, path: Path) -> Path:
    """Write under name.part, then publish: a watcher never sees half a file."""
    tmp = _atomic(path)
    tmp.write_bytes(data)
    return _publish(tmp, path)


def _dirty_files(writer: Writer, written: dict[str, list[Path]]) -> None:
    """Whole-file dirt: a re-sent duplicate, an empty drop, a header-only drop, a truncated gzip."""
    for op, paths in written.items():
        if not paths:
            continue
        first = paths[0]
        stem = first.name.split(".")[0]
        ext = first.name[len(stem):]
        resent = _write_bytes(first.read_bytes(), first.with_name(f"{stem}-resent{ext}"))
        empty = _write_bytes(b"", first.with_name(f"{stem}-empty.csv"))
        writer.files[op] += [resent.name, empty.name]
        writer.dirt[f"{op}:duplicate_file"] += 1
        writer.dirt[f"{op}:empty_file"] += 1
        if op != "operator_a":
            writer.files[op].append(writer.header_only(op, first.with_name(f"{stem}-header-only.csv")).name)
            writer.dirt[f"{op}:header_only_file"] += 1
        gzs = [p for p in paths if p.name.endswith(".gz")]
        if gzs:
            data = gzs[0].read_bytes()
            s = gzs[0].name.split(".")[0]
            writer.files[op].append(_write_bytes(data[: max(20, len(data) // 2)], gzs[0].with_name(f"{s}-partial.csv.gz")).name)
            writer.dirt[f"{op}:truncated_gzip"] += 1


class SimulationRefused(ValueError):
    """The requested period overlaps days already simulated into this home."""


def simulate(
    home: Path,
    days: int,
    calls_per_day: int,
    seed: int,
    start_date: date = date(2026, 11, 1),
    operators: Sequence[str] = ("operator_a", "operator_b", "operator_c"),
    dirt: bool = True,
    scenario: Scenario = Scenario(),
) -> dict:
    """Simulate `days` of traffic from `start_date` into home/landing and home/ground_truth.

    Same arguments, same bytes. Returns a summary: files and rows per operator, calls by truth,
    dirt injected. Landing is append-only: a run over days already simulated into `home` is refused
    (SimulationRefused) before anything is written, and no file is ever replaced -- a run that
    continues an earlier one writes a drop whose name is taken (the window across midnight) under a
    numbered sibling name, with call ids of its own.
    """
    if days < 1 or calls_per_day < 1:
        raise ValueError("days and calls_per_day must be positive")
    home = Path(home)
    sim = Simulator(days, calls_per_day, seed, start_date, operators, dirt, scenario)
    taken = sorted(str(p.relative_to(home)) for op in sim.ops for d in range(days)
                   if (p := home / "ground_truth" / op / f"{start_date + timedelta(days=d)}.csv").exists())
    if taken:
        raise SimulationRefused(
            f"{home} already holds simulated days in this period ({', '.join(taken[:3])}{' …' if len(taken) > 3 else ''}); "
            f"landed files are never overwritten: simulate from a later --start-date or into another VOICEFW_HOME")
    writer = Writer(sim, home)
    dirt_day = int(np.random.default_rng([seed, 7]).integers(days))
    end_ms = int(datetime.combine(start_date + timedelta(days=days), datetime.min.time(), timezone.utc).timestamp()) * 1000
    for day in range(days):
        writer.add_day(day, sim.day_calls(day))
        writer.ground_truth(day)
        last = day == days - 1
        if last:  # calls rung back after the simulated period never happened
            writer.con.execute(f"DELETE FROM pending WHERE t0 >= {end_ms}")
        day_end = end_ms - (days - 1 - day) * DAY_S * 1000
        written = writer.flush(None if last else day_end)
        if dirt and day == dirt_day:
            _dirty_files(writer, written)
    writer.con.close()
    return {
        "home": str(home),
        "days": days,
        "start_date": start_date.isoformat(),
        "calls": sum(writer.truth.values()),
        "truth": dict(sorted(writer.truth.items())),
        "rows": dict(writer.rows),
        "files": {op: len(v) for op, v in writer.files.items()},
        "dirt": {k: v for k, v in sorted(writer.dirt.items()) if v},
    }
