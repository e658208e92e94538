"""Splitting one physical line into its fields, in SQL and (for headers and tests) in Python.

Every line is split on its own, so a bad line can never shift or swallow its neighbours (a CSV
reader that lets a quoted field run over the newline can). The grammar is strict: a field is
either unquoted (no quote, no delimiter) or quoted (`"..."` with `""` for a quote inside); with an
escape character other than the quote (`\\`), `\\x` stands for x, `\\n`, `\\r`, `\\t` for the
control characters and `\\0` for nothing (a NUL is never kept); Kamailio db_text escapes `:` and
`\\` this way and has no quoting at all.

SQL takes the cheapest exact path per line: no quote or escape at all -> `string_split`; quotes
only around fields that hold no delimiter -> `string_split` and unwrap; every field quoted ->
split on `","` when every part's quotes pair up; anything else -> a regular expression whose tokens
must rebuild the line exactly, or the line is malformed. The Python `split_line` is the reference
the fast paths are tested against (tests/test_split.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from voicefw_assets.ingest.sql import chr_lit, lit

# two-character placeholders for escaped text: a line never holds a NUL (such lines are rejected first)
_P_ESC = "\x00\x01"  # an escaped escape character
_P_DELIM = "\x00\x02"  # an escaped delimiter
C_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "0": ""}  # \0 (db_text's NUL) is dropped: a NUL is never kept in a value


@dataclass(frozen=True)
class Dialect:
    delimiter: str = ","
    quote: str = '"'  # "" = no quoting
    escape: str | None = None  # None: the quote doubles itself

    @property
    def doubling(self) -> bool:
        return bool(self.quote) and self.escape in (None, self.quote)

    @property
    def esc(self) -> str | None:
        return None if self.doubling else self.escape


def _r(ch: str) -> str:
    """A character for an RE2 character class or sequence."""
    return re.escape(ch)


def _token_regex(d: Dialect) -> str:
    """One field (group 1) after a delimiter; it is matched against delimiter + line, so every
    match consumes a delimiter and empty fields need no special case."""
    D, Q, E = _r(d.delimiter), _r(d.quote) if d.quote else "", _r(d.esc) if d.esc else ""
    if d.doubling:
        return f"{D}({Q}(?:[^{Q}]|{Q}{Q})*{Q}|[^{Q}{D}]*)"
    if d.quote:
        return f"{D}({Q}(?:[^{Q}{E}]|{E}.)*{Q}|(?:[^{Q}{D}{E}]|{E}.)*)"
    return f"{D}((?:[^{D}{E}]|{E}.)*)"


def _unescape_py(value: str, esc: str) -> str:
    return re.sub(re.escape(esc) + "(.)", lambda m: C_ESCAPES.get(m.group(1), m.group(1)), value, flags=re.S)


def split_line(text: str, d: Dialect) -> list[str] | None:
    """The fields of one line, or None when it does not follow the dialect."""
    if not d.quote and not d.escape:
        return text.split(d.delimiter)
    tokens = re.findall(_token_regex(d), d.delimiter + text, flags=re.S)
    if d.delimiter.join(tokens) != text:
        return None
    out = []
    for t in tokens:
        if d.quote and len(t) >= 2 and t.startswith(d.quote):
            inner = t[1:-1]
            out.append(inner.replace(d.quote * 2, d.quote) if d.doubling else _unescape_py(inner, d.esc))
        else:
            out.append(_unescape_py(t, d.esc) if d.esc else t)
    return out


# ---------------------------------------------------------------- SQL


@dataclass(frozen=True)
class SplitSql:
    """Steps over a line `text`, each a column for the next: `cls` names its path; `tokens` (over
    text, cls) splits it; `recls` (over text, cls, the tokens column) may send a line to the general
    path; `retokens` redoes those; `checked` keeps tokens only when exact (NULL: malformed).
    `value(token)` is a field's value (over the final class column)."""

    cls: str
    tokens: str
    recls: str  # "{t}": tokens column
    retokens: str  # "{t}": tokens column, "{c}": final class column
    checked: str  # "{t}": tokens column, "{c}": final class column
    value_template: str  # "{f}": one token, "{c}": final class column

    def value(self, token: str, cls: str) -> str:
        return self.value_template.replace("{f}", token).replace("{c}", cls)


