"""Fuzz targets: bytes -> one reader -> a result that accounts for every input byte or line, or a TraceError.

Each target writes the input to a file (the readers take paths), runs the reader, and checks the contract of
docs/damaged-input.md:

* the only exception allowed is :class:`toolkit.fileio.TraceError`, with a one-line message;
* binary formats: the records kept and the rejected ranges tile the file exactly (no byte dropped silently);
* text formats: every line is an event, a reject, or (blkparse) blank / a summary line.

A broken contract raises :class:`ContractError`; any other exception is a crash. Shared by the atheris harness
(fuzz/harness.py) and the hypothesis tests (tests/test_damaged_input.py).
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from toolkit import fileio  # noqa: E402
from toolkit.fileio import TraceError  # noqa: E402


class ContractError(AssertionError):
    """The reader returned, but its result does not account for the input."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ContractError(msg)


def _scratch() -> Path:
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    d = base / f"writeorder-fuzz-{os.getpid()}"
    d.mkdir(exist_ok=True)
    return d


_DIR: Path | None = None


def scratch_file(name: str, data: bytes) -> str:
    global _DIR
    if _DIR is None or not _DIR.exists():
        _DIR = _scratch()
    p = _DIR / name
    p.write_bytes(data)
    return str(p)


def _decoded(path: str, data: bytes) -> bytes:
    """What the reader saw: the decompressed content when the input starts with a gz/xz/bz2/zst magic."""
    return fileio.read_bytes(path)[0] if fileio.compression(path) else data


def _lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _one_line(e: TraceError) -> None:
    msg = str(e)
    _check("\n" not in msg and "\r" not in msg and 0 < len(msg) <= 2000, f"TraceError not one short line: {msg!r}")


# ------------------------------------------------------------------------------------------------ block traces
def _read(name: str, data: bytes, parse: Callable[[str], object]):
    """Write ``data`` to a scratch file and parse it: (result, the file's decoded bytes), or None when the reader
    refused it (then with one short line)."""
    path = scratch_file(name, data)
    try:
        r = parse(path)
    except TraceError as e:
        _one_line(e)
        return None
    return r, _decoded(path, data)


def blktrace(data: bytes) -> None:
    from toolkit.parsers import blktrace as mod

    got = _read("fz.blktrace.0", data, lambda p: mod.parse([p]))
    if got is None:
        return
    r, data = got
    order = "<" if r.meta.get("byte_order") in ("little", None) else ">"
    spans = []
    for p in sorted(r.events["pos"].tolist()):
        _check(p + 48 <= len(data), f"record at {p} runs past the end")
        (pl,) = struct.unpack_from(order + "H", data, p + 46)
        spans.append((p, p + 48 + pl, "record"))
    for p, ln in zip(r.rejects["pos"].tolist(), r.rejects["length"].tolist(), strict=True):
        spans.append((p, p + ln, "reject"))
    _tiles(sorted(spans), 0, len(data))
    if r.meta["truncated"]:
        _check(r.meta["truncated"][-1]["offset"] == len(data), "truncation offset is not the file size")


def _tiles(spans: list[tuple[int, int, str]], start: int, end: int,
           gap: Callable[[int, int], bool] | None = None) -> None:
    """``spans`` (sorted) cover [start, end) without overlap; gaps only where ``gap(a, b)`` accepts them."""
    q = start
    for a, b, what in spans:
        _check(b > a, f"empty {what} span at {a}")
        if a != q:
            _check(a > q and gap is not None and gap(q, a), f"bytes {q}..{a} neither kept nor rejected")
        q = b
    if q != end:
        _check(q < end and gap is not None and gap(q, end), f"bytes {q}..{end} neither kept nor rejected")


def blkparse(data: bytes) -> None:
    import pyparsing as pp

    from toolkit.parsers import blkparse as mod

    got = _read("fz.blkparse.txt", data, lambda p: mod.parse([p]))
    if got is None:
        return
    r, data = got
    n = _lines(data)
    ev = r.events["pos"].tolist()
    rj = r.rejects["pos"].tolist()
    seen = set(ev) | set(rj)
    _check(len(seen) == len(ev) + len(rj), "a line is both an event and a reject (or twice)")
    _check(all(1 <= x <= n for x in seen), f"line numbers outside 1..{n}")
    lines = data.split(b"\n")
    for i in set(range(1, n + 1)) - seen:
        body = lines[i - 1].decode("utf-8", "replace").rstrip("\r")
        if not body.strip():
            continue
        try:
            mod.SUMMARY_GRAMMAR.parse_string(body.strip(" \t"), parse_all=True)
        except pp.ParseException:
            raise ContractError(f"line {i} dropped silently: {body[:80]!r}") from None


