"""The SQL line splitter's fast paths agree with the Python reference on random and adversarial lines."""

from __future__ import annotations

import random

import duckdb
import pytest

from voicefw_assets.ingest.split import Dialect, split_line, split_sql

DIALECTS = [Dialect(), Dialect(";", '"'), Dialect(":", "", "\\"), Dialect(",", '"', "\\"), Dialect("|", "", None)]


def _lines(d: Dialect, rng: random.Random, n: int) -> list[str]:
    """Random character soup (mostly malformed) and well-formed lines whose values hold quotes,
    delimiters, escapes, quote+delimiter pairs: the cases that fool a naive split."""
    q, e = d.quote or "x", d.escape or "y"
    alpha = ["a", "b", "1", " ", d.delimiter, q, e, "n", "0", "\u00e9", q + d.delimiter, d.delimiter + q, q + q]
    out = ["".join(rng.choice(alpha) for _ in range(rng.randint(0, 14))) for _ in range(n)]
    for _ in range(n):
        vals = ["".join(rng.choice(alpha) for _ in range(rng.randint(0, 5))) for _ in range(rng.randint(1, 6))]
        all_quoted = rng.random() < 0.4
        if d.doubling:
            toks = [q + v.replace(q, q * 2) + q if all_quoted or q in v or d.delimiter in v or rng.random() < 0.5 else v for v in vals]
        elif d.quote:
            esc = [v.replace(e, e * 2).replace(q, e + q) for v in vals]
            toks = [q + v + q if rng.random() < 0.5 else v.replace(d.delimiter, e + d.delimiter) for v in esc]
        elif d.escape:
            toks = [v.replace(e, e * 2).replace(d.delimiter, e + d.delimiter) for v in vals]
        else:
            toks = [v.replace(d.delimiter, "") for v in vals]
        out.append(d.delimiter.join(toks))
    return out


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: f"{d.delimiter}{d.quote}{d.escape}")
def test_sql_split_equals_python_reference(dialect: Dialect) -> None:
    lines = _lines(dialect, random.Random(repr(dialect)), 3000)
    s = split_sql(dialect)
    q = f"SELECT i, text, cls, {s.tokens} AS t0 FROM (SELECT i, text, {s.cls} AS cls FROM t)"
    q = f"SELECT *, {s.recls.replace('{t}', 't0')} AS c2 FROM ({q})"
    q = f"SELECT *, {s.retokens.replace('{t}', 't0').replace('{c}', 'c2')} AS t1 FROM ({q})"
    q = f"SELECT *, {s.checked.replace('{t}', 't1').replace('{c}', 'c2')} AS f FROM ({q})"
    q = f"SELECT i, c2, CASE WHEN f IS NOT NULL THEN list_transform(f, lambda x: {s.value('x', 'c2')}) END FROM ({q}) ORDER BY i"
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT unnest(?) AS text, generate_subscripts(?, 1) AS i", [lines, lines])
    rows = con.execute(q).fetchall()
    wrong = [(line, cls, split_line(line, dialect), got) for line, (_, cls, got) in zip(lines, rows) if split_line(line, dialect) != got]
    assert not wrong, wrong[:5]
    if dialect.quote or dialect.escape:
        assert len({cls for _, cls, _ in rows}) >= 2  # the fast paths were exercised, not only one
        assert sum(split_line(line, dialect) is None for line in lines) > 100  # and malformed lines too
