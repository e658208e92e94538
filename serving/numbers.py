"""Operator-format phone numbers -> E.164, in Python, for one call at a time.

The same rule as the batch SQL (voicefw_assets/ingest/numbers.py, which holds the rule and the
per-country table of valid lengths built from phonenumbers' metadata); tests hold the two, and
phonenumbers, to the same answers. A switch sends numbers as it knows them at INVITE time, so the
service must normalize exactly as the mapping did or the history features would key on different
strings.
"""

from __future__ import annotations

import re

from voicefw_assets.ingest.numbers import country_code_length, e164_lengths
from voicefw_assets.operators import NumberPlan

_URI = re.compile(r"^(sips?|tel):|[@;].*$")  # sip:/tel: scheme, @host and ;params
_FORMATTING = str.maketrans("", "", " \t\n\f\r-./()")  # RE2's \s is exactly these; Python's is wider
_CLEANED = re.compile(r"\+?[0-9]+")


class InvalidNumber(ValueError):
    """The text is not a phone number spelling at all (letters, stray symbols): a bad request."""


def _cleaned(text: str) -> str | None:
    """Step 2: '+'? digits (plain digits as they are; else URI decoration and formatting removed)."""
    if _CLEANED.fullmatch(text):
        return text
    low = text.lower()
    if ":" in low or "@" in low or ";" in low:  # the only characters _URI can match on
        low = _URI.sub("", low)
    digits = low.replace("(0)", "").translate(_FORMATTING)
    return digits if _CLEANED.fullmatch(digits) else None


def _digits(c: str, plan: NumberPlan) -> str:
    """Step 3: the full international digits by the operator's numbering plan."""
    cc = plan.country_code or ""
    if c.startswith("+"):
        return c[1:]
    if c.startswith(plan.international_prefix):
        return c[len(plan.international_prefix) :]
    if plan.national_prefix and c.startswith(plan.national_prefix):
        return cc + c[len(plan.national_prefix) :]
    if plan.unprefixed == "international":
        return c
    own = e164_lengths(cc)
    if c.startswith(cc) and len(c) - len(cc) in own and len(c) not in own:  # a country code written without '+'
        return c
    return cc + c


def normalize_number(raw: str | None, plan: NumberPlan) -> str | None:
    """E.164 with '+', or None: withheld, absent, or digits that are no valid number for their
    country (the batch maps those to NULL with a quality flag, so the call is scored without that
    number's history either way). InvalidNumber when the text is not a number spelling at all."""
    if raw is None:
        return None
    text = raw.strip(" ")  # like SQL trim(): spaces only
    if not text or text.lower() in plan.withheld:
        return None
    c = _cleaned(text)
    if c is None:
        raise InvalidNumber(f"{raw!r} is not a phone number")
    digits = _digits(c, plan)
    return "+" + digits if country_code_length(digits) else None
