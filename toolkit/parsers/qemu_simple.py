"""QEMU's ``simple`` trace backend: binary, file format version 4 (docs/formats.md section 4.4).

Layout (byte order of the writing host; detected from the header magic)::

    header   u64 0xffffffffffffffff, u64 0xf2b177cb0aa429b4, u64 4
    mapping  u64 0, u64 event_id, u32 len, name            (event ids -> names, per binary and run)
    event    u64 1, u64 event_id, u64 timestamp_ns, u32 length, u32 pid, args (length - 24 bytes)

Each integer or pointer argument is one u64; a ``char *`` is u32 length + bytes. Argument names and types are not
in the file: they come from a ``trace-events-all`` of the same build (``trace_events=`` or the usual install path);
without one every argument is a raw u64 named ``arg0..`` and a note says so. Dropped-event records
(id 0xfffffffffffffffe, one u64 = events lost) are kept as events named ``dropped`` and counted in meta.

Speed: record starts are found for the whole file at once (a slot is a record when its type, pid and length
words fit and its length leads exactly to the next one); only mapping records, records with string arguments and
whatever breaks that chain are read one by one. A file of at least ``PARALLEL_MIN`` bytes has the second half of
its records decoded by a forked child when a core is idle (typed columns in shared memory, its text mapped back from a temporary file;
same result). ``time_ns`` is host CLOCK_MONOTONIC ns; ``tid`` holds the pid.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit import fileio
from toolkit.events import QEMU_EVENTS, REJECTS
from toolkit.parsers import ParseResult, reject_rows
from toolkit.parsers import trace_events as te
from toolkit.parsers.qemu_log import (
    ARG_COLUMNS,
    CHILD_WAIT_MIN,
    INT_COLUMNS,
    POINTER_COLUMNS,
    _collect,
    _dump,
    _fork,
    _stop_child,
    _workers,
)

HEADER_EVENT_ID = 0xFFFFFFFFFFFFFFFF
MAGIC = 0xF2B177CB0AA429B4
DROPPED_EVENT_ID = 0xFFFFFFFFFFFFFFFE
REC_MAPPING = 0
REC_EVENT = 1
MAX_EVENT_ID = 1 << 24
#: files at least this big have half their records decoded by a second process
PARALLEL_MIN = 32 << 20

#: string argument -> state column, per event (as the log parser's STATE_RULES)
STATE_ARGS = {"runstate_set": "new_state_str", "vm_state_notify": "reason_str", "migrate_set_state": "new_state",
              "migration_block_activation": "name", "vmstate_downtime_checkpoint": "checkpoint"}


def parse(paths: str | os.PathLike | Iterable[str | os.PathLike], trace_events: str | os.PathLike | None = None,
          *, base: str | os.PathLike | None = None, args_text: bool = True, workers: int | None = None,
          parallel_min: int = PARALLEL_MIN, **_: object) -> ParseResult:
    """Parse simple-backend files into QEMU_EVENTS (file order) and REJECTS (byte offsets).

    ``args_text=False`` leaves ``args`` null for records without string arguments (the typed columns are still
    filled): formatting every value as text is most of the cost on big files. A file of at least
    ``parallel_min`` bytes has the second half of its records decoded by a forked child when a core is idle or
    ``workers=2`` (``workers=1``: never); the result is the same.

    meta: ``clock`` 'monotonic', ``byte_order``, ``dropped_records``/``dropped_events``, ``trace_events`` (the
    declarations file used, or None), ``unknown_events`` (ids or names without declarations), ``notes``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    decls, te_path = te.load(trace_events)
    notes: list[str] = []
    if decls is None:
        notes.append("no trace-events-all given or found at " + ", ".join(te.DEFAULT_PATHS)
                      + ": arguments are raw u64 values named arg0, arg1, ... (strings cannot be told apart)")
    evs, rejs = [], []
    nw = _workers(workers)
    meta: dict = {"format": "qemu-simple", "clock": "monotonic", "timestamps": True, "trace_events": te_path,
                  "dropped_records": 0, "dropped_events": 0, "unknown_events": [], "truncated": [], "notes": notes}
    for path in paths:
        name = fileio.display_name(path, base)
        if fileio.compression(path) is None:
            with open(path, "rb") as f:
                _check_header(f.read(24), name)  # garbage is refused before it is read into memory
                f.seek(0)
                data, cut = f.read(), False
        else:
            data, cut = fileio.read_bytes(path)
        two = nw > 1 and len(data) >= max(parallel_min, 1 << 10)
        ev, rej, m = _parse_one(data, name, decls, args_text, two)
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
    events = pd.concat(evs, ignore_index=True) if evs else QEMU_EVENTS.empty()
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