def split_sql(d: Dialect, text: str = "text", cls: str = "cls") -> SplitSql:
    D = lit(d.delimiter)
    keep = "{t}"
    if not d.quote and not d.escape:
        return SplitSql("'A'", f"string_split({text}, {D})", cls, keep, keep, "{f}")
    general = f"regexp_extract_all({D} || {text}, {lit('(?s)' + _token_regex(d))}, 1)"
    exact = f"CASE WHEN {{c}} <> 'D' OR array_to_string({{t}}, {D}) = {text} THEN {{t}} END"
    if d.doubling:
        Q, QQ = lit(d.quote), lit(d.quote * 2)
        qc, dc = re.escape(d.quote), re.escape(d.delimiter)
        plain = f"{qc}[^{qc}{dc}]*{qc}|[^{qc}{dc}]*"
        cls_sql = (
            f"CASE WHEN NOT contains({text}, {Q}) THEN 'A'"
            f" WHEN regexp_full_match({text}, {lit(f'(?:{plain})(?:{dc}(?:{plain}))*')}) THEN 'B'"
            f" WHEN length({text}) >= 2 AND starts_with({text}, {Q}) AND ends_with({text}, {Q}) THEN 'C'"
            " ELSE 'D' END"
        )
        tokens = (
            f"CASE {cls} WHEN 'A' THEN string_split({text}, {D}) WHEN 'B' THEN string_split({text}, {D})"
            f" WHEN 'C' THEN string_split({text}[2:-2], {lit(d.quote + d.delimiter + d.quote)}) ELSE {general} END"
        )
        # every field quoted: the split on `","` is the parse exactly when each part's quotes pair up
        # (a `","` inside a value always leaves a part with an odd run of quotes); else the general path
        recls = f"CASE WHEN {cls} = 'C' AND contains(replace(array_to_string({{t}}, chr(0)), {QQ}, ''), {Q}) THEN 'D' ELSE {cls} END"
        retokens = f"CASE WHEN {{c}} = 'D' AND {cls} = 'C' THEN {general} ELSE {{t}} END"
        value = (
            f"(CASE {{c}} WHEN 'A' THEN {{f}} WHEN 'C' THEN (CASE WHEN contains({{f}}, {Q}) THEN replace({{f}}, {QQ}, {Q}) ELSE {{f}} END)"
            f" WHEN 'B' THEN (CASE WHEN starts_with({{f}}, {Q}) THEN {{f}}[2:-2] ELSE {{f}} END)"
            f" ELSE (CASE WHEN starts_with({{f}}, {Q}) THEN replace({{f}}[2:-2], {QQ}, {Q}) ELSE {{f}} END) END)"
        )
        return SplitSql(cls_sql, tokens, recls, retokens, exact, value)
    E = lit(d.esc)
    if not d.quote:  # escapes without quoting (db_text): protect \\ and \<delimiter>, split, restore
        protected = f"replace(replace({text}, {lit(d.esc * 2)}, {chr_lits(_P_ESC)}), {lit(d.esc + d.delimiter)}, {chr_lits(_P_DELIM)})"
        cls_sql = f"CASE WHEN NOT contains({text}, {E}) THEN 'A' ELSE 'E' END"
        tokens = f"CASE {cls} WHEN 'A' THEN string_split({text}, {D}) ELSE string_split({protected}, {D}) END"
        lone = lit(f"(^|[^{re.escape(d.esc)}])({re.escape(d.esc)}{re.escape(d.esc)})*{re.escape(d.esc)}$")
        checked = f"CASE WHEN {{c}} = 'E' AND regexp_matches({text}, {lone}) THEN NULL ELSE {{t}} END"  # a lone escape at the end
        restored = f"replace(replace({_unescape_sql('{f}', d.esc, protected=True)}, {chr_lits(_P_DELIM)}, {D}), {chr_lits(_P_ESC)}, {E})"
        return SplitSql(cls_sql, tokens, cls, keep, checked, f"(CASE {{c}} WHEN 'A' THEN {{f}} ELSE {restored} END)")
    Q = lit(d.quote)
    cls_sql = f"CASE WHEN NOT contains({text}, {Q}) AND NOT contains({text}, {E}) THEN 'A' ELSE 'D' END"
    tokens = f"CASE {cls} WHEN 'A' THEN string_split({text}, {D}) ELSE {general} END"
    value = (
        f"(CASE WHEN {{c}} = 'A' THEN {{f}} WHEN starts_with({{f}}, {Q}) THEN {_unescape_sql('{f}[2:-2]', d.esc)}"
        f" ELSE {_unescape_sql('{f}', d.esc)} END)"
    )
    return SplitSql(cls_sql, tokens, cls, keep, exact, value)


def chr_lits(s: str) -> str:
    return " || ".join(chr_lit(c) for c in s)


def _unescape_sql(expr: str, esc: str, protected: bool = False) -> str:
    """`\\x` -> x, with \\n \\r \\t as control characters, read left to right like the Python
    reference (an escaped escape is set aside first unless the caller already did)."""
    step = expr if protected else f"replace({expr}, {lit(esc * 2)}, {chr_lits(_P_ESC)})"
    for k, v in C_ESCAPES.items():
        step = f"replace({step}, {lit(esc + k)}, {chr_lit(v) if v else lit('')})"
    step = f"regexp_replace({step}, {lit(re.escape(esc) + '(.)')}, '\\1', 'gs')"
    if not protected:
        step = f"replace({step}, {chr_lits(_P_ESC)}, {lit(esc)})"
    return f"(CASE WHEN contains({expr}, {lit(esc)}) THEN {step} ELSE {expr} END)"
