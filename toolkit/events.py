"""The canonical tables of writeorder: every column, its dtype, its unit and its clock, defined once.

Every stage of the pipeline is a function from DataFrames to DataFrames; the tables it takes and returns are
described here and nowhere else. ``SCHEMA.empty()`` gives an empty frame with the right dtypes and
``SCHEMA.conform(df)`` checks and casts a frame a stage built.

Units: times are integer nanoseconds (``*_ns``) on the clock named by the trace (``clock`` in the trace
metadata: ``<node>:monotonic`` for blktrace binary, ``<node>:realtime`` for QEMU's log backend,
``<file>:relative`` for blkparse text, whose zero is blkparse's genesis). Sectors are 512-byte units;
sizes in bytes say so.

Tables
------
BLOCK_EVENTS  one row per blktrace record (binary) or blkparse event line (text).
QEMU_EVENTS   one row per QEMU trace event (log or simple backend).
REJECTS       what a parser could not read: file, byte offset or line, reason, the raw text (shortened).
TRACES        one row per ``[[trace]]`` of a set: format, layer, node, clock, counts.
REQUESTS      one row per I/O at one layer (``toolkit.requests`` builds it for block and QEMU layers).
NODE_EVENTS   run-state, migration and block-activation events of QEMU processes.
VIOLATIONS    findings of the checks (``toolkit.checks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------------------------
# blktrace constants (include/uapi/linux/blktrace_api.h; see docs/formats.md section 1)

#: category bits (the high 16 bits of the action word), by name
TC = {
    "read": 1 << 0, "write": 1 << 1, "flush": 1 << 2, "sync": 1 << 3, "queue": 1 << 4, "requeue": 1 << 5,
    "issue": 1 << 6, "complete": 1 << 7, "fs": 1 << 8, "pc": 1 << 9, "notify": 1 << 10, "ahead": 1 << 11,
    "meta": 1 << 12, "discard": 1 << 13, "drv_data": 1 << 14, "fua": 1 << 15,
}

#: action code (low 16 bits, cgroup flag 0x100 masked) -> blkparse's action letter
ACTION_LETTERS = {
    1: "Q", 2: "M", 3: "F", 4: "G", 5: "S", 6: "R", 7: "D", 8: "C", 9: "P", 10: "U", 11: "UT", 12: "I",
    13: "X", 14: "B", 15: "A", 16: "abort", 17: "drv_data",
}
#: notify record types (category ``notify``): 0 process name, 1 wall-clock timestamp, 2 message (blkparse ``m``)
NOTIFY_ACTIONS = {0: "notify_process", 1: "notify_timestamp", 2: "m"}

CGROUP_FLAG = 0x100
SECTOR_BYTES = 512


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    unit: str
    doc: str


class Schema:
    """A table's columns in order; ``empty()`` and ``conform()`` keep every stage's output to it."""

    def __init__(self, name: str, columns: list[Column], doc: str = ""):
        self.name = name
        self.columns = columns
        self.doc = doc
        self.dtypes = {c.name: c.dtype for c in columns}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def empty(self) -> pd.DataFrame:
        return pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in self.columns})

    def conform(self, df: pd.DataFrame, *, fill: bool = True) -> pd.DataFrame:
        """Return ``df`` with exactly this schema's columns, in order, with its dtypes.

        Missing columns are added as nulls when ``fill`` (else ``KeyError``); extra columns are kept at the end.
        """
        missing = [c for c in self.names if c not in df.columns]
        if missing and not fill:
            raise KeyError(f"{self.name}: missing columns {missing}")
        out = {}
        n = len(df)
        for c in self.columns:
            if c.name in df.columns:
                s = df[c.name]
                if str(s.dtype) != c.dtype:
                    s = s.astype(c.dtype)
                out[c.name] = s.reset_index(drop=True)
            else:
                out[c.name] = pd.Series(_null_array(c.dtype, n), dtype=c.dtype)
        extra = {k: df[k].reset_index(drop=True) for k in df.columns if k not in self.dtypes}
        return pd.DataFrame({**out, **extra})

    def describe(self) -> pd.DataFrame:
        """The schema as a table (name, dtype, unit, doc) for notebooks and the README."""
        return pd.DataFrame([c.__dict__ for c in self.columns])

    def __repr__(self) -> str:
        return f"Schema({self.name}: {', '.join(self.names)})"


def _null_array(dtype: str, n: int):
    if dtype in ("Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32", "boolean", "Float64", "string"):
        return pd.array([None] * n, dtype=dtype)
    if dtype == "category":
        return pd.Categorical([None] * n)
    if dtype == "bool":
        return np.zeros(n, dtype=bool)
    if dtype.startswith(("int", "uint")):
        return np.full(n, -1, dtype=dtype)
    if dtype.startswith("float"):
        return np.full(n, np.nan, dtype=dtype)
    return [None] * n


C = Column

# --------------------------------------------------------------------------------------------------------------
BLOCK_EVENTS = Schema("block_events", [
    C("time_ns", "int64", "ns", "event time on the trace's clock: absolute CLOCK_MONOTONIC of the recording "
      "kernel for blktrace binary; ns since blkparse's genesis for blkparse text"),
    C("device", "category", "", "'major,minor' of the traced device (for A: the target device)"),
    C("cpu", "int32", "", "CPU that recorded the event"),
    C("seq", "int64", "", "per-CPU sequence number (0 for notify records and for the ftrace blk tracer)"),
    C("pid", "int64", "", "pid current when the event fired (often a kworker or 0 for completions)"),
    C("action", "category", "", "blkparse action letter: Q M F G S R D C P U UT I X B A m, or "
      "notify_process / notify_timestamp / drv_data for records blkparse does not print"),
    C("rwbs", "category", "", "blkparse's RWBS string (leading F preflush, D/W/R/N, trailing F FUA, A S M)"),
    C("sector", "int64", "sectors (512 B)", "first sector (A: target sector)"),
    C("nsect", "int64", "sectors (512 B)", "length: bytes >> 9"),
    C("bytes", "int64", "bytes", "transfer length as recorded"),
    C("error", "int32", "errno", "completion error as a signed errno (0 = success, -5 = EIO)"),
    C("comm", "string", "", "process name: from notify records (binary) or the [name] field (text); "
      "null where the trace has none"),
    C("category", "int32", "bitmask", "BLK_TC_* category bits (see events.TC)"),
    C("op", "category", "", "read | write | flush | discard | none: write=WRITE bit, flush=a zero-byte "
      "request with the FLUSH bit, discard=DISCARD bit, read=other data, none=P/U/notify"),
    C("preflush", "bool", "", "FLUSH category bit (leading F in RWBS)"),
    C("fua", "bool", "", "FUA category bit (trailing F after the op letter)"),
    C("sync", "bool", "", "SYNC category bit"),
    C("meta", "bool", "", "META category bit"),
    C("remap_device", "string", "", "A: source device 'major,minor' (the request came from here)"),
    C("remap_sector", "Int64", "sectors (512 B)", "A: source sector"),
    C("split_sector", "Int64", "sectors (512 B)", "X: sector where the second part starts"),
    C("unplug_depth", "Int64", "requests", "U/UT: requests flushed from the plug"),
    C("message", "string", "", "m: message text; notify_process: the comm; notify_timestamp: "
      "'sec.nsec' of CLOCK_REALTIME"),
    C("file", "category", "", "source file"),
    C("pos", "int64", "byte offset (binary) / line number, 1-based (text)", "where the record is in its file"),
], doc="One row per blktrace record or blkparse event line, in time order.")

QEMU_EVENTS = Schema("qemu_events", [
    C("time_ns", "Int64", "ns", "host CLOCK_REALTIME (log backend with -msg timestamp=on; microsecond "
      "resolution) or host CLOCK_MONOTONIC (simple backend); null when the log has no timestamps"),
    C("tid", "Int64", "", "host thread id (log backend) or process id (simple backend); null when absent"),
    C("event", "category", "", "trace event name"),
    C("args", "string", "", "the argument text as written (log) or 'name=value' pairs (simple)"),
    C("req", "UInt64", "pointer", "req / request pointer argument (virtio-blk request, thread-pool request)"),
    C("vdev", "UInt64", "pointer", "vdev argument"),
    C("blk", "UInt64", "pointer", "BlockBackend pointer (blk_co_*)"),
    C("bs", "UInt64", "pointer", "BlockDriverState pointer (bdrv_co_*, blk_co_*)"),
    C("opaque", "UInt64", "pointer", "opaque argument (thread_pool_*)"),
    C("sector", "Int64", "sectors (512 B)", "virtio-blk guest sector"),
    C("nsectors", "Int64", "sectors (512 B)", "virtio-blk request length"),
    C("offset", "Int64", "bytes", "byte offset (blk_co_*, bdrv_co_*)"),
    C("bytes", "Int64", "bytes", "byte count (blk_co_*, bdrv_co_*)"),
    C("flags", "Int64", "bitmask", "BDRV_REQ_* flags"),
    C("status", "Int64", "", "virtio status (0 ok, 1 ioerr, 2 unsupp)"),
    C("ret", "Int64", "", "return value (negative errno on failure)"),
    C("type", "Int64", "", "luring/laio request type (1 read, 2 write, 8 flush)"),
    C("state", "string", "", "run state, migration state or activation state named in the event"),
    C("file", "category", "", "source file"),
    C("pos", "int64", "line number, 1-based (log) / byte offset (simple)", "where the record is in its file"),
], doc="One row per QEMU trace event, in file order (the log is only approximately time-ordered).")

REJECTS = Schema("rejects", [
    C("file", "string", "", "source file"),
    C("pos", "int64", "byte offset (binary) / line number (text)", "where the unreadable part starts"),
    C("length", "int64", "bytes", "how many bytes were skipped (text: the line's length)"),
    C("reason", "string", "", "why it was not read: truncated record, bad magic, unknown line, ..."),
    C("text", "string", "", "the raw line or a hex dump of the first bytes, shortened to 200 characters"),
], doc="Everything a parser could not read. Nothing is dropped without a row here.")

TRACES = Schema("traces", [
    C("trace", "int32", "", "index of the [[trace]] in the manifest (0-based)"),
    C("path", "string", "", "path as written in the manifest"),
    C("files", "string", "", "the files it matched, ';'-separated"),
    C("format", "string", "", "blktrace | blkparse | qemu-log | qemu-simple"),
    C("layer", "string", "", "guest-block | qemu | host-block"),
    C("node", "string", "", "node whose clock the trace uses"),
    C("role", "string", "", "source | destination | single (QEMU traces)"),
    C("clock", "string", "", "'<node>:monotonic', '<node>:realtime' or '<file>:relative'"),
    C("events", "int64", "", "parsed events"),
    C("rejects", "int64", "", "rejected lines or byte ranges"),
    C("first_ns", "Int64", "ns", "first event time on the trace's clock"),
    C("last_ns", "Int64", "ns", "last event time on the trace's clock"),
])

REQUESTS = Schema("requests", [
    C("rid", "int64", "", "request id, unique within the table"),
    C("node", "category", "", "node"),
    C("layer", "category", "", "guest-block | qemu | host-block"),
    C("device", "category", "", "'major,minor' (block layers) or the QEMU process (qemu layer)"),
    C("op", "category", "", "read | write | flush | discard | write_zeroes"),
    C("preflush", "bool", "", "write carrying REQ_PREFLUSH (acts as a flush for earlier completed writes)"),
    C("fua", "bool", "", "write with REQ_FUA: durable at completion"),
    C("sync", "bool", "", "REQ_SYNC"),
    C("meta", "bool", "", "REQ_META"),
    C("sector", "int64", "sectors (512 B)", "first sector (-1 for flushes)"),
    C("nsect", "int64", "sectors (512 B)", "length (0 for flushes)"),
    C("q_ns", "Int64", "ns", "queued (block: Q; qemu: virtio_blk_handle_*)"),
    C("d_ns", "Int64", "ns", "issued to the device (block: D; qemu: first submission below)"),
    C("c_ns", "Int64", "ns", "completed (block: C; qemu: virtio_blk_req_complete); null if cut off"),
    C("error", "Int32", "errno", "completion error (0 = success; null if not completed)"),
    C("pid", "int64", "", "submitting pid (block) or thread id (qemu)"),
    C("comm", "string", "", "submitting process name when known"),
    C("parent", "Int64", "", "rid of the request this one was merged into (M/F merges), else null"),
    C("pos", "int64", "", "pos of the first event of the request in its file"),
], doc="One row per I/O at one layer. Times are on the layer's trace clock until toolkit.clocks maps them.")

NODE_EVENTS = Schema("node_events", [
    C("time_ns", "Int64", "ns", "time on the trace's clock"),
    C("node", "category", "", "the node whose QEMU process logged it"),
    C("role", "category", "", "source | destination | single"),
    C("pid", "Int64", "", "QEMU process id"),
    C("tid", "Int64", "", "thread id that logged it"),
    C("kind", "category", "", "runstate | vm_state | migration | savevm | loadvm | flush_all | activation | qmp"),
    C("event", "string", "", "trace event name"),
    C("state", "string", "", "new state, step or value (e.g. 'finish-migrate', 'completed', 'inactive')"),
    C("detail", "string", "", "the event's arguments as written"),
    C("pos", "int64", "", "line number or byte offset in its file"),
])

VIOLATIONS = Schema("violations", [
    C("vid", "int64", "", "violation id"),
    C("cls", "string", "", "class id (flush-not-durable, crash-reorder, ...; see DESIGN.md)"),
    C("severity", "string", "", "error | warning"),
    C("node", "string", "", "node(s), ','-separated"),
    C("layer", "string", "", "layer where the violation shows"),
    C("start_ns", "Int64", "ns", "start of the window on the reference clock"),
    C("end_ns", "Int64", "ns", "end of the window on the reference clock (null: open to the end of trace)"),
    C("sector", "Int64", "sectors (512 B)", "first affected sector (guest sectors when the guest is involved)"),
    C("nsect", "Int64", "sectors (512 B)", "affected length"),
    C("requests", "object", "", "list of rids (REQUESTS) involved, the evidence chain in order"),
    C("uncertain", "bool", "", "true when the verdict would flip inside the clock-alignment uncertainty"),
    C("sentence", "string", "", "one readable sentence with times and request numbers"),
])

ALL = [BLOCK_EVENTS, QEMU_EVENTS, REJECTS, TRACES, REQUESTS, NODE_EVENTS, VIOLATIONS]


def rwbs_from_category(category: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """blkparse's ``fill_rwbs`` vectorised: RWBS strings from category bits and byte counts."""
    cat = np.asarray(category, dtype=np.int64)
    b = np.asarray(nbytes, dtype=np.int64)
    f = np.where(cat & TC["flush"], "F", "")
    opl = np.where(cat & TC["discard"], "D", np.where(cat & TC["write"], "W", np.where(b != 0, "R", "N")))
    fua = np.where(cat & TC["fua"], "F", "")
    a = np.where(cat & TC["ahead"], "A", "")
    s = np.where(cat & TC["sync"], "S", "")
    m = np.where(cat & TC["meta"], "M", "")
    out = np.char.add(np.char.add(np.char.add(f, opl), fua), np.char.add(np.char.add(a, s), m))
    return out.astype(object)