def _parse_one(data: bytes, file: str, decls: dict[str, list[te.Arg]] | None, args_text: bool = True,
               two: bool = False):
    meta: dict = {"byte_order": None, "dropped_records": 0, "dropped_events": 0, "unknown_events": [],
                  "truncated": [], "notes": []}
    if len(data) < 24:
        _check_header(data, file)
        meta["byte_order"] = "little" if _HEADER["<"].startswith(data) else "big"
        if data:  # the start of a header: cut at byte 0, no record
            meta["truncated"].append({"file": file, "offset": 0, "reason": "header cut"})
        rej = reject_rows(file, [(0, len(data), "truncated record", data.hex())] if data else [])
        return QEMU_EVENTS.empty().assign(file=pd.Categorical([], categories=[file])), rej, meta
    order = None
    for o in "<>":
        hid, magic, version = struct.unpack(o + "QQQ", data[:24])
        if hid == HEADER_EVENT_ID and magic == MAGIC:
            order = o
            break
    if order is None:
        raise fileio.TraceError(f"{file}: byte 0: not a QEMU simple trace file (bad header magic)")
    if version != 4:
        raise fileio.TraceError(f"{file}: byte 16: simple trace format version {version} (only 4 is supported)")
    meta["byte_order"] = "little" if order == "<" else "big"
    L = len(data)
    u64 = np.dtype(order + "u8")
    buf = np.frombuffer(data, dtype=np.uint8)
    names: dict[int, str] = {}
    rejects: list[tuple[int, int, str, str]] = []
    # every plausible event-record start at any byte offset (a u64 1, a small id, a length that fits), sorted
    c_pos, c_nxt = _candidates(data, buf, order, u64)
    # runs of candidates that chain (each one's end is the next one's start): the walk jumps over whole runs
    nc = len(c_pos)
    chained = np.zeros(nc, dtype=bool)
    if nc > 1:
        chained[:-1] = c_nxt[:-1] == c_pos[1:]
    brk = np.flatnonzero(~chained)  # last index of each chained run
    runs: list[tuple[int, int]] = []  # [i, j) candidate index ranges that are records
    single: list[int] = []  # event records read one by one (outside the candidates)
    p = 24
    while p < L:
        i = int(np.searchsorted(c_pos, p))
        if i < nc and c_pos[i] == p:
            b = int(brk[np.searchsorted(brk, i)])
            runs.append((i, b + 1))
            p = int(c_nxt[b])
            continue
        if p + 8 > L:
            rejects.append((p, L - p, "truncated record", data[p:L].hex()))
            meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})
            break
        (rtype,) = struct.unpack_from(order + "Q", data, p)
        if rtype == REC_MAPPING:
            if p + 20 > L:
                rejects.append((p, L - p, "truncated record", data[p:L].hex()))
                meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})
                break
            eid, nlen = struct.unpack_from(order + "QI", data, p + 8)
            if p + 20 + nlen > L:
                rejects.append((p, L - p, "truncated record", data[p:L].hex()))
                meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})
                break
            names[eid] = data[p + 20:p + 20 + nlen].decode("utf-8", errors="replace")
            p += 20 + nlen
            continue
        if rtype != REC_EVENT:
            # not a record start: skip to the next plausible record (or the end) and reject the bytes between
            j = int(np.searchsorted(c_pos, p + 1))
            nxt = int(c_pos[j]) if j < nc else L
            rejects.append((p, nxt - p, f"unknown record type {rtype}", data[p:min(nxt, p + 64)].hex()))
            p = nxt
            continue
        if p + 32 > L:
            rejects.append((p, L - p, "truncated record", data[p:L].hex()))
            meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})
            break
        eid, ts, length, pid = struct.unpack_from(order + "QQII", data, p + 8)
        if length < 24 or p + 8 + length > L:
            rejects.append((p, L - p, "truncated record", data[p:min(L, p + 64)].hex()))
            meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})
            break
        single.append(p)
        p += 8 + length
    parts = [c_pos[i:j] for i, j in runs] + [np.array(single, dtype=np.int64)]
    starts = np.sort(np.concatenate(parts)) if single else np.concatenate(parts)
    ev = _build(data, buf, starts, names, decls, order, u64, file, meta, args_text, two and len(starts) > 1)
    return ev, reject_rows(file, rejects), meta


