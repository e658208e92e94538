"""From report to enforcement: one day's suspicious A-ranges as a file a switch loads.

`voicefw export-ranges --date D --format {csv,kamailio,opensips}` reads `suspicious_ranges` from
the warehouse and writes block rules, one per A-range (the A-number without its last
`features.KEY_BY_NAME["a_range"].drop_last` digits, so a rule matches that prefix followed by exactly that
many digits), plus allow rules from an allow-list of prefixes never to block (bank OTP senders,
emergency numbers). A range inside an allow-listed prefix is not exported at all; an allow-listed
prefix inside a blocked range is exported as an allow rule that takes precedence.

Formats (docs/enforcement.md shows how each switch loads them):
- csv: action, prefix, match_regex and the report's numbers, for any tool;
- kamailio: a `dialplan` table in db_text form (Kamailio dialplan module: match_op 1 = PCRE, lower
  `pr` first; `attrs` is `block` or `allow`), checked with `dp_match(dpid, "$fU")`;
- opensips: the OpenSIPS `dialplan` table in db_text form (its db_text schema adds match_flags,
  timerec, disabled), checked with `dp_translate(dpid, $fU, , $var(attrs))`.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

DEFAULT_ALLOW_LIST = Path(__file__).with_name("allow_list.yaml")
ALLOW_LIST_ENV = "VOICEFW_ALLOW_LIST"
E164_PREFIX = re.compile(r"^\+[1-9][0-9]{0,14}$")
PRIORITY = {"allow": 1, "block": 2}  # dialplan: the smaller pr is tried first


class ExportError(Exception):
    """Something the user must fix (date, allow-list, warehouse), said in one line."""


@dataclass(frozen=True)
class AllowEntry:
    prefix: str  # E.164 prefix with + or a short code (112)
    reason: str


ALLOW_PREFIX = re.compile(r"^\+?[0-9]{1,15}$")


def allow_list_path(given: str | None) -> Path:
    return Path(given or os.environ.get(ALLOW_LIST_ENV) or DEFAULT_ALLOW_LIST)


def load_allow_list(path: Path) -> tuple[AllowEntry, ...]:
    """`never_block: [{prefix, reason}, ...]`; any other shape is refused with the entry named."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ExportError(f"allow-list {path} not found (--allow-list or ${ALLOW_LIST_ENV})") from None
    except yaml.YAMLError as exc:
        raise ExportError(f"allow-list {path}: not YAML: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"never_block"} or not isinstance(data.get("never_block", []), list):
        raise ExportError(f"allow-list {path}: expected a mapping with one key, `never_block`, holding a list")
    entries = []
    for i, e in enumerate(data.get("never_block", [])):
        where = f"allow-list {path}: never_block[{i}]"
        if not isinstance(e, dict) or set(e) != {"prefix", "reason"}:
            raise ExportError(f"{where}: expected exactly `prefix` and `reason`, got {e!r}")
        prefix, reason = str(e["prefix"]), str(e["reason"] or "").strip()
        if not ALLOW_PREFIX.match(prefix):
            raise ExportError(f"{where}.prefix: {prefix!r} is neither an E.164 prefix (+ and digits) nor a short code")
        if not reason:
            raise ExportError(f"{where}.reason: say why this prefix must never be blocked")
        entries.append(AllowEntry(prefix, reason))
    return tuple(entries)


@dataclass(frozen=True)
class Rule:
    action: str  # block | allow
    prefix: str
    exact_digits: int | None  # block: exactly the digits an A-range drops; allow: any number of digits
    reason: str
    report: dict | None = None  # the suspicious_ranges row behind a block rule

    @property
    def regex(self) -> str:
        """PCRE without backslashes or colons, so no escaping is needed in any of the formats."""
        head = f"[+]{self.prefix[1:]}" if self.prefix.startswith("+") else self.prefix
        tail = "[0-9]*" if self.exact_digits is None else f"[0-9]{{{self.exact_digits}}}"
        return f"^{head}{tail}$"


@dataclass(frozen=True)
class Plan:
    rules: list[Rule]
    skipped: list[tuple[str, str]]  # (a_range, why)


def plan_rules(ranges: list[dict], allow: tuple[AllowEntry, ...]) -> Plan:
    """Block rules for the ranges not covered by the allow-list, then every allow rule."""
    from voicefw_assets.features import KEY_BY_NAME  # the one definition of an A-range

    digits = KEY_BY_NAME["a_range"].drop_last
    rules, skipped = [], []
    for row in ranges:
        a_range = row["a_range"]
        if not E164_PREFIX.match(a_range or ""):
            skipped.append((str(a_range), "not an E.164 prefix"))
            continue
        covering = next((e for e in allow if a_range.startswith(e.prefix)), None)
        if covering:
            skipped.append((a_range, f"allow-listed by {covering.prefix} ({covering.reason})"))
            continue
        reason = f"{row['flagged_calls']} of {row['calls']} calls flagged on {row['partition_date']}"
        rules.append(Rule("block", a_range, digits, reason, row))
    rules += [Rule("allow", e.prefix, None, e.reason) for e in allow]
    return Plan(rules, skipped)


def read_ranges(con, day: date, min_flagged: int) -> list[dict]:
    """The day's suspicious_ranges rows with at least `min_flagged` flagged calls, most flagged first."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "suspicious_ranges" not in tables:
        raise ExportError("the warehouse has no suspicious_ranges table yet: run `voicefw materialize` first")
    cur = con.execute(
        "SELECT * FROM suspicious_ranges WHERE partition_date = ? AND flagged_calls >= ?"
        " ORDER BY flagged_calls DESC, a_range",
        [day, min_flagged],
    )
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if not rows and not _day_scored(con, tables, day):
        raise ExportError(f"no scored calls on {day}: materialize scored_calls and suspicious_ranges for that day first")
    return rows


def _day_scored(con, tables: set[str], day: date) -> bool:
    if "scored_calls" not in tables:
        return False
    return con.execute("SELECT count(*) FROM scored_calls WHERE partition_date = ?", [day]).fetchall()[0][0] > 0


# ---------------------------------------------------------------- renderers

CSV_COLUMNS = ("action", "prefix", "match_regex", "reason", "flagged_calls", "calls", "flagged_share",
               "max_score", "distinct_a_numbers", "distinct_b_numbers", "first_seen", "last_seen", "operators",
               "trunks")  # fmt: skip


def render_csv(rules: list[Rule], dpid: int) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rules:
        rep = r.report or {}
        w.writerow([r.action, r.prefix, r.regex, r.reason,
                    *(_text(rep.get(c)) for c in CSV_COLUMNS[4:])])  # fmt: skip
    return out.getvalue()


def _text(v) -> str:
    if v is None:
        return ""
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def dbtext_value(v) -> str:
    """A db_text field: `:` `\\` and line breaks escaped (README.db_text, "Internal format")."""
    s = "" if v is None else str(v)
    return s.replace("\\", "\\\\").replace(":", "\\:").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _dbtext(declaration: str, rows: list[list]) -> str:
    lines = [declaration] + [":".join(dbtext_value(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


# /usr/share/kamailio/dbtext/kamailio/dialplan (kamailio 5.x)
KAMAILIO_DIALPLAN = ("id(int,auto) dpid(int) pr(int) match_op(int) match_exp(string) match_len(int) "
                     "subst_exp(string) repl_exp(string) attrs(string)")
# opensips scripts/dbtext/opensips/dialplan (3.x)
OPENSIPS_DIALPLAN = ("id(int,auto) dpid(int) pr(int) match_op(int) match_exp(string) match_flags(int) "
                     "subst_exp(string) repl_exp(string) timerec(string) disabled(int) attrs(string)")
REGEX = 1  # match_op: 0 string equality, 1 PCRE, (kamailio) 2 fnmatch


def render_kamailio(rules: list[Rule], dpid: int) -> str:
    rows = [[i, dpid, PRIORITY[r.action], REGEX, r.regex, 0, "", "", r.action] for i, r in enumerate(rules, 1)]
    return _dbtext(KAMAILIO_DIALPLAN, rows)


def render_opensips(rules: list[Rule], dpid: int) -> str:
    rows = [[i, dpid, PRIORITY[r.action], REGEX, r.regex, 0, "", "", "", 0, r.action] for i, r in enumerate(rules, 1)]
    return _dbtext(OPENSIPS_DIALPLAN, rows)


FORMATS = {"csv": render_csv, "kamailio": render_kamailio, "opensips": render_opensips}


# ---------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--date", required=True, help="UTC day of the report (YYYY-MM-DD)")
    p.add_argument("--min-flagged", type=int, default=1, help="export ranges with at least this many flagged calls")
    p.add_argument("--format", choices=sorted(FORMATS), default="csv",
                   help="csv; kamailio = dialplan table for db_text; opensips = dialplan table for db_text")
    p.add_argument("--out", default=None, help="file to write (atomically); default stdout")
    p.add_argument("--allow-list", default=None,
                   help=f"YAML of prefixes never to block (default ${ALLOW_LIST_ENV} or {DEFAULT_ALLOW_LIST.name})")
    p.add_argument("--dpid", type=int, default=100, help="dialplan id of the rules (kamailio/opensips)")


def export(args: argparse.Namespace) -> tuple[str, str]:
    """(file content, one-line summary). Raises ExportError for anything the user must fix."""
    from resources import Warehouse

    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        raise ExportError(f"--date {args.date!r} is not a YYYY-MM-DD day") from None
    if args.min_flagged < 1:
        raise ExportError("--min-flagged must be at least 1")
    allow = load_allow_list(allow_list_path(args.allow_list))
    warehouse = Warehouse()
    if not warehouse.file.exists():
        raise ExportError(f"no warehouse at {warehouse.file}: run `voicefw materialize` first")
    with warehouse.connect() as con:
        ranges = read_ranges(con, day, args.min_flagged)
    plan = plan_rules(ranges, allow)
    blocked = sum(r.action == "block" for r in plan.rules)
    summary = (f"{day}: {blocked} range(s) to block (>= {args.min_flagged} flagged calls), "
               f"{len(plan.rules) - blocked} allow rule(s), {len(plan.skipped)} range(s) not exported"
               + "".join(f"\n  not exported: {a} - {why}" for a, why in plan.skipped))
    return FORMATS[args.format](plan.rules, args.dpid), summary


def run(args: argparse.Namespace) -> int:
    try:
        text, summary = export(args)
    except ExportError as exc:
        print(f"export-ranges: {exc}", file=sys.stderr)
        return 2
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)  # a switch reloading the file never sees half of it
        summary += f"\n  written to {out}"
    else:
        sys.stdout.write(text)
    print(f"export-ranges {summary}", file=sys.stderr)
    return 0
