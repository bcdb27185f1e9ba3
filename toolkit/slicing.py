"""Analysis by disk and by time slice over the Parquet store: memory bounded by the busiest disk's slice.

``check_set(path, slice_events=N)`` runs the checks of ``toolkit.verdict`` one disk at a time, and on a disk
with more than ``N`` events one time slice at a time, reading each slice from the store (``toolkit.store``):
only that disk's devices and that slice's time range are ever in memory. The verdict document is the one the
whole-set path gives (``verdict.check_set``); tests/test_slicing.py compares them on real captures.

Where a slice may end (a cut, ns on the reference clock):

* every trace of the disk (guest block, its QEMU process, host block) is idle around the cut: no event
  within its clock mapping's uncertainty plus ``MARGIN_NS`` on either side (the guest and QEMU clocks are
  mapped with the manifest's reference pairs: a constant offset and its spread);
* the slice before it ends clean, which is checked on the slice's own tables after its analysis: every
  request (guest, QEMU, host) completed, every guest write and every host write durable. A slice that does
  not end clean is analysed again together with the next one (up to ``MAX_MERGE`` times its size; beyond,
  the cut is kept and the result says so in ``slicing.unclean_cuts``).

What a slice takes from the whole (``SetAnalysis.context``): the report origin ``t0`` (the host trace's
first event), request ids continuing the previous slices' (ids are in time order), and the two decisions
that the whole disk's behaviour makes: O_DIRECT or page cache (``inferred_direct``) and whether the guest
sees a write cache. The first slice proposes them; counts that add up over slices decide them at the end,
and if they differ every slice is analysed again with the decided values. Cache-mode evidence and coverage
are counts that add up; the clock offsets of the slices are joined.

Not sliced (analysed whole, as before): sets with more than one QEMU process (migration, several writers:
the handover and split-brain checks need the whole device), traces whose clocks the manifest cannot map,
QEMU logs without timestamps. ``plan(...)`` says why in ``Plan.why``.

Differences from the whole-set path, by construction: a guest clock offset is estimated per slice; a
whole-set causal envelope keeps at most 2000 knots (``clocks.causal_envelope``), so with more pairs than that
the sliced offsets are finer than the whole-set one (the whole set of 100 M events cannot be analysed in memory
to compare).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from toolkit import cache_mode, clocks, lineage, store, traceset, verdict
from toolkit.analysis import SetAnalysis
from toolkit.durability import NEVER
from toolkit.parsers import ParseResult
from toolkit.traceset import Disk, Trace, TraceSet

#: slices of about this many events (all layers of one disk) by default; a disk with fewer is not sliced
SLICE_EVENTS = 4_000_000
#: idle time (ns) required on each side of a cut beyond the clock mapping's uncertainty: guest requests are
#: matched with QEMU requests up to lineage.MATCH_TOL_NS away, so nothing within that reaches across a cut
MARGIN_NS = lineage.MATCH_TOL_NS + 50_000_000
#: a slice that does not end clean is merged with the next ones up to this many times the target size
MAX_MERGE = 4

_MIN, _MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
#: the tables whose ids the checks cite, numbered on across slices (df_guest_bios, which only the report's
#: plots use, is numbered from 0 in each slice)
_ID_TABLES = (("guest_req", "df_guest_requests"), ("host_bios", "df_host_bios"), ("qemu_req", "df_qemu_requests"))


@dataclass
class TraceClock:
    """How one trace's clock maps onto the reference clock: ``ref = t + offset_ns`` within ``unc_ns``."""

    trace: Trace
    device: str | None
    offset_ns: int
    unc_ns: int
    meta: dict = field(default_factory=dict)  # the trace's meta from the store (clock, notes, ...)


@dataclass
class Plan:
    """The slices of one disk: ``cuts`` (reference ns, increasing) and the events between them."""

    disk: Disk
    traces: list[TraceClock] = field(default_factory=list)
    cuts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    events: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    t0: int | None = None
    total: int = 0
    why: str | None = None

    @property
    def bounds(self) -> list[tuple[int, int]]:
        b = [_MIN, *self.cuts.tolist(), _MAX]
        return list(zip(b[:-1], b[1:], strict=True))


