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
whatever breaks that chain are read one by one. ``time_ns`` is host CLOCK_MONOTONIC ns; ``tid`` holds the pid.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit import fileio
from toolkit.events import QEMU_EVENTS, REJECTS
from toolkit.parsers import ParseResult, reject_rows
from toolkit.parsers import trace_events as te
from toolkit.parsers.qemu_log import ARG_COLUMNS, INT_COLUMNS, POINTER_COLUMNS

HEADER_EVENT_ID = 0xFFFFFFFFFFFFFFFF
MAGIC = 0xF2B177CB0AA429B4
DROPPED_EVENT_ID = 0xFFFFFFFFFFFFFFFE
REC_MAPPING = 0
REC_EVENT = 1
MAX_EVENT_ID = 1 << 24

#: string argument -> state column, per event (as the log parser's STATE_RULES)
STATE_ARGS = {"runstate_set": "new_state_str", "vm_state_notify": "reason_str", "migrate_set_state": "new_state",
              "migration_block_activation": "name", "vmstate_downtime_checkpoint": "checkpoint"}


def parse(paths: str | os.PathLike | Iterable[str | os.PathLike], trace_events: str | os.PathLike | None = None,
          *, base: str | os.PathLike | None = None, args_text: bool = True, **_: object) -> ParseResult:
    """Parse simple-backend files into QEMU_EVENTS (file order) and REJECTS (byte offsets).

    ``args_text=False`` leaves ``args`` null for records without string arguments (the typed columns are still
    filled): formatting every value as text is most of the cost on big files.

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
    meta: dict = {"format": "qemu-simple", "clock": "monotonic", "timestamps": True, "trace_events": te_path,
                  "dropped_records": 0, "dropped_events": 0, "unknown_events": [], "truncated": [], "notes": notes}
    for path in paths:
        name = fileio.display_name(path, base)
        data, cut = fileio.read_bytes(path)
        ev, rej, m = _parse_one(data, name, decls, args_text)
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
def _parse_one(data: bytes, file: str, decls: dict[str, list[te.Arg]] | None, args_text: bool = True):
    meta: dict = {"byte_order": None, "dropped_records": 0, "dropped_events": 0, "unknown_events": [],
                  "truncated": [], "notes": []}
    if len(data) < 24:
        raise fileio.TraceError(f"{file}: too short for a QEMU simple trace header ({len(data)} bytes)")
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
    u32 = np.dtype(order + "u4")
    u64 = np.dtype(order + "u8")
    names: dict[int, str] = {}
    # fixed-size records found by the chain scan: start offsets; the rest: (pos, id, ts, pid, values) one by one
    fast_starts: list[np.ndarray] = []
    slow: list[tuple[int, int, int, int, list]] = []
    rejects: list[tuple[int, int, str, str]] = []
    string_ids: set[int] = set()  # event ids whose declaration has a string argument: always read one by one

    def decl_for(eid: int) -> list[te.Arg] | None:
        n = names.get(eid)
        return None if decls is None or n is None else decls.get(n)

    cls_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    pid0: list[int | None] = [None]

    def candidates(r: int) -> tuple[np.ndarray, np.ndarray]:
        """Plausible event-record starts in residue class r (mod 8), and their record sizes."""
        if r in cls_cache:
            return cls_cache[r]
        cnt = (L - r) // 8
        w = np.frombuffer(data, dtype=u64, count=cnt, offset=r)
        if cnt < 4:
            res = (np.array([], np.int64), np.array([], np.int64))
        else:
            typ, eid = w[:-3], w[1:-2]
            lp = np.frombuffer(data, dtype=u32, count=2 * cnt, offset=r)
            length = lp[6::2][: cnt - 3].astype(np.int64)
            pid = lp[7::2][: cnt - 3]
            ok = (typ == REC_EVENT) & ((eid < MAX_EVENT_ID) | (eid == DROPPED_EVENT_ID)) & (length >= 24)
            del pid  # not required equal: the chain check below rejects false starts
            starts = r + 8 * np.flatnonzero(ok).astype(np.int64)
            size = 8 + length[ok]
            keep = starts + size <= L
            res = (starts[keep], size[keep])
        cls_cache[r] = res
        return res

    p = 24
    while p < L:
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
            nm = data[p + 20:p + 20 + nlen].decode("utf-8", errors="replace")
            names[eid] = nm
            d = decls.get(nm) if decls is not None else None
            if d is not None and any(a.is_string for a in d):
                string_ids.add(eid)
            p += 20 + nlen
            continue
        if rtype != REC_EVENT:
            # not a record start: skip to the next plausible record (or the end) and reject the bytes between
            nxt = _next_candidate(candidates, p + 1, L)
            rejects.append((p, nxt - p, f"unknown record type {rtype}", data[p:min(nxt, p + 64)].hex()))
            p = nxt
            continue
        if p + 32 > L:
            rejects.append((p, L - p, "truncated record", data[p:L].hex()))
            meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})
            break
        eid, ts, length, pid = struct.unpack_from(order + "QQII", data, p + 8)
        if pid0[0] is None:
            pid0[0] = pid
            cls_cache.clear()
        if length < 24 or p + 8 + length > L:
            rejects.append((p, L - p, "truncated record", data[p:min(L, p + 64)].hex()))
            meta["truncated"].append({"file": file, "offset": p, "reason": "record cut"})
            break
        if eid not in string_ids:
            # chain scan: the run of fixed-size records starting here
            starts, sizes = candidates(p % 8)
            i = int(np.searchsorted(starts, p))
            if i < len(starts) and starts[i] == p:
                j = i
                step = 4096
                while j < len(starts):
                    c = starts[j:j + step]
                    s = sizes[j:j + step]
                    nxt = c + s
                    link = nxt[:-1] == c[1:]
                    bad = np.flatnonzero(~link)
                    if len(bad):
                        j += int(bad[0]) + 1
                        break
                    j += len(c)
                    if j < len(starts) and starts[j] != nxt[-1]:
                        break
                run = starts[i:j]
                run_ids = _read_u64(data, run + 8, u64)
                if string_ids:
                    hit = np.flatnonzero(np.isin(run_ids, list(string_ids)))
                    if len(hit):  # stop the run before a record with string args
                        run = run[:hit[0]]
                if len(run):
                    fast_starts.append(run)
                    p = int(run[-1] + sizes[i + len(run) - 1])
                    continue
        # one record, read on its own
        body = data[p + 32:p + 8 + length]
        vals = _decode_slow(body, decl_for(eid), order, eid)
        slow.append((p, eid, ts, pid, vals))
        p += 8 + length

    starts = np.concatenate(fast_starts) if fast_starts else np.array([], np.int64)
    ev = _build(data, starts, slow, names, decls, u64, file, meta, args_text)
    return ev, reject_rows(file, rejects), meta


def _next_candidate(candidates, p: int, L: int) -> int:
    best = L
    for r in range(8):
        st, _ = candidates(r)
        i = int(np.searchsorted(st, p))
        if i < len(st):
            best = min(best, int(st[i]))
    return best


def _read_u64(data: bytes, offs: np.ndarray, u64: np.dtype) -> np.ndarray:
    """u64 values at byte offsets ``offs`` (any alignment)."""
    out = np.empty(len(offs), dtype=np.uint64)
    rs = offs % 8
    for r in np.unique(rs):
        sel = rs == r
        w = np.frombuffer(data, dtype=u64, count=(len(data) - int(r)) // 8, offset=int(r))
        out[sel] = w[(offs[sel] - r) // 8]
    return out


def _decode_slow(body: bytes, decl: list[te.Arg] | None, order: str, eid: int) -> list:
    """Argument values of one record: ints as Python ints (u64), strings as str."""
    if eid == DROPPED_EVENT_ID or decl is None:
        n = len(body) // 8
        return list(struct.unpack_from(f"{order}{n}Q", body, 0)) if n else []
    out: list = []
    q = 0
    for a in decl:
        if a.is_string:
            (n,) = struct.unpack_from(order + "I", body, q)
            out.append(body[q + 4:q + 4 + n].decode("utf-8", errors="replace"))
            q += 4 + n
        else:
            (v,) = struct.unpack_from(order + "Q", body, q)
            out.append(v)
            q += 8
    return out


def _arg(vals: list, j: int):
    return vals[j] if j < len(vals) else None


def _sign(v: np.ndarray, bits: int) -> np.ndarray:
    """Sign-extend u64 values from ``bits`` wide signed C types; returns int64."""
    v = np.asarray(v, dtype=np.uint64)
    if bits == 0 or bits == 64:
        return v.view(np.int64)
    m = np.uint64((1 << bits) - 1)
    x = (v & m).astype(np.int64)
    return np.where(x >= (1 << (bits - 1)), x - (1 << bits), x)


def _hex(v: np.ndarray) -> pa.Array:
    """``0x...`` strings (lowercase, no leading zeros) of u64 values, vectorised."""
    v = np.asarray(v, dtype=np.uint64)
    n = len(v)
    if n == 0:
        return pa.array([], pa.string())
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nib = ((v[:, None] >> shifts[None, :]) & np.uint64(15)).astype(np.uint8)
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nib]
    nz = nib != 0
    first = np.where(nz.any(axis=1), nz.argmax(axis=1), 15)
    keep = np.arange(16)[None, :] >= first[:, None]
    nd = 16 - first
    full = np.empty((n, 18), dtype=np.uint8)
    full[:, 0] = ord("0")
    full[:, 1] = ord("x")
    full[:, 2:] = chars
    keep2 = np.ones((n, 18), dtype=bool)
    keep2[:, 2:] = keep
    content = full[keep2]
    offs = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(nd + 2, out=offs[1:])
    return pa.StringArray.from_buffers(n, pa.py_buffer(offs), pa.py_buffer(content))


def _build(data: bytes, starts: np.ndarray, slow: list, names: dict[int, str], decls, u64: np.dtype, file: str,
           meta: dict, args_text: bool = True) -> pd.DataFrame:
    """QEMU_EVENTS rows from the fast record starts and the records read one by one, in file order."""
    n_fast = len(starts)
    pos = np.concatenate([starts, np.array([s[0] for s in slow], dtype=np.int64)])
    eid = np.concatenate([_read_u64(data, starts + 8, u64), np.array([s[1] for s in slow], dtype=np.uint64)])
    ts = np.concatenate([_read_u64(data, starts + 16, u64), np.array([s[2] for s in slow], dtype=np.uint64)])
    lp = _read_u64(data, starts + 24, u64)
    if u64.byteorder == ">" or (u64.byteorder == "=" and not np.little_endian):
        length, pid = (lp >> np.uint64(32)), (lp & np.uint64(0xFFFFFFFF))
    else:
        length, pid = (lp & np.uint64(0xFFFFFFFF)), (lp >> np.uint64(32))
    pid = np.concatenate([pid, np.array([s[3] for s in slow], dtype=np.uint64)]).astype(np.int64)
    nargs_fast = ((length.astype(np.int64) - 24) // 8)
    order = np.argsort(pos, kind="stable")
    k = len(pos)
    ids = np.unique(eid)
    ev_name = np.empty(k, dtype=object)
    args_text = pa.nulls(k, pa.string())
    text_parts: list[tuple[np.ndarray, pa.Array]] = []
    typed: dict[str, tuple[np.ndarray, np.ndarray]] = {c: (np.zeros(k, np.uint64 if c in POINTER_COLUMNS
                                                                  else np.int64), np.ones(k, bool))
                                                       for c in (*POINTER_COLUMNS, *INT_COLUMNS)}
    state = np.full(k, None, dtype=object)
    is_slow = np.zeros(k, dtype=bool)
    is_slow[n_fast:] = True
    for i in ids:
        i = int(i)
        rows = np.flatnonzero(eid == i)
        if i == DROPPED_EVENT_ID:
            nm = "dropped"
        else:
            nm = names.get(i)
            if nm is None:
                nm = f"event_{i}"
                meta["unknown_events"].append(nm)
        ev_name[rows] = nm
        decl = decls.get(nm) if decls is not None else None
        if nm == "dropped":
            decl = [te.Arg("uint64_t", "num_events_dropped")]
        elif decl is None and decls is not None and nm not in meta["unknown_events"]:
            meta["unknown_events"].append(nm)
        fr = rows[~is_slow[rows]]
        sr = rows[is_slow[rows]]
        rr = np.concatenate([fr, sr])  # every per-argument array below is in this order
        nf = len(fr)
        if decl is None:
            na = int(nargs_fast[fr].max()) if nf else max((len(slow[r - n_fast][4]) for r in sr), default=0)
            decl_use = [te.Arg("uint64_t", f"arg{j}") for j in range(na)]
        else:
            decl_use = decl
        pieces: list = []
        for j, a in enumerate(decl_use):
            pieces.append(pa.scalar(f" {a.name}=" if j else f"{a.name}="))
            if a.is_string:
                vals_s = [None] * nf + [_arg(slow[r - n_fast][4], j) for r in sr]
                pieces.append(pc.fill_null(pa.array(vals_s, pa.string()), ""))
                if STATE_ARGS.get(nm) == a.name:
                    state[rr] = vals_s
                continue
            v = np.zeros(len(rr), dtype=np.uint64)
            valid = np.ones(len(rr), dtype=bool)
            if nf:
                has = nargs_fast[fr] > j
                v[:nf][has] = _read_u64(data, starts[fr[has]] + 32 + 8 * j, u64)
                valid[:nf] = has
            for q, r in enumerate(sr):
                x = _arg(slow[r - n_fast][4], j)
                if isinstance(x, int):
                    v[nf + q] = x
                else:
                    valid[nf + q] = False
            col = ARG_COLUMNS.get(a.name)
            if col is not None:
                dat, msk = typed[col]
                dat[rr] = v if col in POINTER_COLUMNS else _sign(v, a.signed_bits)
                msk[rr] = ~valid
            pieces.append(_hex(v) if args_text else pa.nulls(len(v), pa.string()))
        if pieces:
            txt = pc.binary_join_element_wise(*pieces, "")
        else:
            txt = pa.array([""] * len(rr), pa.string())
        text_parts.append((rr, txt))
    # assemble the args text in row order
    if text_parts:
        rows_all = np.concatenate([r for r, _ in text_parts])
        txt_all = pa.concat_arrays([pc.cast(t, pa.string()) for _, t in text_parts])
        inv = np.empty(k, dtype=np.int64)
        inv[rows_all] = np.arange(len(rows_all))
        args_text = txt_all.take(pa.array(inv))
    cols: dict[str, object] = {
        "time_ns": pd.arrays.IntegerArray(ts.view(np.int64)[order], np.zeros(k, bool)),
        "tid": pd.arrays.IntegerArray(pid[order], np.zeros(k, bool)),
        "event": pd.Categorical(ev_name[order]),
        "args": pd.arrays.ArrowStringArray(pc.cast(args_text.take(pa.array(order)), pa.large_string()))
        if k else pd.array([], "string"),
    }
    for c in (*POINTER_COLUMNS, *INT_COLUMNS):
        dat, msk = typed[c]
        cols[c] = pd.arrays.IntegerArray(dat[order], msk[order])
    cols["state"] = pd.array(state[order], dtype="string")
    cols["file"] = pd.Categorical.from_codes(np.zeros(k, dtype=np.int8), categories=[file])
    cols["pos"] = pos[order]
    dropped = eid == DROPPED_EVENT_ID
    meta["dropped_records"] = int(dropped.sum())
    if dropped.any():
        meta["dropped_events"] = int(_read_u64(data, pos[dropped] + 32, u64).astype(np.int64).sum())
        meta["notes"].append(f"{file}: {meta['dropped_records']} dropped-event records "
                             f"({meta['dropped_events']} events lost by QEMU's trace buffer)")
    return pd.DataFrame(cols)


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
