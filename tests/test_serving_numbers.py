"""The service's Python number normalizer agrees with the batch SQL one and with phonenumbers."""

from __future__ import annotations

import random

import duckdb
import phonenumbers
import pytest

from serving.numbers import InvalidNumber, normalize_number
from voicefw_assets.ingest.numbers import e164_sql, ensure_e164_table
from voicefw_assets.operators import NumberPlan, operator_configs

PLANS = {name: cfg.numbers for name, cfg in operator_configs().items()}
PLANS["us_unprefixed"] = NumberPlan(country_code="1", national_prefix="", international_prefix="011")

HAND_PICKED = [
    "07700 900123", "+44 7700 900123", "00447700900123", "0044 (0) 7700-900123", "(020) 7946 0958",
    "020.7946.0958", "sip:+4930123456@gw.example;user=phone", "tel:030/1234567", "0301234567",
    "4930123456", "004930123456", "+1 415 555 0100", "011 49 30 1234567", "4155550100",
    "anonymous", "Restricted", " withheld ", "", "  ", "12", "+0123456789", "abc", "0", "00",
    "+12345678901234567", "0049 (0)30 1234567", "SIP:0049301234567@10.0.0.1",
    "442079460002", "0442079460002", "+44442079460002", "4412345", "+999123456789", "+8821612345678",
]


def _random_numbers(rng: random.Random, n: int) -> list[str]:
    """Digit strings of random length (mostly not numbers) and numbers of a valid length for a
    random country or the plan's own (country code, length from phonenumbers' table), in the
    spellings switches use."""
    from voicefw_assets.ingest.numbers import country_nsn_lengths

    table = sorted(country_nsn_lengths().items())
    out = []
    for i in range(n):
        if i % 2:
            cc, lengths = rng.choice(table) if i % 4 == 1 else ("44", country_nsn_lengths()["44"])
            nsn = "".join(rng.choice("0123456789") for _ in range(rng.choice(sorted(lengths))))
            out.append(rng.choice(["+", "00", "", "011"]) + cc + rng.choice(["", " "]) + nsn)
            continue
        body = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 16)))
        prefix = rng.choice(["", "0", "00", "+", "011", "00 44 ", "0 "])
        sep = rng.choice(["", " ", "-", "."])
        text = prefix + sep.join([body[:3], body[3:]])
        out.append(rng.choice(["", "sip:", "tel:"]) + text + rng.choice(["", "@host", ";x=y"]))
    return out


def _python(raw: str, plan: NumberPlan) -> str | None:
    try:
        return normalize_number(raw, plan)
    except InvalidNumber:
        return None  # SQL yields NULL; the service answers 4xx (the batch rejects such rows)


@pytest.mark.parametrize("operator", sorted(PLANS))
def test_python_normalizer_equals_mapping_sql(operator: str) -> None:
    plan = PLANS[operator]
    raws = HAND_PICKED + _random_numbers(random.Random(operator), 3000)
    con = duckdb.connect()
    ensure_e164_table(con)
    con.execute("CREATE TABLE t(i INTEGER, raw VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?, ?)", list(enumerate(raws)))
    # the mapping trims and turns '' into NULL before e164_sql; withheld words end up NULL too
    expr = "(CASE WHEN trim(raw) = '' THEN NULL ELSE trim(raw) END)"
    sql_out = dict(con.execute(f"SELECT i, {e164_sql(expr, plan)} FROM t").fetchall())
    mismatches = [(r, _python(r, plan), sql_out[i]) for i, r in enumerate(raws) if _python(r, plan) != sql_out[i]]
    assert not mismatches, mismatches[:10]
    assert sum(v is not None for v in sql_out.values()) > 1000  # the comparison is not all-NULL


@pytest.mark.parametrize(
    ("operator", "region"), [("operator_a", "GB"), ("operator_b", "DE")]
)
def test_national_numbers_match_phonenumbers(operator: str, region: str) -> None:
    plan = PLANS[operator]
    rng = random.Random(region)
    checked = 0
    for _ in range(2000):
        example = phonenumbers.example_number_for_type(region, rng.choice(
            [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]))
        digits = str(example.national_number)
        national = "0" + digits[:-4] + "".join(rng.choice("0123456789") for _ in range(4))
        formats = [national, national[:4] + " " + national[4:], "00" + str(example.country_code) + national[1:],
                   "+" + str(example.country_code) + " " + national[1:]]
        for text in formats:
            oracle = phonenumbers.format_number(phonenumbers.parse(text, region), phonenumbers.PhoneNumberFormat.E164)
            assert normalize_number(text, plan) == oracle, text
            checked += 1
    assert checked == 8000


def test_wholesale_international_numbers_match_phonenumbers() -> None:
    plan = PLANS["operator_c"]
    for region in ("GB", "DE", "FR", "US", "NG", "IN", "BR"):
        example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
        e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
        assert normalize_number(e164[1:], plan) == e164  # bare <cc><number>
        assert normalize_number("00" + e164[1:], plan) == e164


def test_withheld_and_invalid() -> None:
    plan = PLANS["operator_a"]
    assert normalize_number("Anonymous", plan) is None
    assert normalize_number(None, plan) is None
    with pytest.raises(InvalidNumber):
        normalize_number("12ab", plan)


def test_country_code_without_prefix_and_invalid_lengths() -> None:
    """A UK switch's 442079460002 is +442079460002 (its national reading, +44442079460002, has a
    length no UK number has); a number with an impossible length for its country is not E.164."""
    uk = PLANS["operator_a"]
    assert normalize_number("442079460002", uk) == "+442079460002"
    assert normalize_number("2079460002", uk) == "+442079460002"
    for bad in ("+44442079460002", "0442079460002", "+4420794600", "+999123456789", "+0123456789"):
        assert normalize_number(bad, uk) is None, bad  # no number: NULL + flag in the batch, no history online
    de = PLANS["operator_b"]
    assert normalize_number("030 1234567", de) == "+49301234567"