# ------------------------------------------------------------------------------------------------ planning
def _disk_traces(ts: TraceSet, disk: Disk) -> list[tuple[Trace, str | None]]:
    """The traces one disk's analysis reads, with the device partition it reads of each (None: all)."""
    out: list[tuple[Trace, str | None]] = []
    for t in ts.traces:
        if t.layer == "guest-block" and t.node == disk.guest:
            out.append((t, disk.guest_device))
        elif t.layer == "host-block":
            out.append((t, disk.host_device))
    qemu = [t for t in ts.traces if t.layer == "qemu"]
    own = [t for t in qemu if t.guest == disk.guest] or [t for t in qemu if t.guest is None]
    out += [(t, None) for t in own]
    return out


def _const(off: clocks.Offset | None) -> tuple[int, int] | None:
    """A constant offset and its uncertainty (half the bounds' width plus the spread of the midpoints)."""
    if off is None or not len(off.knots_t):
        return None
    mid = off.mid()
    c = int(np.median(mid))
    return c, int(np.max(off.hi - off.lo) // 2 + np.max(np.abs(mid - c)))


def _clock(ts: TraceSet, t: Trace, entry: dict, ref: str) -> tuple[int, int] | str:
    ref_node = ref.split(":")[0]
    clock = (entry.get("meta") or {}).get("clock")
    if t.layer == "host-block":
        return (0, 0) if t.node == ref_node else f"host trace {t.path} is on node {t.node}, not {ref_node}"
    if t.layer == "qemu":
        if t.node != ref_node:
            return f"QEMU trace {t.path} is on another node"
        if clock == "monotonic":
            return 0, 0
        if clock == "realtime":
            c = _const(clocks.realtime_to_monotonic(ts, t.node))
            return c if c is not None else f"no realtime/monotonic pair for {t.node}"
        return f"QEMU trace {t.path} has no timestamps"
    c = _const(clocks.guest_offset(ts, t.node, ref_node, None))
    return c if c is not None else f"no reference pair between {t.node} and {ref_node}"


@dataclass
class _Runs:
    """A trace's busy stretches (ns, its own clock): events no more than ``gap_ns`` apart; ``count[i]``: events
    up to the end of run i."""

    start: np.ndarray
    end: np.ndarray
    count: np.ndarray
    nulls: int

    @property
    def total(self) -> int:
        return int(self.count[-1]) if len(self.count) else 0


def _runs_of(v: np.ndarray, gap_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cut = np.flatnonzero(np.diff(v) > gap_ns)
    return (np.concatenate([v[:1], v[cut + 1]]), np.concatenate([v[cut], v[-1:]]),
            np.concatenate([cut + 1, [len(v)]]).astype(np.int64))


def _runs(ts: TraceSet, t: Trace, device: str | None, gap_ns: int) -> _Runs:
    """The busy stretches of one trace and device, read from the store a batch at a time (memory: a batch and
    the runs); a trace whose times go backwards by more than ``gap_ns`` is read whole and sorted."""
    d = store.dataset(ts, store.kind_of(t.format), ingest_first=False)
    empty = np.zeros(0, np.int64)
    if not d.schema.names:
        return _Runs(empty, empty, empty, 0)
    flt = store.time_filter(trace=store.trace_key(t), device=device)
    starts, ends, counts = [], [], []
    n = nulls = 0
    last = None
    for b in d.to_batches(columns=["time_ns"], filter=flt):
        col = b.column(0)
        nulls += col.null_count
        v = (pc.drop_null(col) if col.null_count else col).to_numpy().astype(np.int64, copy=False)
        if not len(v):
            continue
        v = np.sort(v, kind="stable")
        if last is not None and v[0] < last - gap_ns:  # out of order beyond what the runs can absorb
            col = d.to_table(columns=["time_ns"], filter=flt)["time_ns"]
            v = np.sort(pc.drop_null(col).to_numpy().astype(np.int64, copy=False), kind="stable")
            a, e, c = _runs_of(v, gap_ns) if len(v) else (empty, empty, empty)
            return _Runs(a, e, c, int(col.null_count))
        a, e, c = _runs_of(v, gap_ns)
        c = c + n
        if last is not None and a[0] - last <= gap_ns:  # continues the previous batch's last run
            ends[-1][-1] = max(ends[-1][-1], e[0])
            counts[-1][-1] = c[0]
            a, e, c = a[1:], e[1:], c[1:]
        starts.append(a), ends.append(e.copy()), counts.append(c)
        last = max(last if last is not None else v[-1], int(v[-1]))
        n += len(v)
    if not starts:
        return _Runs(empty, empty, empty, nulls)
    return _Runs(np.concatenate(starts), np.concatenate(ends), np.concatenate(counts), nulls)


def plan(ts: TraceSet, disk: Disk, slice_events: int = SLICE_EVENTS, margin_ns: int = MARGIN_NS) -> Plan:
    """Where to cut one disk's traces (see the module docstring). ``cuts`` is empty when the disk is not
    sliced, and ``why`` then says why (or None: small enough)."""
    p = Plan(disk)
    entries = {e["key"]: e for e in store.load_index(store.cache_dir(ts))["traces"].values()}
    ref = clocks.reference_clock(ts)
    chosen = _disk_traces(ts, disk)
    if sum(1 for t, _ in chosen if t.layer == "qemu") > 1 or sum(t.layer == "qemu" for t in ts.traces) > 1:
        p.why = "more than one QEMU process (migration or several writers): analysed whole"
    runs: list[tuple[_Runs, int, int]] = []  # (runs, offset to the reference clock, half idle needed)
    for t, dev in chosen:
        entry = entries.get(store.trace_key(t), {})
        c = _clock(ts, t, entry, ref)
        if isinstance(c, str):  # kept, read whole
            p.why = p.why or c
            c = (0, 0)
        p.traces.append(TraceClock(t, dev, c[0], c[1], entry.get("meta") or {}))
        h = c[1] + margin_ns
        r = _runs(ts, t, dev, 2 * h)
        p.total += r.total + r.nulls
        if t.layer == "host-block" and len(r.start):
            p.t0 = int(r.start[0]) if p.t0 is None else min(p.t0, int(r.start[0]))
        if r.nulls:
            p.why = p.why or f"{t.path}: {r.nulls} events without a time"
        runs.append((r, c[0], h))
    if p.why or p.total <= slice_events or not runs:
        return p
    # allowed cut positions per trace: the idle stretches shrunk by the margin; a cut is allowed by all
    starts, ends = [], []
    for r, off, h in runs:
        if not len(r.start):
            starts.append(np.array([_MIN])), ends.append(np.array([_MAX]))
            continue
        starts.append(np.concatenate([[_MIN], r.end + off + h]))
        ends.append(np.concatenate([r.start + off - h, [_MAX]]))
    s, e = np.concatenate(starts), np.concatenate(ends)
    pts = np.concatenate([s, e])
    step = np.concatenate([np.ones(len(s), np.int64), -np.ones(len(e), np.int64)])
    o = np.lexsort((-step, pts))  # at equal times, an interval opens before another closes
    depth = np.cumsum(step[o])
    full = np.flatnonzero(depth == len(runs))
    lo, hi = pts[o][full], pts[o][np.minimum(full + 1, len(o) - 1)]
    keep = (lo > _MIN) & (hi < _MAX) & (hi > lo)
    cand = (lo[keep] // 2 + hi[keep] // 2).astype(np.int64)
    if not len(cand):
        p.why = "no moment when every layer is idle"
        return p
    # events before each candidate (a candidate is in an idle stretch of every trace: whole runs before it)
    before = np.zeros(len(cand), np.int64)
    for r, off, _h in runs:
        k = np.searchsorted(r.end + off, cand, side="right")
        before += np.where(k > 0, r.count[np.maximum(k - 1, 0)] if len(r.count) else 0, 0)
    picked, last = [], 0
    for j in range(len(cand)):  # one pass over the idle stretches (not the events)
        nxt = before[j + 1] if j + 1 < len(cand) else p.total
        if nxt - last > slice_events and before[j] > last:
            picked.append(j)
            last = before[j]
    p.cuts = cand[picked]
    p.events = np.diff(np.concatenate([[0], before[picked], [p.total]]))
    return p


# ------------------------------------------------------------------------------------------------ one slice
def _slice_analysis(ts: TraceSet, p: Plan, lo: int, hi: int, ctx: dict) -> SetAnalysis:
    """A SetAnalysis holding only this disk's traces, devices and the events in [lo, hi) (reference ns)."""
    results: dict[int, ParseResult] = {}
    for tc in p.traces:
        t = tc.trace
        a = None if lo == _MIN else lo - tc.offset_ns
        b = None if hi == _MAX else hi - tc.offset_ns
        ev = store.read(ts, store.kind_of(t.format), trace=t, device=tc.device, start_ns=a, end_ns=b,
                        ingest_first=False)
        results[t.index] = ParseResult(ev, store.REJECTS.empty(), tc.meta)
    # the set keeps all its traces (the checks ask which layers it has); other disks' traces are left empty
    sa = SetAnalysis(ts, {t.index: results.get(t.index) or ParseResult(_empty(t), store.REJECTS.empty(), {})
                          for t in ts.traces})
    sa.__dict__["disks"] = [d for d in sa.disks if d.disk is p.disk]
    name = sa.disks[0].name
    sa.context[name] = ctx
    return sa


def _empty(t: Trace) -> pd.DataFrame:
    return store.schema_for(t.format).empty()


def _unclean(da) -> dict:
    """What crosses the end of a slice: requests not completed, writes not durable (counts)."""
    out = {}
    for key, fn in _ID_TABLES:
        df = getattr(da, fn)()
        if len(df) and "c_ns" in df.columns:
            n = int(df["c_ns"].isna().sum())
            if n:
                out[f"{key} in flight"] = n
    if da.guest_traces and da.host_traces:
        w = da.df_writes()
        n = int((w["hd_opt_ns"] == NEVER).sum())
        if n:
            out["guest writes not durable"] = n
    if da.host_traces:
        hw = da.df_host_writes()
        n = int((hw["durable_ns"] == NEVER).sum())
        if n:
            out["host writes not durable"] = n
    return out



@dataclass
class _Slice:
    part: verdict.DiskPart
    ids: dict[str, int]
    wc: tuple[int, int]
    flushes: int
    unclean: dict
    guest_offset: clocks.Offset | None


def _run(ts: TraceSet, p: Plan, lo: int, hi: int, ctx: dict) -> _Slice:
    sa = _slice_analysis(ts, p, lo, hi, ctx)
    da = sa.disks[0]
    part = verdict.check_disk(sa, da)
    ids = {key: int(len(getattr(da, fn)())) for key, fn in _ID_TABLES}
    g = da.df_guest_requests() if da.guest_traces else None
    flushes = int((g["op"] == "flush").sum()) if g is not None else 0
    s = _Slice(part, ids, da.durable_by_ack(), flushes, _unclean(da) if hi != _MAX else {}, da.guest_offset)
    if "inferred_direct" not in ctx:
        ctx["inferred_direct"] = da.inferred_direct
    if "guest_write_cache" not in ctx:
        ctx["guest_write_cache"] = da.guest_write_cache
    return s


def _release() -> None:
    """Give the memory of the slice just analysed back to the system before the next one: without this, glibc's
    heap and Arrow's pool keep it (measured on 100 M events: RSS grew by ~0.7 GB a slice)."""
    import ctypes
    import ctypes.util
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    if name:
        try:
            libc = ctypes.CDLL(name)
            if hasattr(libc, "malloc_trim"):  # glibc
                libc.malloc_trim(0)
        except OSError:  # not glibc: nothing to trim
            return


def _decisions(disk: Disk, slices: list[_Slice]) -> dict:
    """The whole disk's decisions from the slices' counts (as DiskAnalysis makes them on the whole disk)."""
    c = slices[0].part.cache_counts
    for s in slices[1:]:
        c = cache_mode.add_counts(c, s.part.cache_counts)
    out = {"inferred_direct": cache_mode.is_direct(c, disk.cache)}
    out["guest_write_cache"] = cache_mode.write_cache_seen(
        disk, sum(s.flushes for s in slices),
        lambda: tuple(sum(x) for x in zip(*(s.wc for s in slices), strict=True)))
    return out


def _pass(ts: TraceSet, p: Plan, decided: dict | None, progress: Callable[[str], None] | None
          ) -> tuple[list[_Slice], list[dict], dict]:
    slices: list[_Slice] = []
    unclean: list[dict] = []
    ids = {key: 0 for key, _ in _ID_TABLES}
    proposed = dict(decided or {})
    causal: clocks.Offset | None = None  # the last slice's guest clock offset from causal pairs
    bounds = p.bounds
    i = 0
    while i < len(bounds):
        lo = bounds[i][0]
        j = i
        while True:
            hi = bounds[j][1]
            ctx = {"ids": dict(ids), **proposed}
            if p.t0 is not None:
                ctx["t0"] = p.t0
            if causal is not None:
                ctx["guest_offset"] = causal
            s = _run(ts, p, lo, hi, ctx)
            _release()
            proposed = {k: ctx[k] for k in ("inferred_direct", "guest_write_cache")}
            size = int(p.events[i:j + 1].sum()) if len(p.events) else 0
            if not s.unclean or j + 1 >= len(bounds) or size >= MAX_MERGE * max(int(p.events[i]), 1):
                break
            j += 1
        if s.unclean:
            unclean.append({"cut_ns": hi, **s.unclean})
        if s.guest_offset is not None and clocks.is_causal(s.guest_offset):
            causal = s.guest_offset
        slices.append(s)
        for k, n in s.ids.items():
            ids[k] += n
        if progress:
            progress(f"{p.disk.name}: slice {len(slices)} of about {len(bounds)} "
                     f"({int(p.events[i:j + 1].sum()) if len(p.events) else 0} events)")
        i = j + 1
    return slices, unclean, proposed


def check_disk(ts: TraceSet, p: Plan, progress: Callable[[str], None] | None = None) -> tuple[verdict.DiskPart, dict]:
    """One sliced disk: its DiskPart joined over the slices, and what the slicing did (for the document)."""
    slices, unclean, proposed = _pass(ts, p, None, progress)
    decided = _decisions(p.disk, slices)
    passes = 1
    if decided != proposed:
        slices, unclean, _ = _pass(ts, p, decided, progress)
        passes = 2
    part = join([s.part for s in slices])
    doc = {"disk": part.disk, "slices": len(slices), "cuts": len(p.cuts), "events": p.total, "passes": passes,
           "unclean_cuts": unclean}
    return part, doc


# ------------------------------------------------------------------------------------------------ joining
def join(parts: list[verdict.DiskPart]) -> verdict.DiskPart:
    """The DiskPart of consecutive time slices of one disk, as one."""
    out = verdict.DiskPart(parts[0].disk, declared=parts[0].declared)
    for q in parts:
        out.violations += q.violations
        for c in q.cannot_check:
            if c not in out.cannot_check:
                out.cannot_check.append(c)
        for name in q.checks_run:
            if name not in out.checks_run:
                out.checks_run.append(name)
    out.coverage = _join_coverage([q.coverage for q in parts])
    c = parts[0].cache_counts
    for q in parts[1:]:
        c = cache_mode.add_counts(c, q.cache_counts)
    out.cache_counts = c
    keys = list(dict.fromkeys(k for q in parts for k in q.clocks))
    out.clocks = {k: join_offsets([q.clocks[k] for q in parts if k in q.clocks]) for k in keys}
    return out


_SUMS = ("guest_writes", "guest_flushes", "writes_linked_to_qemu", "flushes_linked_to_qemu", "writes_mapped",
         "writes_carried_to_host", "unlinked_count")


def _join_coverage(covs: list[dict]) -> dict:
    if covs[0].get("guest_writes") is None:
        return covs[0]
    out = dict(covs[0])
    for k in _SUMS:
        out[k] = sum(c[k] for c in covs)
    out["unlinked"] = [x for c in covs for x in c["unlinked"]][:100]
    out["not_carried"] = [x for c in covs for x in c["not_carried"]][:100]
    w = out["guest_writes"]
    out["write_share_carried"] = round(out["writes_carried_to_host"] / w, 4) if w else None
    return out


_PAIRS = re.compile(r"^(\d+) causal pairs")


def join_offsets(offs: list[clocks.Offset]) -> clocks.Offset:
    """Offsets estimated on consecutive time slices as one (knots and conflicts joined; a manifest offset
    that every slice shares is kept once)."""
    if any(clocks.is_causal(o) for o in offs):  # the whole set would have used the causal pairs alone
        offs = [o for o in offs if clocks.is_causal(o)]
    offs = [o for i, o in enumerate(offs) if i == 0 or o is not offs[i - 1]]  # a slice that reused the last one's
    first = offs[0]
    if all(o.source == first.source and np.array_equal(o.knots_t, first.knots_t) and np.array_equal(o.lo, first.lo)
           and np.array_equal(o.hi, first.hi) for o in offs[1:]):
        return first
    source = first.source
    m = [_PAIRS.match(o.source) for o in offs]
    if all(m):
        source = _PAIRS.sub(f"{sum(int(x.group(1)) for x in m)} causal pairs", first.source)
    return clocks.Offset(first.clock, first.ref, source, np.concatenate([o.knots_t for o in offs]),
                         np.concatenate([o.lo for o in offs]), np.concatenate([o.hi for o in offs]),
                         [c for o in offs for c in o.conflicts])


# ------------------------------------------------------------------------------------------------ the set
def sliceable(ts: TraceSet) -> bool:
    """Sets whose set-level checks need no whole-device data: at most one QEMU process."""
    return sum(t.layer == "qemu" for t in ts.traces) <= 1


def check_disk_of(path, disk_index: int, slice_events: int = SLICE_EVENTS,
                  progress: Callable[[str], None] | None = None) -> tuple[verdict.DiskPart, dict]:
    """One disk of an ingested set, sliced when large (one dask task: toolkit.distributed)."""
    ts = traceset.load(path)
    p = plan(ts, ts.disks[disk_index], slice_events)
    return check_disk(ts, p, progress)


def assemble(path, parts: list[verdict.DiskPart], docs: list[dict]) -> verdict.CheckResult:
    """The verdict document of a sliceable set from its disks' parts (in disk order)."""
    ts = traceset.load(path)
    res = verdict.assemble(SetAnalysis(ts, {}), parts, single_writer=True)
    if any(d["cuts"] for d in docs):  # uncut, the document is the whole-set one
        res.extra["slicing"] = docs
    return res


def check_set(path, *, slice_events: int = SLICE_EVENTS, use_cache: bool = True,
              progress: Callable[[str], None] | None = None) -> verdict.CheckResult:
    """``writeorder check`` one disk at a time and, on large disks, one time slice at a time (the whole-set
    path when no disk is larger than ``slice_events``, or ``slice_events`` is 0)."""
    ts = traceset.load(path)
    if not use_cache or not slice_events or not sliceable(ts) or not ts.disks:
        return verdict.check_set(path, use_cache=use_cache, progress=progress)
    store.update(ts, keep=False, progress=progress)
    plans = [plan(ts, d, slice_events) for d in ts.disks]
    if not any(len(p.cuts) for p in plans):
        return verdict.check_set(path, use_cache=use_cache, progress=progress)
    got = [check_disk(ts, p, progress) for p in plans]
    return assemble(path, [g[0] for g in got], [g[1] for g in got])
