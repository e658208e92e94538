"""Quoting and small SQL helpers: every name or value that comes from a file, a path or a config
goes into SQL through one of these (or a bound parameter), never by plain string formatting."""

from __future__ import annotations

from collections.abc import Iterable


def q(identifier: str) -> str:
    """Quote an SQL identifier (source column names are not trusted to be plain)."""
    return '"' + str(identifier).replace('"', '""') + '"'


def lit(value) -> str:
    """A string literal; NUL cannot be inside a DuckDB literal, so it is refused loudly."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("NUL byte in an SQL literal")
    return "'" + text.replace("'", "''") + "'"


def one_of(expr: str, values: Iterable[str]) -> str:
    """`expr IN (...)` without the hash join DuckDB plans for IN lists (it costs seconds per million rows)."""
    return f"list_contains([{', '.join(lit(v) for v in values)}], {expr})"


def chr_lit(ch: str) -> str:
    """One character as SQL: chr(n) for control characters, a quoted literal otherwise."""
    return f"chr({ord(ch)})" if ord(ch) < 32 else lit(ch)
