"""blktrace binary reader: ``struct blk_io_trace`` version 7 records (48-byte header + pdu), either byte order.

Each per-CPU file is a plain concatenation of records (docs/formats.md section 1). The reader streams the
decompressed bytes in chunks (:class:`toolkit.fileio.Stream`), finds the records of a chunk without a Python loop
per record, and carries the unfinished tail of one chunk into the next, so files larger than memory can be read.

How records are found (vectorised): every byte offset whose four bytes are the v7 magic in the file's byte order
is a *candidate*; ``next = start + 48 + pdu_len`` links each candidate to the following one. In an intact file
every candidate links to the very next one, so the records are all candidates and the only Python work is a
handful of array operations per chunk. Where the chain breaks (a magic-looking word inside a pdu, a damaged
record, a cut) a small loop per break walks the chain, skips what does not chain and resynchronises on the
next magic whose record chain continues; skipped bytes go to REJECTS.

Times stay absolute nanoseconds as recorded (CLOCK_MONOTONIC of the recording kernel); sectors are 512-byte
units; ``bytes`` is the transfer length in bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from toolkit import fileio
from toolkit.events import (
    ACTION_LETTERS,
    BLOCK_EVENTS,
    CGROUP_FLAG,
    NOTIFY_ACTIONS,
    REJECTS,
    TC,
    errno_signed,
    op_from_category,
    rwbs_from_category,
)
from toolkit.parsers import ParseResult, reject_rows

MAGIC = 0x65617400
VERSION = 7
HEADER = 48
_MAGIC_V7 = MAGIC | VERSION
#: keep at least this much of an unresolved tail when a damaged region has no resynchronisation point yet (bytes)
_KEEP = HEADER + 0xFFFF + HEADER + 64
_CAP = 4 << 20

_FIELDS = [("magic", "u4"), ("sequence", "u4"), ("time", "u8"), ("sector", "u8"), ("bytes", "u4"),
           ("action", "u4"), ("pid", "u4"), ("device", "u4"), ("cpu", "u4"), ("error", "u2"), ("pdu_len", "u2")]


def header_dtype(order: str) -> np.dtype:
    """The 48-byte ``struct blk_io_trace`` as a numpy structured dtype; ``order`` is '<' or '>'."""
    return np.dtype([(n, order + t) for n, t in _FIELDS])


_NOTIFY = TC["notify"]
_ACT_UNPLUG = (10, 11)
_ACT_SPLIT = 13
_ACT_REMAP = 15


def _dev_str(dev: np.ndarray) -> np.ndarray:
    """Kernel dev_t (major = dev >> 20, minor = dev & 0xfffff) -> 'major,minor' strings (object array)."""
    dev = np.asarray(dev, dtype=np.int64)
    return np.array([f"{d >> 20},{d & 0xFFFFF}" for d in dev.tolist()], dtype=object)


def _strided(buf: bytes, dtype: np.dtype | str, width: int) -> np.ndarray:
    """A read-only view of ``buf`` with one ``dtype`` item starting at every byte offset."""
    n = len(buf) - width + 1
    if n <= 0:
        return np.empty(0, dtype=dtype)
    return np.ndarray(shape=(n,), dtype=dtype, buffer=buf, offset=0, strides=(1,))


def _hexdump(b: bytes) -> str:
    return b[:48].hex(" ")


class _Chunk:
    """Records found in one chunk: raw header fields (native order) and decoded pdus, plus rejects."""

    __slots__ = ("cols", "pdu64", "remap", "names", "stamps", "messages")

    def __init__(self) -> None:
        self.cols: dict[str, np.ndarray] = {}
        self.pdu64: tuple[np.ndarray, np.ndarray] | None = None
        self.remap: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.names: tuple[np.ndarray, list[str]] | None = None
        self.stamps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.messages: tuple[np.ndarray, list[str]] | None = None


def _candidates(buf: bytes, order: str) -> np.ndarray:
    """Sorted byte offsets in ``buf`` where the v7 magic starts (in byte order ``order``)."""
    n = len(buf)
    if n < 4:
        return np.empty(0, dtype=np.int64)
    mask = np.zeros(n, dtype=bool)
    dt = np.dtype(order + "u4")
    for a in range(4):
        cnt = (n - a) // 4
        if cnt <= 0:
            continue
        u = np.frombuffer(buf, dtype=dt, count=cnt, offset=a)
        mask[a:a + 4 * cnt:4] = u == _MAGIC_V7
    return np.flatnonzero(mask).astype(np.int64)


def _magic_bytes(order: str) -> bytes:
    return _MAGIC_V7.to_bytes(4, "little" if order == "<" else "big")


def _walk(buf: bytes, order: str, final: bool) -> tuple[np.ndarray, list[tuple[int, int, str]], int]:
    """Find the record starts in ``buf``.

    Returns (record offsets, rejected (pos, length, reason) ranges relative to ``buf``, bytes consumed). When
    not ``final`` the unconsumed tail (an unfinished record, or damage not yet resolved) is carried over.
    """
    n = len(buf)
    cand_all = _candidates(buf, order)
    cand = cand_all[cand_all <= n - HEADER]
    if len(cand):
        pl = _strided(buf, np.dtype(order + "u2"), 2)[cand + 46].astype(np.int64)
    else:
        pl = np.empty(0, dtype=np.int64)
    nxt = cand + HEADER + pl
    m = len(cand)
    nidx = np.searchsorted(cand, nxt)
    linked = nidx < m
    linked[linked] = cand[nidx[linked]] == nxt[linked]
    ends = nxt == n
    beyond = nxt > n
    ok_start = linked | ends | (beyond if not final else np.zeros(m, dtype=bool))
    good = linked & (nidx == np.arange(1, m + 1))
    breaks = np.flatnonzero(~good)
    ok_pos = np.flatnonzero(linked | ends)

    segs: list[np.ndarray] = []
    rejects: list[tuple[int, int, str]] = []
    pos = 0
    consumed = n
    while pos < n:
        k = int(np.searchsorted(cand, pos))
        if k < m and cand[k] == pos:
            b = int(breaks[np.searchsorted(breaks, k)])  # the last candidate is always a break
            if b > k:
                segs.append(cand[k:b])
            if linked[b]:
                segs.append(cand[b:b + 1])
                pos = int(nxt[b])
                continue
            if ends[b]:
                segs.append(cand[b:b + 1])
                pos = n
                break
            if beyond[b]:
                if final:
                    rejects.append((int(cand[b]), n - int(cand[b]), "truncated record"))
                else:
                    consumed = int(cand[b])
                break
            # the record is complete but what follows its end is not a record: is its pdu_len damaged?
            j = int(np.searchsorted(ok_pos, b + 1))
            if j < len(ok_pos) and cand[ok_pos[j]] < nxt[b]:
                tgt = int(cand[ok_pos[j]])
                rejects.append((pos, tgt - pos, "bad record (pdu_len does not chain)"))
                pos = tgt
                continue
            segs.append(cand[b:b + 1])
            pos = int(nxt[b])
            continue
        # pos is not a record start: damaged bytes; resynchronise on the next magic whose chain continues
        okk = ok_start[k:]
        if okk.any():
            j = k + int(np.argmax(okk))
            if not (beyond[j] and not final):
                tgt = int(cand[j])
                rejects.append((pos, tgt - pos, "bad magic"))
                pos = tgt
                continue
        if not final:
            if n - pos > _CAP:
                cut = n - _KEEP
                rejects.append((pos, cut - pos, "bad magic"))
                pos = cut
            consumed = pos
            break
        # final: damage runs to the end; a record cut by the end of the file is a truncation
        q = _last_partial(buf, order, pos, cand_all)
        if q is not None:
            if q > pos:
                rejects.append((pos, q - pos, "bad magic"))
            rejects.append((q, n - q, "truncated record"))
        else:
            rejects.append((pos, n - pos, "bad magic"))
        pos = n
    offs = np.concatenate(segs) if segs else np.empty(0, dtype=np.int64)
    return offs, rejects, consumed


def _last_partial(buf: bytes, order: str, pos: int, cand_all: np.ndarray) -> int | None:
    """Start of a record cut by the end of the data in ``buf[pos:]``, if the tail looks like one."""
    n = len(buf)
    tail = cand_all[(cand_all >= pos)]
    if len(tail):
        q = int(tail[-1])
        if q > n - HEADER:
            return q
        pl = int.from_bytes(buf[q + 46:q + 48], "little" if order == "<" else "big")
        if q + HEADER + pl > n:
            return q
    mb = _magic_bytes(order)
    for q in range(max(pos, n - 3), n):
        if mb.startswith(buf[q:]):
            return q
    return None


def _decode(buf: bytes, offs: np.ndarray, order: str, base: int) -> _Chunk:
    """Header fields and pdus of the records at ``offs`` of ``buf`` (``base``: file offset of ``buf``)."""
    ch = _Chunk()
    hv = _strided(buf, header_dtype(order), HEADER)
    rec = hv[offs] if len(offs) else np.empty(0, dtype=header_dtype(order))
    cols = {k: rec[k].astype(rec.dtype[k].newbyteorder("=")) for k, _ in _FIELDS if k != "magic"}
    cols["pos"] = offs + base
    ch.cols = cols
    act = cols["action"].astype(np.int64)
    cat = act >> 16
    code = act & 0xFFFF
    cg = (code & CGROUP_FLAG) != 0
    code = code & ~CGROUP_FLAG
    notify = (cat & _NOTIFY) != 0
    plen = cols["pdu_len"].astype(np.int64) - np.where(cg, 8, 0)
    poff = offs + HEADER + np.where(cg, 8, 0)
    # unplug depth / split sector: one be64
    i64 = np.flatnonzero(~notify & np.isin(code, (*_ACT_UNPLUG, _ACT_SPLIT)) & (plen >= 8))
    if len(i64):
        ch.pdu64 = (i64, _strided(buf, ">u8", 8)[poff[i64]].astype(np.int64))
    irm = np.flatnonzero(~notify & (code == _ACT_REMAP) & (plen >= 16))
    if len(irm):
        be32 = _strided(buf, ">u4", 4)
        ch.remap = (irm, be32[poff[irm]].astype(np.int64), be32[poff[irm] + 4].astype(np.int64),
                    _strided(buf, ">u8", 8)[poff[irm] + 8].astype(np.int64))
    ipr = np.flatnonzero(notify & (code == 0) & (plen > 0))
    if len(ipr):
        names = [buf[int(o):int(o) + int(ln)].split(b"\0", 1)[0].decode("utf-8", "replace")
                 for o, ln in zip(poff[ipr].tolist(), np.minimum(plen[ipr], 16).tolist(), strict=True)]
        ch.names = (ipr, names)
    its = np.flatnonzero(notify & (code == 1) & (plen >= 8))
    if len(its):
        u32 = _strided(buf, np.dtype(order + "u4"), 4)
        ch.stamps = (its, u32[poff[its]].astype(np.int64), u32[poff[its] + 4].astype(np.int64))
    ims = np.flatnonzero(notify & (code == 2) & (plen > 0))
    if len(ims):
        msgs = [buf[int(o):int(o) + int(ln)].split(b"\0", 1)[0].decode("utf-8", "replace")
                for o, ln in zip(poff[ims].tolist(), plen[ims].tolist(), strict=True)]
        ch.messages = (ims, msgs)
    return ch


def _detect_order(path: str, head: bytes) -> str:
    """Byte order ('<' or '>') from the first record's magic; TraceError when the file is not blktrace v7."""
    if len(head) < 4:
        raise fileio.TraceError(f"{path}: not a blktrace file (only {len(head)} bytes)")
    for order in "<>":
        v = int.from_bytes(head[:4], "little" if order == "<" else "big")
        if v & 0xFFFFFF00 == MAGIC:
            ver = v & 0xFF
            if ver == 8:
                raise fileio.TraceError(f"{path}: blktrace version 8 records (blk_io_trace2) are not supported yet")
            if ver == VERSION:
                return order
            raise fileio.TraceError(f"{path}: unsupported blktrace version {ver} (only version 7 is read)")
    # not a record at offset 0: accept the file only if a chain of records follows somewhere in the head
    for order in "<>":
        offs, _, _ = _walk(head[:1 << 20], order, final=False)
        if len(offs) >= 2:
            return order
    raise fileio.TraceError(f"{path}: not a blktrace file (no blk_io_trace version 7 magic at offset 0)")


