"""QEMU's ``simple`` trace backend: binary, file format version 4 (docs/formats.md section 4.4).

Layout (byte order of the writing host; detected from the header magic)::

    header   u64 0xffffffffffffffff, u64 0xf2b177cb0aa429b4, u64 4
    mapping  u64 0, u64 event_id, u32 len, name            (event ids -> names, per binary and run)
    event    u64 1, u64 event_id, u64 timestamp_ns, u32 length, u32 pid, args (length - 24 bytes)

Each integer or pointer argument is one u64; a ``char *`` is u32 length + bytes. Argument names and types are not
in the file: they come from a ``trace-events-all`` of the same build (``trace_events=``, else one beside the trace
file, else the usual install path);
without one every argument is a raw u64 named ``arg0..`` and a note says so. Dropped-event records
(id 0xfffffffffffffffe, one u64 = events lost) are kept as events named ``dropped`` and counted in meta.

``time_ns`` is host CLOCK_MONOTONIC ns; ``tid`` holds the pid.

Speed: the two per-record loops are in C (``_simplec.c``, built when the package is installed): the run of
event records that follow one another, and the decoding of each row (typed columns, args text, states); the
rows of a big file are decoded in two halves on two threads (the C loop runs without the GIL). Mapping
records, bytes that are no record and cut records are handled here, one by one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit import fileio, memory
from toolkit.events import QEMU_EVENTS, REJECTS
from toolkit.parsers import ParseResult, _simplec, reject_rows
from toolkit.parsers import trace_events as te
from toolkit.parsers.qemu_log import ARG_COLUMNS, INT_COLUMNS, POINTER_COLUMNS

HEADER_EVENT_ID = 0xFFFFFFFFFFFFFFFF
MAGIC = 0xF2B177CB0AA429B4
DROPPED_EVENT_ID = 0xFFFFFFFFFFFFFFFE
REC_MAPPING = 0
REC_EVENT = 1
MAX_EVENT_ID = 1 << 24
#: files with at least this many bytes are decoded on two threads (when the machine has two cores)
PARALLEL_MIN = 4 << 20

#: string argument -> state column, per event (as the log parser's STATE_RULES)
STATE_ARGS = {"runstate_set": "new_state_str", "vm_state_notify": "reason_str", "migrate_set_state": "new_state",
              "migration_block_activation": "name", "vmstate_downtime_checkpoint": "checkpoint"}


def parse(paths: str | os.PathLike | Iterable[str | os.PathLike], trace_events: str | os.PathLike | None = None,
          *, base: str | os.PathLike | None = None, args_text: bool = True, workers: int | None = None,
          parallel_min: int = PARALLEL_MIN, **_: object) -> ParseResult:
    """Parse simple-backend files into QEMU_EVENTS (file order) and REJECTS (byte offsets).

    ``args_text=False`` leaves ``args`` null for records without string arguments (the typed columns are still
    filled). A file of at least ``parallel_min`` bytes is decoded on two threads when the machine has two cores
    or ``workers=2`` (``workers=1``: one thread); the result is the same.

    meta: ``clock`` 'monotonic', ``byte_order``, ``dropped_records``/``dropped_events``, ``trace_events`` (the
    declarations file used, or None), ``unknown_events`` (ids or names without declarations), ``notes``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if trace_events is None and paths:  # the build's declarations kept beside the trace, else the install path
        here = os.path.dirname(os.path.abspath(paths[0]))
        beside = [os.path.join(here, "trace-events-all" + z) for z in ("", *(f".{c}" for c in fileio.MAGICS.values()))]
        trace_events = next((p for p in beside if os.path.isfile(p)), None)
    decls, te_path = te.load(trace_events)
    notes: list[str] = []
    if decls is None:
        notes.append("no trace-events-all given, beside the trace or at " + ", ".join(te.DEFAULT_PATHS)
                      + ": arguments are raw u64 values named arg0, arg1, ... (strings cannot be told apart)")
    evs, rejs = [], []
    nw = workers if workers is not None else min(2, os.cpu_count() or 1)
    meta: dict = {"format": "qemu-simple", "clock": "monotonic", "timestamps": True, "trace_events": te_path,
                  "dropped_records": 0, "dropped_events": 0, "unknown_events": [], "truncated": [], "notes": notes}
    for path in paths:
        name = fileio.display_name(path, base)
        if fileio.compression(path) is None:
            with open(path, "rb") as f:
                _check_header(f.read(24), name)  # garbage is refused before it is read
                # read, not mapped: a file cut while it is read ends in a cut record, not in SIGBUS (mapping it
                # saved 0.04 s of 0.43 on 2 M records)
                f.seek(0)
                buf = np.empty(os.fstat(f.fileno()).st_size, np.uint8)
                data = memoryview(buf)[:f.readinto(memoryview(buf))].toreadonly()
            cut = False
        else:
            data, cut = fileio.read_bytes(path)
        ev, rej, m = _parse_one(data, name, decls, args_text, 2 if nw > 1 and len(data) >= parallel_min else 1)
        if cut:
            m["truncated"].append({"file": name, "offset": len(data), "reason": "compressed stream ends early"})
        evs.append(ev)
        rejs.append(rej)
        meta["byte_order"] = m["byte_order"]
        meta["dropped_records"] += m["dropped_records"]
        meta["dropped_events"] += m["dropped_events"]
        meta["unknown_events"] += [u for u in m["unknown_events"] if u not in meta["unknown_events"]]
        meta["truncated"] += m["truncated"]
        notes += m["notes"]
    events = memory.concat(evs) if evs else QEMU_EVENTS.empty()
    events["event"] = events["event"].astype("category")
    events["file"] = events["file"].astype("category")
    rejects = pd.concat(rejs, ignore_index=True) if rejs else REJECTS.empty()
    return ParseResult(events=events, rejects=rejects, meta=meta)


