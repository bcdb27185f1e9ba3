"""Ordering checks: ``crash-reorder`` and ``overlapping-inflight``.

crash-reorder (DESIGN.md): for a guest flush F completed at tF, A = the guest writes completed before F was
issued, B = the guest writes issued after F completed. A crash at t breaks the guest's ordering when a host
write carrying data of some b in B had been issued by t while some a in A was not yet durable. Per F the first
window [first host issue of any b, last durability of any a] with its witness pair. Vectorised with a prefix
maximum over A (writes by guest completion) and a suffix minimum over B (writes by guest issue).

overlapping-inflight: two writes to overlapping sectors in flight at once (their [issue, completion]
intervals overlap) at one layer: their order on the medium is undefined.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit.checks import Violation, fmt_s
from toolkit.checks.durability import _req
from toolkit.durability import NEVER


def crash_reorder(da) -> list[Violation]:
    w = da.df_writes()
    w = w[w["completed"] & w["mapped"] & w["h_handle"].notna()]
    f = da.df_flushes()
    f = f[f["h_ack"].notna() & f["g_c"].notna()]
    if w.empty or f.empty:
        return []
    t0 = da.t0
    # A: prefix max of durability over writes ordered by guest completion
    a = w.sort_values("g_c")
    a_c = a["g_c"].to_numpy(np.float64)
    a_hd = a["hd_opt_ns"].to_numpy(np.int64)
    a_pmax = np.maximum.accumulate(a_hd)
    a_arg = np.maximum.accumulate(np.where(a_hd == a_pmax, np.arange(len(a_hd)), 0))
    # B: suffix min of first host issue over writes ordered by guest issue
    b = w.sort_values("g_d")
    b_d = b["g_d"].to_numpy(np.int64)
    b_q = b["first_host_q_ns"].to_numpy(np.int64)
    b_smin = np.minimum.accumulate(b_q[::-1])[::-1]
    idx = np.arange(len(b_q))
    b_arg = np.minimum.accumulate(np.where(b_q == b_smin, idx, len(b_q))[::-1])[::-1]
    ka = np.searchsorted(a_c, f["g_d"].to_numpy(np.float64), side="left") - 1   # last a completed before F issued
    kb = np.searchsorted(b_d, f["g_c"].to_numpy(np.float64), side="right")      # first b issued after F completed
    span_end = int(da.host_events["time_ns"].max()) if len(da.host_events) else None
    # every flush at once: the witnesses' times, then a Python step only per window found
    ok = (ka >= 0) & (kb < len(b_d))
    ka_, kb_ = np.clip(ka, 0, len(a_pmax) - 1), np.clip(kb, 0, len(b_smin) - 1)
    max_a = np.where(ok, a_pmax[ka_], 0)
    min_b = np.where(ok, b_smin[kb_], NEVER)
    hit = ok & (min_b != NEVER) & (min_b < max_a)
    hit &= ~((max_a == NEVER) & (True if span_end is None else (min_b > span_end)))
    out = []
    col = {c: a[c].to_numpy() for c in ("rid", "sector", "nsect", "g_c", "via_rid")}
    a_unc = a["h_unc"].to_numpy(np.float64)
    colb = {c: b[c].to_numpy() for c in ("rid", "sector", "nsect", "g_d", "first_rid")}
    b_unc = b["h_unc"].to_numpy(np.float64)
    f_rid, f_ack, f_gd, f_gc = (f[c].to_numpy() for c in ("rid", "h_ack", "g_d", "g_c"))
    for i in np.flatnonzero(hit):
        ia, ib = int(a_arg[ka[i]]), int(b_arg[kb[i]])
        mxa, mnb = int(max_a[i]), int(min_b[i])
        wa = {c: v[ia] for c, v in col.items()}
        wb = {c: v[ib] for c, v in colb.items()}
        unc = float(a_unc[ia] or 0) + float(b_unc[ib] or 0)
        uncertain = (mxa - mnb) <= unc
        end = None if mxa == NEVER else mxa
        sent = (f"after guest flush #{f_rid[i]} completed at {fmt_s(f_ack[i], t0)}, write #{int(wb['rid'])} (sectors "
                f"{int(wb['sector'])}+{int(wb['nsect'])}) reached the host disk at {fmt_s(mnb, t0)} while write "
                f"#{int(wa['rid'])} (sectors {int(wa['sector'])}+{int(wa['nsect'])}), which the flush covered, "
                + ("was not durable before the trace ended" if end is None else f"was durable only at {fmt_s(end, t0)}")
                + ": a crash in between leaves the later write without the earlier one")
        out.append(Violation(
            "crash-reorder", da.disk.guest + "," + da.host_node, "host-block", mnb, end,
            int(wa["sector"]), int(wa["nsect"]),
            [_req("guest-block", f_rid[i], "guest flush", g_d=f_gd[i], g_c=f_gc[i]),
             _req("guest-block", wa["rid"], "write covered by the flush (a)", g_c=wa["g_c"], durable_ns=mxa),
             _req("host-block", wa["via_rid"], "host write that made (a) durable", durable_ns=mxa),
             _req("guest-block", wb["rid"], "write issued after the flush (b)", g_d=wb["g_d"]),
             _req("host-block", wb["first_rid"], "host write carrying (b)", q_ns=mnb)],
            bool(uncertain), sent, da.name, {"witness_a": int(wa["rid"]), "witness_b": int(wb["rid"])}))
    return out


def overlapping_pairs(req: pd.DataFrame) -> pd.DataFrame:
    """Pairs (i, j) of writes (rows of a dispatched-requests table) whose sector ranges intersect and whose
    [d_ns, c_ns] intervals overlap. Vectorised: each write is compared with the writes issued before it
    completed (bounded by the queue depth)."""
    w = req[(req["op"] == "write") & req["c_ns"].notna() & (req["nsect"] > 0)].sort_values("d_ns")
    d = w["d_ns"].to_numpy(np.int64)
    c = w["c_ns"].to_numpy(np.int64)
    s = w["sector"].to_numpy(np.int64)
    e = s + w["nsect"].to_numpy(np.int64)
    hi = np.searchsorted(d, c, side="left")  # writes issued before this one completed
    cnt = np.maximum(hi - np.arange(len(d)) - 1, 0)
    i = np.repeat(np.arange(len(d)), cnt)
    j = i + 1 + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    ok = (s[i] < e[j]) & (s[j] < e[i])
    i, j = i[ok], j[ok]
    return pd.DataFrame({"a": w["rid"].to_numpy()[i], "b": w["rid"].to_numpy()[j],
                         "start_ns": d[j], "end_ns": np.minimum(c[i], c[j]),
                         "sector": np.maximum(s[i], s[j]), "nsect": np.minimum(e[i], e[j]) - np.maximum(s[i], s[j])})


def host_requests_by_bio(da) -> pd.DataFrame:
    """The host's issued requests (dispatched_requests), each under the id of the host bio that created it
    (df_host_bios ``rid``: the id every host-block evidence cites), -1 when no bio matches."""
    from toolkit.requests import dispatched_requests

    req = dispatched_requests(da.host_events)
    b = da.df_host_bios()
    b = b[~b["merged"].astype(bool) & b["d_ns"].notna()]
    key = pd.DataFrame({"d_ns": b["d_ns"].to_numpy(np.int64), "sector": b["req_sector"].to_numpy(np.int64),
                        "nsect": b["req_nsect"].to_numpy(np.int64), "op": b["op"].astype(str).to_numpy(),
                        "bio": b["rid"].to_numpy(np.int64)}).drop_duplicates(["d_ns", "sector", "nsect", "op"])
    left = pd.DataFrame({"d_ns": req["d_ns"].to_numpy(np.int64), "sector": req["sector"].to_numpy(np.int64),
                         "nsect": req["nsect"].to_numpy(np.int64), "op": req["op"].astype(str).to_numpy()})
    bio = left.merge(key, how="left", on=["d_ns", "sector", "nsect", "op"])["bio"]
    req = req.copy()
    req["rid"] = bio.fillna(-1).to_numpy(np.int64)
    return req


def overlapping_inflight(da) -> list[Violation]:
    out = []
    layers = [("guest-block", da.disk.guest, da.df_guest_requests())]
    if len(da.host_events):
        layers.append(("host-block", da.host_node, host_requests_by_bio(da)))
    for layer, node, req in layers:
        p = overlapping_pairs(req)
        where, t0 = "reference clock", da.t0
        if layer == "guest-block":
            if da.guest_offset is not None and len(p):
                p["start_ns"] = da.guest_offset.to_ref(p["start_ns"].to_numpy())
                p["end_ns"] = da.guest_offset.to_ref(p["end_ns"].to_numpy())
            else:
                where, t0 = "guest clock", 0
        for x in p.itertuples():
            sent = (f"{layer} writes #{x.a} and #{x.b} to overlapping sectors {x.sector}+{x.nsect} were in flight "
                    f"at once from {fmt_s(x.start_ns, t0)} to {fmt_s(x.end_ns, t0)} ({where}): which one is on the "
                    f"medium is undefined")
            out.append(Violation("overlapping-inflight", node, layer, int(x.start_ns), int(x.end_ns), int(x.sector),
                                 int(x.nsect), [_req(layer, x.a, "write"), _req(layer, x.b, "write")], False, sent,
                                 da.name, {"clock": where}))
    return out
