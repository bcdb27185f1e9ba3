"""QEMU-layer requests and node events from QEMU_EVENTS (log or simple backend).

* :func:`qemu_requests` — one row per virtio-blk request (REQUESTS, layer ``qemu``): handle (read/write, sector,
  count) -> block-layer submission -> host jobs -> ``virtio_blk_req_complete``. A request completed without a
  read/write handle event is taken as a flush (QEMU 7.2 has no flush event; ``op_inferred`` says so).
* :func:`host_jobs` — one row per host job QEMU submitted (``thread_pool_submit``/``_aio`` or
  ``luring_co_submit``/``laio_co_submit``): its file-node offset/bytes, submit and complete times, and the QEMU
  request (``rid``) it served. A thread-pool job without a read/write just before it is an fdatasync (``flush``)
  when it served a request, else ``other`` (e.g. virtio-9p).
* :func:`node_events` — run-state, migration, savevm/loadvm, flush-all, block activation and QMP events
  (NODE_EVENTS).

Matching is order-aware and vectorised: a ``req`` pointer is reused, so lifecycles are numbered by sorting on
(req, file order) and counting starts; submissions are matched to the handle events of the same thread by
batch and byte range; host jobs to submissions by the event chain of the thread, then by coroutine (the job's
opaque/aiocb lives on the coroutine stack: ``>> 16`` of it names the coroutine while it runs).
Times are those of the trace (log: host CLOCK_REALTIME ns; simple: host CLOCK_MONOTONIC ns); sectors 512 B.
"""

from __future__ import annotations

import weakref

import numpy as np
import pandas as pd

from toolkit.events import NODE_EVENTS, REQUESTS

HANDLE = {"virtio_blk_handle_write": "write", "virtio_blk_handle_read": "read"}
COMPLETE = "virtio_blk_req_complete"
RW_COMPLETE = "virtio_blk_rw_complete"
BLK_SUBMIT = {"blk_co_pwritev": "write", "blk_co_preadv": "read"}
BDRV = {"bdrv_co_pwritev_part": "write", "bdrv_co_preadv_part": "read", "bdrv_co_pwrite_zeroes": "write_zeroes"}
CHAIN = set(BLK_SUBMIT) | set(BDRV) | {"virtio_blk_submit_multireq"}
JOB_SUBMIT = {"thread_pool_submit": "thread_pool", "thread_pool_submit_aio": "thread_pool",
              "luring_co_submit": "io_uring", "laio_co_submit": "linux-aio"}
JOB_COMPLETE = {"thread_pool_complete": "thread_pool", "thread_pool_complete_aio": "thread_pool",
                "luring_process_completion": "io_uring", "laio_process_completion": "linux-aio",
                "luring_co_submit_complete": "io_uring"}
AIO_TYPES = {1: "read", 2: "write", 4: "ioctl", 8: "flush", 0x10: "discard", 0x20: "write_zeroes"}
ZERO_WRITE = 0x2
STATUS_ERRNO = {0: 0, 1: -5, 2: -95}  # VIRTIO_BLK_S_OK, IOERR (EIO), UNSUPP (EOPNOTSUPP)


def _frame(events: pd.DataFrame) -> pd.DataFrame:
    """The columns used here, with ``seq`` = file order, ``event`` categorical and a non-null thread key."""
    ev = events.reset_index(drop=True)
    e = ev["event"]
    if not isinstance(e.dtype, pd.CategoricalDtype):
        e = e.astype(object).astype("category")
    out = pd.DataFrame({
        "seq": np.arange(len(ev), dtype=np.int64),
        "event": e.array,
        "t": ev["time_ns"].astype("Float64").to_numpy(np.float64, na_value=np.nan),
        "tid": ev["tid"].fillna(-1).astype(np.int64).to_numpy(),
        "pos": ev["pos"].to_numpy(np.int64),
    })
    for c in ("req", "vdev", "opaque", "bs", "sector", "nsectors", "offset", "bytes", "flags", "status", "ret",
              "type"):
        out[c] = ev[c].array
    return out


def _codes(f: pd.DataFrame) -> np.ndarray:
    return f["event"].cat.codes.to_numpy()


def _is(f: pd.DataFrame, names) -> np.ndarray:
    """Lookup table by event code: is the event one of ``names``? Index it with ``_codes(f)`` (code -1, a null
    event, lands on the last slot: False). No string is compared per row."""
    cats = f["event"].cat.categories
    lut = np.zeros(len(cats) + 1, dtype=bool)
    lut[:-1] = cats.isin(list(names))
    return lut


