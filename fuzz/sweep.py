"""Truncation sweep: cut a real capture of every format at many byte offsets and check what the reader keeps.

For each cut the reader must return exactly the complete records (or lines) before the cut -- the same ones,
at the same positions, as in the whole file -- and report the cut: a ``truncated record`` / ``truncated line``
reject that ends at the cut and a ``meta['truncated']`` entry naming the place. A cut on a record or line
boundary is no damage at all: no rejects, no truncation.

``python benchmarks/truncation_sweep.py [--max-cuts N]`` runs it (every byte offset with ``--max-cuts 0``);
``tests/test_damaged_input.py`` runs a sample.
"""

from __future__ import annotations

import lzma
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fuzz.targets import ROOT

TRACES = ROOT / "traces"
SET = "raw-none-threads"


@dataclass
class Capture:
    fmt: str
    name: str
    data: bytes
    bounds: np.ndarray  # offsets where a record/line ends (and the first one starts), ascending
    full: object = None  # ParseResult of the whole file

    def parse(self, path: str):
        from toolkit.parsers import blkparse, blktrace, qemu_log, qemu_simple

        if self.fmt == "blktrace":
            return blktrace.parse([path])
        if self.fmt == "blkparse":
            return blkparse.parse([path])
        if self.fmt == "qemu-log":
            return qemu_log.parse(path)
        return qemu_simple.parse(path, trace_events=_decls())


_DECL_FILE: str | None = None


def _decls() -> str:
    global _DECL_FILE
    if _DECL_FILE is None:
        from conftest import TRACE_EVENTS_72

        from fuzz.targets import scratch_file

        _DECL_FILE = scratch_file("sweep-trace-events-all", TRACE_EVENTS_72.encode())
    return _DECL_FILE


def _line_bounds(data: bytes) -> np.ndarray:
    nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10) + 1
    return np.concatenate([[0], nl]).astype(np.int64)


def captures() -> list[Capture]:
    """One real capture per format (the simple-backend file is the real QEMU log written by the simple writer)."""
    from conftest import TRACE_EVENTS_72, simple_records_from_log

    from toolkit.parsers import qemu_log, qemu_simple
    from toolkit.parsers import trace_events as te

    out = []
    bt = lzma.decompress((TRACES / SET / "host.blktrace.1.xz").read_bytes())
    b, off = [0], 0
    while off < len(bt):
        off += 48 + struct.unpack_from("<H", bt, off + 46)[0]
        b.append(off)
    out.append(Capture("blktrace", "host.blktrace.1", bt, np.array(b, dtype=np.int64)))
    bp = lzma.decompress((TRACES / SET / "host.blkparse.txt.xz").read_bytes())
    out.append(Capture("blkparse", "host.blkparse.txt", bp, _line_bounds(bp)))
    ql = lzma.decompress((TRACES / SET / "qemu-vm.log.xz").read_bytes())
    out.append(Capture("qemu-log", "qemu-vm.log", ql, _line_bounds(ql)))
    ev = qemu_log.parse(TRACES / SET / "qemu-vm.log.xz").events
    names, records, _ = simple_records_from_log(ev, te.parse_text(TRACE_EVENTS_72))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "trace"
        qemu_simple.write(p, names, records)
        sd = p.read_bytes()
    b, off = [0, 24], 24
    while off < len(sd):
        rtype = struct.unpack_from("<Q", sd, off)[0]
        off += 20 + struct.unpack_from("<I", sd, off + 16)[0] if rtype == 0 else 8 + struct.unpack_from("<I", sd, off + 24)[0]
        b.append(off)
    out.append(Capture("qemu-simple", "trace (from qemu-vm.log)", sd, np.array(b, dtype=np.int64)))
    return out


