"""Shared fixtures: the real sample trace sets in traces/."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "traces"
#: every bundled sample set (a folder of traces/ with a manifest.json)
SETS = sorted(p.name for p in TRACES.iterdir() if (p / "manifest.json").exists()) if TRACES.exists() else []
sets = SETS


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """The folder holding the real sample trace sets."""
    return TRACES


# ---------------------------------------------------------------------------------------------------- QEMU traces
#: every QEMU log of the sample sets, as (set, file name)
QEMU_LOGS = sorted((p.parent.name, p.name) for p in TRACES.glob("*/qemu-*.log.xz")) if TRACES.exists() else []

#: QEMU 7.2 declarations (trace-events syntax) of the events in the sample logs, for simple-backend files
TRACE_EVENTS_72 = r'''
# hw/block/trace-events
virtio_blk_req_complete(void *vdev, void *req, int status) "vdev %p req %p status %d"
virtio_blk_rw_complete(void *vdev, void *req, int ret) "vdev %p req %p ret %d"
virtio_blk_handle_write(void *vdev, void *req, uint64_t sector, size_t nsectors) "vdev %p req %p sector %"PRIu64" nsectors %zu"
virtio_blk_handle_read(void *vdev, void *req, uint64_t sector, size_t nsectors) "vdev %p req %p sector %"PRIu64" nsectors %zu"
virtio_blk_submit_multireq(void *vdev, void *mrb, int start, int num_reqs, uint64_t offset, size_t size, bool is_write) "vdev %p mrb %p start %d num_reqs %d offset %"PRIu64" size %zu is_write %d"
virtio_blk_data_plane_start(void *s) "dataplane %p"
virtio_blk_data_plane_stop(void *s) "dataplane %p"
# block/trace-events
blk_co_preadv(void *blk, void *bs, int64_t offset, int64_t bytes, int flags) "blk %p bs %p offset %"PRId64" bytes %" PRId64 " flags 0x%x"
blk_co_pwritev(void *blk, void *bs, int64_t offset, int64_t bytes, int flags) "blk %p bs %p offset %"PRId64" bytes %" PRId64 " flags 0x%x"
bdrv_co_preadv_part(void *bs, int64_t offset, int64_t bytes, unsigned int flags) "bs %p offset %" PRId64 " bytes %" PRId64 " flags 0x%x"
bdrv_co_pwritev_part(void *bs, int64_t offset, int64_t bytes, unsigned int flags) "bs %p offset %" PRId64 " bytes %" PRId64 " flags 0x%x"
bdrv_co_pwrite_zeroes(void *bs, int64_t offset, int64_t bytes, int flags) "bs %p offset %" PRId64 " bytes %" PRId64 " flags 0x%x"
luring_init_state(void *s, size_t size) "s %p size %zu"
luring_io_plug(void *s) "LuringState %p plug"
luring_io_unplug(void *s, int blocked, int plugged, int queued, int inflight) "LuringState %p blocked %d plugged %d queued %d inflight %d"
luring_do_submit(void *s, int blocked, int plugged, int queued, int inflight) "LuringState %p blocked %d plugged %d queued %d inflight %d"
luring_co_submit(void *bs, void *s, void *luringcb, int fd, uint64_t offset, size_t nbytes, int type) "bs %p s %p luringcb %p fd %d offset %" PRId64 " nbytes %zd type %d"
luring_process_completion(void *s, void *luringcb, int ret) "LuringState %p luringcb %p ret %d"
luring_io_uring_submit(void *s, int ret) "LuringState %p ret %d"
# util/trace-events
thread_pool_submit(void *pool, void *req, void *opaque) "pool %p req %p opaque %p"
thread_pool_complete(void *pool, void *req, void *opaque, int ret) "pool %p req %p opaque %p ret %d"
# softmmu/trace-events, migration/trace-events
runstate_set(int current_state, const char *current_state_str, int new_state, const char *new_state_str) "current_run_state %d (%s) new_state %d (%s)"
vm_state_notify(int running, int reason, const char *reason_str) "running %d reason %d (%s)"
vm_stop_flush_all(int ret) "ret %d"
migrate_set_state(const char *new_state) "new state %s"
migration_completion_vm_stop(int ret) "ret %d"
savevm_state_setup(void) ""
savevm_state_header(void) ""
savevm_state_iterate(void) ""
savevm_state_cleanup(void) ""
savevm_state_complete_precopy(void) ""
migration_thread_setup_complete(void) ""
migration_thread_after_loop(void) ""
migrate_fd_cleanup(void) ""
migrate_fd_cancel(void) ""
loadvm_state_setup(void) ""
loadvm_state_cleanup(void) ""
'''

_STATE_RE = {
    "runstate_set": r"current_run_state (-?\d+) \(([^)]*)\) new_state (-?\d+) \(([^)]*)\)",
    "vm_state_notify": r"running (-?\d+) reason (-?\d+) \(([^)]*)\)",
    "migrate_set_state": r"new state (\S+)",
}


#: log keys under which a declared argument is printed ("LuringState %p" for ``void *s``)
_ALIASES = {"s": ("s", "dataplane", "LuringState")}


def simple_records_from_log(events, decls):
    """(names, records) for ``qemu_simple.write`` from parsed log events: every event whose declaration is known
    and whose values can be read back from the log text (``key value`` pairs, or the state regexes above).
    Returns also the row numbers of the events used. Timestamps: the log's realtime ns (0 when absent)."""
    import re

    import pandas as pd

    names = {i: n for i, n in enumerate(sorted(decls))}
    ids = {n: i for i, n in names.items()}
    records, rows = [], []
    ev = events.reset_index(drop=True)
    t = ev["time_ns"].fillna(0).astype("int64").to_numpy()
    tid = ev["tid"].fillna(0).astype("int64").to_numpy()
    for i, (name, args) in enumerate(zip(ev["event"].astype(str), ev["args"].astype(str), strict=True)):
        decl = decls.get(name)
        if decl is None:
            continue
        if name in _STATE_RE:
            m = re.fullmatch(_STATE_RE[name], args)
            if not m:
                continue
            vals = [int(g) if re.fullmatch(r"-?\d+", g) else g for g in m.groups()]
        else:
            toks = args.split()
            kv = {toks[k]: toks[k + 1] for k in range(0, len(toks) - 1, 2)}
            try:
                vals = [int(next(kv[k] for k in _ALIASES.get(a.name, (a.name,)) if k in kv), 0) for a in decl]
            except (StopIteration, ValueError):
                continue
        records.append((ids[name], int(t[i]), int(tid[i]), vals))
        rows.append(i)
    del pd
    return names, records, rows