def op_from_category(category: np.ndarray, nbytes: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The op of each block event (see BLOCK_EVENTS.op) from category bits, bytes and action letter."""
    cat = np.asarray(category, dtype=np.int64)
    b = np.asarray(nbytes, dtype=np.int64)
    act = np.asarray(action, dtype=object)
    none = np.isin(act, ["P", "U", "UT", "m", "notify_process", "notify_timestamp", "drv_data"])
    op = np.where(cat & TC["discard"], "discard",
                  np.where((cat & TC["flush"]).astype(bool) & (b == 0), "flush",
                           np.where(cat & TC["write"], "write",
                                    np.where(b != 0, "read", "none"))))
    op = np.where(none, "none", op)
    return op.astype(object)


def category_from_rwbs(rwbs: pd.Series | np.ndarray) -> np.ndarray:
    """Invert ``rwbs_from_category`` for text input: RWBS strings -> category bits (op, flags only)."""
    s = pd.Series(np.asarray(rwbs, dtype=object)).fillna("").astype(str)
    lead_f = s.str.startswith("F")
    body = s.where(~lead_f, s.str.slice(1))
    op = body.str.slice(0, 1)
    rest = body.str.slice(1)
    cat = np.zeros(len(s), dtype=np.int64)
    cat |= np.where(lead_f, TC["flush"], 0)
    cat |= np.where(op == "D", TC["discard"] | TC["write"], 0)
    cat |= np.where(op == "W", TC["write"], 0)
    cat |= np.where(op.isin(["R", "N"]), TC["read"], 0)
    cat |= np.where(rest.str.startswith("F"), TC["fua"], 0)
    cat |= np.where(rest.str.contains("A", regex=False), TC["ahead"], 0)
    cat |= np.where(rest.str.contains("S", regex=False), TC["sync"], 0)
    cat |= np.where(rest.str.contains("M", regex=False), TC["meta"], 0)
    return cat


def errno_signed(err: np.ndarray) -> np.ndarray:
    """u16 error field (blktrace stores -errno truncated to 16 bits) -> signed errno."""
    e = np.asarray(err, dtype=np.int64)
    return np.where(e > 0x7FFF, e - 0x10000, e).astype(np.int32)
