"""One module per trace format. Each exposes ``parse(paths, ...) -> ParseResult``; nothing else knows formats.

| format        | module                        | what it reads                                                    |
|---------------|-------------------------------|------------------------------------------------------------------|
| ``blktrace``    | :mod:`toolkit.parsers.blktrace`   | binary ``struct blk_io_trace`` v7 (per-CPU files), either byte order |
| ``blkparse``    | :mod:`toolkit.parsers.blkparse`   | blkparse's default text output                                   |
| ``qemu-log``    | :mod:`toolkit.parsers.qemu_log`   | QEMU's log trace backend (all prefix styles)                     |
| ``qemu-simple`` | :mod:`toolkit.parsers.qemu_simple`| QEMU's simple trace backend, file format version 4              |
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from toolkit import fileio


@dataclass
class ParseResult:
    """What a parser returns: the events (a table of ``toolkit.events``), the rejects, and metadata.

    ``meta`` holds facts about the trace as a whole: ``clock`` (see events), ``byte_order``,
    ``wallclock`` (a (monotonic_ns, realtime_ns) pair from a blktrace timestamp record), ``truncated``
    (files cut mid-record, with the byte offset), ``notes`` (human-readable caveats).
    """

    events: pd.DataFrame
    rejects: pd.DataFrame
    meta: dict = field(default_factory=dict)


BLKTRACE_MAGIC = 0x65617400
#: the first 16 bytes of a QEMU simple-backend file (header event id, magic), in either byte order
QEMU_SIMPLE_HEADERS = tuple(struct.pack(o + "QQ", 0xFFFFFFFFFFFFFFFF, 0xF2B177CB0AA429B4) for o in "<>")
_BLKPARSE_LINE = re.compile(rb"^\s*\d+,\d+\s+\d+\s+\d+\s+\d+\.\d{9}\s+\d+\s+(?:[0-9a-f]+,[0-9a-f]+\s+)?[A-Za-z]{1,2}\s",
                            re.M)
_QEMU_LINE = re.compile(rb"^(?:\d+@\d+\.\d+:)?(?:\d{4}-\d\d-\d\dT[\d:.]+Z )?(?:\[[^\]\n]*\] )?"
                        rb"(?:[\w.-]+\(\d+:[^)\n]*\): )?[a-z][a-z0-9_]+ ", re.M)

FORMATS = ("blktrace", "blkparse", "qemu-log", "qemu-simple")


def detect_format(path: str | os.PathLike) -> str | None:
    """The format of a trace file from its content (magic numbers, line shapes), or None."""
    h = fileio.head(path, 8192)
    if len(h) >= 4:
        for order in "<>":
            (m,) = struct.unpack(order + "I", h[:4])
            if m & 0xFFFFFF00 == BLKTRACE_MAGIC:
                return "blktrace"
    if h.startswith(QEMU_SIMPLE_HEADERS):
        return "qemu-simple"
    if b"\x00" in h[:1024]:
        return None
    if len(_BLKPARSE_LINE.findall(h)) >= 1 and h.lstrip()[:1].isdigit():
        return "blkparse"
    if h.startswith(b"Input file ") and _BLKPARSE_LINE.search(h):
        return "blkparse"
    if _QEMU_LINE.search(h):
        return "qemu-log"
    return None


def parse(fmt: str, paths: list[str], **kw) -> ParseResult:
    """Parse ``paths`` (the files of one trace: per-CPU files together) in format ``fmt``."""
    return _module(fmt, paths).parse(paths, **kw)


def reject_rows(file: str, rows: list[tuple[int, int, str, str]]) -> pd.DataFrame:
    """Build a REJECTS table from (pos, length, reason, text) tuples of one file (texts shortened)."""
    from toolkit.events import REJECTS

    if not rows:
        return REJECTS.empty()
    pos, length, reason, text = zip(*rows, strict=True)
    return REJECTS.conform(pd.DataFrame({
        "file": [file] * len(rows), "pos": list(pos), "length": list(length), "reason": list(reason),
        "text": [t if len(t) <= 200 else t[:197] + "..." for t in text],
    }))


def small_unique(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(x, return_inverse=True) for small non-negative integers, in O(n) with a lookup table."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    present = np.bincount(x)
    uniq = np.flatnonzero(present)
    lut = np.zeros(len(present), dtype=np.int32)
    lut[uniq] = np.arange(len(uniq), dtype=np.int32)
    return uniq, lut[x]


class NotTimeOrdered(ValueError):
    """A chunked reader met a record older than rows it already emitted; ``parse()`` reads such input whole."""


def _module(fmt: str, paths: list[str]):
    """The parser module of format ``fmt`` (``qemu-log`` -> ``toolkit.parsers.qemu_log``)."""
    import importlib

    if fmt not in FORMATS:
        raise fileio.TraceError(f"{paths[0] if paths else '?'}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return importlib.import_module(f"toolkit.parsers.{fmt.replace('-', '_')}")


def streams(fmt: str) -> bool:
    """Whether the parser of ``fmt`` reads in chunks (has ``parse_iter``)."""
    return hasattr(_module(fmt, []), "parse_iter")


def parse_iter(fmt: str, paths: list[str], **kw) -> Iterator[ParseResult]:
    """Parse ``paths`` in format ``fmt`` as consecutive chunks of the table ``parse()`` returns.

    The protocol of a module's ``parse_iter(paths, **kw)``: each chunk's ``events`` conform to the format's
    schema and, concatenated, are ``parse()``'s events; a chunk's categorical columns list every value seen in
    that chunk or before, in the order ``parse()`` gives them (so the last chunk's categories are parse()'s);
    ``rejects`` come with some chunk, and ordered stably by the file's place in ``paths`` they are parse()'s;
    ``meta`` is complete on the last chunk. A reader may raise :class:`NotTimeOrdered` (then use ``parse()``).
    Formats without ``parse_iter`` yield ``parse()``'s result as one chunk.
    """
    mod = _module(fmt, paths)
    if hasattr(mod, "parse_iter"):
        yield from mod.parse_iter(paths, **kw)
    else:
        yield mod.parse(paths, **kw)
