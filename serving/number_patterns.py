"""The number syntax the API accepts, per operator, as one regular expression (a JSON Schema pattern).

`numbers.normalize_number` (the one home of number normalization) accepts many spellings; a schema
cannot describe "whatever normalizes". So the API accepts a documented subset: digits, optionally
separated by single spaces, dots, dashes or slashes, in the forms the operator's plan turns into a
valid E.164 number: '+' and the international number, the international prefix and the number,
the national prefix and the national number, or an unprefixed number as the plan reads it; for an
A-number also a withheld word (any letter case) or nothing. Every string the pattern matches
normalizes (tests/test_serving_schemas.py checks this against normalize_number), so the schema,
the decoder and the service agree: schemathesis finds no body the schema allows and we refuse.
"""

from __future__ import annotations

import logging
import re

from voicefw_assets.contracts import E164
from voicefw_assets.operators import NumberPlan

log = logging.getLogger("voicefw.serving")
SEP = "[ ./-]"  # one optional separator between digits (normalize_number drops these)
LOOSE = r"^[^\x00]*$"  # for plans this module cannot describe: any text, checked by normalize_number
_E164_SHAPE = re.compile(r"^\^\\\+\[1-9\]\[0-9\]\{(\d+),(\d+)\}\$$")


def _digits(first: str, lo: int, hi: int) -> str:
    """A digit of class `first` then lo..hi more digits, each optionally after a separator."""
    return f"{first}(?:{SEP}?[0-9]){{{lo},{hi}}}"


def _literal(digits: str) -> str:
    return f"{SEP}?".join(digits)


def _first(excluded: str) -> str:
    allowed = "".join(d for d in "0123456789" if d not in excluded)
    return f"[{allowed}]"


def number_pattern(plan: NumberPlan, *, withheld: bool) -> str:
    m = _E164_SHAPE.match(E164)
    ip, np, cc = plan.international_prefix, plan.national_prefix, plan.country_code or ""
    if m is None or len(np) > 1 or not ip:
        log.warning("numbering plan %s (or E164 %s) is beyond number_patterns: numbers are checked only by "
                    "normalize_number, and the schema does not describe them", plan, E164)
        return LOOSE
    lo, hi = int(m.group(1)), int(m.group(2))  # digits after the first of the E.164 number
    forms = [r"\+" + _digits("[1-9]", lo, hi),  # +44 20 7946 0001
             _literal(ip) + f"{SEP}?" + _digits("[1-9]", lo, hi)]  # 0044 20 7946 0001
    if np:  # 020 7946 0001 -> +44 20 7946 0001; the rest must not turn the prefix into the international one
        rest_first = _first(ip[len(np)] if ip.startswith(np) and len(ip) > len(np) else "")
        forms.append(_literal(np) + f"{SEP}?" + _digits(rest_first, lo - len(cc), hi - len(cc)))
    first = _first(np + ip[0])  # an unprefixed number starts with neither prefix
    if plan.unprefixed == "national":
        forms.append(_digits(first, lo - len(cc), hi - len(cc)))
    else:
        forms.append(_digits(_first(np + ip[0] + "0"), lo, hi))
    if withheld:
        words = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in w) for w in plan.withheld]
        forms += words + [""]
    return "^(?:" + "|".join(forms) + ")$"
