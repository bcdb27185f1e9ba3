"""The durability model (DESIGN.md): when each write became durable, what the guest was promised, and what a
crash at any instant could have lost.

All functions take and return DataFrames; times are ns on the reference clock unless a column says ``g_``
(guest clock). Sectors are 512-byte units.

* :func:`host_durable` - when each host write became durable at the host device: at completion with FUA (or on
  a device without a volatile cache), else at the completion of the first successful device flush *issued
  after* the write completed. Who issued the flush does not matter.
* :func:`first_covering_flush` - for each guest write, the first guest flush issued after it completed: the
  flush whose completion promised it durable.
* :func:`carried_durable` - content, not request identity: when the data of each guest write (or newer data
  for the same sectors) was durable on the host: per sector, the first durability among host writes to that
  sector issued at or after the time the guest write's data could be in them; the write is durable when its
  last sector is.
* :func:`exposure` - the at-risk set over time: writes and bytes issued to the host but not yet durable.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NEVER = np.iinfo(np.int64).max  # "not durable within the trace"


def host_durable(writes: pd.DataFrame, flushes: pd.DataFrame, *, volatile_cache: bool = True) -> np.ndarray:
    """Durable time (ns) of each host write; ``NEVER`` if not durable within the trace.

    ``writes``: c_ns (Int64, null = never completed), error, fua (the request reached the device with FUA
    and completed after it was stable). ``flushes``: device flushes d_ns, c_ns, error (see
    ``requests.device_flushes``), all of the same device as the writes.
    """
    c = writes["c_ns"].astype("Float64").fillna(np.nan).to_numpy(np.float64)
    ok = ~np.isnan(c) & (writes["error"].fillna(0).to_numpy() == 0)
    c_i = np.where(ok, np.nan_to_num(c, nan=0), 0).astype(np.int64)
    out = np.full(len(writes), NEVER, dtype=np.int64)
    if not volatile_cache:
        out[ok] = c_i[ok]
        return out
    fua = writes["fua"].to_numpy(bool)
    out[ok & fua] = c_i[ok & fua]
    f = flushes[(flushes["c_ns"].notna()) & (flushes["error"].fillna(0) == 0)].sort_values("d_ns")
    if len(f):
        fd = f["d_ns"].to_numpy(np.int64)
        fc = f["c_ns"].to_numpy(np.int64)
        suffix_min_c = np.minimum.accumulate(fc[::-1])[::-1]
        k = np.searchsorted(fd, c_i, side="left")  # first flush issued at or after the completion
        has = ok & ~fua & (k < len(fd))
        out[has] = suffix_min_c[k[has]]
    return out


def first_covering_flush(w_c: np.ndarray, f_d: np.ndarray) -> np.ndarray:
    """Index (into flushes sorted by issue time ``f_d``) of the first flush issued after each write completed
    (``w_c``); -1 when no later flush. Both on the same clock."""
    if len(f_d) == 0:
        return np.full(len(w_c), -1, dtype=np.int64)
    order = np.argsort(f_d, kind="stable")
    k = np.searchsorted(f_d[order], np.asarray(w_c, np.int64), side="right")
    return np.where(k < len(order), order[np.minimum(k, len(order) - 1)], -1)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique`` of an integer array by sorting (numpy's hash-based unique is several times slower here)."""
    a = np.sort(a)
    if len(a) == 0:
        return a
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def _segments(bounds: np.ndarray, start: np.ndarray, end: np.ndarray):
    """Expand ranges into elementary segment ids: returns (row index, segment id) pairs."""
    a = np.searchsorted(bounds, start, side="left")
    b = np.searchsorted(bounds, end, side="left")
    cnt = np.maximum(b - a, 0)
    rows = np.repeat(np.arange(len(start)), cnt)
    seg = a[rows] + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    return rows, seg