def _read_file(path: str, chunk_bytes: int) -> tuple[list[_Chunk], list[tuple[int, int, str, str]], str | None, dict]:
    """All records of one file: decoded chunks, rejects (pos, length, reason, text), byte order, facts."""
    stream = fileio.Stream(path, size=chunk_bytes)
    chunks: list[_Chunk] = []
    rejects: list[tuple[int, int, str, str]] = []
    order: str | None = None
    tail = b""
    base = 0  # file offset of tail[0]
    size = 0
    for data in stream:
        size += len(data)
        buf = tail + data if tail else data
        if order is None:
            order = _detect_order(path, buf)
        offs, rej, consumed = _walk(buf, order, final=False)
        chunks.append(_decode(buf, offs, order, base))
        rejects += [(base + p, ln, r, _hexdump(buf[p:p + ln])) for p, ln, r in rej]
        tail = buf[consumed:]
        base += consumed
    if tail:
        if order is None:
            order = _detect_order(path, tail)
        offs, rej, _ = _walk(tail, order, final=True)
        chunks.append(_decode(tail, offs, order, base))
        rejects += [(base + p, ln, r, _hexdump(tail[p:p + ln])) for p, ln, r in rej]
    facts = {"bytes": size, "stream_truncated": stream.truncated}
    return chunks, rejects, order, facts


