"""Migration and multiple-writer checks on shared storage.

Classes: ``migration-overlap``, ``migration-no-flush``, ``migration-source-after-handover``,
``migration-stale-read``, ``split-brain``. Host I/O is attributed to QEMU processes by the submitting thread
(``toolkit.migration.writers``); I/O of other threads (kworker page-cache writeback, journal, sync) belongs to
no side and is reported as such. The handover is the destination's resume (``runstate ... running``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from toolkit import migration
from toolkit.checks import Violation, fmt_s
from toolkit.checks.durability import _req
from toolkit.durability import NEVER


def _shared(sa):
    """One DiskAnalysis per host device (the shared storage), the first disk that names it."""
    out = {}
    for da in sa.disks:
        if da.host_traces and da.disk.host_device not in out:
            out[da.disk.host_device] = da
    return list(out.values())


def check(sa) -> tuple[list[Violation], dict | None]:
    vs: list[Violation] = []
    doc = None
    h = migration.handover(sa)
    for da in _shared(sa):
        w = migration.writers(da)
        hw = da.df_host_writes()[["rid", "durable_ns"]]
        w = w.merge(hw, on="rid", how="left")
        w["durable_ns"] = w["durable_ns"].fillna(NEVER).astype(np.int64) if len(w) else w.get("durable_ns")
        if h is not None:
            v, doc = _handover_checks(da, w, h)
            vs += v
        vs += _split_brain(da, w, h)
    return vs, doc


def _handover_checks(da, w: pd.DataFrame, h: migration.Handover) -> tuple[list[Violation], dict]:
    t0 = da.t0
    P = h.point
    src, dst = h.source.index, h.destination.index
    S = w[(w["trace"] == src)]
    D = w[(w["trace"] == dst)]
    Sw = S[(S["op"] == "write") & S["q_ns"].notna()]
    Dw = D[(D["op"] == "write") & D["q_ns"].notna()]
    out: list[Violation] = []
    node = f"{h.source.node},{h.destination.node}"
    before = Sw[Sw["q_ns"] < P] if P == P else Sw
    src_done = h.times.get("source_completed", np.nan)
    src_end = src_done if src_done == src_done else P
    # source still writing or not durable when the destination writes
    first_d = Dw.iloc[Dw["q_ns"].argmin()] if len(Dw) else None
    if first_d is not None and len(before):
        late = before[before["durable_ns"] > first_d["q_ns"]]
        if len(late):
            worst = late.iloc[late["durable_ns"].argmax()]
            end = int(worst["durable_ns"])
            sent = (f"the destination's first write (host #{int(first_d['rid'])}, sectors {int(first_d['sector'])}+"
                    f"{int(first_d['nsect'])}) was issued at {fmt_s(first_d['q_ns'], t0)} while {len(late)} write(s) of "
                    f"the source were not yet durable; the last, host #{int(worst['rid'])} (sectors "
                    f"{int(worst['sector'])}+{int(worst['nsect'])}), "
                    + ("never became durable in the trace" if end == NEVER else f"became durable at {fmt_s(end, t0)}"))
            out.append(Violation("migration-overlap", node, "host-block", int(first_d["q_ns"]),
                                 None if end == NEVER else end, int(worst["sector"]), int(worst["nsect"]),
                                 [_req("host-block", worst["rid"], "source write not yet durable", q_ns=worst["q_ns"],
                                       durable_ns=worst["durable_ns"]),
                                  _req("host-block", first_d["rid"], "first destination write", q_ns=first_d["q_ns"])],
                                 False, sent, da.name, {"source_writes_not_durable": int(len(late))}))
    # the source handed over with writes not durable
    if P == P and len(before):
        nd = before[before["durable_ns"] > P]
        if len(nd):
            worst = nd.iloc[nd["q_ns"].argmax()]
            sent = (f"the destination resumed the guest at {fmt_s(P, t0)} but {len(nd)} write(s) of the source were "
                    f"not durable then: no flush of the device followed the source's last write #{int(worst['rid'])} "
                    f"(sectors {int(worst['sector'])}+{int(worst['nsect'])}, issued {fmt_s(worst['q_ns'], t0)}) "
                    f"before the handover")
            out.append(Violation("migration-no-flush", h.source.node, "host-block", int(worst["q_ns"]), int(P),
                                 int(worst["sector"]), int(worst["nsect"]),
                                 [_req("host-block", worst["rid"], "source write", q_ns=worst["q_ns"],
                                       durable_ns=worst["durable_ns"])], False, sent, da.name,
                                 {"writes": int(len(nd))}))
    # the source issued I/O after the handover
    if src_end == src_end:
        after = S[S["q_ns"].notna() & (S["q_ns"] > src_end)]
        if len(after):
            a0 = after.iloc[after["q_ns"].argmin()]
            resumed = h.times.get("source_resumed_after_handover", np.nan)
            why = f"; the source's VM was running again from {fmt_s(resumed, t0)}" if resumed == resumed else ""
            sent = (f"the source completed the migration at {fmt_s(src_end, t0)} and then issued {len(after)} host "
                    f"I/O(s) to the shared device, the first (host #{int(a0['rid'])}, {a0['op']} sectors "
                    f"{int(a0['sector'])}+{int(a0['nsect'])}) at {fmt_s(a0['q_ns'], t0)}{why}")
            out.append(Violation("migration-source-after-handover", h.source.node, "host-block", int(a0["q_ns"]),
                                 int(after["q_ns"].max()), int(a0["sector"]), int(a0["nsect"]),
                                 [_req("host-block", r.rid, f"source {r.op} after handover", q_ns=r.q_ns)
                                  for r in after.head(20).itertuples()], False, sent, da.name,
                                 {"ios": int(len(after)), "writes": int((after["op"] == "write").sum())}))
    # destination reads of sectors whose newest source write had not reached the device
    out += _stale_reads(da, D, h)
    doc = {
        "source": {"trace": h.source.path, "pid": h.source.pid, "node": h.source.node},
        "destination": {"trace": h.destination.path, "pid": h.destination.pid, "node": h.destination.node},
        "switchover_ns": {k: (None if v != v else int(v)) for k, v in h.times.items()},
        "switchover_s": {k: (None if v != v else round((v - t0) / 1e9, 6)) for k, v in h.times.items()},
        "reference_clock": da.sa.ref,
        "source_io": migration.io_summary(S, t0), "destination_io": migration.io_summary(D, t0),
        "unattributed_host_writes": int(((w["op"] == "write") & w["trace"].isna()).sum()),
        "notes": h.notes,
        "verdict": "unsafe" if out else ("safe" if P == P else "unknown"),
        "violations": sorted({v.cls for v in out}),
    }
    return out, doc


def _stale_reads(da, D: pd.DataFrame, h: migration.Handover) -> list[Violation]:
    reads = D[(D["op"] == "read") & D["q_ns"].notna() & (D["nsect"] > 0)]
    if reads.empty:
        return []
    wr = da.df_writes()
    q = da.df_qemu_requests()
    if wr.empty or q.empty or "trace" not in q.columns:
        return []
    src_q = q.loc[q["trace"] == h.source.index, "qid"]
    sw = wr[wr["qid"].isin(src_q) & wr["mapped"]]
    if sw.empty:
        return []
    from toolkit import mapping
    pieces = mapping.to_host(da.extents, sw["sector"].to_numpy(), sw["nsect"].to_numpy())
    out = []
    ack = sw["h_ack"].to_numpy(np.float64)[pieces["i"].to_numpy()]
    first_q = sw["first_host_q_ns"].to_numpy(np.int64)[pieces["i"].to_numpy()]
    for r in reads.itertuples():  # destination reads are few (metadata at activation, guest reads)
        hit = ((pieces["h_sector"] < r.sector + r.nsect) & (pieces["h_sector"] + pieces["nsect"] > r.sector)
               & (ack < r.q_ns) & (first_q > r.q_ns)).to_numpy()
        if hit.any():
            k = int(np.flatnonzero(hit)[0])
            gw = sw.iloc[int(pieces["i"].iloc[k])]
            sent = (f"the destination read sectors {int(r.sector)}+{int(r.nsect)} at {fmt_s(r.q_ns, da.t0)}, but the "
                    f"source's write #{int(gw['rid'])} to them, acknowledged at {fmt_s(gw['h_ack'], da.t0)}, had not "
                    f"reached the device yet: the destination read stale data")
            out.append(Violation("migration-stale-read", h.destination.node, "host-block", int(r.q_ns), None,
                                 int(r.sector), int(r.nsect),
                                 [_req("guest-block", gw["rid"], "source guest write", g_d=gw["g_d"]),
                                  _req("host-block", r.rid, "destination read", q_ns=r.q_ns)], False, sent, da.name))
    return out


def _split_brain(da, w: pd.DataFrame, h: migration.Handover | None) -> list[Violation]:
    """Two QEMU processes writing the shared device in overlapping time without a handover between them."""
    t0 = da.t0
    out = []
    wr = w[(w["op"] == "write") & w["q_ns"].notna() & w["trace"].notna()]
    procs = sorted(int(x) for x in wr["trace"].unique())
    for a, b in itertools.combinations(procs, 2):
        A, B = wr[wr["trace"] == a], wr[wr["trace"] == b]
        if h is not None and {a, b} == {h.source.index, h.destination.index}:
            resumed = h.times.get("source_resumed_after_handover", np.nan)
            if resumed != resumed:
                continue  # a migration with its handover: checked by the migration classes
            src = A if a == h.source.index else B
            src = src[src["q_ns"] > resumed]
            A, B = (src, B) if a == h.source.index else (A, src)
            if A.empty or B.empty:
                continue
        lo = max(A["q_ns"].min(), B["q_ns"].min())
        hi = min(A["q_ns"].max(), B["q_ns"].max())
        if not lo < hi:
            continue
        both = _blocks_both(A, B)
        ta, tb = da.sa.ts.traces[a], da.sa.ts.traces[b]
        ia = A[(A["q_ns"] >= lo) & (A["q_ns"] <= hi)]
        ib = B[(B["q_ns"] >= lo) & (B["q_ns"] <= hi)]
        sent = (f"QEMU processes {ta.pid} ({ta.path}) and {tb.pid} ({tb.path}) both wrote to the shared device "
                f"{da.disk.host_device} from {fmt_s(lo, t0)} to {fmt_s(hi, t0)} ({len(ia)} and {len(ib)} writes in "
                f"that window) with no handover between them; {len(both)} 4-KiB blocks were written by both")
        reqs = [_req("host-block", ia["rid"].iloc[0], f"write by {ta.pid}", q_ns=ia["q_ns"].iloc[0]),
                _req("host-block", ib["rid"].iloc[0], f"write by {tb.pid}", q_ns=ib["q_ns"].iloc[0])]
        out.append(Violation("split-brain", f"{ta.node}:{ta.pid},{tb.node}:{tb.pid}", "host-block", int(lo), int(hi),
                             None, None, reqs, False, sent, da.name,
                             {"writers": [ta.pid, tb.pid], "writes_in_window": [int(len(ia)), int(len(ib))],
                              "blocks_4k_written_by_both": int(len(both)),
                              "blocks_4k": [int(x) for x in both[:200]]}))
    return out


def _blocks_both(A: pd.DataFrame, B: pd.DataFrame) -> np.ndarray:
    """4-KiB blocks (host sector // 8) written by both sets of bios."""
    def blocks(x):
        s = x["sector"].to_numpy(np.int64)
        e = s + x["nsect"].to_numpy(np.int64)
        first, last = s // 8, (e - 1) // 8
        cnt = last - first + 1
        rows = np.repeat(np.arange(len(s)), cnt)
        return np.unique(first[rows] + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)))
    return np.intersect1d(blocks(A), blocks(B))