# --------------------------------------------------------------------------------------------------------------
_HEADER = {o: struct.pack(o + "QQQ", HEADER_EVENT_ID, MAGIC, 4) for o in "<>"}


def _check_header(head: bytes, file: str) -> None:
    """TraceError unless ``head`` starts like a simple-trace header (or is the start of one: a cut file)."""
    n = min(len(head), 16)
    if any(h[:n] == head[:n] for h in _HEADER.values()):
        return
    raise fileio.TraceError(f"{file}: byte 0: not a QEMU simple trace file (bad header magic)")


def _parse_one(data, file: str, decls: dict[str, list[te.Arg]] | None, args_text: bool = True,
               threads: int = 1):
    """Events and rejects of one file's bytes (``bytes`` or a read-only memoryview), and its meta."""
    meta: dict = {"byte_order": None, "dropped_records": 0, "dropped_events": 0, "unknown_events": [],
                  "truncated": [], "notes": []}
    L = len(data)
    if L < 24:
        head = bytes(data)
        _check_header(head, file)
        meta["byte_order"] = "little" if _HEADER["<"].startswith(head) else "big"
        if head:  # the start of a header: cut at byte 0, no record
            meta["truncated"].append({"file": file, "offset": 0, "reason": "header cut"})
        rej = reject_rows(file, [(0, L, "truncated record", head.hex())] if head else [])
        return QEMU_EVENTS.empty().assign(file=pd.Categorical([], categories=[file])), rej, meta
    order = None
    for o in "<>":
        hid, magic, version = struct.unpack_from(o + "QQQ", data, 0)
        if hid == HEADER_EVENT_ID and magic == MAGIC:
            order = o
            break
    if order is None:
        raise fileio.TraceError(f"{file}: byte 0: not a QEMU simple trace file (bad header magic)")
    if version != 4:
        raise fileio.TraceError(f"{file}: byte 16: simple trace format version {version} (only 4 is supported)")
    meta["byte_order"] = "little" if order == "<" else "big"
    big = order == ">"
    cap = (L - 24) // 32 + 1  # records are at least 32 bytes
    rec = {c: memory.empty(cap, np.uint64 if c in ("eid", "ts") else np.int64)  # upper bound: tail never touched
           for c in ("starts", "eid", "ts", "pid", "length")}
    names: dict[int, str] = {}
    rejects: list[tuple[int, int, str, str]] = []

    def cut(p: int, sample_end: int) -> None:
        rejects.append((p, L - p, "truncated record", bytes(data[p:sample_end]).hex()))
        meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})

    n = 0
    p = 24
    while p < L:
        # the run of event records from p (compiled); then whatever stopped it, here
        p, n = _simplec.events(data, big, p, MAX_EVENT_ID, DROPPED_EVENT_ID, *rec.values(), n)
        if p >= L:
            break
        if p + 8 > L:
            cut(p, L)
            break
        (rtype,) = struct.unpack_from(order + "Q", data, p)
        if rtype == REC_MAPPING:
            eid, nlen = struct.unpack_from(order + "QI", data, p + 8) if p + 20 <= L else (0, L)  # cut header
            if p + 20 + nlen > L:
                cut(p, L)
                break
            names[eid] = bytes(data[p + 20:p + 20 + nlen]).decode("utf-8", errors="replace")
            p += 20 + nlen
            continue
        if rtype != REC_EVENT:
            # not a record start: skip to the next place an event record fits (or the end), reject the bytes between
            nxt = _simplec.next_event(data, big, p + 1, MAX_EVENT_ID, DROPPED_EVENT_ID)
            rejects.append((p, nxt - p, f"unknown record type {rtype}", bytes(data[p:min(nxt, p + 64)]).hex()))
            p = nxt
            continue
        if p + 32 > L:
            cut(p, L)
            break
        eid, ts, length, pid = struct.unpack_from(order + "QQII", data, p + 8)
        if length < 24 or p + 8 + length > L:
            cut(p, min(L, p + 64))
            break
        for c, v in zip(rec, (p, eid, ts, pid, length), strict=True):  # an event id beyond MAX_EVENT_ID: kept
            rec[c][n] = v
        n += 1
        p += 8 + length
    starts, eid, ts, pid, length = (a[:n] for a in rec.values())
    ev = _build(data, big, starts, eid, ts, pid, length, names, decls, file, meta, args_text, threads)
    return ev, reject_rows(file, rejects), meta