def cuts_for(c: Capture, max_cuts: int, seed: int = 0) -> list[int]:
    """Every offset (max_cuts 0), else every boundary and its neighbours plus an even spread and random offsets."""
    n = len(c.data)
    if max_cuts <= 0 or max_cuts >= n:
        return list(range(0, n + 1))
    rng = np.random.default_rng(seed)
    near = np.concatenate([c.bounds + d for d in (-1, 0, 1, 2, 5)])
    spread = np.linspace(0, n, max_cuts // 2, dtype=np.int64)
    rand = rng.integers(0, n + 1, max_cuts // 2)
    allc = np.unique(np.concatenate([near, spread, rand, [0, 1, 3, 23, 24, 25, 47, 48, 49]]))
    allc = allc[(allc >= 0) & (allc <= n)]
    if len(allc) > max_cuts:
        allc = np.unique(np.concatenate([rng.choice(allc, max_cuts, replace=False), [0, n]]))
    return allc.tolist()


def check_cut(c: Capture, cut: int, path: str) -> None:
    """Parse ``c.data[:cut]`` (written to ``path``) and assert the contract; AssertionError says what broke."""
    Path(path).write_bytes(c.data[:cut])
    if c.full is None:
        c.full = c.parse(_whole(c))
    r = c.parse(path)
    full = c.full.events
    k = int(np.searchsorted(c.bounds, cut, side="right")) - 1  # bounds[k] <= cut: complete units before the cut
    at_bound = c.bounds[k] == cut
    if c.fmt in ("blktrace", "qemu-simple"):
        start = int(c.bounds[k])
        want = full[full["pos"] + 0 < start]["pos"].tolist() if c.fmt == "qemu-simple" else \
            sorted(p for p in full["pos"].tolist() if p < start)
        got = sorted(r.events["pos"].tolist())
        assert got == sorted(want), f"{c.fmt} cut {cut}: {len(got)} records kept, {len(want)} complete"
        rj = list(r.rejects[["pos", "length", "reason"]].itertuples(index=False, name=None))
        if at_bound:
            assert rj == [] and r.meta["truncated"] == [], f"{c.fmt} cut {cut} on a boundary: {rj}"
        else:
            assert rj == [(start, cut - start, "truncated record")], f"{c.fmt} cut {cut}: rejects {rj}"
            t = r.meta["truncated"]
            assert len(t) == 1, f"{c.fmt} cut {cut}: truncated {t}"
            where = t[0]["record_start"] if c.fmt == "blktrace" else t[0]["offset"]
            assert where == start, f"{c.fmt} cut {cut}: reported at {where}, record starts at {start}"
        return
    # text: k complete lines
    sel = full[full["pos"] <= k]
    assert r.events["pos"].tolist() == sel["pos"].tolist(), f"{c.fmt} cut {cut}: lines kept differ"
    assert r.events["time_ns"].astype("Int64").tolist() == sel["time_ns"].astype("Int64").tolist(), \
        f"{c.fmt} cut {cut}: times differ"
    rj = list(r.rejects[["pos", "reason"]].itertuples(index=False, name=None))
    frj = [x for x in c.full.rejects[["pos", "reason"]].itertuples(index=False, name=None) if x[0] <= k]
    if at_bound:
        assert rj == frj and r.meta["truncated"] == [], f"{c.fmt} cut {cut} on a line end: {rj}"
    else:
        assert rj == frj + [(k + 1, "truncated line")], f"{c.fmt} cut {cut}: rejects {rj[-3:]}"
        assert [t["line"] for t in r.meta["truncated"]] == [k + 1], f"{c.fmt} cut {cut}: {r.meta['truncated']}"


_WHOLE: dict[str, str] = {}


def _whole(c: Capture) -> str:
    if c.fmt not in _WHOLE:
        from fuzz.targets import scratch_file

        _WHOLE[c.fmt] = scratch_file(f"sweep-whole-{c.fmt}", c.data)
    return _WHOLE[c.fmt]


def run(max_cuts: int, formats: list[str] | None = None, progress=print) -> dict:
    import time

    from fuzz.targets import scratch_file

    out = {}
    for c in captures():
        if formats and c.fmt not in formats:
            continue
        cuts = cuts_for(c, max_cuts)
        t0 = time.monotonic()
        fails = []
        path = scratch_file(f"sweep-{c.fmt.replace('-', '_')}", b"")
        for i, cut in enumerate(cuts):
            try:
                check_cut(c, cut, path)
            except AssertionError as e:
                fails.append(str(e))
            if progress and i % 500 == 0:
                progress(f"  {c.fmt}: {i}/{len(cuts)} cuts, {len(fails)} failures")
        out[c.fmt] = {"file": c.name, "bytes": len(c.data), "units": len(c.bounds) - 1, "cuts": len(cuts),
                      "failures": len(fails), "first_failures": fails[:5], "seconds": round(time.monotonic() - t0, 1)}
        if progress:
            progress(f"{c.fmt:<12} {c.name}: {len(c.data)} bytes, {len(cuts)} cuts, {len(fails)} failures "
                     f"({out[c.fmt]['seconds']} s)")
    return out