# ------------------------------------------------------------------------------------------------ QEMU traces
def qemu_log(data: bytes) -> None:
    from toolkit.parsers import qemu_log as mod

    got = _read("fz-qemu.log", data, mod.parse)
    if got is None:
        return
    r, data = got
    n = _lines(data)
    got = sorted(r.events["pos"].tolist() + r.rejects["pos"].tolist())
    _check(got == list(range(1, n + 1)), f"{len(got)} lines accounted for, {n} in the input")


_DECLS_PATH: str | None = None


def _decls_path() -> str:
    global _DECLS_PATH
    if _DECLS_PATH is None or not os.path.exists(_DECLS_PATH):
        from conftest import TRACE_EVENTS_72

        _DECLS_PATH = scratch_file("trace-events-all", TRACE_EVENTS_72.encode())
    return _DECLS_PATH


def qemu_simple(data: bytes) -> None:
    from toolkit.parsers import qemu_simple as mod

    decls = _decls_path() if data[-1:] != b"\x01" else None  # sometimes without declarations
    got = _read("fz-trace-1", data, lambda p: mod.parse(p, trace_events=decls))
    if got is None:
        return
    r, data = got
    order = "<" if r.meta.get("byte_order") == "little" else ">"
    spans = []
    for p in r.events["pos"].tolist():
        (length,) = struct.unpack_from(order + "I", data, p + 24)
        spans.append((p, p + 8 + length, "record"))
    for p, ln in zip(r.rejects["pos"].tolist(), r.rejects["length"].tolist(), strict=True):
        spans.append((p, p + ln, "reject"))

    def mappings(a: int, b: int) -> bool:  # a gap must be a chain of mapping records
        while a < b:
            if a + 20 > b or struct.unpack_from(order + "Q", data, a)[0] != 0:
                return False
            a += 20 + struct.unpack_from(order + "I", data, a + 16)[0]
        return a == b

    _tiles(sorted(spans), 0 if len(data) < 24 else 24, len(data), mappings)  # a cut header: one reject


def trace_events(data: bytes) -> None:
    from toolkit.parsers import trace_events as mod

    text = data.decode("utf-8", "replace")
    decls = mod.parse_text(text)
    for name, args in decls.items():
        _check(isinstance(name, str) and all(isinstance(a, mod.Arg) for a in args), "bad declaration")
        for a in args:
            _ = a.is_string, a.signed_bits, a.is_pointer


# ------------------------------------------------------------------------------------------------ files, sets
def compressed(data: bytes) -> None:
    """Any bytes (mostly gz/xz/bz2/zst streams, damaged): decode, detect the format, read it."""
    from toolkit import parsers

    path = scratch_file("fz-compressed", data)
    try:
        raw, _ = fileio.read_bytes(path)
        fileio.head(path, 8192)
        fmt = parsers.detect_format(path)
        if fmt is not None:
            parsers.parse(fmt, [path])
    except TraceError as e:
        _one_line(e)


_SET: Path | None = None


def fixture_set() -> Path:
    """A folder with the trace files every sample manifest names (symlinks to the real ones)."""
    global _SET
    if _SET is not None and _SET.exists():
        return _SET
    d = _scratch() / "set"
    d.mkdir(exist_ok=True)
    for s in sorted((ROOT / "traces").iterdir()):
        if not (s / "traceset.toml").exists():
            continue
        for f in s.rglob("*"):
            rel = f.relative_to(s)
            if f.is_file() and ".writeorder" not in rel.parts and f.name != "traceset.toml":
                dst = d / rel
                if not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(f, dst)
    _SET = d
    return d


def _escapes(doc) -> bool:
    """A manifest value that points outside the fixture folder (absolute, '..', '**'): not fuzzed (it would walk
    the machine's file system, which is what the user asked for, not a parser bug)."""
    if isinstance(doc, dict):
        return any(_escapes(v) for v in doc.values())
    if isinstance(doc, list):
        return any(_escapes(v) for v in doc)
    if isinstance(doc, str):
        return doc.startswith(("/", "~")) or ".." in doc or "**" in doc or "\\" in doc
    return False


def traceset(data: bytes) -> None:
    import tomllib

    from toolkit import traceset as mod

    root = fixture_set()
    try:
        doc = tomllib.loads(data.decode("utf-8"))
        if _escapes(doc):
            return
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, RecursionError):
        doc = None  # not TOML: the loader below must refuse it in one line
    m = root / "traceset.toml"
    m.write_bytes(data)
    try:
        ts = mod.load(m)
    except TraceError as e:
        _one_line(e)
        return
    _check(len(ts.traces) > 0, "a set without traces was accepted")
    mod.describe(ts)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "blktrace": blktrace, "blkparse": blkparse, "qemu_log": qemu_log, "qemu_simple": qemu_simple,
    "traceset": traceset, "trace_events": trace_events, "compressed": compressed,
}
