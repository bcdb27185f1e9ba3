"""Per-layer block requests from block events: queue (Q), get-request (G), merge (M/F), issue (D), complete (C).

``block_requests(events)`` returns one row per bio (each ``Q`` event) in the REQUESTS schema, with the times
of the request it ended up in: ``d_ns`` is the ``D`` of that request, ``c_ns`` its ``C``. A bio merged into
another request (``M``/``F``) keeps ``parent`` = the rid of the bio that created that request. Requests that
were issued without a bio of their own (the ``D FN`` device flushes the flush machinery sends, requeued
requests) get a row with ``q_ns`` null. ``device_flushes(events)`` gives the device-level flushes (``D FN`` paired
with ``C FN``) that the durability model uses.

Matching is order-aware and never a plain join: a sector is written many times, so each bio is matched to the
*first* later ``D`` on the same device and op class that covers its range, and each ``D`` to the first later
``C`` with the same extent that no earlier ``D`` took (FIFO). It is vectorised: candidates are the next ``K``
events of the device, gathered as a matrix, widened for the few that find none.

btt's latency vocabulary: ``q2d_ns`` = D - Q, ``d2c_ns`` = C - D, ``q2c_ns`` = C - Q (ns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from toolkit.events import REQUESTS

_OPCLASS = {"write": 1, "discard": 1, "flush": 2, "read": 3}
WINDOWS = (16, 256, 4096)
_CHUNK = 1 << 18


def _opclass(df: pd.DataFrame) -> np.ndarray:
    op = df["op"]
    if isinstance(op.dtype, pd.CategoricalDtype):  # by category code: one lookup per category, not per row
        lut = np.array([_OPCLASS.get(c, 0) for c in op.cat.categories] + [0], dtype=np.int8)
        return lut[op.cat.codes.to_numpy()]
    op = op.astype(object).to_numpy()
    return np.vectorize(lambda o: _OPCLASS.get(o, 0), otypes=[np.int8])(op) if len(op) else np.zeros(0, np.int8)


#: the event columns the request builders read (the others are not carried through their sorts)
_COLUMNS = ("time_ns", "pos", "device", "action", "op", "sector", "nsect", "error", "preflush", "fua", "sync",
            "meta", "pid", "comm")


def _select(events: pd.DataFrame, actions: list[str]) -> pd.DataFrame:
    """The rows of ``actions`` and the columns used here, sorted by (time_ns, pos) (stable)."""
    ev = events.loc[events["action"].isin(actions).to_numpy(), [c for c in _COLUMNS if c in events.columns]]
    t, p = ev["time_ns"].to_numpy(), ev["pos"].to_numpy()
    if len(t) > 1:
        dt = np.diff(t)
        tie = dt == 0
        if not ((dt >= 0).all() and (not tie.any() or (np.diff(p)[tie] >= 0).all())):
            ev = ev.take(np.lexsort((p, t)))
    return ev


def _devices(ev: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
    """Device codes in order of first appearance and their names (``pd.factorize`` of the names as text)."""
    dev = ev["device"]
    if isinstance(dev.dtype, pd.CategoricalDtype) and not dev.isna().any():
        codes, first = pd.factorize(dev.cat.codes.to_numpy())
        return codes, dev.cat.categories.astype(str)[first]
    return pd.factorize(dev.astype(str))


def _by_device(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by (_dev, time_ns, pos), stable; ``df`` is sorted by (time_ns, pos) already."""
    d = df["_dev"].to_numpy()
    if len(d) and (d == d[0]).all():
        return df
    return df.take(np.argsort(d, kind="stable"))