def _names(f: pd.DataFrame, mapping: dict, default=None) -> np.ndarray:
    """Lookup table by event code: ``mapping[event]`` (object; ``default`` for other events and nulls)."""
    cats = f["event"].cat.categories
    return np.array([mapping.get(c, default) for c in cats] + [default], dtype=object)


def _num(a: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``a[p]`` as float, NaN where ``p`` is -1."""
    return np.where(p >= 0, a[np.maximum(p, 0)] if len(a) else np.nan, np.nan).astype(np.float64)


# --------------------------------------------------------------------------------------------------------------
def _lifecycles(f: pd.DataFrame) -> pd.DataFrame:
    """virtio-blk request lifecycles: one row per (req pointer, use), with the events' seq and values."""
    codes = _codes(f)
    is_h_all = _is(f, HANDLE)[codes]
    is_c_all = _is(f, [COMPLETE])[codes]
    is_rw_all = _is(f, [RW_COMPLETE])[codes]
    req_na = f["req"].isna().to_numpy()
    idx = np.flatnonzero((is_h_all | is_c_all | is_rw_all) & ~req_na)
    req = f["req"].array[idx].to_numpy(np.uint64)
    seq_all = f["seq"].to_numpy()
    o = np.lexsort((seq_all[idx], req))  # by (req, seq)
    rows, req = idx[o], req[o]
    is_handle, is_done = is_h_all[rows], is_c_all[rows]
    new_req = np.ones(len(rows), dtype=bool)
    new_req[1:] = req[1:] != req[:-1]
    after_done = np.zeros(len(rows), dtype=bool)
    after_done[1:] = is_done[:-1]
    start = new_req | is_handle | after_done
    # a handle right after an event of the same lifecycle other than its completion still starts a new one
    lid = np.cumsum(start) - 1
    n = int(lid[-1]) + 1 if len(lid) else 0
    first = rows[start]

    def first_of(mask: np.ndarray) -> np.ndarray:
        """Per lifecycle, the row of its first event in ``mask`` (-1 if none)."""
        lm = lid[mask]  # ascending
        k = np.flatnonzero(np.concatenate([[True], lm[1:] != lm[:-1]])) if len(lm) else np.zeros(0, np.int64)
        p = np.full(n, -1, dtype=np.int64)
        p[lm[k]] = rows[mask][k]
        return p

    hp, cp, rp = first_of(is_handle), first_of(is_done), first_of(is_rw_all[rows])
    has_h = hp >= 0
    t, tid = f["t"].to_numpy(), f["tid"].to_numpy()
    op = np.full(n, "flush", dtype=object)
    op[has_h] = _names(f, HANDLE)[codes[hp[has_h]]]
    # a lifecycle seen only as rw_complete (trace started mid-request) is not a flush
    op[~has_h & (cp < 0)] = "unknown"
    out = pd.DataFrame({
        "lid": np.arange(n), "req": f["req"].array.take(first), "vdev": f["vdev"].array.take(first),
        "first_seq": seq_all[first], "pos": f["pos"].to_numpy()[first],
        "handle_seq": _num(seq_all, hp), "q_ns": _num(t, hp), "op": op, "op_inferred": ~has_h,
        "sector": f["sector"].array.take(hp, allow_fill=True), "nsect": f["nsectors"].array.take(hp, allow_fill=True),
        "tid": np.where(has_h, tid[np.maximum(hp, 0)], tid[first]) if n else np.zeros(0, np.int64),
        "c_ns": _num(t, cp), "complete_seq": _num(seq_all, cp), "status": f["status"].array.take(cp, allow_fill=True),
        "complete_tid": _num(tid, cp),
        "rw_ret": f["ret"].array.take(rp, allow_fill=True), "rw_c_ns": _num(t, rp),
    })
    out = out.sort_values("first_seq", kind="stable").reset_index(drop=True)
    return out


def _match_submissions(f: pd.DataFrame, lc: pd.DataFrame) -> pd.DataFrame:
    """For each read/write lifecycle, the blk_co_* submission that carried it (seq, time, offset, bytes)."""
    h = lc[~lc["op_inferred"] & lc["op"].isin(["read", "write"])][["lid", "handle_seq", "tid", "op", "sector",
                                                                      "nsect"]].copy()
    h["seq"] = h["handle_seq"].astype(np.int64)
    h["op"] = (h["op"] == "write").to_numpy(np.int8)  # op as a code: 1 write, 0 read
    codes = _codes(f)
    sm = np.flatnonzero(_is(f, BLK_SUBMIT)[codes])
    s = pd.DataFrame({"seq": f["seq"].to_numpy()[sm], "tid": f["tid"].to_numpy()[sm], "t": f["t"].to_numpy()[sm],
                      "offset": f["offset"].array.take(sm), "bytes": f["bytes"].array.take(sm),
                      "op": (_names(f, BLK_SUBMIT)[codes[sm]] == "write").astype(np.int8)})
    if h.empty or s.empty:
        return pd.DataFrame(columns=["lid", "sub_seq", "d_ns", "sub_offset", "sub_bytes"])
    # batch number: handle events of the thread before the submission
    hm = np.flatnonzero(_is(f, HANDLE)[codes])
    bseq = np.concatenate([f["seq"].to_numpy()[hm], s["seq"].to_numpy()])
    btid = np.concatenate([f["tid"].to_numpy()[hm], s["tid"].to_numpy()])
    is_h = np.concatenate([np.ones(len(hm), np.int64), np.zeros(len(s), np.int64)])
    o = np.lexsort((bseq, btid))  # by thread, then file order: the running count of handles is the batch
    tid_o, ish_o = btid[o], is_h[o]
    cs = np.cumsum(ish_o)
    new = np.ones(len(o), dtype=bool)
    new[1:] = tid_o[1:] != tid_o[:-1]
    base = np.maximum.accumulate(np.where(new, cs - ish_o, 0))
    batch = np.empty(len(o), dtype=np.int64)
    batch[o] = cs - base
    s["batch"] = batch[len(hm):]
    # the batch a handle belongs to: that of the next submission of its op in its thread
    h = h.sort_values("seq")
    s = s.sort_values("seq")
    nx = pd.merge_asof(h, s[["seq", "tid", "op", "batch"]], on="seq", by=["tid", "op"], direction="forward",
                       allow_exact_matches=False)
    nx = nx.dropna(subset=["batch"])
    nx["batch"] = nx["batch"].astype(np.int64)
    nx["start"] = nx["sector"].astype(np.int64) * 512
    nx = nx.sort_values("start")
    s2 = s.rename(columns={"seq": "sub_seq", "t": "d_ns", "offset": "sub_offset", "bytes": "sub_bytes"})
    s2 = s2.assign(start=s2["sub_offset"].astype(np.int64)).sort_values("start")
    m = pd.merge_asof(nx[["lid", "tid", "op", "batch", "start", "nsect"]], s2[["tid", "op", "batch", "start",
                      "sub_seq", "d_ns", "sub_offset", "sub_bytes"]], on="start", by=["tid", "op", "batch"],
                      direction="backward")
    ok = m["sub_seq"].notna() & (m["start"] + m["nsect"].astype(np.int64) * 512
                                 <= m["sub_offset"].astype("Float64") + m["sub_bytes"].astype("Float64")).fillna(False)
    m = m[ok.to_numpy(bool)]
    return m[["lid", "sub_seq", "d_ns", "sub_offset", "sub_bytes"]]


def _jobs(f: pd.DataFrame, order: np.ndarray) -> pd.DataFrame:
    """Host jobs with their file-node predecessor, completion and chain context (blk submission seq).

    ``order``: the rows of ``f`` by (tid, seq). One row per job, in file order.
    """
    codes = _codes(f)[order]
    tid = f["tid"].to_numpy()[order]
    seq = f["seq"].to_numpy()[order]
    n_ev = len(order)
    same = np.zeros(n_ev, dtype=bool)
    same[1:] = tid[1:] == tid[:-1]
    # chain context: the latest blk_co_* submission, as long as only chain events or job submits follow it
    is_blk = _is(f, BLK_SUBMIT)[codes]
    in_chain = _is(f, CHAIN | set(JOB_SUBMIT))[codes]
    grp = np.cumsum(~in_chain | ~same)  # a new run at each break; the context does not cross runs
    last = np.maximum.accumulate(np.where(is_blk, np.arange(n_ev), -1)) if n_ev else np.zeros(0, np.int64)
    lastc = np.maximum(last, 0)
    ctx = np.where((last >= 0) & (grp[lastc] == grp), seq[lastc].astype(np.float64) if n_ev else 0.0, np.nan)
    si = np.flatnonzero(_is(f, JOB_SUBMIT)[codes])  # jobs, by (tid, seq)
    si = si[np.argsort(seq[si], kind="stable")]     # jobs in file order
    rows = order[si]
    pi = si - 1                                     # the event before the job in its thread's order
    prow = np.where(pi >= 0, order[np.maximum(pi, 0)], -1)
    psame = same[si]
    pcode = np.where(psame, codes[np.maximum(pi, 0)], -1)
    kind = _names(f, JOB_SUBMIT)[codes[si]]
    tp = kind == "thread_pool"
    pop = _names(f, BDRV)[pcode]
    pflags = f["flags"].array.take(prow, allow_fill=True)
    zw = (pflags.fillna(0).to_numpy(np.int64) & ZERO_WRITE) != 0
    job_op = np.where((pop == "write") & zw, "write_zeroes", pop)
    # aio backends carry their own type/offset/bytes
    ty = f["type"].array.take(rows)
    tna = ty.isna()
    tv = ty.fillna(0).to_numpy(np.int64)
    aio_op = np.full(len(rows), None, dtype=object)
    aio_op[~tna] = "other"
    for k, name in AIO_TYPES.items():
        aio_op[~tna & (tv == k)] = name

    def pick(col: str) -> pd.api.extensions.ExtensionArray:
        """The previous event's ``col`` for thread-pool jobs (the file-node request it runs), the job's own
        for aio jobs."""
        v = f[col].array.take(prow, allow_fill=True)
        v[~tp] = f[col].array.take(rows[~tp])
        return v

    flags = pflags.copy()
    flags[~tp] = pd.NA
    req = f["req"].array.take(rows)
    opaque = f["opaque"].array.take(rows)
    key = np.where(tp, opaque.astype("Float64").fillna(0).to_numpy(np.float64),
                   req.astype("Float64").fillna(0).to_numpy(np.float64))
    j = pd.DataFrame({
        "seq": seq[si], "t": f["t"].to_numpy()[rows], "tid": tid[si], "req": req, "kind": kind,
        "ctx": ctx[si], "prev_bdrv": ~pd.isna(pop), "op": np.where(tp, job_op, aio_op),
        "offset": pick("offset"), "bytes": pick("bytes"), "flags": flags, "file_bs": pick("bs"),
        "cokey": (key // 65536).astype(np.int64),
    })
    # completion: the next completion event with the same req (aiocb) pointer
    cm = _is(f, JOB_COMPLETE)[_codes(f)] & f["req"].notna().to_numpy()
    crow = np.flatnonzero(cm)
    if len(j) and len(crow):
        # a job whose req pointer could not be read (damaged line) has no key and finds no completion
        jr = pd.DataFrame({"seq": j["seq"].to_numpy(), "rk": req.astype("Float64").to_numpy(np.float64, na_value=np.nan)})
        cr = pd.DataFrame({"seq": f["seq"].to_numpy()[crow],
                           "rk": f["req"].array.take(crow).astype(np.uint64).astype(np.float64),
                           "complete_ns": f["t"].to_numpy()[crow], "job_ret": f["ret"].array.take(crow)})
        cr["complete_seq"] = cr["seq"]
        m = pd.merge_asof(jr, cr, on="seq", by="rk", direction="forward", allow_exact_matches=False)
        j["complete_seq"] = m["complete_seq"].to_numpy()
        j["complete_ns"] = m["complete_ns"].to_numpy()
        j["job_ret"] = m["job_ret"].to_numpy()
    else:
        j["complete_seq"] = np.nan
        j["complete_ns"] = np.nan
        j["job_ret"] = pd.array([None] * len(j), dtype="Int64")
    return j


_LAST: list = []  # [(weakref to events, result)]: qemu_requests and host_jobs of one frame share one analysis


def _analyse(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    if _LAST and _LAST[0][0]() is events and _LAST[0][1] == events.shape:
        return _LAST[0][2]
    res = _analyse_uncached(events)
    _LAST[:] = [(weakref.ref(events), events.shape, res)]
    return res


def _analyse_uncached(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    f = _frame(events)
    lc = _lifecycles(f)
    sub = _match_submissions(f, lc)
    lc = lc.merge(sub, on="lid", how="left")
    order = np.lexsort((f["seq"].to_numpy(), f["tid"].to_numpy()))  # by thread, then file order
    jobs = _jobs(f, order)
    lc["rid"] = np.arange(len(lc), dtype=np.int64)
    jobs["rid"] = -1
    jobs["link"] = ""
    if len(jobs) and len(lc):
        # 1. chain: the job follows the blk_co_* submission that carried the request
        s2r = lc.dropna(subset=["sub_seq"]).groupby("sub_seq")["rid"].min()
        r = jobs["ctx"].map(s2r)
        hit = r.notna() & jobs["prev_bdrv"]
        jobs.loc[hit, "rid"] = r[hit].astype(np.int64)
        jobs.loc[hit, "link"] = "chain"
        # 2. flush: the job whose completion is the event just before the flush's req_complete in its thread
        fl = lc[(lc["op"] == "flush") & lc["complete_seq"].notna()]
        if len(fl):
            sseq = f["seq"].to_numpy()[order]
            stid = f["tid"].to_numpy()[order]
            prev_seq = np.concatenate([[np.nan], sseq[:-1].astype(np.float64)])
            same = np.concatenate([[False], stid[1:] == stid[:-1]])
            p_of = np.empty(len(sseq), dtype=np.float64)
            p_of[sseq] = np.where(same, prev_seq, np.nan)  # by seq (= row of f)
            want = pd.Series(fl["rid"].to_numpy(), index=p_of[fl["complete_seq"].to_numpy(np.int64)])
            want = want[want.index.notna()]
            r = jobs["complete_seq"].map(want.groupby(level=0).first())
            hit = r.notna() & (jobs["rid"] < 0)
            jobs.loc[hit, "rid"] = r[hit].astype(np.int64)
            jobs.loc[hit, "link"] = "flush-complete"
        # 3. coroutine: unlinked jobs take the owner of the same coroutine: the previous owned job's request while
        #    it is still open, else the next owned job's request when that is a flush
        jobs = jobs.sort_values("seq").reset_index(drop=True)
        owner = jobs["rid"].where(jobs["rid"] >= 0)
        g = [jobs["tid"], jobs["cokey"]]
        fwd = owner.groupby(g).ffill()
        done_seq = lc.set_index("rid")["complete_seq"]
        still_open = (jobs["seq"] < fwd.map(done_seq).fillna(np.inf)).to_numpy()
        take_f = owner.isna() & fwd.notna() & still_open
        bwd = owner.groupby(g).bfill()
        is_flush = bwd.map(lc.set_index("rid")["op"]).eq("flush")
        take_b = owner.isna() & ~take_f & bwd.notna() & is_flush
        jobs.loc[take_f, "rid"] = fwd[take_f].astype(np.int64)
        jobs.loc[take_b, "rid"] = bwd[take_b].astype(np.int64)
        jobs.loc[take_f | take_b, "link"] = "coroutine"
    # op of thread-pool jobs without a read/write before them: fdatasync when they served a request
    none = jobs["op"].isna()
    jobs.loc[none & (jobs["rid"] >= 0), "op"] = "flush"
    jobs.loc[jobs["op"].isna(), "op"] = "other"
    return lc, jobs

# --------------------------------------------------------------------------------------------------------------
def qemu_requests(events: pd.DataFrame, *, node: str | None = None, role: str | None = None,
                  pid: int | None = None) -> pd.DataFrame:
    """One row per virtio-blk request in the REQUESTS schema (layer 'qemu'), in order of first event.

    q_ns = handle event (null for flushes: QEMU 7.2 traces no flush arrival), d_ns = the blk_co_* submission
    (flush: its first host job), c_ns = ``virtio_blk_req_complete``; error from the virtio status (or the
    negative ``rw_complete`` ret). Extra columns: ``req``, ``vdev``, ``tid``, ``status``, ``rw_ret``,
    ``op_inferred`` (flush inferred from a missing handle event), ``merged`` (virtio requests in its block-layer
    submission; ``parent`` links the parts to the lowest-sector part), ``submissions`` (block-layer
    submissions: 0 or 1), ``host_jobs``, ``sub_ns``/``done_ns`` (first host job submitted, last host job
    completed), ``host_offset``/``host_bytes`` (first data job's file offset, total data bytes),
    ``host_flush`` (an fdatasync job served it), ``role``, ``pid``.
    """
    lc, jobs = _analyse(events)
    n = len(lc)
    if n == 0:
        return REQUESTS.empty()
    device = f"qemu:{pid if pid is not None else (role or '?')}"
    jr = jobs[jobs["rid"] >= 0]
    agg = jr.groupby("rid").agg(host_jobs=("seq", "size"), sub_ns=("t", "min"), done_ns=("complete_ns", "max"))
    data = jr[jr["op"].isin(["write", "read", "write_zeroes", "discard"])]
    dagg = data.groupby("rid").agg(host_offset=("offset", "first"), host_bytes=("bytes", "sum"))
    has_flush = jr[jr["op"] == "flush"].groupby("rid").size()
    rid = lc["rid"]
    op = lc["op"].to_numpy(object)
    flush = op == "flush"
    sector = pd.array(lc["sector"], dtype="Int64").fillna(-1).to_numpy(np.int64)
    nsect = pd.array(lc["nsect"], dtype="Int64").fillna(0).to_numpy(np.int64)
    status = pd.array(lc["status"], dtype="Int64")
    rw_ret = pd.array(lc["rw_ret"], dtype="Int64")
    # errno from the virtio status (unknown status: EIO), or the negative rw_complete ret
    st = status.fillna(0).to_numpy(np.int64)
    e = np.full(n, -5, dtype=np.int64)
    for k, v in STATUS_ERRNO.items():
        e[st == k] = v
    e_na = status.isna().copy()
    neg = rw_ret.fillna(0).to_numpy(np.int64) < 0
    e[neg] = rw_ret.fillna(0).to_numpy(np.int64)[neg]
    e_na[neg] = False
    err = pd.arrays.IntegerArray(e, e_na)
    d_ns = lc["d_ns"].to_numpy(np.float64)
    sub_ns = rid.map(agg["sub_ns"]).to_numpy(np.float64)
    d_ns = np.where(flush & np.isnan(d_ns), sub_ns, d_ns)
    # merged submissions: parts share sub_seq; parent = the part with the lowest sector
    merged = lc.groupby("sub_seq")["rid"].transform("size").fillna(1).astype(np.int64)
    lowest = lc.sort_values(["sub_seq", "sector"]).drop_duplicates("sub_seq").set_index("sub_seq")["rid"]
    parent = lc["sub_seq"].map(lowest)
    parent = parent.where(parent != rid)
    out = pd.DataFrame({
        "rid": rid.to_numpy(), "node": node, "layer": "qemu", "device": device, "op": op,
        "preflush": False, "fua": False, "sync": False, "meta": False,
        "sector": np.where(flush, -1, sector), "nsect": np.where(flush, 0, nsect),
        "q_ns": _i64(lc["q_ns"]), "d_ns": _i64(d_ns), "c_ns": _i64(lc["c_ns"]),
        "error": pd.array(err, dtype="Int32"),
        "pid": lc["tid"].to_numpy(np.int64), "comm": None,
        "parent": pd.array(parent, dtype="Int64"), "pos": lc["pos"].to_numpy(np.int64),
        "req": pd.array(lc["req"], dtype="UInt64"), "vdev": pd.array(lc["vdev"], dtype="UInt64"),
        "tid": lc["tid"].to_numpy(np.int64), "status": status, "rw_ret": rw_ret,
        "op_inferred": lc["op_inferred"].to_numpy(bool), "merged": merged.to_numpy(),
        "submissions": lc["sub_seq"].notna().astype(np.int64).to_numpy(),
        "host_jobs": rid.map(agg["host_jobs"]).fillna(0).astype(np.int64).to_numpy(),
        "sub_ns": _i64(sub_ns), "done_ns": _i64(rid.map(agg["done_ns"]).to_numpy(np.float64)),
        "host_offset": pd.array(rid.map(dagg["host_offset"]), dtype="Int64"),
        "host_bytes": pd.array(rid.map(dagg["host_bytes"]), dtype="Int64"),
        "host_flush": rid.isin(has_flush.index).to_numpy(),
        "role": role, "qemu_pid": pid,
    })
    return REQUESTS.conform(out)


def host_jobs(events: pd.DataFrame) -> pd.DataFrame:
    """One row per host job (thread pool / io_uring / linux-aio) with the QEMU request it served.

    Columns: job, rid (``qemu_requests`` rid, -1 if none), link ('chain' | 'flush-complete' | 'coroutine' | ''),
    kind, op (read | write | write_zeroes | flush | discard | other), offset/bytes (file-node bytes: image
    file offset), flags (BDRV_REQ_*), file_bs, submit_ns/complete_ns (trace clock), ret, tid, req (job pointer),
    submit_pos/complete_pos (file position), seq (row in the events table).
    """
    _, j = _analyse(events)
    pos = events["pos"].to_numpy(np.int64)
    cseq = j["complete_seq"].to_numpy(np.float64)
    return pd.DataFrame({
        "job": np.arange(len(j), dtype=np.int64), "rid": j["rid"].to_numpy(np.int64),
        "link": j["link"].to_numpy(object), "kind": j["kind"].to_numpy(object), "op": j["op"].to_numpy(object),
        "offset": pd.array(j["offset"], dtype="Int64"), "bytes": pd.array(j["bytes"], dtype="Int64"),
        "flags": pd.array(j["flags"], dtype="Int64"), "file_bs": pd.array(j["file_bs"], dtype="UInt64"),
        "submit_ns": _i64(j["t"]), "complete_ns": _i64(j["complete_ns"]),
        "ret": pd.array(j["job_ret"], dtype="Int64"), "tid": j["tid"].to_numpy(np.int64),
        "req": pd.array(j["req"], dtype="UInt64"), "submit_pos": pos[j["seq"].to_numpy(np.int64)],
        "complete_pos": pd.array(np.where(np.isnan(cseq), None, pos[np.nan_to_num(cseq).astype(np.int64)]),
                                 dtype="Int64"),
        "seq": j["seq"].to_numpy(np.int64),
    })


request_submissions = host_jobs


def _i64(x) -> pd.arrays.IntegerArray:
    a = np.asarray(pd.array(x, dtype="Float64").to_numpy(np.float64, na_value=np.nan), dtype=np.float64)
    return pd.arrays.IntegerArray(np.nan_to_num(a).astype(np.int64), np.isnan(a))


# --------------------------------------------------------------------------------------------------------------
NODE_KINDS = [
    ("runstate_set", "runstate"), ("vm_state_notify", "vm_state"), ("vm_stop_flush_all", "flush_all"),
    ("migration_block_activation", "activation"), ("qmp_enter_", "qmp"), ("qmp_exit_", "qmp"),
    ("savevm_", "savevm"), ("loadvm_", "loadvm"), ("qemu_loadvm_", "loadvm"), ("vmstate_load", "loadvm"),
    ("process_incoming_migration", "loadvm"), ("migrate_", "migration"), ("migration_", "migration"),
    ("postcopy_", "migration"), ("vmstate_downtime_", "migration"),
]


def node_events(events: pd.DataFrame, *, node: str | None = None, role: str | None = None,
                pid: int | None = None) -> pd.DataFrame:
    """Run-state, migration, savevm/loadvm, flush-all, activation and QMP events of one QEMU process (NODE_EVENTS).

    ``state``: the new run state / migration state / activation state where the event names one, the QMP
    command for qmp_*, ``ret N`` for vm_stop_flush_all and other events with a ret, else null.
    """
    ev = events.reset_index(drop=True)
    name = ev["event"].astype(object).fillna("").to_numpy(object)
    kind = np.full(len(ev), None, dtype=object)
    for prefix, k in reversed(NODE_KINDS):
        hit = np.char.startswith(name.astype(str), prefix) if len(name) else np.zeros(0, bool)
        kind = np.where(hit, k, kind)
    sel = kind != None  # noqa: E711 (elementwise)
    e = ev[sel]
    state = e["state"].astype(object).to_numpy(object)
    nm = name[sel]
    qmp = kind[sel] == "qmp"
    cmd = pd.Series(nm).str.replace(r"^qmp_(enter|exit)_", "", regex=True).to_numpy(object)
    state = np.where(pd.isna(state) & qmp, cmd, state)
    ret = e["ret"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
    rets = np.array([f"ret {int(r)}" if r == r else None for r in ret], dtype=object)
    state = np.where(pd.isna(state), rets, state)
    out = pd.DataFrame({
        "time_ns": e["time_ns"].to_numpy(), "node": node, "role": role, "pid": pid,
        "tid": e["tid"].to_numpy(), "kind": kind[sel], "event": nm, "state": state,
        "detail": e["args"].to_numpy(), "pos": e["pos"].to_numpy(np.int64),
    })
    return NODE_EVENTS.conform(out)
