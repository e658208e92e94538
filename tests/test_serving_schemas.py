"""The request schema describes acceptance exactly: every number its per-operator pattern allows
normalizes under that operator's plan, every time its pattern allows converts to UTC; extreme and
impossible values are outside the patterns (so they are 422 and the schema says so)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.number_patterns import LOOSE, number_pattern
from serving.numbers import normalize_number
from serving.schemas import TIME_PATTERN
from voicefw_assets.operators import operator_configs

PLANS = {name: cfg.numbers for name, cfg in operator_configs().items()}


@pytest.mark.parametrize("operator", sorted(PLANS))
@pytest.mark.parametrize("withheld", [False, True])
def test_every_number_the_schema_allows_normalizes(operator, withheld) -> None:
    plan = PLANS[operator]
    pattern = number_pattern(plan, withheld=withheld)
    assert pattern != LOOSE  # the shipped plans are all described exactly

    @settings(max_examples=150, deadline=None)
    @given(st.from_regex(pattern, fullmatch=True))
    def normalizes(text: str) -> None:
        e164 = normalize_number(text, plan)
        assert e164 is not None or withheld, text

    normalizes()
    for spelled, ok in (("+44 20 7946 0001", True), ("0044 20 7946 0001", True), ("12ab", False),
                        ("", withheld), ("Anonymous", withheld), ("+0123456789", False), ("+44", False)):
        assert bool(re.fullmatch(pattern, spelled)) == ok, (operator, spelled)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(TIME_PATTERN, fullmatch=True))
def test_every_time_the_schema_allows_is_a_real_instant(text: str) -> None:
    utc = datetime.fromisoformat(text).astimezone(UTC)
    assert datetime(1969, 12, 31, tzinfo=UTC) <= utc < datetime(2100, 1, 2, tzinfo=UTC)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "2026-02-30T10:00:00Z",
                                  "2026-03-03T10:00:00", "2026-03-03T24:00:00Z", "2026-03-03T10:00:60Z",
                                  "2025-02-29T10:00:00Z", "1969-12-31T23:59:59Z", "12345"])
def test_odd_times_are_outside_the_pattern(text) -> None:
    assert re.fullmatch(TIME_PATTERN, text) is None
