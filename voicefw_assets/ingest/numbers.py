"""Phone numbers -> E.164, one rule for the batch SQL and the online service (serving/numbers.py).

A number is written as E.164 only if it is one: the country code is assigned and the national
significant number has a length the country uses. The lengths come from `phonenumbers`' metadata
(possible lengths of every region sharing the code, local-only lengths excluded), in one table:
`country_nsn_lengths()` for Python, and the warehouse table `e164_lengths` that the SQL joins on
(first three digits, total digits) -> country-code length. No per-row Python call.

Steps (the same in SQL and Python):
1. text: trimmed; withheld words and '' are "no number" (not an error).
2. clean: plain digits with at most a leading '+' pass as they are; otherwise URI decoration
   (sip:, tel:, @host, ;params), the '(0)' trunk hint, spaces, dashes, dots, slashes and brackets
   are removed, and the result must be '+'? digits.
3. digits of the full international number by the operator's plan: '+' or the international
   prefix -> as written; the national prefix -> country code + rest; no prefix -> `unprefixed`
   (international: as written; national: country code + digits, except when that is not a valid
   length but the digits already start with the country code followed by a valid length: a
   country code written without '+', e.g. a UK switch's 442079460002).
4. valid length for the country code (and 7-15 digits in all, the contract's E.164) -> '+' digits;
   else NULL and the row is flagged.
"""

from __future__ import annotations

from functools import lru_cache

from voicefw_assets.ingest.sql import lit, one_of
from voicefw_assets.operators import NumberPlan

KEY_STRIDE = 32  # key = first three digits * KEY_STRIDE + number of digits
MAX_DIGITS = 15  # E.164's limit (phonenumbers knows longer national service numbers; they are not E.164)
MIN_DIGITS = 7  # the contract's E.164 (contracts.E164): shorter "possible" numbers are local service codes


@lru_cache(maxsize=None)
def country_nsn_lengths() -> dict[str, frozenset[int]]:
    """Country calling code -> possible lengths of its national significant numbers."""
    import phonenumbers
    from phonenumbers import PhoneMetadata

    out: dict[str, frozenset[int]] = {}
    for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        lengths: set[int] = set()
        for region in regions:
            meta = (PhoneMetadata.metadata_for_nongeo_region(cc) if region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY
                    else PhoneMetadata.metadata_for_region(region))
            if meta is not None and meta.general_desc is not None:
                lengths |= {n for n in meta.general_desc.possible_length if n > 0}
        if lengths:
            out[str(cc)] = frozenset(lengths)
    return out


def e164_lengths(cc: str) -> frozenset[int]:
    """National-number lengths of a country that make an E.164 number (7-15 digits in all)."""
    return frozenset(n for n in country_nsn_lengths().get(cc, ()) if MIN_DIGITS <= len(cc) + n <= MAX_DIGITS)


def country_code_length(digits: str) -> int:
    """Length of the country code when `digits` (no '+') is a valid E.164 number, else 0."""
    table = country_nsn_lengths()
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS or not (digits.isascii() and digits.isdigit()):
        return 0
    for n in (1, 2, 3):
        lengths = table.get(digits[:n])
        if lengths is not None:
            return n if len(digits) - n in lengths else 0
    return 0


def lookup_rows() -> list[tuple[int, int, str, int]]:
    """(key, country-code length, country code, nsn length) for every valid (prefix3, digits) pair."""
    rows = []
    for cc, lengths in sorted(country_nsn_lengths().items()):
        pad = 3 - len(cc)
        for ext in range(10**pad):
            prefix = int(cc + (f"{ext:0{pad}d}" if pad else ""))
            for nsn in sorted(lengths):
                total = len(cc) + nsn
                if MIN_DIGITS <= total <= MAX_DIGITS:
                    rows.append((prefix * KEY_STRIDE + total, len(cc), cc, nsn))
    return rows


E164_TABLE_DDL = """CREATE TABLE IF NOT EXISTS e164_lengths (
    key INTEGER PRIMARY KEY,   -- first three digits * 32 + number of digits
    cc_length INTEGER NOT NULL,
    country_code VARCHAR NOT NULL,
    nsn_length INTEGER NOT NULL
)"""


