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
    """The columns used here, with ``seq`` = file order and a non-null thread key."""
    ev = events.reset_index(drop=True)
    out = pd.DataFrame({
        "seq": np.arange(len(ev), dtype=np.int64),
        "event": ev["event"].astype(object).to_numpy(),
        "t": ev["time_ns"].astype("Float64").to_numpy(np.float64, na_value=np.nan),
        "tid": ev["tid"].fillna(-1).astype(np.int64).to_numpy(),
        "pos": ev["pos"].to_numpy(np.int64),
    })
    for c in ("req", "vdev", "opaque", "bs", "sector", "nsectors", "offset", "bytes", "flags", "status", "ret",
              "type"):
        out[c] = ev[c]
    return out


# --------------------------------------------------------------------------------------------------------------
def _lifecycles(f: pd.DataFrame) -> pd.DataFrame:
    """virtio-blk request lifecycles: one row per (req pointer, use), with the events' seq and values."""
    v = f[f["event"].isin([*HANDLE, COMPLETE, RW_COMPLETE]) & f["req"].notna()]
    v = v.sort_values(["req", "seq"], kind="stable")
    req = v["req"].to_numpy(np.uint64)
    ev = v["event"].to_numpy(object)
    is_handle = np.isin(ev, list(HANDLE))
    is_done = ev == COMPLETE
    new_req = np.ones(len(v), dtype=bool)
    new_req[1:] = req[1:] != req[:-1]
    after_done = np.zeros(len(v), dtype=bool)
    after_done[1:] = is_done[:-1]
    start = new_req | is_handle | after_done
    # a handle right after an event of the same lifecycle other than its completion still starts a new one
    lid = np.cumsum(start) - 1
    v = v.assign(lid=lid)
    h = v[is_handle].drop_duplicates("lid")
    c = v[is_done].drop_duplicates("lid")
    rw = v[ev == RW_COMPLETE].drop_duplicates("lid")
    n = int(lid[-1]) + 1 if len(lid) else 0
    out = pd.DataFrame({"lid": np.arange(n)})
    first = v.drop_duplicates("lid").set_index("lid")
    out["req"] = first["req"].reindex(out["lid"]).to_numpy()
    out["vdev"] = first["vdev"].reindex(out["lid"]).to_numpy()
    out["first_seq"] = first["seq"].reindex(out["lid"]).to_numpy()
    out["pos"] = first["pos"].reindex(out["lid"]).to_numpy()
    hh = h.set_index("lid")
    out["handle_seq"] = hh["seq"].reindex(out["lid"]).to_numpy(np.float64)
    out["q_ns"] = hh["t"].reindex(out["lid"]).to_numpy(np.float64)
    out["op"] = hh["event"].map(HANDLE).reindex(out["lid"]).fillna("flush").to_numpy(object)
    out["op_inferred"] = ~out["lid"].isin(hh.index).to_numpy()
    out["sector"] = hh["sector"].reindex(out["lid"]).to_numpy()
    out["nsect"] = hh["nsectors"].reindex(out["lid"]).to_numpy()
    out["tid"] = hh["tid"].reindex(out["lid"]).fillna(first["tid"].reindex(out["lid"])).to_numpy(np.int64)
    cc = c.set_index("lid")
    out["c_ns"] = cc["t"].reindex(out["lid"]).to_numpy(np.float64)
    out["complete_seq"] = cc["seq"].reindex(out["lid"]).to_numpy(np.float64)
    out["status"] = cc["status"].reindex(out["lid"]).to_numpy()
    out["complete_tid"] = cc["tid"].reindex(out["lid"]).to_numpy(np.float64)
    rr = rw.set_index("lid")
    out["rw_ret"] = rr["ret"].reindex(out["lid"]).to_numpy()
    out["rw_c_ns"] = rr["t"].reindex(out["lid"]).to_numpy(np.float64)
    # a lifecycle seen only as rw_complete (trace started mid-request) is not a flush
    only_rw = out["op_inferred"].to_numpy() & np.isnan(out["complete_seq"].to_numpy())
    out.loc[only_rw, "op"] = "unknown"
    out = out.sort_values("first_seq", kind="stable").reset_index(drop=True)
    return out