def _merge_rejects(rows: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str, str]]:
    """Join adjacent reject ranges with the same reason (a damaged region split over chunks)."""
    out: list[tuple[int, int, str, str]] = []
    for r in sorted(rows):
        if out and out[-1][2] == r[2] and out[-1][0] + out[-1][1] == r[0]:
            p, ln, reason, text = out[-1]
            out[-1] = (p, ln + r[1], reason, text)
        else:
            out.append(r)
    return out


def _string_column(codes: np.ndarray, names: list[str]) -> pd.arrays.ArrowStringArray:
    """A nullable string column from integer codes into ``names`` (-1 = null), built in Arrow."""
    codes = np.asarray(codes, dtype=np.int32)
    if not names:
        arr = pa.nulls(len(codes), pa.large_string())  # pandas keeps string columns as large_string
    else:
        d = pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), pa.array(names, pa.large_string()))
        arr = d.dictionary_decode()
    return pd.array(arr, dtype="string")


def _nullable_int(n: int, idx: np.ndarray, vals: np.ndarray) -> pd.arrays.IntegerArray:
    data = np.zeros(n, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    data[idx] = vals
    mask[idx] = False
    return pd.arrays.IntegerArray(data, mask)


def _categorical(codes: np.ndarray, labels: Iterable[str]) -> pd.Categorical:
    return pd.Categorical.from_codes(np.asarray(codes, dtype=np.int32), categories=pd.Index(list(labels)),
                                     validate=False)


def parse(paths: list[str] | str, chunk_bytes: int = fileio.CHUNK) -> ParseResult:
    """Read blktrace binary files (the per-CPU files of one trace) into a BLOCK_EVENTS table.

    Records of all files are merged in time order (stable sort by (time, device, sequence), as blkparse).
    ``chunk_bytes`` is the size of the decompressed pieces read at a time (bytes). Damaged or cut parts go to
    the rejects table; a file that is not blktrace raises :class:`toolkit.fileio.TraceError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    all_chunks: list[tuple[int, _Chunk]] = []
    rejects = []
    orders: dict[str, str] = {}
    truncated = []
    for fi, path in enumerate(paths):
        chunks, rej, order, facts = _read_file(path, chunk_bytes)
        rej = _merge_rejects(rej)
        all_chunks += [(fi, c) for c in chunks]
        if order:
            orders[path] = "little" if order == "<" else "big"
        if rej:
            rejects.append(reject_rows(path, rej))
        cut = [r for r in rej if r[2] == "truncated record"]
        if cut or facts["stream_truncated"]:
            truncated.append({"file": path, "offset": facts["bytes"],
                              "record_start": cut[-1][0] if cut else facts["bytes"],
                              "compressed_stream_cut": facts["stream_truncated"]})
    events, meta = _assemble(all_chunks, paths)
    byte_orders = set(orders.values())
    meta.update({
        "clock": "monotonic",
        "byte_order": byte_orders.pop() if len(byte_orders) == 1 else (orders or None),
        "truncated": truncated,
    })
    rj = pd.concat(rejects, ignore_index=True) if rejects else REJECTS.empty()
    return ParseResult(events=events, rejects=rj, meta=meta)


def _assemble(all_chunks: list[tuple[int, _Chunk]], paths: list[str]) -> tuple[pd.DataFrame, dict]:
    """Concatenate chunks, sort by (time, device, sequence) and build the BLOCK_EVENTS frame."""
    sizes = [len(c.cols.get("time", ())) for _, c in all_chunks]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(starts[-1])
    if n == 0:
        return BLOCK_EVENTS.empty().assign(file=pd.Categorical([], categories=paths)), {
            "wallclock": None, "lost_events": {}}

    def cat(name: str) -> np.ndarray:
        """One column of all chunks, released from the chunks as it is joined (to keep the peak low)."""
        parts = [c.cols.pop(name) for _, c in all_chunks if name in c.cols]
        out = np.concatenate(parts) if len(parts) != 1 else parts[0]
        del parts
        return out

    fileidx = np.repeat(np.array([fi for fi, _ in all_chunks], dtype=np.int32), sizes)
    time = cat("time").view(np.int64)
    device = cat("device")
    seq = cat("sequence")
    order = _time_order(time, device, seq)
    identity = order is None

    def g(x: np.ndarray) -> np.ndarray:
        return x if identity else x[order]

    if identity:
        order = np.arange(n, dtype=np.int64)
    # sparse pdu values -> global row numbers (before sorting)
    def sparse(attr: str) -> list[tuple]:
        out = []
        for s, (_, c) in zip(starts[:-1], all_chunks, strict=True):
            v = getattr(c, attr)
            if v is not None:
                out.append((v[0] + s, *v[1:]))
        return out

    if identity:
        inv = order
    else:
        inv = np.empty(n, dtype=np.int64)
        inv[order] = np.arange(n, dtype=np.int64)

    action = g(cat("action")).astype(np.int64)
    cat_bits = (action >> 16).astype(np.int32)
    code = (action & 0xFFFF & ~CGROUP_FLAG).astype(np.int32)
    del action
    notify = (cat_bits & _NOTIFY) != 0
    # action labels: notify records by type, others by action code
    acode = np.where(notify, 100 + code, code)
    uniq_a, a_codes = _small_unique(acode)
    a_labels = [NOTIFY_ACTIONS.get(int(u) - 100, f"notify_{int(u) - 100}") if u >= 100
                else ACTION_LETTERS.get(int(u), f"action_{int(u)}") for u in uniq_a]
    nbytes = g(cat("bytes")).astype(np.int64)
    device = g(device)
    # remap: the line's device is device_to, as blkparse prints it
    remap_dev_codes = np.full(n, -1, dtype=np.int32)
    remap_sector = None
    rm = sparse("remap")
    remap_names: list[str] = []
    if rm:
        ridx = inv[np.concatenate([r[0] for r in rm])]
        dfrom = np.concatenate([r[1] for r in rm])
        dto = np.concatenate([r[2] for r in rm])
        sfrom = np.concatenate([r[3] for r in rm])
        device[ridx] = dto.astype(device.dtype)
        uf, fcodes = np.unique(dfrom, return_inverse=True)
        remap_names = list(_dev_str(uf))
        remap_dev_codes[ridx] = fcodes
        remap_sector = _nullable_int(n, ridx, sfrom)
    d_codes, uniq_d = pd.factorize(device, sort=True)
    del device
    # rwbs and op from the distinct (category, bytes != 0, action) combinations
    key = cat_bits.astype(np.int64) | ((nbytes != 0).astype(np.int64) << 16) | (a_codes.astype(np.int64) << 17)
    uk, k_codes = _small_unique(key)
    uk_cat = uk & 0xFFFF
    uk_b = (uk >> 16) & 1
    uk_act = np.array(a_labels, dtype=object)[uk >> 17]
    rwbs_u = rwbs_from_category(uk_cat, uk_b)
    op_u = op_from_category(uk_cat, uk_b, uk_act)
    r_labels, r_of_k = np.unique(rwbs_u.astype(str), return_inverse=True)
    o_labels, o_of_k = np.unique(op_u.astype(str), return_inverse=True)
    del key

    pid = g(cat("pid")).astype(np.int64)
    # comm: the newest notify_process name of the same pid at or before each row
    comm_codes = np.full(n, -1, dtype=np.int32)
    msg_codes = np.full(n, -1, dtype=np.int32)
    msg_names: list[str] = []
    nm = sparse("names")
    if nm:
        pidx = inv[np.concatenate([x[0] for x in nm])]
        pnames = [s for x in nm for s in x[1]]
        un, ncodes = np.unique(np.array(pnames, dtype=object).astype(str), return_inverse=True)
        msg_names = list(un)
        msg_codes[pidx] = ncodes
        is_pr = np.zeros(n, dtype=bool)
        is_pr[pidx] = True
        byp = np.lexsort((np.arange(n), pid))
        src = np.where(is_pr[byp], np.arange(n), -1)
        last = np.maximum.accumulate(src)
        okp = last >= 0
        okp[okp] = pid[byp][last[okp]] == pid[byp][okp]
        comm_codes[byp[okp]] = msg_codes[byp[last[okp]]]
    comm_names = list(msg_names)
    wallclock = None
    st = sparse("stamps")
    if st:
        sidx = inv[np.concatenate([x[0] for x in st])]
        secs = np.concatenate([x[1] for x in st])
        nss = np.concatenate([x[2] for x in st])
        base = len(msg_names)
        labels = [f"{s}.{ns:09d}" for s, ns in zip(secs.tolist(), nss.tolist(), strict=True)]
        msg_names += labels
        msg_codes[sidx] = base + np.arange(len(labels))
        first = int(np.argmin(sidx))
        wallclock = (int(time[order[sidx[first]]]), int(secs[first]) * 1_000_000_000 + int(nss[first]))
    ms = sparse("messages")
    if ms:
        midx = inv[np.concatenate([x[0] for x in ms])]
        texts = [s for x in ms for s in x[1]]
        base = len(msg_names)
        msg_names += texts
        msg_codes[midx] = base + np.arange(len(texts))
    split = unplug = None
    p64 = sparse("pdu64")
    if p64:
        gidx = inv[np.concatenate([x[0] for x in p64])]
        vals = np.concatenate([x[1] for x in p64])
        is_split = code[gidx] == _ACT_SPLIT
        split = _nullable_int(n, gidx[is_split], vals[is_split])
        unplug = _nullable_int(n, gidx[~is_split], vals[~is_split])
    empty_int = None

    def nul() -> pd.arrays.IntegerArray:
        nonlocal empty_int
        if empty_int is None:
            empty_int = pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))
        return empty_int.copy()

    cols = {
        "time_ns": g(time),
        "device": _categorical(d_codes, _dev_str(uniq_d)),
        "cpu": g(cat("cpu")).astype(np.int32),
        "seq": g(seq).astype(np.int64),
        "pid": pid,
        "action": _categorical(a_codes, a_labels),
        "rwbs": _categorical(r_of_k[k_codes], r_labels),
        "sector": g(cat("sector")).view(np.int64),
        "nsect": nbytes >> 9,
        "bytes": nbytes,
        "error": _ERRNO[g(cat("error"))],
        "comm": _string_column(comm_codes, comm_names),
        "category": cat_bits,
        "op": _categorical(o_of_k[k_codes], o_labels),
        "preflush": (cat_bits & TC["flush"]) != 0,
        "fua": (cat_bits & TC["fua"]) != 0,
        "sync": (cat_bits & TC["sync"]) != 0,
        "meta": (cat_bits & TC["meta"]) != 0,
        "remap_device": _string_column(remap_dev_codes, remap_names),
        "remap_sector": remap_sector if remap_sector is not None else nul(),
        "split_sector": split if split is not None else nul(),
        "unplug_depth": unplug if unplug is not None else nul(),
        "message": _string_column(msg_codes, msg_names),
        "file": _categorical(g(fileidx), paths),
        "pos": g(cat("pos")),
    }
    df = pd.DataFrame(cols, copy=False)
    meta = {"wallclock": wallclock, "lost_events": _lost_events(df, notify)}
    return df, meta


_ERRNO = errno_signed(np.arange(1 << 16))


def _small_unique(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(x, return_inverse=True) for small non-negative integers, in O(n) with a lookup table."""
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    present = np.bincount(x)
    uniq = np.flatnonzero(present)
    lut = np.zeros(len(present), dtype=np.int32)
    lut[uniq] = np.arange(len(uniq), dtype=np.int32)
    return uniq, lut[x]


def _time_order(time: np.ndarray, device: np.ndarray, seq: np.ndarray) -> np.ndarray | None:
    """Stable order by (time, device, sequence), or None when the rows already are in that order.

    A stable sort of the times (fast on per-CPU files, which are sorted runs), then equal times reordered by
    device and sequence.
    """
    d = np.diff(time)
    if (d > 0).all():
        return None
    order = np.argsort(time, kind="stable")
    ts = time[order]
    tie = np.flatnonzero(ts[1:] == ts[:-1])
    if len(tie):
        rows = np.unique(np.concatenate([tie, tie + 1]))
        sub = order[rows]
        order[rows] = sub[np.lexsort((seq[sub], device[sub], time[sub]))]
    if (order == np.arange(len(order))).all():
        return None
    return order


def _lost_events(df: pd.DataFrame, notify: np.ndarray) -> dict:
    """Sequence gaps per (device, cpu) stream, for streams that carry sequence numbers (not the ftrace tracer)."""
    seq = df["seq"].to_numpy()
    keep = ~notify & (seq != 0)
    if not keep.any():
        return {}
    dev = df["device"].cat.codes.to_numpy()[keep]
    cpu = df["cpu"].to_numpy()[keep]
    s = seq[keep]
    o = np.lexsort((s, cpu, dev))
    dev, cpu, s = dev[o], cpu[o], s[o]
    same = (dev[1:] == dev[:-1]) & (cpu[1:] == cpu[:-1])
    gap = np.where(same, np.maximum(s[1:] - s[:-1] - 1, 0), 0)
    cats = df["device"].cat.categories
    out: dict[tuple[str, int], int] = {}
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.concatenate([starts[1:], [len(s)]])
    csum = np.concatenate([[0], np.cumsum(gap)])
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        out[(str(cats[dev[a]]), int(cpu[a]))] = int(csum[b - 1] - csum[a])
    return out