def ensure_e164_table(con) -> None:
    """Create (once) and fill the lookup table from the installed phonenumbers metadata."""
    con.execute(E164_TABLE_DDL)
    rows = lookup_rows()
    have = con.execute("SELECT count(*), coalesce(sum(key), 0) FROM e164_lengths").fetchall()[0]
    if have != (len(rows), sum(r[0] for r in rows)):  # phonenumbers was upgraded: refresh
        import pyarrow as pa

        keys, cc_lengths, ccs, nsn = (list(c) for c in zip(*rows))
        table = pa.table({"key": pa.array(keys, pa.int32()), "cc_length": pa.array(cc_lengths, pa.int32()),
                          "country_code": ccs, "nsn_length": pa.array(nsn, pa.int32())})
        con.execute("DELETE FROM e164_lengths")
        con.register("__vf_e164", table)
        con.execute("INSERT INTO e164_lengths SELECT * FROM __vf_e164")
        con.unregister("__vf_e164")


def e164_key_sql(digits: str) -> str:
    """The lookup key of a digit string (NULL when it cannot be a number)."""
    return (f"CASE WHEN length({digits}) BETWEEN {MIN_DIGITS} AND {MAX_DIGITS}"
            f" THEN try_cast({digits}[1:3] AS INTEGER) * {KEY_STRIDE} + length({digits}) END")


def clean_number_sql(expr: str) -> str:
    """Number text without URI decoration (sip:, tel:, @host, ;params), the '(0)' trunk hint,
    spaces, dashes, dots, slashes and brackets."""
    return (
        f"regexp_replace(replace(regexp_replace(lower({expr}), '^(sips?|tel):|[@;].*$', '', 'g'), '(0)', ''),"
        " '[\\s\\-./()]', '', 'g')"
    )


def cleaned_sql(text: str) -> str:
    """Step 2: '+'? digits from trimmed number text, or NULL (plain digits skip the regexps)."""
    plain = f"regexp_full_match({text}, '\\+?[0-9]+')"  # 5x cheaper than ltrim() here
    return f"(CASE WHEN {plain} THEN {text} ELSE nullif(regexp_extract({clean_number_sql(text)}, '^(\\+?[0-9]+)$', 1), '') END)"


def digits_sql(c: str, plan: NumberPlan) -> str:
    """Step 3: the full international digits (no '+') from cleaned text `c` (a column: it is
    referenced several times), by the operator's numbering plan."""
    cc = plan.country_code or ""
    intl, nat = plan.international_prefix, plan.national_prefix
    own = sorted(e164_lengths(cc)) if cc else []
    branches = [f"WHEN starts_with({c}, '+') THEN {c}[2:]", f"WHEN starts_with({c}, {lit(intl)}) THEN {c}[{len(intl) + 1}:]"]
    if nat:
        branches.append(f"WHEN starts_with({c}, {lit(nat)}) THEN {lit(cc)} || {c}[{len(nat) + 1}:]")
    if plan.unprefixed == "international":
        other = c
    else:  # a country code written without '+' is taken only where the national reading cannot be a number
        bare = (f"starts_with({c}, {lit(cc)}) AND list_contains({own}, length({c}) - {len(cc)})"
                f" AND NOT list_contains({own}, length({c}))") if own else "false"
        other = f"CASE WHEN {bare} THEN {c} ELSE {lit(cc)} || {c} END"
    return f"(CASE {' '.join(branches)} ELSE {other} END)"


def withheld_sql(text: str, plan: NumberPlan) -> str:
    return one_of(f"lower({text})", plan.withheld)


def e164_sql(expr: str, plan: NumberPlan, lookup: str = "e164_lengths") -> str:
    """E.164 or NULL for a number text (already trimmed, '' as NULL), as one scalar expression
    built from the same steps: for tests and small queries (the mapping runs them as columns and
    joins the lookup table)."""
    return (f"(SELECT CASE WHEN d IS NOT NULL AND NOT {withheld_sql('t', plan)}"
            f" AND EXISTS (SELECT 1 FROM {lookup} WHERE key = {e164_key_sql('d')}) THEN '+' || d END"
            f" FROM (SELECT t, {digits_sql('c', plan)} AS d FROM (SELECT t, {cleaned_sql('t')} AS c FROM (SELECT {expr} AS t))))")
