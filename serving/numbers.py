"""Operator-format phone numbers -> E.164, in Python, for one call at a time.

The batch side does the same in DuckDB SQL (voicefw_assets/mapping.py); both follow the
operator's `numbers:` plan, and tests hold them (and `phonenumbers`) to the same answers.
A switch sends numbers as it knows them at INVITE time, so the service must normalize
exactly as the mapping did or the history features would key on different strings.
"""

from __future__ import annotations

import re

from voicefw_assets.contracts import E164
from voicefw_assets.operators import NumberPlan

_E164 = re.compile(E164)
_URI = re.compile(r"^(sips?|tel):|[@;].*$")  # sip:/tel: scheme, @host and ;params
_FORMATTING = str.maketrans("", "", " \t\n\f\r-./()")  # RE2's \s is exactly these; Python's is wider


class InvalidNumber(ValueError):
    """The text is neither withheld nor a number E.164 can express."""


def normalize_number(raw: str | None, plan: NumberPlan) -> str | None:
    """E.164 with '+', or None when the caller ID is withheld or absent.

    Mirrors mapping.e164_sql step by step: trim (spaces only, like SQL trim); withheld words;
    drop URI decoration and the '(0)' trunk hint; strip formatting; then '+' is kept, the
    international prefix becomes '+', the national prefix becomes '+<cc>', anything else
    follows `unprefixed`. The result must be '+' and 7-15 digits.
    """
    if raw is None:
        return None
    text = raw.strip(" ").lower()
    if not text or text in plan.withheld:
        return None
    if ":" in text or "@" in text or ";" in text:  # the only characters _URI can match on
        text = _URI.sub("", text)
    digits = text.replace("(0)", "").translate(_FORMATTING)
    if digits.startswith("+"):
        e164 = digits
    elif digits.startswith(plan.international_prefix):
        e164 = "+" + digits[len(plan.international_prefix) :]
    elif plan.national_prefix and digits.startswith(plan.national_prefix):
        e164 = f"+{plan.country_code}{digits[len(plan.national_prefix):]}"
    elif plan.unprefixed == "national":
        e164 = f"+{plan.country_code}{digits}"
    else:
        e164 = "+" + digits
    if not _E164.fullmatch(e164):
        raise InvalidNumber(f"{raw!r} is not a valid number for this operator's plan")
    return e164