_TYPED = (*POINTER_COLUMNS, *INT_COLUMNS)


def _build(data, big: bool, starts, eid, ts, pid, length, names: dict[int, str], decls, file: str, meta: dict,
           args_text: bool, threads: int) -> pd.DataFrame:
    """QEMU_EVENTS rows of the event records (file order); ``threads`` 2: each half of the rows on a thread."""
    k = len(starts)
    fc, fu = pd.factorize(eid, sort=True)  # event ids: sorted distinct values, each row's index among them
    ids = np.asarray(fu, dtype=np.uint64)
    code = fc.astype(np.int32)
    ev_names: list[str] = []
    gdecls: list[list[te.Arg]] = []
    nmax: np.ndarray | None = None  # most values per record of each id (for ids without a declaration)
    for gi, i in enumerate(ids.tolist()):
        if i == DROPPED_EVENT_ID:
            nm = "dropped"
        else:
            nm = names.get(i)
            if nm is None:
                nm = f"event_{i}"
                meta["unknown_events"].append(nm)
        ev_names.append(nm)
        decl = decls.get(nm) if decls is not None else None
        if nm == "dropped":
            decl = [te.Arg("uint64_t", "num_events_dropped")]
        elif decl is None and decls is not None and nm not in meta["unknown_events"]:
            meta["unknown_events"].append(nm)
        if decl is None:
            if nmax is None:
                nmax = np.zeros(len(ids), dtype=np.int64)
                np.maximum.at(nmax, code, (length - 24) // 8)
            decl = [te.Arg("uint64_t", f"arg{j}") for j in range(int(nmax[gi]))]
        gdecls.append(decl)
    lay = _Layout(ev_names, gdecls, args_text)
    cols = memory.empty(len(_TYPED) * k, np.int64).reshape(len(_TYPED), k)
    nulls = memory.empty(len(_TYPED) * k, np.uint8).reshape(len(_TYPED), k)
    cuts = [0, k // 2, k] if threads > 1 and k > 1 else [0, k]
    with ThreadPoolExecutor(len(cuts) - 1) as pool:  # the C loop releases the GIL
        parts = list(pool.map(lambda lo, hi: lay.fill(data, big, starts, length, code, cols, nulls, lo, hi),
                              cuts[:-1], cuts[1:]))
    # categories as pd.Categorical(values) makes them: the sorted distinct names
    uniq_sorted = sorted(set(ev_names))
    cat_of_group = np.array([uniq_sorted.index(x) for x in ev_names], dtype=np.int32)
    out: dict[str, object] = {
        "time_ns": pd.arrays.IntegerArray(ts.view(np.int64), np.zeros(k, bool)),
        "tid": pd.arrays.IntegerArray(pid, np.zeros(k, bool)),
        "event": pd.Categorical.from_codes(cat_of_group[code], categories=pd.Index(uniq_sorted, dtype="str")),
        "args": _string_column([a for a, _ in parts], k),
    }
    for j, c in enumerate(_TYPED):
        out[c] = pd.arrays.IntegerArray(cols[j].view(np.uint64) if c in POINTER_COLUMNS else cols[j],
                                        nulls[j].view(bool))
    out["state"] = _string_column([s for _, s in parts], k)
    out["file"] = pd.Categorical.from_codes(np.zeros(k, dtype=np.int8), categories=[file])
    out["pos"] = starts
    dropped = eid == DROPPED_EVENT_ID
    meta["dropped_records"] = int(dropped.sum())
    if dropped.any():
        at = starts[dropped & (length >= 32)] + 32  # its one value: the number of events lost
        raw = np.frombuffer(data, np.uint8)[at[:, None] + np.arange(8)].copy().view(">u8" if big else "<u8")
        meta["dropped_events"] = int(raw.astype(np.int64).sum())
        meta["notes"].append(f"{file}: {meta['dropped_records']} dropped-event records "
                             f"({meta['dropped_events']} events lost by QEMU's trace buffer)")
    return pd.DataFrame(out, copy=False)


class _Layout:
    """The argument tables the C fill reads: per group (event id) the range of its arguments and whether it
    writes text; per argument whether it is a string, its typed column (-1: none), sign width, whether it is the
    event's state, and its label (``name=`` or `` name=``)."""

    def __init__(self, ev_names: list[str], gdecls: list[list[te.Arg]], args_text: bool):
        g_lo, g_text, g_cap, g_str, g_state = [0], [], [], [], []
        a_string, a_col, a_bits, a_state, labels = [], [], [], [], []
        for nm, decl in zip(ev_names, gdecls, strict=True):
            ints = [a for a in decl if not a.is_string]
            lab = [(f" {a.name}=" if j else f"{a.name}=").encode() for j, a in enumerate(decl)]
            g_lo.append(g_lo[-1] + len(decl))
            g_text.append(args_text or not ints)  # without text: null for rows with integer arguments
            g_cap.append(sum(map(len, lab)) + 18 * len(ints))  # "0x" + 16 digits at most
            g_str.append(len(ints) < len(decl))
            state = [a.is_string and STATE_ARGS.get(nm) == a.name for a in decl]
            g_state.append(any(state))
            a_state += state
            for a, x in zip(decl, lab, strict=True):
                col = None if a.is_string else ARG_COLUMNS.get(a.name)
                a_string.append(a.is_string)
                a_col.append(_TYPED.index(col) if col is not None else -1)
                a_bits.append(0 if col in POINTER_COLUMNS else a.signed_bits)
                labels.append(x)
        self.g_lo = np.array(g_lo, np.int64)
        self.g_text = np.array(g_text, np.uint8)
        self.g_cap = np.array(g_cap, np.int64)
        self.g_str = np.array(g_str, bool)
        self.g_state = np.array(g_state, bool)
        self.a_string = np.array(a_string, np.uint8)
        self.a_col = np.array(a_col, np.int64)
        self.a_bits = np.array(a_bits, np.int64)
        self.a_state = np.array(a_state, np.uint8)
        self.lab = np.frombuffer(b"".join(labels), np.uint8)
        self.lab_lo = np.zeros(len(labels) + 1, np.int64)
        np.cumsum([len(x) for x in labels], out=self.lab_lo[1:])

    def fill(self, data, big: bool, starts, length, code, cols, nulls, lo: int, hi: int) -> tuple[pa.Array, pa.Array]:
        """Typed columns of rows [lo, hi) in place; their ``args`` text and state strings."""
        n = hi - lo
        c = code[lo:hi]
        body = length[lo:hi] - 24
        tcap = int(np.bincount(c, minlength=len(self.g_cap)) @ self.g_cap + body[self.g_str[c]].sum())
        scap = int(body[self.g_state[c]].sum())
        text, stext = memory.empty(tcap, np.uint8), memory.empty(scap, np.uint8)  # upper bounds
        toff, soff = np.empty(n + 1, np.int64), np.empty(n + 1, np.int64)
        tvalid, svalid, high = np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, np.uint8)
        t, s = _simplec.fill(data, big, starts, length, code, self.g_lo, self.g_text, self.a_string, self.a_col,
                             self.a_bits, self.a_state, self.lab, self.lab_lo, cols, nulls, len(cols), lo, hi,
                             text, toff, tvalid, stext, soff, svalid, high)
        high = high.view(bool)
        return (_text_array(text[:t], toff, tvalid.view(bool), high),
                _text_array(stext[:s], soff, svalid.view(bool), high))


def _text_array(data: np.ndarray, off: np.ndarray, valid: np.ndarray, high: np.ndarray) -> pa.Array:
    """A large_string array from the C fill's bytes, offsets and validity; rows with a byte >= 0x80 in a string
    are decoded again here (invalid UTF-8 -> U+FFFD, as ``bytes.decode(errors='replace')``)."""
    n = len(valid)
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.LargeBinaryArray.from_buffers(pa.large_binary(), n, [bitmap, pa.py_buffer(off), pa.py_buffer(data)])
    fix = np.flatnonzero(high & valid)
    if len(fix):
        new = [v.decode("utf-8", errors="replace").encode() for v in arr.take(pa.array(fix)).to_pylist()]
        mask = np.zeros(n, bool)
        mask[fix] = True
        arr = pc.replace_with_mask(arr, pa.array(mask), pa.array(new, pa.large_binary()))
    return arr.view(pa.large_string())


def _string_column(parts: list[pa.Array], k: int) -> pd.api.extensions.ExtensionArray:
    """A pandas string column of k rows from the halves' arrays (no copy)."""
    if k == 0:
        return pd.array([], dtype="string")
    return pd.arrays.ArrowStringArray(parts[0] if len(parts) == 1 else pa.chunked_array(parts))


def write(path: str | os.PathLike, names: dict[int, str], records: Iterable[tuple[int, int, int, list]],
          *, order: str = "=") -> None:
    """Write a simple-backend v4 file byte-exactly as trace/simple.c does (for tests and benchmarks).

    ``names``: event id -> name (mapping records, written first). ``records``: (event_id, timestamp_ns, pid,
    values); a ``str`` value is written as u32 length + bytes, an int as u64 (negative ints two's complement).
    """
    with open(path, "wb") as f:
        f.write(struct.pack(order + "QQQ", HEADER_EVENT_ID, MAGIC, 4))
        for eid, nm in names.items():
            b = nm.encode()
            f.write(struct.pack(order + "QQI", REC_MAPPING, eid, len(b)) + b)
        for eid, ts, pid, vals in records:
            body = bytearray()
            for v in vals:
                if isinstance(v, str):
                    b = v.encode()[:512]
                    body += struct.pack(order + "I", len(b)) + b
                else:
                    body += struct.pack(order + "Q", v & 0xFFFFFFFFFFFFFFFF)
            f.write(struct.pack(order + "QQQII", REC_EVENT, eid, ts, 24 + len(body), pid) + bytes(body))