def carried_durable(gw: pd.DataFrame, hw: pd.DataFrame) -> pd.DataFrame:
    """When the data of each guest write piece (or newer data) was durable on the host.

    ``gw``: pieces of guest writes in host sectors: wid, h_sector, nsect, t_from (ns: the earliest host issue
    time at which a host write can carry this write's data). ``hw``: host writes: rid, sector, nsect, q_ns
    (issue), durable_ns (``NEVER`` if never).

    Returns one row per wid: ``durable_ns`` (max over its sectors of the first durability among host writes
    covering the sector issued at or after ``t_from``; ``NEVER`` if some sector never was), ``first_q_ns``
    (earliest issue of a host write carrying any of its data; ``NEVER`` if none), ``via_rid`` (the host
    write that made its last sector durable, -1 if none), ``first_rid`` (the first carrying host write).
    Vectorised: sectors are cut into elementary segments at every range boundary, and each (write, segment)
    is answered with one ``merge_asof`` over host writes of that segment sorted by issue time, carrying the
    suffix minimum of their durability.
    """
    wids = pd.unique(gw["wid"])
    empty = pd.DataFrame({"wid": wids, "durable_ns": NEVER, "first_q_ns": NEVER, "via_rid": -1, "first_rid": -1})
    if gw.empty:
        return empty
    gs, ge = gw["h_sector"].to_numpy(np.int64), (gw["h_sector"] + gw["nsect"]).to_numpy(np.int64)
    hs, he = hw["sector"].to_numpy(np.int64), (hw["sector"] + hw["nsect"]).to_numpy(np.int64)
    bounds = _sorted_unique(np.concatenate([gs, ge, hs, he]))
    gi, gseg = _segments(bounds, gs, ge)
    hi, hseg = _segments(bounds, hs, he)
    if len(hi) == 0:
        return empty
    H = pd.DataFrame({"seg": hseg, "q_ns": hw["q_ns"].to_numpy(np.int64)[hi],
                      "dur": hw["durable_ns"].to_numpy(np.int64)[hi], "rid": hw["rid"].to_numpy(np.int64)[hi]})
    H = H.sort_values(["seg", "q_ns"], kind="stable").reset_index(drop=True)
    # suffix minimum of durability within each segment, and the rid that attains it
    rev = H.iloc[::-1]
    H["sdur"] = rev.groupby("seg")["dur"].cummin().iloc[::-1].to_numpy()
    H["srid"] = H["rid"].where(H["dur"] == H["sdur"])
    H["srid"] = H.groupby("seg")["srid"].bfill()  # the first later row attaining the suffix minimum
    G = pd.DataFrame({"wid": gw["wid"].to_numpy()[gi], "seg": gseg, "t": gw["t_from"].to_numpy(np.int64)[gi]})
    G = G.sort_values("t", kind="stable")
    Hs = H.sort_values("q_ns", kind="stable")
    # nullable integers through the join: a float NaN would round NEVER (2**63 - 1) out of int64 range
    right = Hs[["seg", "q_ns", "sdur", "srid", "rid"]].astype({"sdur": "Int64", "srid": "Int64", "rid": "Int64"})
    right = right.assign(qq=right["q_ns"].astype("Int64"))
    m = pd.merge_asof(G, right, left_on="t", right_on="q_ns", by="seg", direction="forward")
    m["sdur"] = m["sdur"].astype("Int64").fillna(NEVER).astype(np.int64)
    m["q_ns"] = m["qq"].astype("Int64").fillna(NEVER).astype(np.int64)
    m["srid"] = m["srid"].astype("Int64").fillna(-1).astype(np.int64)
    m["rid"] = m["rid"].astype("Int64").fillna(-1).astype(np.int64)
    m = m.sort_values(["wid", "sdur"], kind="stable")
    last = m.groupby("wid").tail(1).set_index("wid")
    firstq = m.sort_values(["wid", "q_ns"], kind="stable").groupby("wid").head(1).set_index("wid")
    out = pd.DataFrame({"wid": wids})

    def take(tbl: pd.DataFrame, col: str, default: int) -> np.ndarray:
        pos = pd.Index(tbl.index).get_indexer(wids)
        return np.where(pos >= 0, tbl[col].to_numpy(np.int64)[np.maximum(pos, 0)], default)

    out["durable_ns"] = take(last, "sdur", NEVER)
    out["via_rid"] = take(last, "srid", -1)
    out["first_q_ns"] = take(firstq, "q_ns", NEVER)
    out["first_rid"] = take(firstq, "rid", -1)
    return out


def exposure(submit_ns: np.ndarray, durable_ns: np.ndarray, nbytes: np.ndarray, end_ns: int | None = None
             ) -> pd.DataFrame:
    """The at-risk set over time: at each change, how many writes (and bytes) were issued but not durable.

    Columns: time_ns, writes, bytes. A write never durable in the trace stays at risk to ``end_ns``.
    """
    s = np.asarray(submit_ns, np.int64)
    d = np.asarray(durable_ns, np.int64)
    b = np.asarray(nbytes, np.int64)
    ok = s < d
    s, d, b = s[ok], d[ok], b[ok]
    if end_ns is not None:
        d = np.minimum(d, end_ns)
    t = np.concatenate([s, d])
    dw = np.concatenate([np.ones(len(s), np.int64), -np.ones(len(d), np.int64)])
    db = np.concatenate([b, -b])
    order = np.lexsort((dw, t))  # at equal times, departures first
    df = pd.DataFrame({"time_ns": t[order], "writes": np.cumsum(dw[order]), "bytes": np.cumsum(db[order])})
    return df.groupby("time_ns", as_index=False).last()
