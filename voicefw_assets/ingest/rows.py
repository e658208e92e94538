"""Lines -> canonical rows: one SELECT, generated from an operator config, over a batch of lines.

Input: an Arrow table of lines (file_idx, line_no, text), the defects found in the bytes
(file_idx, line_no, reason, raw) and each file's layout (header lines, column positions).
Output: one row per data line — canonical columns, `quality_flags`, and `reject_reason` with
`raw_record` for a line that cannot be a canonical CDR. Nothing is dropped: the caller checks that
the rows of every file equal its byte-counted data lines.

Rejected (the call cannot be placed or its outcome cannot be read): a line that is not text or not
well-formed for the dialect, a `reject_if` rule, no call_id, no or unreadable start_time, a start
outside the partition range, no callee, no or unreadable end_time (or before the start), an answer
time that is unreadable or outside start..end, a disposition the config cannot map or that
contradicts the answer time. Field-level (the value becomes NULL or is derived, the row carries a
flag): a caller or callee number that is not a valid E.164 number, sip_code outside 100-699,
q850_cause outside 0-127, a trunk name with control characters or over 128 characters, ring or
duration timers that are unreadable or negative (derived from the times instead), an unmapped
release side ('unknown').
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from voicefw_assets.contracts import QUALITY_FLAGS
from voicefw_assets.ingest.fields import config_sql, field_sql, referenced_columns, repeated_local_time_sql
from voicefw_assets.ingest.numbers import e164_key_sql, withheld_sql
from voicefw_assets.ingest.split import Dialect, split_line, split_sql
from voicefw_assets.ingest.sql import lit, one_of, q
from voicefw_assets.operators import DISPOSITIONS, RELEASE_SIDES, OperatorConfig

TRUNK_MAX = 128
_DECLARATION = re.compile(r"^([^\s()]+)\(([A-Za-z]+)(?:,([A-Za-z]+))?\)$")


class HeaderError(ValueError):
    """The header does not give the columns the config needs (the file is quarantined)."""


def dialect(config: OperatorConfig) -> Dialect:
    c = config.csv
    return Dialect(c.delimiter, c.quote, c.escape)


def header_lines(config: OperatorConfig) -> int:
    """Physical lines before the first data line."""
    return (1 if config.csv.header else 0) + config.csv.extra_header_rows


def parse_header(config: OperatorConfig, first_line: str | None) -> tuple[str, ...]:
    """The file's column names, in order: the config's list (headerless) or its header line."""
    if not config.csv.header:
        return tuple(config.csv.columns)
    if first_line is None:
        raise HeaderError("no header line")
    if config.csv.header_style == "declarations":
        names = []
        for decl in first_line.split():
            m = _DECLARATION.match(decl)
            if not m:
                raise HeaderError(f"header is not db_text declarations `name(type[,attr])`: {decl[:80]!r}")
            names.append(m.group(1))
    else:
        fields = split_line(first_line, dialect(config))
        if fields is None:
            raise HeaderError(f"header line is malformed for the dialect: {first_line[:200]!r}")
        names = [f.strip() for f in fields]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or "" in names:
        raise HeaderError(f"header has duplicate or empty column names: {dupes or ['']}")
    missing = referenced_columns(config) - set(names)
    if missing:
        raise HeaderError(f"missing columns the config needs: {sorted(missing)}")
    return tuple(names)


@dataclass(frozen=True)
class Layout:
    file_idx: int
    path: str
    columns: tuple[str, ...]


def _layout_values(config: OperatorConfig, layouts: list[Layout], needed: list[str]) -> str:
    rows = []
    for lay in layouts:
        pos = [lay.columns.index(c) + 1 for c in needed]
        rows.append(f"({lay.file_idx}, {lit(lay.path)}, {len(lay.columns)}" + "".join(f", {p}" for p in pos) + ")")
    names = ["__file_idx", "__source_file", "__ncols"] + [f"__i{k}" for k in range(len(needed))]
    return f"__layout({', '.join(names)}) AS (VALUES {', '.join(rows)})"


def staging_select(config: OperatorConfig, layouts: list[Layout], lines: str, defects: str | None,
                   day_range: tuple[date, date], lookup: str = "e164_lengths") -> str:
    """SELECT of one canonical (or rejected) row per data line of the batch.

    Built as a chain of projections, each computing a value once that later steps reference by
    column (DuckDB would otherwise repeat a shared sub-expression per reference, and a scalar
    subquery would become a join)."""
    available = set().union(*(set(lay.columns) for lay in layouts)) if layouts else set()
    needed = sorted(c for c in referenced_columns(config, available) if all(c in lay.columns for lay in layouts))
    sp = split_sql(dialect(config), text="__text", cls="__cls")
    fs = field_sql(config)
    plan = config.numbers
    lo, hi = day_range

    defect_join = f"LEFT JOIN {defects} d ON d.file_idx = l.file_idx AND d.line_no = l.line_no" if defects else ""
    defect_cols = "d.reason AS __defect, d.raw AS __defect_raw" if defects else "NULL::VARCHAR AS __defect, NULL::VARCHAR AS __defect_raw"
    def decoded(expr: str) -> str:
        for code, text in config.csv.decode.items():
            expr = f"replace({expr}, {lit(code)}, {lit(text)})"
        return expr

    src_cols = "".join(f", {decoded(sp.value(f'__f[__i{k}]', '__cls2'))} AS {q(c)}" for k, c in enumerate(needed))
    keep = "__source_file, __line, __text, __defect, __defect_raw, __f, __ncols"
    cols_keep = keep + ", __cls2"

    names = ("call_id", "start_time", "answer_time", "end_time", "a_number", "b_number", "ingress_trunk", "egress_trunk",
             "disposition", "sip_code", "q850_cause", "release_side", "duration_s", "ring_s")
    raws = "".join(f", {fs[n].raw if n in fs else 'NULL::VARCHAR'} AS {n}__raw" for n in names)
    rules = "".join(f", coalesce({config_sql(r.sql, 'BOOLEAN')}, false) AS __rule_{i}" for i, r in enumerate(config.reject_if))
    elapsed = f"try_cast(nullif(trim({q(config.elapsed_s_column)}), '') AS DOUBLE)" if config.elapsed_s_column else "NULL::DOUBLE"
    hint = config_sql(config.start_hint_sql, "TIMESTAMPTZ") if config.start_hint_sql else "NULL::TIMESTAMPTZ"
    pres = "".join(f", {fs[n].pre} AS {n}__pre" for n in names if n in fs and fs[n].pre)
    defaults = {"release_side": "'unknown'"}
    typed = "".join(f", {fs[n].typed if n in fs else defaults.get(n, 'NULL')} AS {n}__typed"
                    for n in ("start_time", "answer_time", "end_time", "disposition", "sip_code", "q850_cause",
                              "release_side", "duration_s", "ring_s", "a_number", "b_number"))
    local = [f for f in ("start_time", "answer_time", "end_time") if f in fs and config.fields[f].time not in (None, "epoch", "iso8601")
             and config.timezone != "UTC"]
    repeated = "".join(f", {repeated_local_time_sql(f'{f}__pre', config.timezone)} AS {f}__repeated" for f in local)

    hour = "INTERVAL 1 HOUR"
    start, end, answer = "start_time__typed", "end_time__typed", "answer_time__typed"
    fix_start = start
    if "start_time" in local and (config.elapsed_s_column or config.start_hint_sql):
        by_hint = (f"WHEN start_time__repeated AND abs(epoch(__hint - {start})) < 7200"
                   f" THEN CASE WHEN abs(epoch(__hint - {start} - {hour})) < abs(epoch(__hint - {start})) THEN {start} + {hour} ELSE {start} END"
                   if config.start_hint_sql else "")
        by_elapsed = (f"WHEN start_time__repeated AND __elapsed IS NOT NULL AND {end} IS NOT NULL"
                      f" AND abs(epoch({end} - ({start} + {hour})) - __elapsed) < abs(epoch({end} - {start}) - __elapsed)"
                      f" THEN {start} + {hour}")
        fix_start = f"CASE {by_hint} {by_elapsed} ELSE {start} END"
    fix_end = end
    if "end_time" in local and config.elapsed_s_column:
        fix_end = (f"CASE WHEN end_time__repeated AND __elapsed IS NOT NULL"
                   f" AND abs(epoch({end} + {hour} - start_time) - __elapsed) < abs(epoch({end} - start_time) - __elapsed)"
                   f" THEN {end} + {hour} ELSE {end} END")
    fix_answer = answer
    if "answer_time" in local:
        fix_answer = (f"CASE WHEN answer_time__repeated AND {answer} < start_time AND {answer} + {hour} <= end_time"
                      f" THEN {answer} + {hour} ELSE {answer} END")

    withheld_a = withheld_sql("a_number__raw", plan)
    withheld_b = withheld_sql("b_number__raw", plan)

    def trunk_ok(t: str) -> str:
        return f"length({t}) <= {TRUNK_MAX} AND NOT regexp_matches({t}, '[\\x00-\\x1f\\x7f]')"

    reasons = [
        ("__defect IS NOT NULL", "__defect"),
        ("__text = ''", "'blank line'"),
        ("__f IS NULL", "'malformed line: quotes or escapes do not follow the dialect'"),
        ("len(__f) <> __ncols", "'wrong number of fields: expected ' || __ncols || ', found ' || len(__f)"),
        *[(f"__rule_{i}", lit(r.reason)) for i, r in enumerate(config.reject_if)],
        ("call_id__raw IS NULL", "'missing call_id'"),
        ("start_time__raw IS NULL", "'missing start_time'"),
        ("start_time IS NULL", "'bad start_time: ' || start_time__raw"),
        ("__day IS NULL", "'start_time outside the partition range: ' || CAST(start_time AS VARCHAR)"),
        (f"b_number__raw IS NULL OR {withheld_b}", "'missing b_number: ' || coalesce(b_number__raw, '(empty)')"),
        ("end_time__raw IS NULL", "'missing end_time'"),
        ("end_time IS NULL", "'bad end_time: ' || end_time__raw"),
        ("end_time < start_time", "'end_time before start_time'"),
        ("answer_time__raw IS NOT NULL AND answer_time IS NULL", "'bad answer_time: ' || answer_time__raw"),
        ("answer_time < start_time OR answer_time > end_time", "'answer_time outside start_time..end_time'"),
        ("disposition__typed IS NULL", "'unmapped disposition: ' || coalesce(disposition__raw, '(empty)')"),
        (f"NOT {one_of('disposition__typed', DISPOSITIONS)}", "'disposition not canonical: ' || disposition__typed"),
        ("(disposition__typed = 'answered') <> (answer_time IS NOT NULL)", "'disposition contradicts answer_time: ' || disposition__typed"),
    ]
    flags = {
        "a_number_invalid": f"a_number__raw IS NOT NULL AND NOT {withheld_a} AND a_number IS NULL",
        "b_number_invalid": "b_number__raw IS NOT NULL AND b_number IS NULL",
        "sip_code_invalid": "sip_code__raw IS NOT NULL AND sip_code IS NULL",
        "q850_cause_invalid": "q850_cause__raw IS NOT NULL AND q850_cause IS NULL",
        "ingress_trunk_invalid": "ingress_trunk__raw IS NOT NULL AND ingress_trunk IS NULL",
        "egress_trunk_invalid": "egress_trunk__raw IS NOT NULL AND egress_trunk IS NULL",
        "ring_s_invalid": "ring_s__raw IS NOT NULL AND __ring_src IS NULL",
        "duration_s_invalid": "duration_s__raw IS NOT NULL AND __duration_src IS NULL AND answered",
        "release_side_unmapped": f"release_side__typed IS NULL OR NOT {one_of('release_side__typed', RELEASE_SIDES)}",
    }
    assert set(flags) == set(QUALITY_FLAGS), "contracts.QUALITY_FLAGS is the vocabulary of quality flags"
    reason_sql = "CASE " + " ".join(f"WHEN {c} THEN {r}" for c, r in reasons) + " END"
    flag_sql = "nullif(concat_ws(',', " + ", ".join(f"CASE WHEN {c} THEN {lit(n)} END" for n, c in flags.items()) + "), '')"
    utc_day = "CAST(timezone('UTC', start_time) AS DATE)"
    stages = [
        ("__src", f"""SELECT l.line_no AS __line, y.*, l.text AS __text, {defect_cols}
            FROM {lines} l JOIN __layout y ON y.__file_idx = l.file_idx {defect_join}
            WHERE l.line_no > {header_lines(config)}"""),
        ("__classed", f"SELECT *, {sp.cls} AS __cls FROM __src"),
        ("__tokens", f"SELECT *, {sp.tokens} AS __f0 FROM __classed"),
        ("__reclassed", f"SELECT *, {sp.recls.replace('{t}', '__f0')} AS __cls2 FROM __tokens"),
        ("__retokens", f"SELECT *, {sp.retokens.replace('{t}', '__f0').replace('{c}', '__cls2')} AS __f1 FROM __reclassed"),
        ("__checked", f"SELECT *, {sp.checked.replace('{t}', '__f1').replace('{c}', '__cls2')} AS __f FROM __retokens"),
        ("__cols", f"SELECT {cols_keep}{src_cols} FROM __checked"),
        ("__raw", f"SELECT {keep}{raws}{rules}, {elapsed} AS __elapsed, {hint} AS __hint FROM __cols"),
        ("__pre", f"SELECT *{pres} FROM __raw"),
        ("__typed", f"SELECT *{typed}{repeated} FROM __pre"),
        ("__e164", f"""SELECT t.*, CASE WHEN ka.key IS NOT NULL THEN '+' || t.a_number__typed END AS a_number,
                   CASE WHEN kb.key IS NOT NULL THEN '+' || t.b_number__typed END AS b_number
            FROM __typed t
            LEFT JOIN {lookup} ka ON ka.key = {e164_key_sql("t.a_number__typed")}
            LEFT JOIN {lookup} kb ON kb.key = {e164_key_sql("t.b_number__typed")}"""),
        ("__start", f"SELECT *, {fix_start} AS start_time FROM __e164"),
        ("__end", f"SELECT *, {fix_end} AS end_time FROM __start"),
        ("__times", f"SELECT *, {fix_answer} AS answer_time FROM __end"),
        ("__canon", f"""SELECT *,
            CASE WHEN {utc_day} BETWEEN {lit(lo)} AND {lit(hi)} THEN {utc_day} END AS __day,
            answer_time IS NOT NULL AS answered,
            CASE WHEN sip_code__typed BETWEEN 100 AND 699 THEN sip_code__typed END AS sip_code,
            CASE WHEN q850_cause__typed BETWEEN 0 AND 127 THEN q850_cause__typed END AS q850_cause,
            CASE WHEN {trunk_ok("ingress_trunk__raw")} THEN ingress_trunk__raw END AS ingress_trunk,
            CASE WHEN {trunk_ok("egress_trunk__raw")} THEN egress_trunk__raw END AS egress_trunk,
            CASE WHEN {one_of('release_side__typed', RELEASE_SIDES)} THEN release_side__typed ELSE 'unknown' END AS release_side,
            CASE WHEN ring_s__typed >= 0 THEN ring_s__typed END AS __ring_src,
            CASE WHEN duration_s__typed >= 0 THEN duration_s__typed END AS __duration_src
            FROM __times"""),
        ("__judged", f"""SELECT *, {reason_sql} AS reject_reason,
            coalesce(__ring_src, epoch(coalesce(answer_time, end_time) - start_time)) AS ring_s,
            CASE WHEN answered THEN coalesce(__duration_src, epoch(end_time - answer_time)) ELSE 0 END AS duration_s
            FROM __canon"""),
    ]
    ctes = ",\n".join([_layout_values(config, layouts, needed)] + [f"{n} AS NOT MATERIALIZED ({sql})" for n, sql in stages])
    return f"""WITH {ctes}
SELECT __source_file AS source_file, __line AS source_line, __day AS partition_date,
    call_id__raw AS call_id, start_time, answer_time, end_time, a_number, a_number__raw AS a_number_raw,
    b_number, b_number__raw AS b_number_raw, ingress_trunk, egress_trunk, answered, disposition__typed AS disposition,
    sip_code, q850_cause, release_side, duration_s, ring_s,
    CASE WHEN reject_reason IS NULL THEN string_split({flag_sql}, ',') END AS quality_flags,
    reject_reason,
    CASE WHEN reject_reason IS NOT NULL THEN coalesce(__defect_raw, __text) END AS raw_record
FROM __judged"""
