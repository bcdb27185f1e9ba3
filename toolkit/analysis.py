"""Analyses over a parsed trace set, one disk at a time (the shape of ARM LISA's analyses).

``SetAnalysis.load(path)`` parses (or reads from the cache) every trace of a set; ``.disks`` gives a
:class:`DiskAnalysis` per ``[[disk]]``. A DiskAnalysis exposes ``df_*`` methods (DataFrames in the schemas of
``toolkit.events`` plus documented extra columns), each computed once and cached, and ``requires()`` which
says what each check needs and whether the set has it: a missing trace gives "cannot check: record X", never
a silent pass.

Clocks: every ``h_*`` column is ns on the reference clock (the first host's CLOCK_MONOTONIC); ``g_*`` columns
are the guest's CLOCK_MONOTONIC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from toolkit import cache_mode, clocks, durability, lineage, mapping, qemu, requests, store, traceset
from toolkit.events import BLOCK_EVENTS
from toolkit.parsers import ParseResult
from toolkit.traceset import Disk, Trace, TraceSet

#: slack (ns) for QEMU log times: microsecond resolution plus the realtime->monotonic pair uncertainty
LOG_SLACK_NS = 2_000


@dataclass
class Missing:
    """A check that cannot be made, and what to record next time."""

    check: str
    reason: str

    def to_json(self) -> dict:
        return {"check": self.check, "reason": self.reason}


class SetAnalysis:
    """A parsed trace set: traces by index, the reference clock, one DiskAnalysis per disk."""

    def __init__(self, ts: TraceSet, results: dict[int, ParseResult]):
        self.ts = ts
        self.results = results
        self.ref = clocks.reference_clock(ts)
        self._qoff: dict[int, clocks.Offset | None] = {}
        #: per disk name, what a time slice of a larger set takes from the whole (see toolkit.slicing): ``t0``,
        #: ``ids`` (first guest_req / host_bios / qemu_req id of the slice), ``inferred_direct``,
        #: ``guest_write_cache``
        self.context: dict[str, dict] = {}

    @classmethod
    def load(cls, path, *, use_cache: bool = True, progress=None) -> SetAnalysis:
        ts = traceset.load(path)
        return cls(ts, store.ingest(ts, use_cache=use_cache, progress=progress))

    def events(self, t: Trace) -> pd.DataFrame:
        return self.results[t.index].events

    def rejects(self) -> pd.DataFrame:
        parts = [r.rejects for r in self.results.values() if len(r.rejects)]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    @cached_property
    def disks(self) -> list[DiskAnalysis]:
        return [DiskAnalysis(self, d) for d in self.ts.disks]

    def realtime_offset(self, node: str) -> clocks.Offset | None:
        return clocks.realtime_to_monotonic(self.ts, node)

    def qemu_offset(self, t: Trace) -> clocks.Offset | None:
        """How a QEMU trace's clock maps onto the reference clock.

        On the reference host: the manifest's realtime/monotonic pairs (log backend) or nothing to do (simple
        backend: CLOCK_MONOTONIC). On another node, or without pairs: causal pairs with the host-block trace
        (the host queues a QEMU job's I/O between QEMU's submission and completion of that job).
        """
        if t.index in self._qoff:
            return self._qoff[t.index]
        ref_node = self.ref.split(":")[0]
        clock = self.results[t.index].meta.get("clock")
        off = None
        if t.node == ref_node:
            if clock == "realtime":
                off = self.realtime_offset(t.node)
            elif clock == "monotonic":
                off = clocks.Offset.constant(f"{t.node}:monotonic", self.ref, 0, 0, "same clock")
        if off is None and clock is not None:
            off = lineage.qemu_host_offset(self, t)
        self._qoff[t.index] = off
        return off

    def qemu_to_ref(self, times: pd.Series, t: Trace) -> np.ndarray:
        """QEMU trace times (Int64 ns on the trace's clock) -> reference clock (float ns; NaN if unknown)."""
        v = pd.array(times, dtype="Int64")
        off = self.qemu_offset(t)
        if off is None:
            return np.full(len(v), np.nan)
        if len(off.knots_t) == 1:  # integer ns: realtime does not fit a float
            return (v + int(off.value(np.array([0]))[0])).to_numpy(np.float64, na_value=np.nan)
        base = int(off.knots_t[0])
        rel = (v - base).to_numpy(np.float64, na_value=np.nan)
        return rel + np.interp(rel, (off.knots_t - base).astype(np.float64), off.mid().astype(np.float64)) + base

    def qemu_traces(self, guest: str | None = None) -> list[Trace]:
        return [t for t in self.ts.traces if t.layer == "qemu" and (guest is None or t.guest in (guest, None))]


def _dev_filter(ev: pd.DataFrame, device: str | None) -> pd.DataFrame:
    if device is None or ev.empty:
        return ev
    d = ev["device"]
    if isinstance(d.dtype, pd.CategoricalDtype):  # compare codes, not millions of strings
        code = d.cat.categories.astype(str).get_indexer([device])[0]
        if code < 0:
            return ev.iloc[:0]
        m = d.cat.codes.to_numpy() == code
        return ev if m.all() else ev[m]
    return ev[d.astype(str) == device]


@dataclass
class DiskAnalysis:
    """Everything about one virtual disk through the layers."""

    sa: SetAnalysis
    disk: Disk
    _cache: dict = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- traces
    @property
    def ctx(self) -> dict:
        """What this disk's time slice takes from the whole set (empty for a whole set)."""
        return self.sa.context.get(self.name, {})

    def _numbered(self, key: str, df: pd.DataFrame, col: str = "rid") -> pd.DataFrame:
        """Ids of a slice continue those of the slices before it (``ctx['ids'][key]``)."""
        base = self.ctx.get("ids", {}).get(key, 0)
        if base and len(df):
            df[col] += base
            if col == "rid" and "parent" in df.columns:
                df["parent"] += base
        return df

    @property
    def ts(self) -> TraceSet:
        return self.sa.ts

    @property
    def name(self) -> str:
        return self.disk.name or f"{self.disk.guest}:{self.disk.guest_device}"

    def _traces(self, layer: str, node: str | None = None) -> list[Trace]:
        return [t for t in self.ts.traces if t.layer == layer and (node is None or t.node == node)]

    @cached_property
    def guest_traces(self) -> list[Trace]:
        return self._traces("guest-block", self.disk.guest)

    @cached_property
    def host_traces(self) -> list[Trace]:
        return self._traces("host-block")

    @cached_property
    def qemu_traces(self) -> list[Trace]:
        """The QEMU processes that served this disk's guest: its own, and when its own is the destination of a
        migration, the source too (it served the guest before the handover)."""
        own = [t for t in self.sa.qemu_traces() if t.guest == self.disk.guest]
        if not own:
            own = [t for t in self.sa.qemu_traces() if t.guest is None]
        if any(t.role == "destination" for t in own):
            own += [t for t in self.sa.qemu_traces() if t.role == "source" and t not in own]
        return own

    @cached_property
    def served_until(self) -> dict[int, float]:
        """trace index -> reference time after which that QEMU did not serve this disk's guest (a migration
        source that is another guest node's process: until the destination resumed)."""
        out: dict[int, float] = {}
        own_guest = {t.index for t in self.qemu_traces if t.guest == self.disk.guest}
        if len(own_guest) < len(self.qemu_traces):
            from toolkit import migration

            h = migration.handover(self.sa)
            if h is not None and h.point == h.point:
                for t in self.qemu_traces:
                    if t.index not in own_guest:
                        out[t.index] = h.point
        return out

    @cached_property
    def host_node(self) -> str:
        if self.host_traces:
            return self.host_traces[0].node
        return self.sa.ref.split(":")[0]

    def _events(self, ts: list[Trace], device: str | None) -> pd.DataFrame:
        parts = [_dev_filter(self.sa.events(t), device) for t in ts]
        parts = [p for p in parts if len(p)]
        if not parts:
            return BLOCK_EVENTS.empty()
        ev = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        t, pos = ev["time_ns"].to_numpy(), ev["pos"].to_numpy()
        dt, dp = np.diff(t), np.diff(pos)
        if len(parts) == 1 and ((dt > 0) | ((dt == 0) & (dp >= 0))).all():
            return ev  # already in (time, pos) order: a sort would only copy it
        return ev.sort_values(["time_ns", "pos"], kind="stable")

    @cached_property
    def guest_events(self) -> pd.DataFrame:
        return self._events(self.guest_traces, self.disk.guest_device)

    @cached_property
    def host_events(self) -> pd.DataFrame:
        return self._events(self.host_traces, self.disk.host_device)

    # ---------------------------------------------------------------- requirements
    def requires(self) -> list[Missing]:
        """What this disk's checks cannot do with the traces at hand."""
        out = []
        if not self.guest_traces:
            out.append(Missing("guest promises", "no guest-block trace: record blktrace of the virtual disk inside "
                                                 "the guest (writeorder capture guest)"))
        if not self.host_traces:
            out.append(Missing("host durability", "no host-block trace: record blktrace (or the ftrace blk tracer) "
                                                  "of the device beneath the image"))
        if not self.qemu_traces:
            out.append(Missing("lineage through QEMU", "no QEMU trace: enable virtio_blk_*, blk_co_*, bdrv_co_*, "
                                                       "thread_pool_* trace events"))
        elif not self.qemu_has_times:
            out.append(Missing("QEMU timing", "the QEMU log has no timestamps: run QEMU with -msg timestamp=on; "
                                              "guest requests are placed on the host clock by clock alignment "
                                              "(uncertain)"))
        return out

    @cached_property
    def qemu_has_times(self) -> bool:
        return any(self.sa.results[t.index].events["time_ns"].notna().any() for t in self.qemu_traces)

    @cached_property
    def t0(self) -> int:
        """Origin (ns, reference clock) of the relative times in sentences and plots: the host trace's start."""
        if "t0" in self.ctx:
            return self.ctx["t0"]
        if len(self.host_events):
            return int(self.host_events["time_ns"].min())
        return 0

    # ---------------------------------------------------------------- clocks
    def qemu_to_ref(self, t: pd.Series, trace: Trace) -> np.ndarray:
        """QEMU times to the reference clock (see SetAnalysis.qemu_offset)."""
        return self.sa.qemu_to_ref(t, trace)

    # ---------------------------------------------------------------- requests
    def df_guest_bios(self) -> pd.DataFrame:
        """Guest bios (REQUESTS; guest clock; extra btt columns q2d_ns, d2c_ns, q2c_ns)."""
        return self._memo("guest_bios", lambda: self._numbered("guest_bios", requests.block_requests(
            self.guest_events, node=self.disk.guest, layer="guest-block")))

    def df_guest_requests(self) -> pd.DataFrame:
        """What the guest sent to the virtual disk: one row per issued request (REQUESTS, guest clock)."""
        return self._memo("guest_req", lambda: self._numbered("guest_req", requests.dispatched_requests(
            self.guest_events, node=self.disk.guest, layer="guest-block")))

    def df_host_bios(self) -> pd.DataFrame:
        """Host bios on the device beneath the image (REQUESTS, reference clock)."""
        return self._memo("host_bios", lambda: self._numbered("host_bios", requests.block_requests(
            self.host_events, node=self.host_node, layer="host-block")))

    def df_host_flushes(self) -> pd.DataFrame:
        """Device flushes of the host device: d_ns, c_ns, error, pid (reference clock)."""
        return self._memo("host_flushes", lambda: requests.device_flushes(self.host_events))

    def df_qemu_requests(self) -> pd.DataFrame:
        """QEMU's virtio-blk requests (REQUESTS + h_* columns on the reference clock, see toolkit.qemu)."""
        def build():
            parts = []
            for t in self.qemu_traces:
                ev = self.sa.results[t.index].events
                r = qemu.qemu_requests(ev, node=t.node, role=t.role, pid=t.pid)
                # when QEMU's data job (not a flush job that followed it) completed: the data is then in the
                # host's page cache or on the device
                j = qemu.host_jobs(ev)
                j = j[(j["rid"] >= 0) & j["op"].isin(["write", "write_zeroes", "discard"])]
                dd = j.dropna(subset=["complete_ns"]).groupby("rid")["complete_ns"].max()
                pos = pd.Index(dd.index).get_indexer(r["rid"].to_numpy())
                if len(dd):
                    vals = dd.to_numpy(np.int64)[np.maximum(pos, 0)]
                    r["done_ns"] = pd.Series(pd.array(np.where(pos >= 0, vals, 0), dtype="Int64")).where(
                        pos >= 0, pd.Series(pd.array(r["done_ns"], dtype="Int64")))
                r["trace"] = t.index
                r["role"] = t.role
                for c in ("q_ns", "d_ns", "c_ns", "sub_ns", "done_ns"):
                    if c in r.columns:
                        r["h_" + c[:-3]] = self.qemu_to_ref(r[c], t)
                if t.index in self.served_until:
                    r = r[~(r["h_c"] > self.served_until[t.index])]
                parts.append(r)
            if not parts:
                return pd.DataFrame()
            out = pd.concat(parts, ignore_index=True)
            out["qid"] = np.arange(len(out))
            return self._numbered("qemu_req", out, "qid")
        return self._memo("qemu_req", build)

    @cached_property
    def extents(self) -> pd.DataFrame:
        return mapping.build(self.disk.mapping, self.ts.root)

    # ---------------------------------------------------------------- lineage
    def df_lineage(self) -> pd.DataFrame:
        """Guest requests linked to QEMU requests: one row per guest request.

        Columns: rid (guest), op, sector, nsect, g_d, g_c (guest clock), qid (QEMU request, -1 if unlinked),
        h_handle, h_sub, h_done, h_ack (reference clock: QEMU received, submitted to the host, host I/O
        done, completed to the guest), h_unc (ns of uncertainty of the h_* times), reason (why unlinked).
        """
        return self._memo("lineage", self._lineage)

    def _lineage(self) -> pd.DataFrame:
        return lineage.link_guest_qemu(self)

    @cached_property
    def guest_offset(self) -> clocks.Offset | None:
        off = lineage.guest_clock(self)
        fallback = self.ctx.get("guest_offset")  # a time slice without causal pairs: the slices' before it
        if fallback is not None and (off is None or not clocks.is_causal(off)):
            return fallback
        return off

    # ---------------------------------------------------------------- durability
    def df_host_writes(self) -> pd.DataFrame:
        """Host writes with ``durable_ns`` (reference clock; ``durability.NEVER`` if never) and their pieces
        in guest sectors (``g_sector``/``g_nsect`` of the first piece; -1 outside the image)."""
        def build():
            b = self.df_host_bios()
            w = b[(b["op"].isin(["write", "discard"])) & (b["nsect"] > 0)].copy()
            # a request seen only from its dispatch (no Q of its own) was issued by then
            w["q_ns"] = w["q_ns"].fillna(w["d_ns"])
            w = w[w["q_ns"].notna()]
            w["durable_ns"] = durability.host_durable(w, self.df_host_flushes(),
                                                      volatile_cache=self.host_volatile_cache)
            return w.reset_index(drop=True)
        return self._memo("host_writes", build)

    @property
    def host_volatile_cache(self) -> bool:
        return True

    @cached_property
    def guest_write_cache(self) -> bool:
        """Does the guest see a volatile write cache (and so rely only on flushes and FUA)? See
        cache_mode.write_cache_seen (a time slice takes the whole disk's answer from its context)."""
        if self.disk.guest_write_cache is None and "guest_write_cache" in self.ctx:
            return self.ctx["guest_write_cache"]
        g = self.df_guest_requests()
        return cache_mode.write_cache_seen(self.disk, int((g["op"] == "flush").sum()), self.durable_by_ack)

    def durable_by_ack(self) -> tuple[int, int]:
        """(guest writes durable on the host by QEMU's completion, completed linked guest writes)."""
        if not (self.guest_traces and self.host_traces):
            return 0, 0
        w = self.df_writes()
        w = w[w["completed"] & w["h_ack"].notna()]
        return int((w["hd_opt_ns"] <= w["h_ack"]).sum()), int(len(w))

    @cached_property
    def direct_counts(self) -> tuple[int, int] | None:
        """(linked guest writes carried by a host write issued while QEMU's write was in flight, linked guest
        writes measured), or None when it cannot be measured (see lineage.direct_io_counts)."""
        return lineage.direct_io_counts(self)

    @cached_property
    def inferred_direct(self) -> bool:
        """Host writes carry guest writes synchronously (O_DIRECT: cache=none / directsync): cache_mode.is_direct."""
        if "inferred_direct" in self.ctx:
            return self.ctx["inferred_direct"]
        return cache_mode.is_direct({"direct": self.direct_counts}, self.disk.cache)

    def df_writes(self) -> pd.DataFrame:
        """Guest writes with their host reality. One row per guest write request (df_guest_requests).

        Extra columns: qid, h_handle, h_sub, h_done, h_ack, h_unc (reference clock), flush_rid (the first
        guest flush issued after the write completed: it promised the write durable; -1 none),
        hd_opt_ns / hd_cert_ns (durable on the host: counting host writes issued from QEMU's submission /
        only from QEMU's completion of the write; ``NEVER`` = not within the trace), first_host_q_ns,
        via_rid (host bio that made its last sector durable), mapped (bool).
        """
        return self._memo("writes", self._writes)

    def _writes(self) -> pd.DataFrame:
        return lineage.guest_writes_durability(self)

    def df_flushes(self) -> pd.DataFrame:
        """Guest flushes (the promises) with their QEMU and host side: rid, g_d, g_c, qid, h_handle, h_ack,
        host_flushes (device flushes of the host issued in [h_handle, h_ack]), new_writes (guest writes
        first promised by this flush), late_writes (those not durable on the host by h_ack)."""
        return self._memo("flushes", lambda: lineage.guest_flushes(self))

    def df_exposure(self) -> pd.DataFrame:
        """At-risk set over time (reference clock): time_ns, writes, bytes."""
        def build():
            w = self.df_writes()
            w = w[w["mapped"] & w["h_handle"].notna()]
            end = int(self.host_events["time_ns"].max()) if len(self.host_events) else None
            return durability.exposure(w["h_sub"].fillna(w["h_handle"]).to_numpy(np.int64), w["hd_opt_ns"].to_numpy(np.int64),
                                       (w["nsect"] * 512).to_numpy(np.int64), end)
        return self._memo("exposure", build)

    def _memo(self, key, fn):
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

