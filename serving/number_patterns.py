"""The number syntax the API accepts, per operator, as one regular expression (a JSON Schema pattern).

`numbers.normalize_number` (the one home of number normalization) accepts many spellings; a schema
cannot describe "whatever normalizes". So the API accepts a documented subset: digits, optionally
separated by single spaces, dots, dashes or slashes, in the forms the operator's plan turns into a
valid E.164 number: '+' and the international number, the international prefix and the number,
the national prefix and the national number, or an unprefixed number as the plan reads it — each
with a national number of a length its country uses (the same table as the mapping:
voicefw_assets/ingest/numbers.py); for an A-number also a withheld word (any letter case) or nothing. Every string the pattern matches
normalizes (tests/test_serving_schemas.py checks this against normalize_number), so the schema,
the decoder and the service agree: schemathesis finds no body the schema allows and we refuse.
"""

from __future__ import annotations

import logging
import re

from voicefw_assets.contracts import E164
from voicefw_assets.ingest.numbers import country_nsn_lengths, e164_lengths
from voicefw_assets.operators import NumberPlan

log = logging.getLogger("voicefw.serving")
SEP = "[ ./-]"  # one optional separator between digits (normalize_number drops these)
LOOSE = r"^[^\x00]*$"  # for plans this module cannot describe: any text, checked by normalize_number
_E164_SHAPE = re.compile(r"^\^\\\+\[1-9\]\[0-9\]\{(\d+),(\d+)\}\$$")


def _literal(digits: str) -> str:
    return f"{SEP}?".join(digits)


def _first(excluded: str) -> str:
    allowed = "".join(d for d in "0123456789" if d not in excluded)
    return f"[{allowed}]"


def _lengths(n: set[int] | frozenset[int]) -> str:
    """Exactly n more digits for an n in the set, each optionally after a separator."""
    return "(?:" + "|".join(f"(?:{SEP}?[0-9]){{{k}}}" for k in sorted(n)) + ")"


def _international(first_excluded: str = "") -> str:
    """Any country code and a national number of a length that country uses (the rule of
    voicefw_assets.ingest.numbers: 7-15 digits in all), digits optionally separated."""
    alts = []
    for cc in sorted(country_nsn_lengths()):
        if cc[0] in first_excluded:
            continue
        ok = e164_lengths(cc)
        if ok:
            alts.append(_literal(cc) + _lengths(ok))
    return "(?:" + "|".join(alts) + ")"


def number_pattern(plan: NumberPlan, *, withheld: bool) -> str:
    m = _E164_SHAPE.match(E164)
    ip, np, cc = plan.international_prefix, plan.national_prefix, plan.country_code or ""
    if m is None or len(np) > 1 or not ip:
        log.warning("numbering plan %s (or E164 %s) is beyond number_patterns: numbers are checked only by "
                    "normalize_number, and the schema does not describe them", plan, E164)
        return LOOSE
    forms = [r"\+" + _international(),  # +44 20 7946 0001
             _literal(ip) + f"{SEP}?" + _international()]  # 0044 20 7946 0001
    own = e164_lengths(cc)
    if np and own:  # 020 7946 0001 -> +44 20 7946 0001; the rest must not turn the prefix into the international one
        rest_first = _first(ip[len(np)] if ip.startswith(np) and len(ip) > len(np) else "")
        forms.append(_literal(np) + f"{SEP}?" + rest_first + _lengths({n - 1 for n in own}))
    first = _first(np + ip[0])  # an unprefixed number starts with neither prefix
    if plan.unprefixed == "national" and own:  # national digits, or the country code written without '+'
        forms.append(first + _lengths({n - 1 for n in own}))
        if cc[0] not in np + ip[0]:
            forms.append(_literal(cc) + _lengths(own))
    elif plan.unprefixed == "international":
        forms.append(_international(np + ip[0] + "0"))
    if withheld:
        words = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in w) for w in plan.withheld]
        forms += words + [""]
    return "^(?:" + "|".join(forms) + ")$"