def _match_submissions(f: pd.DataFrame, lc: pd.DataFrame) -> pd.DataFrame:
    """For each read/write lifecycle, the blk_co_* submission that carried it (seq, time, offset, bytes)."""
    h = lc[~lc["op_inferred"] & lc["op"].isin(["read", "write"])][["lid", "handle_seq", "tid", "op", "sector",
                                                                      "nsect"]].copy()
    h["seq"] = h["handle_seq"].astype(np.int64)
    s = f[f["event"].isin(list(BLK_SUBMIT))][["seq", "tid", "t", "event", "offset", "bytes"]].copy()
    s["op"] = s["event"].map(BLK_SUBMIT)
    if h.empty or s.empty:
        return pd.DataFrame(columns=["lid", "sub_seq", "d_ns", "sub_offset", "sub_bytes"])
    # batch number: handle events of the thread before the submission
    allh = f[f["event"].isin(list(HANDLE))][["seq", "tid"]]
    both = pd.concat([allh.assign(is_h=1), s[["seq", "tid"]].assign(is_h=0)]).sort_values("seq", kind="stable")
    both["batch"] = both.groupby("tid")["is_h"].cumsum()
    s = s.merge(both[both["is_h"] == 0][["seq", "batch"]], on="seq")
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


def _jobs(f: pd.DataFrame) -> pd.DataFrame:
    """Host jobs with their file-node predecessor, completion and chain context (blk submission seq)."""
    f = f.sort_values(["tid", "seq"], kind="stable")
    ev = f["event"].to_numpy(object)
    tid = f["tid"].to_numpy()
    same = np.zeros(len(f), dtype=bool)
    same[1:] = tid[1:] == tid[:-1]
    # chain context: the latest blk_co_* submission, as long as only chain events or job submits follow it
    is_blk = np.isin(ev, list(BLK_SUBMIT))
    in_chain = np.isin(ev, list(CHAIN | set(JOB_SUBMIT)))
    ctx = pd.Series(np.where(is_blk, f["seq"].to_numpy(np.float64), np.nan))
    brk = ~in_chain | ~same
    grp = np.cumsum(brk)  # a new run at each break; ffill inside runs only
    ctx = ctx.groupby(grp).ffill().to_numpy()
    prev_ev = np.empty(len(f), dtype=object)
    prev_ev[0:1] = None
    prev_ev[1:] = np.where(same[1:], ev[:-1], None)
    cols = {c: f[c].to_numpy() for c in ("seq", "offset", "bytes", "flags", "bs")}
    prev = {c: np.concatenate([[None], v[:-1]]) for c, v in cols.items()}
    is_sub = np.isin(ev, list(JOB_SUBMIT))
    j = f[is_sub].copy()
    j["kind"] = j["event"].map(JOB_SUBMIT)
    j["ctx"] = ctx[is_sub]
    pe = prev_ev[is_sub]
    j["prev_event"] = pe
    pop = pd.Series(pe).map(BDRV).to_numpy(object)
    pflags = pd.array(prev["flags"][is_sub], dtype="Int64")
    tp = (j["kind"] == "thread_pool").to_numpy()
    job_op = np.where(pd.isna(pop), None, pop)
    zw = (pd.Series(pflags).fillna(0).to_numpy(np.int64) & ZERO_WRITE) != 0
    job_op = np.where((job_op == "write") & zw, "write_zeroes", job_op)
    # aio backends carry their own type/offset/bytes
    aio_t = j["type"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
    aio_op = pd.Series(aio_t).map(lambda x: AIO_TYPES.get(int(x), "other") if x == x else None).to_numpy(object)
    j["op"] = np.where(tp, job_op, aio_op)
    j["offset"] = np.where(tp, pd.array(prev["offset"][is_sub], dtype="Int64"), j["offset"])
    j["bytes"] = np.where(tp, pd.array(prev["bytes"][is_sub], dtype="Int64"), j["bytes"])
    j["flags"] = np.where(tp, pflags, pd.array([None] * len(j), dtype="Int64"))
    j["file_bs"] = np.where(tp, pd.array(prev["bs"][is_sub], dtype="UInt64"), j["bs"])
    key = np.where(tp, j["opaque"].astype("Float64").fillna(0).to_numpy(np.float64),
                   j["req"].astype("Float64").fillna(0).to_numpy(np.float64))
    j["cokey"] = (key // 65536).astype(np.int64)
    # completion: the next completion event with the same req (aiocb) pointer
    c = f[np.isin(ev, list(JOB_COMPLETE)) & f["req"].notna().to_numpy()][["seq", "req", "t", "ret"]]
    j = j.sort_values("seq")
    if len(j) and len(c):
        jr = j.assign(rk=j["req"].astype(np.uint64).astype(np.float64))
        cr = c.assign(rk=c["req"].astype(np.uint64).astype(np.float64)).rename(
            columns={"seq": "complete_seq", "t": "complete_ns", "ret": "job_ret"}).sort_values("complete_seq")
        cr = cr.assign(seq=cr["complete_seq"])
        m = pd.merge_asof(jr[["seq", "rk"]], cr[["seq", "rk", "complete_seq", "complete_ns", "job_ret"]], on="seq",
                          by="rk", direction="forward", allow_exact_matches=False)
        j["complete_seq"] = m["complete_seq"].to_numpy()
        j["complete_ns"] = m["complete_ns"].to_numpy()
        j["job_ret"] = m["job_ret"].to_numpy()
    else:
        j["complete_seq"] = np.nan
        j["complete_ns"] = np.nan
        j["job_ret"] = pd.array([None] * len(j), dtype="Int64")
    return j.reset_index(drop=True)


def _analyse(events: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    f = _frame(events)
    lc = _lifecycles(f)
    sub = _match_submissions(f, lc)
    lc = lc.merge(sub, on="lid", how="left")
    jobs = _jobs(f)
    lc["rid"] = np.arange(len(lc), dtype=np.int64)
    jobs["rid"] = -1
    jobs["link"] = ""
    if len(jobs) and len(lc):
        # 1. chain: the job follows the blk_co_* submission that carried the request
        s2r = lc.dropna(subset=["sub_seq"]).groupby("sub_seq")["rid"].min()
        r = jobs["ctx"].map(s2r)
        hit = r.notna() & jobs["prev_event"].isin(list(BDRV))
        jobs.loc[hit, "rid"] = r[hit].astype(np.int64)
        jobs.loc[hit, "link"] = "chain"
        # 2. flush: the job whose completion is the event just before the flush's req_complete in its thread
        fl = lc[(lc["op"] == "flush") & lc["complete_seq"].notna()]
        if len(fl):
            f = _frame(events).sort_values(["tid", "seq"], kind="stable")
            prev_seq = np.concatenate([[np.nan], f["seq"].to_numpy(np.float64)[:-1]])
            same = np.concatenate([[False], f["tid"].to_numpy()[1:] == f["tid"].to_numpy()[:-1]])
            prev_seq = np.where(same, prev_seq, np.nan)
            p_of = pd.Series(prev_seq, index=f["seq"].to_numpy())
            want = pd.Series(fl["rid"].to_numpy(), index=p_of.reindex(fl["complete_seq"].astype(np.int64)).to_numpy())
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
    err = pd.Series(status).map(lambda s: STATUS_ERRNO.get(int(s), -5) if pd.notna(s) else None)
    err = err.where(~(pd.Series(rw_ret).fillna(0) < 0), pd.Series(rw_ret))
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
