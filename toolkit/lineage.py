"""Lineage: guest request -> QEMU request -> host writes, and the guest clock on the reference timeline.

* :func:`link_guest_qemu` links each guest request (what the guest sent to its virtual disk) to the QEMU
  virtio-blk request that served it: same op and extent, in order, nearest in time after a coarse clock
  offset (reference pairs, else rank-matched writes). Never a plain join: a sector is written many times.
* :func:`guest_clock` aligns the guest clock with the host from the linked pairs (causal bounds, see
  ``toolkit.clocks``), falling back to the manifest's reference pairs.
* :func:`guest_writes_durability` maps each guest write through the image mapping to host sectors and finds
  when its data (or newer data) was durable on the host device (``durability.carried_durable``).
* :func:`guest_flushes` gives each guest flush with what it promised and what the host did meanwhile.

Times: ``g_*`` guest CLOCK_MONOTONIC ns; ``h_*`` reference clock ns; sectors of 512 bytes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit import clocks, durability, mapping

SLACK_NS = 2_000          # QEMU log resolution (1 us) + realtime/monotonic pair uncertainty
MATCH_TOL_NS = 200_000_000  # guest<->QEMU matching window around the coarse offset
FINE_TOL_NS = 5_000_000     # the same after the offset is refined from the linked writes
WIDE_TOL_NS = 30_000_000    # last rounds, for what is left (a guest slow to see a completion under TCG)
NEVER = durability.NEVER


def _guest_side(da) -> pd.DataFrame:
    g = da.df_guest_requests()
    g = g[g["op"].isin(["write", "flush", "read", "discard"])]
    return pd.DataFrame({
        "rid": g["rid"].to_numpy(), "op": g["op"].astype(object).to_numpy(),
        "sector": g["sector"].to_numpy(), "nsect": g["nsect"].to_numpy(),
        "g_d": g["d_ns"].to_numpy(np.int64),
        "g_c": g["c_ns"].astype("Float64").to_numpy(np.float64, na_value=np.nan),
        "error": g["error"].astype("Float64").to_numpy(np.float64, na_value=np.nan),
        "fua": g["fua"].to_numpy(bool),
    })


def _qemu_side(da) -> pd.DataFrame:
    q = da.df_qemu_requests()
    if q.empty:
        return q
    q = q[q["op"].isin(["write", "flush", "read", "discard", "write_zeroes"])].copy()
    q["sector"] = q["sector"].fillna(-1).astype(np.int64)
    q["nsect"] = q["nsect"].fillna(0).astype(np.int64)
    q.loc[q["op"] == "flush", ["sector", "nsect"]] = (-1, 0)
    first = q[[c for c in ("h_q", "h_d", "h_sub", "h_c") if c in q.columns]].min(axis=1)
    q["h_handle"] = q["h_q"].where(q["h_q"].notna(), first) if "h_q" in q.columns else first
    q["h_ack"] = q["h_c"]
    q["h_sub"] = q["h_sub"] if "h_sub" in q.columns else q.get("h_d", q["h_handle"])
    q["h_done"] = q["h_done"] if "h_done" in q.columns else q["h_ack"]
    return q


def link_guest_qemu(da) -> pd.DataFrame:
    g = _guest_side(da)
    q = _qemu_side(da)
    g["qid"] = -1
    g["reason"] = ""
    for c in ("h_handle", "h_sub", "h_done", "h_ack"):
        g[c] = np.nan
    g["h_unc"] = np.nan
    if q.empty or not da.qemu_has_times:
        g["reason"] = "no QEMU trace" if q.empty else "QEMU log without timestamps"
        return _align_only(da, g)
    gw = g[g["op"] == "write"].rename(columns={"g_d": "t"})[["sector", "nsect", "t"]]
    qw = q[q["op"] == "write"].rename(columns={"h_handle": "t"})[["sector", "nsect", "t"]]
    off0 = clocks.coarse_guest_offset(da.ts, da.disk.guest, da.host_node, gw, qw.dropna())
    if off0 is None:
        g["reason"] = "no coarse clock offset (no reference pairs, no writes in common)"
        return g
    # pass 1: writes and reads (their extents are distinctive) nearest around the coarse-aligned issue time
    right = q.dropna(subset=["h_ack"]).assign(key=lambda x: _key(x))
    data = g[g["op"] != "flush"]
    m1 = _nearest(data.assign(t=(data["g_d"] + off0).astype(np.int64)),
                  right.dropna(subset=["h_handle"]).assign(t=lambda x: x["h_handle"].astype(np.int64)),
                  MATCH_TOL_NS)
    # refined offset as a function of guest time: midpoints of each pair's causal bounds, smoothed
    pairs = data.set_index("rid").loc[m1.index]
    qi = q.set_index("qid")
    lo = qi.loc[m1.to_numpy(), "h_ack"].to_numpy() - pairs["g_c"].to_numpy()
    hi = qi.loc[m1.to_numpy(), "h_handle"].to_numpy() - pairs["g_d"].to_numpy()
    ok = ~np.isnan(lo) & ~np.isnan(hi)
    if ok.sum() >= 3:
        gd = pairs["g_d"].to_numpy()[ok]
        order = np.argsort(gd)
        # robust to a few mislinked pairs: rolling medians of each pair's bounds (the strict envelope, which a
        # single bad pair can bend, is computed later from the final links in toolkit.clocks)
        # The window does not reach across an idle stretch longer than MATCH_TOL_NS (the clocks may have moved
        # meanwhile; and a time slice cut there, toolkit.slicing, sees what the whole trace sees).
        gd_s = gd[order]
        grp = np.concatenate([[0], np.cumsum(np.diff(gd_s) > MATCH_TOL_NS)])
        df = pd.DataFrame({"lo": lo[ok][order], "hi": hi[ok][order], "grp": grp})
        med = df.groupby("grp")[["lo", "hi"]].rolling(15, center=True, min_periods=1).median()
        med = med.reset_index(level=0, drop=True).sort_index()
        kt = gd[order].astype(np.float64)
        mid = ((med["lo"] + med["hi"]) / 2).to_numpy()
        kl = med["lo"].to_numpy()
    else:
        kt, mid, kl = np.array([0.0]), np.array([float(off0)]), np.array([float(off0)])
    # pass 2: every request, completion against completion (QEMU always logs the completion; a flush has no
    # arrival event), with the refined offset and a tight window
    # completion against completion, nearest, with the refined offset: first tight, then wider for the rest
    gc = g["g_c"].to_numpy()
    t2 = np.where(np.isnan(gc), g["g_d"].to_numpy(), gc)
    segs = _segments(g["g_d"].to_numpy(np.float64))
    left = g.assign(t=(t2 + _interp_seg(g["g_d"].to_numpy(), segs, kt, mid)).astype(np.int64))
    right2 = right.assign(t=lambda x: x["h_ack"].astype(np.int64))
    m = _nearest(left, right2, FINE_TOL_NS)
    for tol in (FINE_TOL_NS, FINE_TOL_NS, WIDE_TOL_NS, WIDE_TOL_NS):
        # requests that lost a contested QEMU request to a nearer one try the next nearest
        rest = left[~left["rid"].isin(m.index)]
        free = right2[~right2["qid"].isin(m.to_numpy())]
        if rest.empty or free.empty:
            break
        more = _nearest(rest, free, tol)
        m = pd.concat([m, more])
    # what the fine pass left unlinked keeps its distinctive-extent link of pass 1 when that QEMU request is free
    keep = m1[~m1.index.isin(m.index) & ~m1.isin(m.to_numpy())]
    m = pd.concat([m, keep])
    g["qid"] = g["rid"].map(m).fillna(-1).astype(np.int64)
    has = g["qid"] >= 0
    for c in ("h_handle", "h_sub", "h_done", "h_ack"):
        g.loc[has, c] = g.loc[has, "qid"].map(qi[c]).to_numpy(np.float64)
    g.loc[has, "h_unc"] = SLACK_NS
    # QEMU 7.2 logs no arrival for a flush: place it at the guest's issue on the refined offset (within the
    # causal window: not after QEMU completed it), and mark the arrival uncertain by that offset's spread
    fl = has & (g["op"] == "flush")
    gd_f = g.loc[fl, "g_d"].to_numpy()
    earliest = gd_f + _interp_seg(gd_f, segs, kt, kl)  # the earliest arrival the causal bounds allow
    g.loc[fl, "h_handle"] = np.minimum(earliest, g.loc[fl, "h_ack"].to_numpy())
    # only the arrival is estimated; QEMU's completion (the deadline) is logged
    g["h_handle_unc"] = g["h_unc"]
    g.loc[fl, "h_handle_unc"] = np.maximum(gd_f + _interp_seg(gd_f, segs, kt, mid) - earliest, SLACK_NS)
    g.loc[~has, "reason"] = "no QEMU request of the same op and extent near this time"
    return g


def _nearest(left: pd.DataFrame, right: pd.DataFrame, tol: int) -> pd.Series:
    """rid -> qid: for each guest request the QEMU request with the same key nearest in ``t``; each QEMU
    request serves at most one guest request (the nearest claim wins)."""
    left = left.assign(key=_key(left)).sort_values("t")
    right = right.sort_values("t")
    m = pd.merge_asof(left[["rid", "t", "key"]], right[["qid", "t", "key"]].rename(columns={"t": "tq"}),
                      left_on="t", right_on="tq", by="key", direction="nearest", tolerance=tol)
    m = m.dropna(subset=["qid"])
    m["qid"] = m["qid"].astype(np.int64)
    m["dist"] = (m["tq"] - m["t"]).abs()
    m = m.sort_values("dist", kind="stable").drop_duplicates("qid").drop_duplicates("rid")
    return m.set_index("rid")["qid"]


#: guest activity separated by more idle than this (ns) is aligned on its own pairs only
SEGMENT_GAP_NS = 2 * MATCH_TOL_NS


def _segments(t: np.ndarray) -> np.ndarray:
    """Start times (ns) of the stretches of guest activity in ``t``: a new one after each idle longer than
    SEGMENT_GAP_NS. A time slice (toolkit.slicing) is only cut in such an idle, so it sees whole stretches."""
    t = np.sort(t[~np.isnan(t)])
    if not len(t):
        return np.zeros(0)
    return np.concatenate([[-np.inf], t[1:][np.diff(t) > SEGMENT_GAP_NS]])


def _interp_seg(x: np.ndarray, segs: np.ndarray, kt: np.ndarray, v: np.ndarray) -> np.ndarray:
    """np.interp(x, kt, v) that does not reach across stretches of activity: an ``x`` whose stretch has knots
    is interpolated between (or clamped to) those; one whose stretch has none uses every knot."""
    x = np.asarray(x, dtype=np.float64)
    out = np.interp(x, kt, v)
    if len(kt) < 2 or len(segs) < 2:
        return out
    sx = np.searchsorted(segs, x, side="right") - 1
    sk = np.searchsorted(segs, kt, side="right") - 1
    a = np.searchsorted(sk, sx, side="left")  # the stretch's first knot
    b = np.searchsorted(sk, sx, side="right")  # one past its last
    has = b > a
    i = np.searchsorted(kt, x, side="right")
    lo = np.clip(i - 1, a, np.maximum(b - 1, a))
    hi = np.clip(i, a, np.maximum(b - 1, a))
    lo, hi = np.minimum(lo, len(kt) - 1), np.minimum(hi, len(kt) - 1)
    span = kt[hi] - kt[lo]
    frac = np.where(span > 0, (x - kt[lo]) / np.where(span > 0, span, 1), 0.0)
    seg_val = v[lo] + (v[hi] - v[lo]) * np.clip(frac, 0, 1)
    return np.where(has, seg_val, out)


def _key(df: pd.DataFrame) -> pd.Series:
    return df["op"].astype(str) + ":" + df["sector"].astype(str) + "+" + df["nsect"].astype(str)


def _align_only(da, g: pd.DataFrame) -> pd.DataFrame:
    """Place guest requests on the host clock by clock alignment alone (uncertain by its interval)."""
    off = da.guest_offset
    if off is None:
        g["reason"] += "; no guest clock alignment"
        return g
    unc = off.uncertainty(g["g_d"].to_numpy()) + SLACK_NS
    h_d = off.to_ref(g["g_d"].to_numpy())
    gc = g["g_c"].to_numpy()
    h_c = np.where(np.isnan(gc), np.nan, off.to_ref(np.nan_to_num(gc).astype(np.int64)))
    g["h_handle"], g["h_sub"], g["h_done"], g["h_ack"], g["h_unc"] = h_d, h_d, h_c, h_c, unc
    return g


def host_causal_pairs(da) -> pd.DataFrame | None:
    """Causal pairs between guest writes and the host writes of the same extent (when QEMU's times are
    missing): the host queues the data after the guest issued it (offset <= host Q - guest D), and, when the
    host write is synchronous (O_DIRECT), completes it before the guest sees the completion (offset >= host C -
    guest C). Used only when nearly all pairs are synchronous; None otherwise."""
    if not da.guest_traces or not da.host_traces:
        return None
    g = da.df_guest_requests()
    g = g[(g["op"] == "write") & g["c_ns"].notna()]
    hw = da.df_host_writes()
    if g.empty or hw.empty:
        return None
    pieces = mapping.to_host(da.extents, g["sector"].to_numpy(), g["nsect"].to_numpy())
    whole = pieces.groupby("i").filter(lambda x: len(x) == 1)  # unsplit writes only
    gi = whole["i"].to_numpy()
    left = pd.DataFrame({"gd": g["d_ns"].to_numpy(np.int64)[gi], "gc": g["c_ns"].to_numpy(np.float64)[gi],
                         "key": whole["h_sector"].astype(str).to_numpy() + "+" + whole["nsect"].astype(str).to_numpy()})
    right = pd.DataFrame({"hq": hw["q_ns"].to_numpy(np.int64), "hc": hw["c_ns"].to_numpy(np.float64),
                          "key": hw["sector"].astype(str).to_numpy() + "+" + hw["nsect"].astype(str).to_numpy()})
    p = clocks.pair_offsets(da.ts, f"{da.disk.guest}:monotonic", f"{da.host_node}:monotonic")
    if p.empty:
        r = right.sort_values("hq").assign(k=lambda x: x.groupby("key").cumcount())
        lft = left.sort_values("gd").assign(k=lambda x: x.groupby("key").cumcount())
        mm = lft.merge(r, on=["key", "k"])
        if mm.empty:
            return None
        off0 = float(np.median(mm["hq"] - mm["gd"]))
    else:
        off0 = float(np.median(p["diff_ns"]))
    left["t"] = (left["gd"] + off0).astype(np.int64)
    right["t"] = right["hq"]
    m = pd.merge_asof(left.sort_values("t"), right.sort_values("t"), on="t", by="key", direction="nearest",
                      tolerance=MATCH_TOL_NS // 10).dropna(subset=["hq", "hc"])
    if len(m) < 3:
        return None
    lo, hi = m["hc"] - m["gc"], m["hq"] - m["gd"]
    sync = (lo <= hi).mean()
    if sync < 0.9:
        return None
    m = m[lo <= hi]
    return pd.DataFrame({"g_d": m["gd"], "g_c": m["gc"], "h_handle": m["hq"], "h_ack": m["hc"]})


def guest_clock(da) -> clocks.Offset | None:
    """guest:monotonic -> reference, from causal pairs of linked requests, else reference pairs."""
    causal = None
    # QEMU requests with times give causal pairs; without them (no QEMU trace, a log without timestamps, or no
    # virtio request traced) the host block trace does
    timed = bool(da.qemu_traces) and da.qemu_has_times and not da.df_qemu_requests().empty
    if da.guest_traces and not timed:
        causal = host_causal_pairs(da)
    elif timed and da.guest_traces:
        lin = da.df_lineage()
        lin = lin[(lin["qid"] >= 0) & (lin["op"] != "flush")]  # flush arrival is not logged: not causal
        causal = pd.DataFrame({"g_d": lin["g_d"], "g_c": lin["g_c"], "h_handle": lin["h_handle"],
                               "h_ack": lin["h_ack"]})
    return clocks.guest_offset(da.ts, da.disk.guest, da.host_node, causal)


def direct_io_counts(da) -> tuple[int, int] | None:
    """Linked guest writes whose own host write (mapped start sector) was issued between QEMU's submission and
    completion of the write (O_DIRECT: cache=none/directsync; through the page cache it is later), and linked
    guest writes measured; None when nothing can be measured. Counts add up over time slices."""
    lin = da.df_lineage()
    w = lin[(lin["op"] == "write") & lin["h_handle"].notna() & lin["h_ack"].notna()]
    hw = da.df_host_writes()
    if w.empty or hw.empty:
        return None
    unc = w["h_unc"].fillna(0).to_numpy(np.float64) + SLACK_NS
    start = w["h_sub"].fillna(w["h_handle"]).to_numpy(np.float64) - unc
    done = w["h_done"].fillna(w["h_ack"]).to_numpy(np.float64) + unc
    pieces = mapping.to_host(da.extents, w["sector"].to_numpy(), w["nsect"].to_numpy())
    first = pieces.groupby("i").head(1)
    fi = first["i"].to_numpy()
    left = pd.DataFrame({"i": fi, "h_sector": first["h_sector"].to_numpy(), "t": start[fi].astype(np.int64),
                         "done": done[fi]})
    right = pd.DataFrame({"h_sector": hw["sector"].to_numpy(np.int64), "q": hw["q_ns"].to_numpy(np.int64)})
    right["t"] = right["q"]
    m = pd.merge_asof(left.sort_values("t"), right.sort_values("t"), on="t", by="h_sector",
                      direction="forward")
    ok = m["q"].notna() & (m["q"] <= m["done"])
    return (int(ok.sum()), int(len(m))) if len(m) else None


def guest_writes_durability(da) -> pd.DataFrame:
    lin = da.df_lineage()
    w = lin[(lin["op"] == "write")].copy()
    w["completed"] = w["g_c"].notna() & (w["error"].fillna(0) == 0)
    direct = da.inferred_direct
    # earliest host issue that can carry the write's data: QEMU's submission to the host (or, when its host
    # job is not attributed, QEMU's receipt); certainly carried once QEMU's host write completed (or it acked)
    sub = w["h_sub"].fillna(w["h_handle"]).to_numpy(np.float64)
    unc = w["h_unc"].fillna(0).to_numpy(np.float64)
    done = w["h_done"].fillna(w["h_ack"]).to_numpy(np.float64)
    t_opt = sub - unc
    t_cert = t_opt if direct else done + unc
    pieces = mapping.to_host(da.extents, w["sector"].to_numpy(), w["nsect"].to_numpy())
    w["mapped"] = np.bincount(pieces["i"].to_numpy(), minlength=len(w))[: len(w)] > 0
    ok = ~np.isnan(t_opt[pieces["i"].to_numpy()])
    pieces = pieces[ok]
    wid = w["rid"].to_numpy()[pieces["i"].to_numpy()]
    hw = da.df_host_writes()
    hw_in = pd.DataFrame({"rid": hw["rid"].to_numpy(), "sector": hw["sector"].to_numpy(np.int64),
                          "nsect": hw["nsect"].to_numpy(np.int64), "q_ns": hw["q_ns"].to_numpy(np.int64),
                          "durable_ns": hw["durable_ns"].to_numpy(np.int64)})
    res = {}
    for name, t in (("opt", t_opt), ("cert", t_cert)):
        gw = pd.DataFrame({"wid": wid, "h_sector": pieces["h_sector"].to_numpy(),
                           "nsect": pieces["nsect"].to_numpy(),
                           "t_from": t[pieces["i"].to_numpy()].astype(np.int64)})
        res[name] = durability.carried_durable(gw, hw_in).set_index("wid")
    def pick(r: pd.DataFrame, col: str, default: int) -> np.ndarray:
        """Per write, ``r[col]`` by wid as int64 (``default`` for writes not in ``r``): no float round trip."""
        out = np.full(len(w), default, dtype=np.int64)
        pos = pd.Index(r.index).get_indexer(w["rid"].to_numpy())
        out[pos >= 0] = r[col].to_numpy(np.int64)[pos[pos >= 0]]
        return out

    w["hd_opt_ns"] = pick(res["opt"], "durable_ns", NEVER)
    w["hd_cert_ns"] = pick(res["cert"], "durable_ns", NEVER)
    w["first_host_q_ns"] = pick(res["opt"], "first_q_ns", NEVER)
    w["first_host_q_cert_ns"] = pick(res["cert"], "first_q_ns", NEVER)
    w["t_cert_ns"] = np.nan_to_num(t_cert, nan=np.nan)
    w["via_rid"] = pick(res["opt"], "via_rid", -1)
    w["first_rid"] = pick(res["opt"], "first_rid", -1)
    # the promise: the first guest flush issued after the write completed (guest clock)
    f = lin[lin["op"] == "flush"]
    fidx = durability.first_covering_flush(np.nan_to_num(w["g_c"].to_numpy(), nan=np.inf).astype(np.float64)
                                           .clip(max=np.iinfo(np.int64).max).astype(np.int64),
                                           f["g_d"].to_numpy(np.int64))
    w["flush_rid"] = np.where((fidx >= 0) & w["completed"].to_numpy(), f["rid"].to_numpy()[np.maximum(fidx, 0)]
                              if len(f) else -1, -1)
    return w.reset_index(drop=True)


def guest_flushes(da) -> pd.DataFrame:
    lin = da.df_lineage()
    f = lin[lin["op"] == "flush"].copy()
    hf = da.df_host_flushes()
    hb = da.df_host_bios()
    fb = hb[(hb["op"] == "flush") & hb["q_ns"].notna()]
    a = f["h_handle"].to_numpy(np.float64) - f.get("h_handle_unc", f["h_unc"]).fillna(0).to_numpy()
    b = f["h_ack"].to_numpy(np.float64) + f["h_unc"].fillna(0).to_numpy()
    # host device flushes in progress at any time in [a, b] (issued before b, completed after a)
    ok = hf["c_ns"].notna().to_numpy()
    dd = np.sort(hf["d_ns"].to_numpy(np.int64)[ok])
    cc = np.sort(hf["c_ns"].to_numpy(np.float64)[ok].astype(np.int64))
    fq = np.sort(fb["q_ns"].to_numpy(np.int64))
    nan = np.isnan(a) | np.isnan(b)
    a0, b0 = np.nan_to_num(a).astype(np.int64), np.nan_to_num(b).astype(np.int64)
    f["host_flushes"] = np.where(nan, -1, np.searchsorted(dd, b0, "right") - np.searchsorted(cc, a0, "left"))
    f["host_flush_bios"] = np.where(nan, -1, np.searchsorted(fq, b0, "right") - np.searchsorted(fq, a0, "left"))
    w = da.df_writes()
    promised = w[w["flush_rid"] >= 0]
    f["new_writes"] = f["rid"].map(promised.groupby("flush_rid").size()).fillna(0).astype(np.int64)
    ack = f.set_index("rid")["h_ack"]
    late = promised[promised["hd_opt_ns"] > promised["flush_rid"].map(ack).fillna(np.inf).to_numpy()
                    .clip(max=2**62).astype(np.int64)]
    f["late_writes"] = f["rid"].map(late.groupby("flush_rid").size()).fillna(0).astype(np.int64)
    return f.reset_index(drop=True)


def qemu_host_offset(sa, t) -> clocks.Offset | None:
    """A QEMU trace's clock -> reference, from causal pairs with the host-block traces: a job QEMU submitted at
    ``s`` and saw complete at ``c`` (its clock) was queued on the host device at ``Q`` (reference) by the same
    thread, so ``Q - c <= offset <= Q - s``. Data writes pair by thread and length, fdatasync jobs with the
    flush the same thread queued. Returns None without such pairs."""
    from toolkit import qemu as qemu_mod

    ev = sa.events(t)
    j = qemu_mod.host_jobs(ev)
    j = j[j["op"].isin(["write", "flush"]) & j["submit_ns"].notna() & j["complete_ns"].notna()]
    hosts = [h for h in sa.ts.traces if h.layer == "host-block"]
    if j.empty or not hosts:
        return None
    from toolkit.requests import block_requests

    hb = pd.concat([block_requests(sa.events(h)) for h in hosts], ignore_index=True)
    hb = hb[hb["q_ns"].notna() & hb["op"].isin(["write", "flush"])]
    # QEMU logs a job from the thread that submits it; a worker thread of the same process queues the I/O:
    # pair by process (host thread ids of the QEMU process from its threads file)
    from toolkit import migration

    th = migration.threads(sa)
    mine = set(th.loc[th["trace"] == t.index, "tid"]) | ({t.pid} if t.pid is not None else set())
    if not mine:
        return None
    hb = hb[hb["pid"].isin(mine)]
    j = j.assign(tid=-1)
    hb = hb.assign(pid=-1)
    # on a raw device (the image is the traced device) a job's file offset is the host sector as well
    raw = bool(sa.ts.disks) and all(len(d.mapping) == 1 and d.mapping[0].get("kind") == "raw" for d in sa.ts.disks)
    if raw:
        shift = int(sa.ts.disks[0].mapping[0].get("offset", 0)) // 512
        jsec = np.where(j["op"] == "flush", -1, j["offset"].fillna(-1).to_numpy(np.int64) // 512 + shift)
        hsec = np.where(hb["op"] == "flush", -1, hb["sector"].to_numpy(np.int64))
        j = j.assign(tid=jsec)
        hb = hb.assign(pid=hsec)
    left = pd.DataFrame({"tid": j["tid"].to_numpy(np.int64), "op": j["op"].to_numpy(object),
                         "n": np.where(j["op"] == "flush", 0, j["bytes"].fillna(0).to_numpy(np.int64) // 512),
                         "s": j["submit_ns"].to_numpy(np.int64), "c": j["complete_ns"].to_numpy(np.int64)})
    right = pd.DataFrame({"tid": hb["pid"].to_numpy(np.int64), "op": hb["op"].astype(object).to_numpy(),
                          "n": np.where(hb["op"] == "flush", 0, hb["nsect"].to_numpy(np.int64)),
                          "q": hb["q_ns"].to_numpy(np.int64)})
    left["key"] = left["tid"].astype(str) + left["op"] + left["n"].astype(str)
    right["key"] = right["tid"].astype(str) + right["op"] + right["n"].astype(str)
    # coarse offset: the k-th job of a key against the k-th host request of the key
    lk = left.sort_values("s").assign(k=lambda x: x.groupby("key").cumcount())
    rk = right.sort_values("q").assign(k=lambda x: x.groupby("key").cumcount())
    mm = lk.merge(rk, on=["key", "k"])
    if len(mm) < 3:
        return None
    off0 = int(np.median(mm["q"] - mm["s"]))
    left["t"] = left["s"] + off0
    right["t"] = right["q"]
    m = pd.merge_asof(left.sort_values("t"), right.sort_values("t")[["key", "t", "q"]], on="t", by="key",
                      direction="forward", tolerance=MATCH_TOL_NS // 20).dropna(subset=["q"])
    best = None
    # page-cache writes reach the device later (writeback): when data pairs contradict, trust the flushes
    for sel in (np.ones(len(m), bool), (m["op"] == "flush").to_numpy()):
        env = _qemu_envelope(sa, t, m[sel])
        if env is not None and (best is None or not env.conflicts):
            best = env
        if best is not None and not best.conflicts:
            break
    return best


def _qemu_envelope(sa, t, m: pd.DataFrame) -> clocks.Offset | None:
    lo, hi = (m["q"] - m["c"]).to_numpy(np.int64), (m["q"] - m["s"]).to_numpy(np.int64)
    ok = lo <= hi
    if ok.sum() < 3:
        return None
    # consistent pairs around the median (a stray match is far off)
    mid = (lo + hi) // 2
    dev = np.abs(mid - np.median(mid[ok]))
    ok &= dev <= max(5 * float(np.median(dev[ok])), 200_000)
    ts_ = m["s"].to_numpy(np.int64)[ok]
    order = np.argsort(ts_)
    clock = f"{t.node}:{sa.results[t.index].meta.get('clock')}"
    env = clocks.causal_envelope(ts_[order], lo[ok][order], hi[ok][order], clock, sa.ref, max_fall=1e-4)
    env.source = f"{int(ok.sum())} causal pairs (QEMU host jobs vs the host-block requests of its threads)"
    return env
