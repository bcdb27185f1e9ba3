"""Seed inputs for every fuzz target, cut from the real sample traces in traces/ (decompressed at run time).

Seeds are small (a few KB: whole records or lines from the start, middle and end of real captures, a
big-endian conversion, the sample manifests) so that the fuzzer runs thousands of executions a second.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import tempfile
from pathlib import Path

from fuzz.targets import ROOT

TRACES = ROOT / "traces"
SETS = ["raw-none-threads", "raw-unsafe", "ext4-writeback", "migrate-none", "qcow2file-none"]
MAX = 6000


def _xz(p: Path) -> bytes:
    return lzma.decompress(p.read_bytes())


def _records(buf: bytes, order: str = "<") -> list[tuple[int, int]]:
    out, off = [], 0
    while off + 48 <= len(buf):
        (pl,) = struct.unpack_from(order + "H", buf, off + 46)
        out.append((off, off + 48 + pl))
        off += 48 + pl
    return out


def _windows_bin(buf: bytes, recs: list[tuple[int, int]], k: int = 3) -> list[bytes]:
    """Runs of whole records (at most MAX bytes) from the start, middle and end."""
    out = []
    for at in sorted({0, len(recs) // 2, max(len(recs) - 20, 0)})[:k]:
        s = recs[at][0] if recs else 0
        e = s
        for _a, b in recs[at:]:
            if b - s > MAX:
                break
            e = b
        if e > s:
            out.append(buf[s:e])
    return out


def _windows_text(text: bytes, n: int = 40) -> list[bytes]:
    lines = text.split(b"\n")
    out = []
    for at in sorted({0, len(lines) // 2, max(len(lines) - n - 1, 0)}):
        w = b"\n".join(lines[at:at + n])
        out.append((w if w.endswith(b"\n") or at + n >= len(lines) else w + b"\n")[:MAX])
    return out


def blktrace() -> list[bytes]:
    from test_blktrace import to_big_endian

    out = []
    for s in SETS:
        for f in sorted((TRACES / s).glob("host.blktrace.*.xz"))[:1] + sorted((TRACES / s).glob("guest*/guest*.blktrace.0.xz"))[:1]:
            buf = _xz(f)
            recs = _records(buf)
            out += _windows_bin(buf, recs, 2)
    big = out[0]
    out.append(to_big_endian(big))
    return out


def blkparse() -> list[bytes]:
    out = []
    for s in SETS[:3]:
        for f in [TRACES / s / "host.blkparse.txt.xz", *sorted((TRACES / s).glob("guest*/guest*.blkparse.txt.xz"))[:1]]:
            if f.exists():
                out += _windows_text(_xz(f))
    return out


def qemu_log() -> list[bytes]:
    out = []
    for s in SETS:
        for f in sorted((TRACES / s).glob("qemu-*.log.xz")):
            out += _windows_text(_xz(f), 30)
    return out


def qemu_simple() -> list[bytes]:
    from conftest import TRACE_EVENTS_72, simple_records_from_log

    from toolkit.parsers import qemu_log as ql
    from toolkit.parsers import qemu_simple as qs
    from toolkit.parsers import trace_events as te

    decls = te.parse_text(TRACE_EVENTS_72)
    out = []
    with tempfile.TemporaryDirectory() as d:
        for s, order in (("migrate-none", "<"), ("raw-none-threads", ">"), ("raw-none-iouring", "<")):
            for f in sorted((TRACES / s).glob("qemu-*.log.xz"))[:1]:
                ev = ql.parse(f).events
                names, records, _ = simple_records_from_log(ev, decls)
                used = {r[0] for r in records}
                names = {i: n for i, n in names.items() if i in used}
                for at in (0, len(records) // 2):
                    p = Path(d) / "t"
                    qs.write(p, names, records[at:at + 40], order=order)
                    out.append(p.read_bytes())
    return out


def traceset() -> list[bytes]:
    return [(TRACES / s / "traceset.toml").read_bytes() for s in sorted(p.name for p in TRACES.iterdir())
            if (TRACES / s / "traceset.toml").exists()]


def trace_events() -> list[bytes]:
    from conftest import TRACE_EVENTS_72

    lines = TRACE_EVENTS_72.strip().encode().split(b"\n")
    return [b"\n".join(lines[i:i + 12]) + b"\n" for i in range(0, len(lines), 12)]


def compressed() -> list[bytes]:
    import zstandard

    plain = [blkparse()[0][:3000], qemu_log()[0][:3000], blktrace()[0][:3000]]
    out = []
    for i, p in enumerate(plain):
        out += [gzip.compress(p), lzma.compress(p), bz2.compress(p), zstandard.ZstdCompressor().compress(p)][i:i + 3]
    return out


SEEDS = {"blktrace": blktrace, "blkparse": blkparse, "qemu_log": qemu_log, "qemu_simple": qemu_simple,
         "traceset": traceset, "trace_events": trace_events, "compressed": compressed}


def write_corpus(target: str, folder: Path) -> int:
    """Write the seeds of ``target`` into ``folder`` (once); returns how many files the folder holds."""
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        for i, s in enumerate(SEEDS[target]()):
            (folder / f"seed-{i:03d}").write_bytes(s)
    return sum(1 for _ in folder.iterdir())
