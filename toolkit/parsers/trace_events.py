"""QEMU ``trace-events`` files: event names with their argument C types and names (docs/formats.md section 4.4).

One declaration per line, ``[props] name(type a, type b) "fmt"`` (``#`` comments, blank lines). The simple
backend writes arguments in declaration order, so these declarations are what decodes its records.
Parsed with pyparsing; trace content is never executed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyparsing as pp

#: where distributions install the concatenation of every trace-events file of the build
DEFAULT_PATHS = ("/usr/share/qemu/trace-events-all", "/usr/local/share/qemu/trace-events-all")

_SIGNED_BITS = {"int": 32, "signed": 32, "signed int": 32, "long": 64, "long int": 64, "long long": 64,
                "short": 16, "char": 8, "signed char": 8, "int8_t": 8, "int16_t": 16, "int32_t": 32,
                "int64_t": 64, "ssize_t": 64, "ptrdiff_t": 64, "intptr_t": 64}


@dataclass(frozen=True)
class Arg:
    ctype: str
    name: str

    @property
    def is_string(self) -> bool:
        """``char *`` arguments are written as u32 length + bytes (as tracetool's ``is_string``)."""
        t = self.ctype.replace(" ", "")
        return t in ("constchar*", "char*")

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*") and not self.is_string

    @property
    def signed_bits(self) -> int:
        """Width to sign-extend from (0 = unsigned or pointer)."""
        if self.ctype.endswith("*"):
            return 0
        t = " ".join(w for w in self.ctype.split() if w != "const")
        return _SIGNED_BITS.get(t, 0)


def _grammar() -> pp.ParserElement:
    ident = pp.Word(pp.alphas + "_", pp.alphanums + "_")
    props = pp.ZeroOrMore(pp.Keyword("disable") | pp.Keyword("vcpu") | pp.Keyword("tcg"))
    args = pp.Suppress("(") + pp.Optional(pp.DelimitedList(pp.Regex(r"[^,()]+"))) + pp.Suppress(")")
    return pp.Group(props)("props") + ident("name") + pp.Group(args)("args") + pp.Optional(pp.Regex(r".+"))("fmt")


_GRAMMAR = _grammar()


def parse_decl(line: str) -> tuple[str, list[Arg]]:
    """One declaration -> (event name, args). Raises ValueError on a malformed line."""
    try:
        r = _GRAMMAR.parse_string(line.strip(), parse_all=True)
    except pp.ParseException as e:
        raise ValueError(str(e)) from None
    out: list[Arg] = []
    for a in r["args"]:
        a = " ".join(a.split())
        if a == "void" or not a:
            continue
        if "*" in a:
            t, n = a.rsplit("*", 1)
            out.append(Arg(" ".join(t.split()) + " *", n.strip()))
        else:
            t, n = a.rsplit(None, 1)
            out.append(Arg(t, n))
    return r["name"], out


def parse_text(text: str) -> dict[str, list[Arg]]:
    """All declarations of a trace-events text (comments and blank lines skipped)."""
    events: dict[str, list[Arg]] = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            name, args = parse_decl(s)
        except ValueError:
            continue
        events[name] = args
    return events


def load(path: str | os.PathLike | None = None) -> tuple[dict[str, list[Arg]] | None, str | None]:
    """Declarations from ``path`` or the first DEFAULT_PATHS that exists: (events, path) or (None, None)."""
    cands = [path] if path is not None else list(DEFAULT_PATHS)
    for p in cands:
        if p is not None and Path(p).is_file():
            from toolkit import fileio

            data, _ = fileio.read_bytes(p)
            return parse_text(data.decode("utf-8", errors="replace")), str(p)
    return None, None
