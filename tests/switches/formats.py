"""Small readers of the two Kamailio formats, written from the module READMEs: the tests' oracle
for what the files say, independent of the ingest engine that maps them."""

from __future__ import annotations

import re
from pathlib import Path

_DECLARATION = re.compile(r"^([^\s(]+)\((int|double|str|string)(?:,(auto|null))?\)$")
_DBTEXT_FIELD = re.compile(r"((?:[^:\\]|\\.)*)(:|$)")
_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "0": "\0"}


def dbtext_columns(declaration_line: str) -> list[str]:
    """`id(int,auto) callid(string,null) ...` -> ['id', 'callid', ...]; raises on anything else."""
    names = []
    for part in declaration_line.rstrip("\n").split(" "):
        m = _DECLARATION.match(part)
        if not m:
            raise ValueError(f"not a db_text column declaration: {part!r}")
        names.append(m.group(1))
    return names


def _unescape(value: str) -> str | None:
    if value == "":
        return None
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), value)


def dbtext_fields(line: str) -> list[str | None]:
    """One db_text row: `:`-separated, `\\:` `\\\\` `\\n` ... escaped, empty = NULL."""
    line = line.rstrip("\n")
    out = []
    pos = 0
    while True:
        m = _DBTEXT_FIELD.match(line, pos)
        out.append(_unescape(m.group(1)))
        if m.group(2) == "":
            return out
        pos = m.end()


def read_dbtext(path: Path) -> list[dict[str, str | None]]:
    lines = path.read_text().splitlines()
    columns = dbtext_columns(lines[0])
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        fields = dbtext_fields(line)
        if len(fields) != len(columns):
            raise ValueError(f"{path}:{n}: {len(fields)} fields, {len(columns)} declared")
        rows.append(dict(zip(columns, fields, strict=True)))
    return rows


def read_flatstore(paths: list[Path], columns: list[str]) -> list[dict[str, str | None]]:
    """`|`-separated, no header, `|` inside a value written as %7C, empty = NULL."""
    rows = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split("|")
            if len(fields) != len(columns):
                raise ValueError(f"{path}:{n}: {len(fields)} fields, {len(columns)} columns")
            rows.append({c: (f.replace("%7C", "|") or None) for c, f in zip(columns, fields, strict=True)})
    return rows
