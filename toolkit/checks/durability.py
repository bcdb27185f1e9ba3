"""Durability checks: did every write the guest was promised durable reach stable storage on the host in time?

Classes: ``flush-not-durable``, ``fua-not-durable``, ``flush-not-forwarded``, ``acked-not-durable-at-end``.
Inputs: ``DiskAnalysis.df_writes()`` / ``df_flushes()`` (guest promises with their host reality). A write whose
host side is unknown (not linked, not mapped, host trace not covering the deadline) is a coverage gap, never a
finding.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit.checks import Violation, fmt_s
from toolkit.durability import NEVER


def _host_span(da) -> tuple[int, int] | None:
    ev = da.host_events
    if ev.empty:
        return None
    return int(ev["time_ns"].min()), int(ev["time_ns"].max())


def _null(v) -> bool:
    """``pd.isna`` for the scalars met here (None, NA, NaN; numpy or Python numbers), without its dispatch."""
    if v is None or v is pd.NA:
        return True
    if isinstance(v, (int, np.integer, bool, np.bool_)):
        return False
    if isinstance(v, float):  # np.float64 too
        return v != v
    return bool(pd.isna(v))


def _req(layer: str, rid, what: str, **times) -> dict:
    d = {"layer": layer, "id": None if _null(rid) else int(rid), "what": what}
    for k, v in times.items():
        d[k] = None if _null(v) or v == NEVER else int(v)
    return d


def _durable_text(ns: int, t0: int) -> str:
    return "was not durable before the trace ended" if ns == NEVER else f"was durable on the host at {fmt_s(ns, t0)}"


def _desc_order(v: np.ndarray) -> np.ndarray:
    """Positions of ``v`` largest first, tie order as ``DataFrame.sort_values(ascending=False)`` (pandas' nargsort:
    quicksort of the reversed values, reversed back)."""
    rev = np.arange(len(v))[::-1]
    return rev[v[::-1].argsort(kind="quicksort")][::-1]


def evaluated_writes(da) -> pd.DataFrame:
    """Guest writes with a deadline (the h_ack of the flush that promised them) and the verdict columns
    ``late`` (certainly not durable by the deadline), ``maybe_late`` (inside the timing uncertainty) and
    ``gap`` (cannot be judged: unlinked, unmapped, or the host trace ends before the deadline)."""
    w = da.df_writes()
    f = da.df_flushes().set_index("rid")
    span = _host_span(da)
    w = w[w["completed"]].copy()
    w["deadline"] = w["flush_rid"].map(f["h_ack"]).astype(np.float64)
    w["f_unc"] = w["flush_rid"].map(f["h_unc"]).fillna(0).astype(np.float64)
    # FUA writes promise themselves at their own completion; so does every write on a disk the guest sees as
    # write-through (cache=writethrough/directsync: no volatile cache, so completion means durable)
    if not da.guest_write_cache:
        w["fua"] = True
    fua = w["fua"].to_numpy(bool)
    w.loc[fua, "deadline"] = w.loc[fua, "h_ack"]
    unc = w["h_unc"].fillna(0).to_numpy() + w["f_unc"].to_numpy()
    dl = w["deadline"].to_numpy()
    hd_opt = w["hd_opt_ns"].to_numpy(np.float64)
    hd_cert = w["hd_cert_ns"].to_numpy(np.float64)
    host_covers = (span is not None) & (np.nan_to_num(dl, nan=np.inf) <= (span[1] if span else 0))
    linked = w["h_handle"].notna().to_numpy() & w["mapped"].to_numpy()
    judged = ~np.isnan(dl) & linked & host_covers
    w["late"] = judged & (hd_opt > dl + unc)
    maybe = judged & ~w["late"].to_numpy() & (hd_cert > dl - unc)
    # settle near-ties by causality: a write made durable by the host flush that the guest flush itself caused
    # (issued after the guest flush reached QEMU) was durable before the guest flush completed, whatever the
    # clocks say, because QEMU completes a flush only after its host flush returned
    hf = da.df_host_flushes()
    hf = hf[hf["c_ns"].notna() & (hf["error"].fillna(0) == 0)]
    by_c = pd.Series(hf["d_ns"].to_numpy(np.int64), index=hf["c_ns"].to_numpy(np.int64))
    by_c = by_c[~by_c.index.duplicated()]
    flush_d = pd.Series(w["hd_opt_ns"].to_numpy()).map(by_c).to_numpy(np.float64)
    # the request that made the promise reached QEMU then: the flush, or the write itself when FUA/write-through
    arrival = np.where(fua, w["h_handle"].to_numpy(np.float64),
                       w["flush_rid"].map(f["h_handle"]).to_numpy(np.float64)) - unc
    caused = ~np.isnan(flush_d) & (flush_d >= arrival) & (hd_opt <= dl)
    # page cache: a host write issued while QEMU's write into the page cache was still being logged may or may
    # not carry it. A later host flush after QEMU's write had certainly completed, with no host write to those
    # sectors before it, proves the pages were already clean, so the earlier host write carried the data
    fd = np.sort(hf["d_ns"].to_numpy(np.int64))
    t_cert = w["t_cert_ns"].to_numpy(np.float64)
    k = np.searchsorted(fd, np.nan_to_num(t_cert, nan=np.inf).clip(max=2**62).astype(np.int64), side="left")
    next_flush = np.where(k < len(fd), fd[np.minimum(k, len(fd) - 1)] if len(fd) else 0, np.inf)
    clean = (w["first_host_q_cert_ns"].to_numpy(np.float64) > next_flush) & (hd_opt <= dl)
    w["maybe_late"] = maybe & ~caused & ~clean
    w["gap"] = ~np.isnan(dl) & ~(linked & host_covers)
    return w


def check(da) -> list[Violation]:
    out: list[Violation] = []
    w = evaluated_writes(da)
    f = da.df_flushes()
    t0 = da.t0
    flushes = f.set_index("rid")
    bad = w[(w["late"] | w["maybe_late"]) & ~w["fua"]]
    # one Python step per finding, on numpy columns (no per-finding DataFrame lookups or sorts)
    if len(bad):
        bad = bad.sort_values("flush_rid", kind="stable")  # groups contiguous, rows in their order within
        col = {c: bad[c].to_numpy() for c in ("rid", "sector", "nsect", "g_d", "g_c", "first_rid", "first_host_q_ns",
                                              "via_rid", "hd_opt_ns", "late")}
        hd = col["hd_opt_ns"]
        frids = bad["flush_rid"].to_numpy()
        cuts = np.flatnonzero(np.concatenate([[True], frids[1:] != frids[:-1], [True]]))
        fpos = pd.Index(flushes.index).get_indexer(frids[cuts[:-1]])
        fcol = {c: flushes[c].to_numpy() for c in ("h_ack", "g_d", "g_c", "qid", "h_handle")}
        for gi, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            frid, fp = frids[lo], fpos[gi]
            fl = {c: v[fp] for c, v in fcol.items()}
            g_hd = hd[lo:hi]
            worst = lo + int(np.argsort(g_hd, kind="quicksort")[-1])  # as DataFrame.sort_values("hd_opt_ns")
            n_late = int(col["late"][lo:hi].sum())
            certain = n_late > 0
            wq = col["first_host_q_ns"][worst]
            sent = (f"guest flush #{frid} completed at {fmt_s(fl['h_ack'], t0)} (QEMU told the guest); "
                    f"write #{int(col['rid'][worst])} (sectors {int(col['sector'][worst])}+{int(col['nsect'][worst])}), "
                    f"which it covered, reached the host disk at {fmt_s(wq if wq != NEVER else None, t0)} "
                    f"and {_durable_text(int(hd[worst]), t0)}"
                    + (f"; {hi - lo} covered writes were late" if hi - lo > 1 else ""))
            if not certain:
                sent += " (within the timing uncertainty: the host write may already have carried the data)"
            reqs = [_req("guest-block", frid, "guest flush", g_d=fl["g_d"], g_c=fl["g_c"]),
                    _req("qemu", fl["qid"], "QEMU flush request", h_handle=fl["h_handle"], h_ack=fl["h_ack"])]
            for x in lo + _desc_order(g_hd)[:8]:  # as sort_values("hd_opt_ns", ascending=False).head(8)
                reqs += [_req("guest-block", col["rid"][x], "covered write", g_d=col["g_d"][x], g_c=col["g_c"][x]),
                         _req("host-block", col["first_rid"][x], "first host write carrying its data",
                              q_ns=col["first_host_q_ns"][x]),
                         _req("host-block", col["via_rid"][x], "host write that made it durable",
                              durable_ns=col["hd_opt_ns"][x])]
            end = int(g_hd.max())
            out.append(Violation("flush-not-durable", da.disk.guest + "," + da.host_node, "host-block",
                                 int(fl["h_ack"]), None if end == NEVER else end, int(col["sector"][worst]),
                                 int(col["nsect"][worst]), reqs, not certain, sent, da.name,
                                 {"late_writes": int(hi - lo), "certain": n_late}))
    # FUA writes
    fw = w[(w["late"] | w["maybe_late"]) & w["fua"]]
    if len(fw):
        kind = "FUA write" if da.guest_write_cache else "write (on a disk it sees as write-through)"
        col = {c: fw[c].to_numpy() for c in ("rid", "sector", "nsect", "h_ack", "hd_opt_ns", "late", "g_d", "g_c",
                                             "via_rid")}
        for i in range(len(fw)):
            x = {c: v[i] for c, v in col.items()}
            sent = (f"guest {kind} #{int(x['rid'])} (sectors {int(x['sector'])}+{int(x['nsect'])}) completed at "
                    f"{fmt_s(x['h_ack'], t0)} and {_durable_text(int(x['hd_opt_ns']), t0)}"
                    + ("" if x["late"] else " (within the timing uncertainty)"))
            out.append(Violation("fua-not-durable", da.disk.guest + "," + da.host_node, "host-block",
                                 int(x["h_ack"]), None if x["hd_opt_ns"] == NEVER else int(x["hd_opt_ns"]),
                                 int(x["sector"]), int(x["nsect"]),
                                 [_req("guest-block", x["rid"], "FUA write", g_d=x["g_d"], g_c=x["g_c"]),
                                  _req("host-block", x["via_rid"], "host write", durable_ns=x["hd_opt_ns"])],
                                 not bool(x["late"]), sent, da.name))
    # flushes not forwarded: covered data not durable when the flush reached QEMU, and no host flush at all
    # until it completed
    not_durable_at_arrival = w[w["flush_rid"] >= 0]
    arr = not_durable_at_arrival["flush_rid"].map(flushes["h_handle"]).to_numpy(np.float64)
    pending = not_durable_at_arrival[not_durable_at_arrival["hd_opt_ns"].to_numpy(np.float64) > arr]
    pend_count = pending.groupby("flush_rid").size()
    nf = f[(f["host_flushes"] == 0) & (f["host_flush_bios"] == 0) & f["rid"].isin(pend_count.index)]
    if len(nf):
        col = {c: nf[c].to_numpy() for c in ("rid", "h_handle", "h_ack", "g_d", "g_c", "qid", "h_unc")}
        pend = pend_count.reindex(col["rid"]).to_numpy()
        for i in range(len(nf)):
            fl = {c: v[i] for c, v in col.items()}
            n = int(pend[i])
            sent = (f"guest flush #{int(fl['rid'])} reached QEMU at {fmt_s(fl['h_handle'], t0)} and completed at "
                    f"{fmt_s(fl['h_ack'], t0)} with no flush of the host device in between, while {n} write(s) it "
                    f"covered were not durable on the host")
            out.append(Violation("flush-not-forwarded", da.disk.guest + "," + da.host_node, "qemu",
                                 int(fl["h_handle"]), int(fl["h_ack"]), None, None,
                                 [_req("guest-block", fl["rid"], "guest flush", g_d=fl["g_d"], g_c=fl["g_c"]),
                                  _req("qemu", fl["qid"], "QEMU flush request", h_handle=fl["h_handle"],
                                       h_ack=fl["h_ack"])],
                                 bool(fl["h_unc"] > 10 * 2_000), sent, da.name, {"pending_writes": n}))
    # exposure at the end
    span = _host_span(da)
    end = w[(w["hd_opt_ns"] == NEVER) & w["mapped"] & w["h_handle"].notna()]
    if span is not None and len(end):
        sent = (f"{len(end)} write(s) acknowledged to the guest ({int(end['nsect'].sum()) * 512} bytes, first "
                f"#{int(end['rid'].iloc[0])} at sectors {int(end['sector'].iloc[0])}+{int(end['nsect'].iloc[0])}) "
                f"were still not durable on the host when its trace ended at {fmt_s(span[1], t0)}")
        out.append(Violation("acked-not-durable-at-end", da.disk.guest + "," + da.host_node, "host-block",
                             int(end["h_ack"].min()), span[1], int(end["sector"].min()), None,
                             [_req("guest-block", x.rid, "write", g_c=x.g_c) for x in end.head(50).itertuples()],
                             False, sent, da.name, {"writes": int(len(end)), "bytes": int(end["nsect"].sum()) * 512}))
    return out