def _first_match(q_dev, q_t, q_cls, q_s, q_e, c_dev, c_t, c_cls, c_s, c_e, *, exact: bool,
                 taken: np.ndarray | None = None) -> np.ndarray:
    """For each query i, the index j of the first candidate (sorted by (dev, t)) with the same dev and class,
    c_t >= q_t and [c_s, c_e) covering [q_s, q_e) (``exact``: equal), not yet ``taken``; -1 if none.

    Candidates must be sorted by (dev, t). Looks at the next K candidates of the same device for K in WINDOWS.
    """
    n = len(q_t)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(c_t) == 0:
        return out
    if exact:
        kq, kc = _extent_keys((q_dev, q_cls, q_s, q_e), (c_dev, c_cls, c_s, c_e))
        return _exact_lookup(kq, _starts(q_dev, q_t, c_dev, c_t), kc, None if taken is None else ~taken)
    for dev in np.unique(q_dev):
        qi = np.flatnonzero(q_dev == dev)
        lo, hi = np.searchsorted(c_dev, dev, "left"), np.searchsorted(c_dev, dev, "right")
        if lo == hi:
            continue
        ct = c_t[lo:hi]
        start = np.searchsorted(ct, q_t[qi], "left") + lo
        todo = qi
        st = start
        for k in WINDOWS:
            if len(todo) == 0:
                break
            res = np.full(len(todo), -1, dtype=np.int64)
            for a in range(0, len(todo), max(1, _CHUNK // k)):
                b = min(len(todo), a + max(1, _CHUNK // k))
                idx = st[a:b, None] + np.arange(k)[None, :]
                valid = idx < hi
                idx = np.minimum(idx, hi - 1)
                qq = todo[a:b]
                m = valid & (c_cls[idx] == q_cls[qq, None])
                if exact:
                    m &= (c_s[idx] == q_s[qq, None]) & (c_e[idx] == q_e[qq, None])
                else:
                    m &= (c_s[idx] <= q_s[qq, None]) & (c_e[idx] >= q_e[qq, None])
                if taken is not None:
                    m &= ~taken[idx]
                has = m.any(axis=1)
                first = m.argmax(axis=1)
                res[a:b] = np.where(has, idx[np.arange(b - a), first], -1)
            out[todo] = res
            miss = res < 0
            # only those whose window was cut by the next device's events are hopeless; widen the rest
            reach = st + k < hi
            todo, st = todo[miss & reach], st[miss & reach]
    return out


def _starts(q_dev, q_t, c_dev, c_t) -> np.ndarray:
    """Per query, the first candidate of its device at or after ``q_t`` (candidates sorted by (dev, t)); -1 when
    its device has no candidate."""
    st = np.full(len(q_t), -1, dtype=np.int64)
    for dev in pd.unique(q_dev):
        qi = np.flatnonzero(q_dev == dev)
        lo, hi = np.searchsorted(c_dev, dev, "left"), np.searchsorted(c_dev, dev, "right")
        if lo < hi:
            st[qi] = np.searchsorted(c_t[lo:hi], q_t[qi], "left") + lo
    return st


def _extent_keys(q_cols, c_cols) -> tuple[np.ndarray, np.ndarray]:
    """One id per distinct (dev, class, start, end), shared by queries and candidates."""
    cols = [np.concatenate([np.asarray(a, np.int64), np.asarray(b, np.int64)])
            for a, b in zip(q_cols, c_cols, strict=True)]
    nq = len(cols[0]) - len(np.asarray(c_cols[0]))
    o = np.lexsort(cols[::-1])
    new = np.zeros(len(o), dtype=bool)
    if len(o):
        new[0] = True
    for c in cols:
        co = c[o]
        new[1:] |= co[1:] != co[:-1]
    gid = np.empty(len(o), dtype=np.int64)
    gid[o] = np.cumsum(new) - 1
    return gid[:nq], gid[nq:]


def _exact_lookup(kq: np.ndarray, st: np.ndarray, kc: np.ndarray, avail: np.ndarray | None) -> np.ndarray:
    """For each query, the first available candidate j >= its start ``st`` with the same key, within the widest
    window (``j - st < WINDOWS[-1]``: what the windowed scan of ``_first_match`` finds); -1 if none.

    A binary search per query over the candidates sorted by (key, j): no scan of the candidates between."""
    m = len(kc)
    cj = np.arange(m) if avail is None else np.flatnonzero(avail)
    out = np.full(len(kq), -1, dtype=np.int64)
    if len(cj) == 0 or len(kq) == 0:
        return out
    o = np.lexsort((cj, kc[cj]))
    K, J = kc[cj][o], cj[o]
    V = K * (m + 1) + J  # ascending
    p = np.searchsorted(V, kq * (m + 1) + np.maximum(st, 0), "left")
    pc = np.minimum(p, len(V) - 1)
    ok = (st >= 0) & (p < len(V)) & (K[pc] == kq) & (J[pc] - st < WINDOWS[-1])
    out[ok] = J[pc[ok]]
    return out


def _fifo_match(q_dev, q_t, q_cls, q_s, q_e, c_dev, c_t, c_cls, c_s, c_e) -> np.ndarray:
    """Exact-extent FIFO matching: like ``_first_match(exact=True)`` but no candidate is used twice.

    Queries are served in time order; when two queries pick the same candidate the earlier keeps it and the
    later one searches again past the taken ones (rounds = the largest number of identical requests in flight).
    """
    order = np.lexsort((q_t, q_dev))
    out = np.full(len(q_t), -1, dtype=np.int64)
    if len(q_t) == 0 or len(c_t) == 0:
        return out
    taken = np.zeros(len(c_t), dtype=bool)
    kq, kc = _extent_keys((q_dev, q_cls, q_s, q_e), (c_dev, c_cls, c_s, c_e))
    st = _starts(q_dev, q_t, c_dev, c_t)
    todo = order
    for _ in range(64):
        if len(todo) == 0:
            break
        m = _exact_lookup(kq[todo], st[todo], kc, ~taken)  # = _first_match(exact=True, taken=taken)
        ok = m >= 0
        oki = np.flatnonzero(ok)
        # the first query (in time order) that claims a candidate wins it; the others search again
        _, first = np.unique(m[oki], return_index=True)  # oki is ascending: the first claim of each candidate
        win = np.zeros(len(todo), dtype=bool)
        win[oki[first]] = True
        out[todo[win]] = m[win]
        taken[m[win]] = True
        todo = todo[ok & ~win]
    return out


def block_requests(events: pd.DataFrame, *, node: str = "", layer: str = "") -> pd.DataFrame:
    """One row per bio (Q) and per bio-less issued request (e.g. ``D FN``), in the REQUESTS schema.

    Extra columns: ``g_ns`` (G or M/F time), ``merged`` (bio merged into another request), ``q2d_ns``,
    ``d2c_ns``, ``q2c_ns`` (ns), ``req_sector``/``req_nsect`` (extent of the issued request).
    Times are on the trace's clock.
    """
    ev = _select(events, ["Q", "G", "M", "F", "D", "C", "R"])
    dev_codes, dev_names = _devices(ev)
    ev = ev.assign(_dev=dev_codes, _cls=_opclass(ev), _e=ev["sector"] + ev["nsect"])

    def part(a: str) -> pd.DataFrame:
        return _by_device(ev[(ev["action"] == a).to_numpy()])

    Q, G, M, F, D, C = (part(a) for a in ("Q", "G", "M", "F", "D", "C"))
    GM = pd.concat([G.assign(_merged=False), M.assign(_merged=True), F.assign(_merged=True)])
    GM = GM.take(np.lexsort((GM["pos"].to_numpy(), GM["time_ns"].to_numpy(), GM["_dev"].to_numpy())))

    def arr(df):
        return (df["_dev"].to_numpy(), df["time_ns"].to_numpy(), df["_cls"].to_numpy(),
                df["sector"].to_numpy(), df["_e"].to_numpy())

    # data bios: first covering D after the bio was queued; flush bios (no data): the first D FN after
    qd, qt, qc, qs, qe = arr(Q)
    dd, dt, dc, ds, de = arr(D)
    is_flushbio = (Q["nsect"].to_numpy() == 0) & Q["preflush"].to_numpy()
    q_cls_d = np.where(is_flushbio, _OPCLASS["flush"], qc)
    q_s_d = np.where(is_flushbio, ds.min(initial=0) if len(ds) else 0, qs)
    # for flush bios match any D FN: compare on class only by widening the extent test
    d_s_cmp = np.where(dc == _OPCLASS["flush"], -(1 << 62), ds)
    d_e_cmp = np.where(dc == _OPCLASS["flush"], 1 << 62, de)
    q_d = _first_match(qd, qt, q_cls_d, q_s_d, np.where(is_flushbio, q_s_d, qe), dd, dt, dc, d_s_cmp, d_e_cmp,
                       exact=False)
    # D -> C: same extent, FIFO. Zero-byte write completions (the end of a flush bio) are not D completions.
    cd, ct, cc, cs, ce = arr(C)
    d_c = _fifo_match(dd, dt, dc, ds, de, cd, ct, cc, cs, ce)
    d_time = np.where(q_d >= 0, dt[np.maximum(q_d, 0)], -1) if len(D) else np.full(len(Q), -1)
    q_c = np.where(q_d >= 0, d_c[np.maximum(q_d, 0)], -1) if len(D) else np.full(len(Q), -1)
    c_err_all = C["error"].to_numpy()
    # a bio the flush machinery sequenced (PREFLUSH and/or FUA) completes last with a zero-byte write completion
    # at its own sector ("C WS 27992 [0]"; "C WS 0 [0]" for an empty flush), after its data and post-flush
    seq = Q["preflush"].to_numpy() | Q["fua"].to_numpy()
    zc = np.flatnonzero((C["nsect"].to_numpy() == 0) & (cc == _OPCLASS["write"]))
    sb = np.flatnonzero(seq)
    if len(sb) and len(zc):
        one = np.ones(len(sb), np.int8)
        m = _fifo_match(qd[sb], qt[sb], one, qs[sb], qs[sb], cd[zc], ct[zc], np.ones(len(zc), np.int8),
                        cs[zc], cs[zc])
        hit = m >= 0
        q_c[sb[hit]] = zc[m[hit]]
    # completions without a D (an error right after Q, e.g. QEMU's O_DIRECT alignment probe)
    direct = _first_match(qd, qt, qc, qs, qe, cd, ct, cc, cs, ce, exact=True)
    dct = np.where(direct >= 0, ct[np.maximum(direct, 0)] if len(C) else -1, -1)
    derr = np.where(direct >= 0, c_err_all[np.maximum(direct, 0)] if len(C) else 0, 0)
    early = (direct >= 0) & (derr != 0) & ((q_d < 0) | (dct < d_time)) & ~is_flushbio
    q_d[early] = -1
    d_time[early] = -1
    q_c[early] = direct[early]
    # Q -> its G/M/F (same extent, FIFO)
    ne = np.flatnonzero(~early)
    q_gm = np.full(len(Q), -1, dtype=np.int64)
    if len(GM):
        q_gm[ne] = _fifo_match(*(a[ne] for a in arr(Q)), *arr(GM))
    g_ns = np.where(q_gm >= 0, GM["time_ns"].to_numpy()[np.maximum(q_gm, 0)], -1) if len(GM) else np.full(len(Q), -1)
    merged = np.where(q_gm >= 0, GM["_merged"].to_numpy()[np.maximum(q_gm, 0)], False) if len(GM) else np.zeros(len(Q), bool)
    c_time = np.where(q_c >= 0, ct[np.maximum(q_c, 0)] if len(C) else -1, -1)
    c_err = np.where(q_c >= 0, c_err_all[np.maximum(q_c, 0)] if len(C) else 0, 0)

    n = len(Q)
    rid = np.arange(n, dtype=np.int64)
    # parent: the bio that created the request (the unmerged bio whose D is the same D)
    parent = pd.array([None] * n, dtype="Int64")
    if n:
        creator = pd.Series(rid[~merged & (q_d >= 0)], index=q_d[~merged & (q_d >= 0)])
        creator = creator[~creator.index.duplicated()]
        par = pd.Series(q_d).map(creator)
        pm = merged & (q_d >= 0) & par.notna().to_numpy()
        parent = pd.array(np.where(pm, par.fillna(-1).to_numpy(np.int64), -1), dtype="Int64")
        parent[~pm] = pd.NA
    bios = pd.DataFrame({
        "rid": rid, "op": Q["op"].astype(object).to_numpy(), "preflush": Q["preflush"].to_numpy(),
        "fua": Q["fua"].to_numpy(), "sync": Q["sync"].to_numpy(), "meta": Q["meta"].to_numpy(),
        "sector": np.where(is_flushbio, -1, qs), "nsect": Q["nsect"].to_numpy(),
        "q_ns": qt, "g_ns": g_ns, "d_ns": d_time, "c_ns": c_time, "error": c_err,
        "pid": Q["pid"].to_numpy(), "comm": Q["comm"].to_numpy(), "parent": parent,
        "pos": Q["pos"].to_numpy(), "device": dev_names[qd] if n else [], "merged": merged,
        "req_sector": np.where(q_d >= 0, ds[np.maximum(q_d, 0)] if len(D) else -1, -1),
        "req_nsect": np.where(q_d >= 0, (de - ds)[np.maximum(q_d, 0)] if len(D) else -1, -1),
        "d_fua": np.where(q_d >= 0, D["fua"].to_numpy()[np.maximum(q_d, 0)] if len(D) else False, False),
        "rq_c_ns": np.where((q_d >= 0) & (d_c[np.maximum(q_d, 0)] >= 0 if len(D) else False),
                            ct[np.maximum(d_c[np.maximum(q_d, 0)], 0)] if len(D) and len(C) else -1, -1),
    })
    # issued requests no bio points at (device flushes of the flush machinery, requests of untraced bios)
    used = np.zeros(len(D), dtype=bool)
    used[q_d[q_d >= 0]] = True
    orphan = np.flatnonzero(~used)
    if len(orphan):
        oc = d_c[orphan]
        extra = pd.DataFrame({
            "rid": n + np.arange(len(orphan)), "op": D["op"].astype(object).to_numpy()[orphan],
            "preflush": D["preflush"].to_numpy()[orphan], "fua": D["fua"].to_numpy()[orphan],
            "sync": D["sync"].to_numpy()[orphan], "meta": D["meta"].to_numpy()[orphan],
            "sector": np.where(dc[orphan] == _OPCLASS["flush"], -1, ds[orphan]),
            "nsect": (de - ds)[orphan], "q_ns": -1, "g_ns": -1, "d_ns": dt[orphan],
            "c_ns": np.where(oc >= 0, ct[np.maximum(oc, 0)] if len(C) else -1, -1),
            "error": np.where(oc >= 0, C["error"].to_numpy()[np.maximum(oc, 0)] if len(C) else 0, 0),
            "pid": D["pid"].to_numpy()[orphan], "comm": D["comm"].to_numpy()[orphan],
            "parent": pd.array([None] * len(orphan), dtype="Int64"), "pos": D["pos"].to_numpy()[orphan],
            "device": dev_names[dd[orphan]], "merged": False,
            "req_sector": ds[orphan], "req_nsect": (de - ds)[orphan], "d_fua": D["fua"].to_numpy()[orphan],
            "rq_c_ns": np.where(oc >= 0, ct[np.maximum(oc, 0)] if len(C) else -1, -1),
        })
        bios = pd.concat([bios, extra], ignore_index=True)
    for c in ("q_ns", "g_ns", "d_ns", "c_ns"):
        v = bios[c].to_numpy()
        bios[c] = pd.array(np.where(v < 0, 0, v), dtype="Int64")
        bios.loc[v < 0, c] = pd.NA
    bios.loc[bios["c_ns"].isna(), "error"] = pd.NA
    # btt's per-I/O latencies end at the completion of the issued request (for a FUA/PREFLUSH bio, its data
    # completion, before the flush machinery's post-flush and final completion in c_ns)
    rq_c = bios["rq_c_ns"].to_numpy()
    bios["rq_c_ns"] = pd.array(np.where(rq_c < 0, 0, rq_c), dtype="Int64")
    bios.loc[rq_c < 0, "rq_c_ns"] = pd.NA
    bios["q2d_ns"] = bios["d_ns"] - bios["q_ns"]
    bios["d2c_ns"] = bios["rq_c_ns"] - bios["d_ns"]
    bios["q2c_ns"] = bios["rq_c_ns"].fillna(bios["c_ns"]) - bios["q_ns"]
    bios["node"] = node
    bios["layer"] = layer
    # rids in time order (a request seen only from its dispatch at its dispatch time), so that a time slice of
    # the trace numbers its requests as the whole trace does, less the count before it
    bios["_k"] = bios["q_ns"].fillna(bios["d_ns"])
    bios = bios.sort_values(["_k", "d_ns", "pos"], kind="stable", na_position="last").drop(columns="_k")
    bios = bios.reset_index(drop=True)
    # remap parents
    remap = pd.Series(np.arange(len(bios)), index=bios["rid"].to_numpy())
    bios["parent"] = pd.array(bios["parent"].map(remap), dtype="Int64")
    bios["rid"] = np.arange(len(bios), dtype=np.int64)
    return REQUESTS.conform(bios)


def device_flushes(events: pd.DataFrame) -> pd.DataFrame:
    """Device-level cache flushes: each ``D`` of a zero-byte flush request paired with its ``C`` (FIFO).

    Columns: device, d_ns, c_ns (Int64, null if cut off), error (Int32), pid, pos. A flush makes durable
    every write that completed before its ``D`` (docs/formats.md section 3), when it completes without error.
    """
    f = events[(events["op"] == "flush") & events["action"].isin(["D", "C"])]
    f = f.sort_values(["time_ns", "pos"], kind="stable")
    out = []
    for dev, g in f.groupby(f["device"].astype(str), sort=True, observed=True):
        d = g[g["action"] == "D"]
        c = g[g["action"] == "C"]
        # one device flush is in flight at a time: FIFO by rank, dropping completions with nothing pending
        s = np.where(g["action"].to_numpy() == "D", 1, -1).cumsum()
        orphan_c = (g["action"].to_numpy() == "C") & (s < np.minimum.accumulate(np.concatenate([[0], s]))[:-1])
        c = c[~orphan_c[g["action"].to_numpy() == "C"]]
        k = min(len(d), len(c))
        out.append(pd.DataFrame({
            "device": dev, "d_ns": d["time_ns"].to_numpy(),
            "c_ns": pd.array(list(c["time_ns"].to_numpy()[:k]) + [None] * (len(d) - k), dtype="Int64"),
            "error": pd.array(list(c["error"].to_numpy()[:k]) + [None] * (len(d) - k), dtype="Int32"),
            "pid": d["pid"].to_numpy(), "pos": d["pos"].to_numpy(),
        }))
    if not out:
        return pd.DataFrame({"device": pd.Series([], dtype=object), "d_ns": pd.Series([], dtype="int64"),
                             "c_ns": pd.Series([], dtype="Int64"), "error": pd.Series([], dtype="Int32"),
                             "pid": pd.Series([], dtype="int64"), "pos": pd.Series([], dtype="int64")})
    return pd.concat(out, ignore_index=True)


def dispatched_requests(events: pd.DataFrame, *, node: str = "", layer: str = "") -> pd.DataFrame:
    """One row per issued request (``D``) with its completion: what the device below saw.

    At the guest this is what QEMU receives: merged bios arrive as one request, a FUA write on a device
    without FUA arrives as a write and then a flush (``D FN``). REQUESTS schema; ``q_ns`` is null, ``sector``
    is -1 for flushes, and ``c_ns``/``error`` come from the ``C`` with the same extent (FIFO).
    """
    ev = _select(events, ["D", "C"])
    dev_codes, dev_names = _devices(ev)
    ev = ev.assign(_dev=dev_codes, _cls=_opclass(ev), _e=ev["sector"] + ev["nsect"])
    D = _by_device(ev[(ev["action"] == "D").to_numpy()])
    C = _by_device(ev[(ev["action"] == "C").to_numpy()])

    def arr(df):
        return (df["_dev"].to_numpy(), df["time_ns"].to_numpy(), df["_cls"].to_numpy(),
                df["sector"].to_numpy(), df["_e"].to_numpy())

    m = _fifo_match(*arr(D), *arr(C))
    has = m >= 0
    ct = C["time_ns"].to_numpy()
    ce = C["error"].to_numpy()
    flush = D["op"].astype(object).to_numpy() == "flush"
    out = pd.DataFrame({
        "op": D["op"].astype(object).to_numpy(), "preflush": D["preflush"].to_numpy(), "fua": D["fua"].to_numpy(),
        "sync": D["sync"].to_numpy(), "meta": D["meta"].to_numpy(),
        "sector": np.where(flush, -1, D["sector"].to_numpy()), "nsect": D["nsect"].to_numpy(),
        "d_ns": D["time_ns"].to_numpy(),
        "c_ns": pd.array(np.where(has, ct[np.maximum(m, 0)] if len(C) else 0, 0), dtype="Int64"),
        "error": pd.array(np.where(has, ce[np.maximum(m, 0)] if len(C) else 0, 0), dtype="Int32"),
        "pid": D["pid"].to_numpy(), "comm": D["comm"].to_numpy(), "pos": D["pos"].to_numpy(),
        "device": dev_names[D["_dev"].to_numpy()] if len(D) else [],
    })
    out.loc[~has, ["c_ns", "error"]] = pd.NA
    out = out.sort_values(["d_ns", "pos"], kind="stable").reset_index(drop=True)
    out["rid"] = np.arange(len(out), dtype=np.int64)
    out["d2c_ns"] = out["c_ns"] - out["d_ns"]
    out["node"] = node
    out["layer"] = layer
    return REQUESTS.conform(out)