def _candidates(data: bytes, buf: np.ndarray, order: str, u64: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets (sorted) where an event record may start, and where it would end (every alignment).

    One scan for the byte that makes a u64 1 (the record type), then the words at those offsets are checked.
    """
    L = len(data)
    if L < 32:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    words = np.ndarray(shape=(L - 7,), dtype=u64, buffer=buf, strides=(1,))  # the u64 at every byte offset
    big = _big(u64)
    parts = []
    hit = np.empty(min(L, _SCAN), dtype=bool)
    for off in range(0, L, _SCAN):  # cache-sized slices: no file-sized mask
        h = hit[:min(_SCAN, L - off)]
        np.equal(buf[off:off + _SCAN], 1, out=h)
        parts.append(np.flatnonzero(h) + off)
    pos = np.concatenate(parts)
    if big:
        pos -= 7
    pos = pos[(pos >= 24) & (pos <= L - 32)]
    pos = pos[words[pos] == REC_EVENT]
    eid = words[pos + 8]
    lp = words[pos + 24]
    length = ((lp >> np.uint64(32)) if big else (lp & np.uint64(0xFFFFFFFF))).astype(np.int64)
    nxt = pos + 8 + length
    ok = ((eid < MAX_EVENT_ID) | (eid == DROPPED_EVENT_ID)) & (length >= 24) & (nxt <= L)
    return pos[ok], nxt[ok]


_SCAN = 1 << 18


def _big(u64: np.dtype) -> bool:
    return u64.byteorder == ">" or (u64.byteorder == "=" and not np.little_endian)


def _read_u64(data: bytes, offs: np.ndarray, u64: np.dtype) -> np.ndarray:
    """u64 values at byte offsets ``offs`` (any alignment)."""
    offs = np.asarray(offs, dtype=np.int64)
    out = np.empty(len(offs), dtype=np.uint64)
    if not len(offs):
        return out
    rs = offs & 7
    r0 = int(rs[0])
    if (rs == r0).all():
        w = np.frombuffer(data, dtype=u64, count=(len(data) - r0) // 8, offset=r0)
        out[:] = w[offs >> 3]
        return out
    for r in np.unique(rs):
        sel = rs == r
        w = np.frombuffer(data, dtype=u64, count=(len(data) - int(r)) // 8, offset=int(r))
        out[sel] = w[offs[sel] >> 3]
    return out


def _decode_slow(body: bytes, decl: list[te.Arg] | None, order: str, eid: int) -> list:
    """Argument values of one record: ints as Python ints (u64), strings as str."""
    if eid == DROPPED_EVENT_ID or decl is None:
        n = len(body) // 8
        return list(struct.unpack_from(f"{order}{n}Q", body, 0)) if n else []
    out: list = []
    q = 0
    for a in decl:  # a record shorter than its declaration (damaged): the missing values stay null
        if a.is_string:
            if q + 4 > len(body):
                break
            (n,) = struct.unpack_from(order + "I", body, q)
            if q + 4 + n > len(body):
                break
            out.append(body[q + 4:q + 4 + n].decode("utf-8", errors="replace"))
            q += 4 + n
        else:
            if q + 8 > len(body):
                break
            (v,) = struct.unpack_from(order + "Q", body, q)
            out.append(v)
            q += 8
    return out


def _sign(v: np.ndarray, bits: int) -> np.ndarray:
    """Sign-extend u64 values from ``bits`` wide signed C types; returns int64."""
    v = np.asarray(v, dtype=np.uint64)
    if bits == 0 or bits == 64:
        return v.view(np.int64)
    m = np.uint64((1 << bits) - 1)
    x = (v & m).astype(np.int64)
    return np.where(x >= (1 << (bits - 1)), x - (1 << bits), x)


_HEX2 = np.array([ord(a) | (ord(b) << 8) for a in "0123456789abcdef" for b in "0123456789abcdef"], dtype=np.uint16)


def _hex_digits(v: np.ndarray) -> np.ndarray:
    """Number of hex digits of each u64 (1 for 0)."""
    hi = (v >> np.uint64(32)).astype(np.float64)
    lo = (v & np.uint64(0xFFFFFFFF)).astype(np.float64)
    bits = np.where(hi > 0, 32 + np.frexp(hi)[1], np.frexp(lo)[1])
    return np.maximum((bits + 3) >> 2, 1).astype(np.int64)


def _hex16(v: np.ndarray) -> np.ndarray:
    """16 zero-padded lowercase hex digits per value: (n, 16) uint8."""
    b = np.ascontiguousarray(v.astype(">u8")).view(np.uint8).reshape(len(v), 8)
    return _HEX2[b].view(np.uint8)


def _ranges_text(flat: np.ndarray, a: list[np.ndarray], b: list[np.ndarray]) -> pa.Array:
    """One string per row: the concatenation of flat[a[j][r]:b[j][r]] over j (ranges increasing in the buffer)."""
    n = len(a[0])
    k = len(a)
    bnd = np.empty((n, 2 * k), dtype=np.int64)
    for j in range(k):
        bnd[:, 2 * j] = a[j]
        bnd[:, 2 * j + 1] = b[j]
    bnd = bnd.reshape(-1)
    m = len(bnd)
    whole = pa.LargeStringArray.from_buffers(m - 1, pa.py_buffer(bnd), pa.py_buffer(flat))
    keep = np.zeros(m - 1, dtype=bool)
    keep[0::2] = True
    parts = whole.filter(pa.array(keep))
    data = parts.buffers()[2]
    rl = np.zeros(n, dtype=np.int64)
    for j in range(k):
        rl += b[j] - a[j]
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(rl, out=offs[1:])
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offs), data)


def _unaligned_words(buf: np.ndarray, u64: np.dtype) -> np.ndarray:
    """The u64 at every byte offset of the data (a view: word i = bytes i..i+7)."""
    if len(buf) < 8:
        return np.zeros(0, dtype=u64)
    return np.ndarray(shape=(len(buf) - 7,), dtype=u64, buffer=buf, strides=(1,))


class _Group:
    """Rows of one event id with their argument layout."""

    def __init__(self, name: str, decl: list[te.Arg], rows: np.ndarray):
        self.name, self.decl, self.rows = name, decl, rows
        self.strings = any(a.is_string for a in decl)
        self.values: list[tuple[np.ndarray, np.ndarray]] = []  # int args: (u64 values, valid)
        self.slow_vals: list[list] = []  # string events: the values of each record


def _build(data: bytes, buf: np.ndarray, starts: np.ndarray, names: dict[int, str], decls, order: str,
           u64: np.dtype, file: str, meta: dict, args_text: bool = True, two: bool = False) -> pd.DataFrame:
    """QEMU_EVENTS rows from the event record starts (file order); ``two``: the second half of the rows is
    filled by a forked child (typed columns written in shared memory, its text mapped back from a file)."""
    k = len(starts)
    words = _unaligned_words(buf, u64)
    eid, ts, lp = (words[starts + 8 * w].astype(np.uint64, copy=False) for w in (1, 2, 3))
    if _big(u64):
        length, pid = (lp >> np.uint64(32)), (lp & np.uint64(0xFFFFFFFF))
    else:
        length, pid = (lp & np.uint64(0xFFFFFFFF)), (lp >> np.uint64(32))
    length = length.astype(np.int64)
    pid = pid.astype(np.int64)
    nargs = (length - 24) // 8
    # event ids: sorted distinct values and each row's index among them (as np.unique, by hashing)
    fc, fu = pd.factorize(eid, sort=True)
    ids, code = np.asarray(fu, dtype=np.uint64), fc.astype(np.int32 if len(fu) >= 2**15 else np.int16)
    ev_names: list[str] = []
    gdecls: list[list[te.Arg]] = []
    nmax: np.ndarray | None = None  # most values per record of each id (for ids without a declaration)
    for gi, i in enumerate(ids):
        i = int(i)
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
                np.maximum.at(nmax, code, nargs)
            decl = [te.Arg("uint64_t", f"arg{j}") for j in range(int(nmax[gi]))]
        gdecls.append(decl)
    typed = _typed_arrays(k, shared=two)
    job = _Job(data, words, starts, code, length, nargs, ev_names, gdecls, order, typed, args_text)
    h = k // 2 if two else k
    child = _fork_fill(job, h, k) if two else None
    t0 = time.monotonic()
    try:
        args, state_rows, state_vals = job.fill(0, h)
    except BaseException:
        if child is not None:
            _stop_child(child[0])
            os.close(child[1])
        raise
    if child is not None:
        args2, rows2, vals2 = _wait_fill(job, child, h, k, max(CHILD_WAIT_MIN, 10 * (time.monotonic() - t0)))
        args = pa.chunked_array([args, args2])
        state_rows += rows2
        state_vals += vals2
    # categories as pd.Categorical(values) makes them: the sorted distinct names
    uniq_sorted = sorted(set(ev_names))
    cat_of_group = np.array([uniq_sorted.index(x) for x in ev_names], dtype=np.int64)
    cols: dict[str, object] = {
        "time_ns": pd.arrays.IntegerArray(ts.view(np.int64), np.zeros(k, bool)),
        "tid": pd.arrays.IntegerArray(pid, np.zeros(k, bool)),
        "event": pd.Categorical.from_codes(cat_of_group[code], categories=pd.Index(uniq_sorted, dtype="str")),
        "args": pd.arrays.ArrowStringArray(args) if k else pd.array([], "string"),
    }
    for c in (*POINTER_COLUMNS, *INT_COLUMNS):
        dat, msk = typed[c]
        cols[c] = pd.arrays.IntegerArray(dat, msk)
    cols["state"] = _sparse_strings(k, np.concatenate(state_rows) if state_rows else np.zeros(0, np.int64),
                                    state_vals)
    cols["file"] = pd.Categorical.from_codes(np.zeros(k, dtype=np.int8), categories=[file])
    cols["pos"] = starts
    dropped = eid == DROPPED_EVENT_ID
    meta["dropped_records"] = int(dropped.sum())
    if dropped.any():
        meta["dropped_events"] = int(_read_u64(data, starts[dropped] + 32, u64).astype(np.int64).sum())
        meta["notes"].append(f"{file}: {meta['dropped_records']} dropped-event records "
                             f"({meta['dropped_events']} events lost by QEMU's trace buffer)")
    return pd.DataFrame(cols, copy=False)


def _typed_arrays(k: int, shared: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Zeroed data and all-True masks of the typed columns; ``shared``: in memory a forked child writes too."""
    cols = (*POINTER_COLUMNS, *INT_COLUMNS)
    if not shared:
        return {c: (np.zeros(k, np.uint64 if c in POINTER_COLUMNS else np.int64), np.ones(k, bool)) for c in cols}
    mm = mmap.mmap(-1, max(len(cols) * 9 * k, 1))  # MAP_SHARED | MAP_ANONYMOUS, zero-filled
    out = {}
    for j, c in enumerate(cols):
        d = np.frombuffer(mm, np.uint64 if c in POINTER_COLUMNS else np.int64, k, 8 * k * j)
        m = np.frombuffer(mm, bool, k, 8 * k * len(cols) + k * j)
        m[:] = True
        out[c] = (d, m)
    return out


class _Job:
    """What filling rows needs: the data, per-row record fields, per-group names and declarations, outputs."""

    def __init__(self, data, words, starts, code, length, nargs, ev_names, gdecls, order, typed, args_text):
        self.data, self.words, self.starts, self.code = data, words, starts, code
        self.length, self.nargs, self.ev_names, self.gdecls = length, nargs, ev_names, gdecls
        self.order, self.typed, self.args_text = order, typed, args_text

    def fill(self, lo: int, hi: int) -> tuple[pa.Array, list[np.ndarray], list]:
        """Typed columns of rows [lo, hi) (written in place); returns their args text and state values."""
        n = hi - lo
        ng = len(self.ev_names)
        key = self.code[lo:hi]
        by = np.argsort(key, kind="stable") + lo
        bounds = np.zeros(ng + 1, dtype=np.int64)
        np.cumsum(np.bincount(key, minlength=ng), out=bounds[1:])
        state_rows: list[np.ndarray] = []
        state_vals: list = []
        groups: list[_Group] = []
        data, starts, length, nargs, words = self.data, self.starts, self.length, self.nargs, self.words
        for gi in range(ng):
            if bounds[gi] == bounds[gi + 1]:
                continue
            rows = by[bounds[gi]:bounds[gi + 1]]
            nm, decl = self.ev_names[gi], self.gdecls[gi]
            g = _Group(nm, decl, rows - lo)
            groups.append(g)
            sp = None
            if g.strings:  # variable layout: each record on its own
                eid = DROPPED_EVENT_ID if nm == "dropped" else 0
                st = starts[rows]
                g.slow_vals = [_decode_slow(data[int(p) + 32:int(p) + 8 + int(ln)], decl, self.order, eid)
                               for p, ln in zip(st, length[rows], strict=True)]
            for j, a in enumerate(decl):
                if a.is_string:
                    if STATE_ARGS.get(nm) == a.name:
                        state_rows.append(rows)
                        state_vals += [vals[j] if j < len(vals) else None for vals in g.slow_vals]
                    g.values.append((np.zeros(0, np.uint64), np.zeros(0, bool)))
                    continue
                if g.strings:
                    x = [vals[j] if j < len(vals) else None for vals in g.slow_vals]
                    valid = np.array([isinstance(y, int) for y in x], dtype=bool)
                    v = np.array([y if isinstance(y, int) else 0 for y in x], dtype=np.uint64)
                else:
                    valid = nargs[rows] > j
                    if sp is None:
                        sp = starts[rows] + 32
                    if valid.all():
                        v = words[sp + 8 * j].astype(np.uint64, copy=False)
                    else:  # a record shorter than its declaration: the missing values stay null
                        v = np.zeros(len(rows), dtype=np.uint64)
                        v[valid] = words[sp[valid] + 8 * j]
                g.values.append((v, valid))
                col = ARG_COLUMNS.get(a.name)
                if col is not None:
                    dat, msk = self.typed[col]
                    dat[rows] = v if col in POINTER_COLUMNS else _sign(v, a.signed_bits)
                    msk[rows] = ~valid
        return _args_text(groups, n, self.args_text), state_rows, state_vals


def _fork_fill(job: _Job, lo: int, hi: int) -> tuple[int, int] | None:
    """Start a child filling rows [lo, hi): (pid, fd of the file its text and states come back in), or None."""
    return _fork(lambda f: _dump(f, job.fill(lo, hi)))


def _wait_fill(job: _Job, child: tuple[int, int], lo: int, hi: int,
               limit: float) -> tuple[pa.Array, list[np.ndarray], list]:
    """The child's text and states (or the same work here if it failed or is not done within ``limit`` s)."""
    objs = _collect(child, limit)
    return objs[0] if objs else job.fill(lo, hi)


def _sparse_strings(k: int, rows: np.ndarray, vals: list) -> pd.api.extensions.ExtensionArray:
    """A pandas string column of k nulls with ``vals`` (str or None) at ``rows``."""
    if k == 0:
        return pd.array([], dtype="string")
    lens = np.zeros(k, dtype=np.int64)
    valid = np.zeros(k, dtype=bool)
    enc = [None if v is None else v.encode() for v in vals]
    for r, b in zip(rows, enc, strict=True):
        if b is not None:
            lens[r] = len(b)
            valid[r] = True
    order = np.argsort(rows, kind="stable")
    blob = b"".join(enc[o] for o in order if enc[o] is not None)
    offs = np.zeros(k + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    arr = pa.LargeStringArray.from_buffers(k, pa.py_buffer(offs), pa.py_buffer(blob),
                                           pa.py_buffer(np.packbits(valid, bitorder="little")),
                                           null_count=int(k - valid.sum()))
    return pd.arrays.ArrowStringArray(arr)


def _args_text(groups: list[_Group], k: int, args_text: bool) -> pa.Array:
    """The ``args`` text (``name=0x...`` pairs, strings as written) of every row, in row order.

    Per event id the rows are laid out in a byte matrix at fixed columns (labels, 16 hex digits per value); the
    text is the concatenation of the ranges that skip the leading zeros, cut out by one Arrow filter.
    """
    parts: list[pa.Array] = []
    for g in groups:
        n = len(g.rows)
        ints = [j for j, a in enumerate(g.decl) if not a.is_string]
        if g.strings:
            txt = []
            for vals in g.slow_vals:
                pieces = []
                null = False
                for j, a in enumerate(g.decl):
                    pieces.append(f" {a.name}=" if j else f"{a.name}=")
                    x = vals[j] if j < len(vals) else None
                    if a.is_string:
                        pieces.append(x if isinstance(x, str) else "")
                    elif not args_text:
                        null = True
                    else:
                        pieces.append("0x%x" % (x if isinstance(x, int) else 0))
                txt.append(None if null else "".join(pieces))
            parts.append(pa.array(txt, pa.large_string()))
            continue
        if not ints:
            parts.append(pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.zeros(n + 1, np.int64)), pa.py_buffer(b"")))
            continue
        if not args_text:
            parts.append(pa.nulls(n, pa.large_string()))
            continue
        labels = [(f" {a.name}=0x" if j else f"{a.name}=0x").encode() for j, a in enumerate(g.decl)]
        digits = [_hex_digits(g.values[j][0]) for j in range(len(labels))]
        # a value with the same number of digits in every row takes just those columns; the others take 16,
        # and the text skips their leading zeros (a range ends before them, the next starts at the digits)
        fixed = [int(d[0]) if (d == d[0]).all() else 0 for d in digits]
        width = sum(len(x) + (f or 16) for x, f in zip(labels, fixed, strict=True))
        mat = np.empty((n, width), dtype=np.uint8)
        base = np.arange(n, dtype=np.int64) * width
        A: list[np.ndarray] = []
        B: list[np.ndarray] = []
        start = base
        c = 0
        for j, lab in enumerate(labels):
            mat[:, c:c + len(lab)] = np.frombuffer(lab, dtype=np.uint8)
            c += len(lab)
            h = _hex16(g.values[j][0])
            f = fixed[j]
            if f:
                mat[:, c:c + f] = h[:, 16 - f:]
                c += f
                continue
            mat[:, c:c + 16] = h
            A.append(start)
            B.append(base + c)
            c += 16
            start = base + (c - digits[j])
        if not A:  # every row is its whole matrix row: the matrix is the text
            offs = np.arange(n + 1, dtype=np.int64) * width
            parts.append(pa.LargeStringArray.from_buffers(n, pa.py_buffer(offs), pa.py_buffer(mat.reshape(-1))))
            continue
        A.append(start)
        B.append(base + c)
        parts.append(_ranges_text(mat.reshape(-1), A, B))
    if not parts:
        return pa.array([], pa.large_string())
    inv = np.empty(k, dtype=np.int64)
    inv[np.concatenate([g.rows for g in groups])] = np.arange(k)
    # take from the groups' arrays as chunks (no concatenated copy first)
    out = pc.take(pa.chunked_array(parts, pa.large_string()), pa.array(inv), boundscheck=False)
    return out.chunk(0) if out.num_chunks == 1 else out.combine_chunks()


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
