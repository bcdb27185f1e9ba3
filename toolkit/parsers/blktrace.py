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

``parse`` maps every file and builds the whole table (header fields decoded per block of rows on two threads);
``parse_iter`` gives the same table as time-ordered chunks, reading each file a window at a time (a k-way merge
with a time watermark), in memory bounded by the window and chunk sizes.

Times stay absolute nanoseconds as recorded (CLOCK_MONOTONIC of the recording kernel); sectors are 512-byte
units; ``bytes`` is the transfer length in bytes.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Iterable, Iterator

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
from toolkit.parsers import NotTimeOrdered, ParseResult, reject_rows

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
                bad = int(cand[b])  # the records before it (cand[k:b]) are kept
                rejects.append((bad, tgt - bad, "bad record (pdu_len does not chain)"))
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


def _detect_order(path: str, head: bytes) -> str:
    """Byte order ('<' or '>') from the first record's magic; TraceError when the file is not blktrace v7."""
    if len(head) < 4:
        for order in "<>":  # the start of a record's magic: a file cut inside its first record
            if _magic_bytes(order).startswith(head):
                return order
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
    labels = list(labels)
    codes = np.asarray(codes)
    if codes.dtype != np.int8 or len(labels) >= 127:
        codes = codes.astype(np.int32)
    return pd.Categorical.from_codes(codes, categories=pd.Index(labels), validate=False)


# ---------------------------------------------------------------------------------------------------------------
# finding the records of one file (fast path: one alignment class at a time, the general walk at breaks)

_WINDOW = 1 << 16


class _Class:
    """Candidates of one alignment class (start + 8k) from ``start`` on: offsets, chain targets, chain breaks."""

    __slots__ = ("cand", "brk", "_pl", "_start")

    def __init__(self, mv: memoryview, order: str, start: int) -> None:
        n = len(mv)
        cnt = (n - HEADER - start) // 8 + 1 if n - HEADER >= start else 0
        brk = [np.empty(0, dtype=np.int64)]
        self._start = start
        self._pl = None
        if cnt > 0:
            u = np.ndarray((cnt,), dtype=order + "u4", buffer=mv, offset=start, strides=(8,))
            k = np.flatnonzero(u == _MAGIC_V7)
            del u
            self._pl = pl = np.ndarray((cnt,), dtype=order + "u2", buffer=mv, offset=start + 46, strides=(8,))
            step = 1 << 20
            for a in range(0, len(k) - 1, step):  # chain breaks: the next candidate is not start + 48 + pdu_len
                b = min(len(k) - 1, a + step)
                gap = (k[a + 1:b + 1] - k[a:b]) * 8 - HEADER
                brk.append(np.flatnonzero(gap != pl[k[a:b]]) + a)
            cand = k
            cand *= 8
            cand += start
        else:
            cand = np.empty(0, dtype=np.int64)
        self.cand = cand
        brk.append(np.array([len(cand) - 1], dtype=np.int64))
        self.brk = np.concatenate(brk)

    def nxt(self, i: int) -> int:
        """Where the record of candidate ``i`` ends (where its successor should start)."""
        c = int(self.cand[i])
        return c + HEADER + int(self._pl[(c - self._start) >> 3])


def _find_records(mv: memoryview, order: str) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Record offsets in one whole file ``mv`` and the rejected (pos, length, reason) ranges (see ``_scan``)."""
    offs, rejects, _ = _scan(mv, order, True)
    return offs, rejects


def _scan(mv: memoryview, order: str, final: bool) -> tuple[np.ndarray, list[tuple[int, int, str]], int]:
    """Record offsets in ``mv``, the rejected (pos, length, reason) ranges, and the bytes consumed.

    ``final``: ``mv`` runs to the end of the file; otherwise what cannot be decided yet (a record cut by the end
    of ``mv``, damage without a resynchronisation point) is left unconsumed for the next call with more bytes.

    The same result as ``_walk(mv, order, final=True)``: records that chain (``start + 48 + pdu_len`` is the
    next record) are taken a whole run at a time from the candidates of one alignment class (real records are
    multiples of 8 bytes long, so a file stays in one class until a message of odd length); a record whose
    successor is not a magic word, and damaged bytes, go through ``_walk`` on a small window.
    """
    n = len(mv)
    big = order == ">"
    if n >= HEADER:
        c0 = _Class(mv, order, 0)
        if len(c0.cand) and c0.cand[0] == 0 and len(c0.brk) == 1 and c0.nxt(len(c0.cand) - 1) == n:
            return c0.cand, [], n  # intact: one chain from the first byte to the last
        classes: dict[int, _Class] = {0: c0}
    else:
        classes = {}
    segs: list[np.ndarray] = []
    rejects: list[tuple[int, int, str]] = []
    pos = 0
    window = _WINDOW
    last_general = -1
    while pos < n:
        cls = classes.get(pos & 7)
        if cls is None:
            cls = classes[pos & 7] = _Class(mv, order, pos)
        cand = cls.cand
        k = int(np.searchsorted(cand, pos))
        if k < len(cand) and cand[k] == pos:
            b = int(cls.brk[np.searchsorted(cls.brk, k)])
            if b > k:
                segs.append(cand[k:b])
                pos = int(cand[b])
            q = cls.nxt(b)
            if q == n:
                segs.append(cand[b:b + 1])
                pos = n
                break
            if q + HEADER <= n and int.from_bytes(mv[q:q + 4], "big" if big else "little") == _MAGIC_V7:
                segs.append(cand[b:b + 1])
                pos = q
                continue
        # a break: the general walk over a window decides
        if last_general >= 0 and pos - last_general < 2 * window:
            window = min(window * 2, _CAP)  # breaks are dense here: bigger windows, fewer calls
        end = min(n, pos + window)
        fin = end == n and final
        offs, rej, consumed = _walk(bytes(mv[pos:end]), order, fin)
        if consumed == 0 and not fin:
            if end == n:
                break  # needs bytes that are not read yet
            window *= 2
            continue
        if len(offs):
            segs.append(offs + pos)
        rejects += [(p + pos, ln, r) for p, ln, r in rej]
        last_general = pos
        pos += consumed
        if end == n and pos < n and not final:
            break
    offs = np.concatenate(segs) if segs else np.empty(0, dtype=np.int64)
    return offs.astype(np.int64, copy=False), rejects, pos


# ---------------------------------------------------------------------------------------------------------------
# reading files


def _load(path: str, chunk_bytes: int) -> tuple[list | None, int, bool]:
    """(decompressed pieces or None for a plain file, size, whether a compressed stream was cut)."""
    if fileio.compression(path) is None:
        return None, os.path.getsize(path), False
    stream = fileio.Stream(path, size=chunk_bytes)
    parts = list(stream)
    return parts, sum(len(p) for p in parts), stream.truncated


_PAGE = mmap.PAGESIZE


def _page_up(x: int) -> int:
    return (x + _PAGE - 1) // _PAGE * _PAGE


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def _mapped(sizes: list[int]) -> tuple[np.ndarray, object] | None:
    """One anonymous read/write region holding every file at a page-aligned start (plus zero padding)."""
    if _LIBC is None:
        return None
    total = sum(_page_up(s) for s in sizes) + _PAGE
    base = _LIBC.mmap(None, total, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base is None or base == _MAP_FAILED:
        return None

    class Region(ctypes.c_char * total):
        def __del__(self, _munmap=_LIBC.munmap, _base=base, _len=total) -> None:
            _munmap(_base, _len)

    return Region.from_address(base), base  # unmapped when the last array over it is gone


def _read_all(paths: list[str], loaded: list, chunk_bytes: int) -> tuple[np.ndarray, list[int]]:
    """All files' decompressed bytes in one array (each file at its start offset, zero padding after each).

    Plain files are mapped into the region (no copy; Linux), compressed ones are copied in; elsewhere the files
    are read into one numpy buffer.
    """
    sizes = [size for _, size, _ in loaded]
    m = _mapped(sizes)
    if m is not None:
        region, base = m
        starts = []
        o = 0
        for (parts, size, _), path in zip(loaded, paths, strict=True):
            starts.append(o)
            if parts is None and size:
                fd = os.open(path, os.O_RDONLY)
                try:
                    r = _LIBC.mmap(base + o, size, mmap.PROT_READ, mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
                finally:
                    os.close(fd)
                if r != base + o:
                    raise OSError(ctypes.get_errno(), f"{path}: cannot map the file")
            elif parts:
                mv = memoryview(region).cast("B")
                for p in parts:
                    mv[o:o + len(p)] = p
                    o += len(p)
                o -= size
            o += _page_up(size)
        buf = np.frombuffer(region, dtype=np.uint8)  # keeps the region (and so the mapping) alive
        return buf, starts
    buf = np.zeros(sum(sizes) + 64, dtype=np.uint8)
    mv = memoryview(buf)
    starts = []
    o = 0
    for (parts, size, _), path in zip(loaded, paths, strict=True):
        starts.append(o)
        if parts is None:
            got = 0
            with open(path, "rb", buffering=0) as f:
                while got < size:
                    k = f.readinto(mv[o + got:o + size])
                    if not k:
                        raise fileio.TraceError(f"{path}: file changed while being read")
                    got += k
        else:
            for p in parts:
                mv[o:o + len(p)] = p
                o += len(p)
            o -= size
        o += size
    return buf, starts


_MAP_FIXED = 0x10


_OFFSET = {}
_TYPES = {}
_o = 0
for _n, _t in _FIELDS:
    _OFFSET[_n] = _o
    _TYPES[_n] = _t
    _o += np.dtype(_t).itemsize
del _o, _n, _t


def parse(paths: list[str] | str, chunk_bytes: int = fileio.CHUNK) -> ParseResult:
    """Read blktrace binary files (the per-CPU files of one trace) into a BLOCK_EVENTS table.

    Records of all files are merged in time order (stable sort by (time, device, sequence), as blkparse).
    ``chunk_bytes`` is the size of the pieces read at a time (bytes). Damaged or cut parts go to the rejects
    table; a file that is not blktrace raises :class:`toolkit.fileio.TraceError`.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    loaded = [_load(p, chunk_bytes) for p in paths]
    buf, starts = _read_all(paths, loaded, chunk_bytes)
    rejects = []
    orders: dict[str, str] = {}
    truncated = []
    offs_parts = []
    big_any = False
    mv_all = memoryview(buf)
    sizes = [x[1] for x in loaded]
    byte_order = {}
    for fi, path in enumerate(paths):
        if sizes[fi]:
            byte_order[fi] = _detect_order(path, bytes(mv_all[starts[fi]:starts[fi] + min(sizes[fi], 1 << 20)]))
    views = [(mv_all[starts[fi]:starts[fi] + sizes[fi]], od) for fi, od in byte_order.items()]
    found = dict(zip(byte_order, _pool().map(lambda v: _find_records(*v), views) if len(views) > 1
                     else [_find_records(*v) for v in views], strict=True))
    del views
    for fi, path in enumerate(paths):
        s, size, cut_stream = starts[fi], loaded[fi][1], loaded[fi][2]
        loaded[fi] = None
        mv = mv_all[s:s + size]
        if size == 0:
            offs_parts.append((fi, np.empty(0, dtype=np.int64), "<"))
            continue
        order = byte_order[fi]
        orders[path] = "little" if order == "<" else "big"
        big_any |= order == ">"
        offs, rej = found.pop(fi)
        offs += s  # offs is this call's own array
        offs_parts.append((fi, offs, order))
        rej = _merge_rejects([(p, ln, r, _hexdump(bytes(mv[p:p + min(ln, 48)]))) for p, ln, r in rej])
        if rej:
            rejects.append(reject_rows(path, rej))
        cut = [r for r in rej if r[2] == "truncated record"]
        if cut or cut_stream:
            truncated.append({"file": path, "offset": size, "record_start": cut[-1][0] if cut else size,
                              "compressed_stream_cut": cut_stream})
    del mv_all
    events, meta = _assemble(buf, offs_parts, starts, paths, big_any)
    byte_orders = set(orders.values())
    meta.update({
        "clock": "monotonic",
        "byte_order": byte_orders.pop() if len(byte_orders) == 1 else (orders or None),
        "truncated": truncated,
    })
    rj = pd.concat(rejects, ignore_index=True) if rejects else REJECTS.empty()
    return ParseResult(events=events, rejects=rj, meta=meta)


# ---------------------------------------------------------------------------------------------------------------
# streaming: the trace in time-ordered chunks, in memory bounded by the chunk and window sizes


#: a file's next records are assumed no earlier than the smallest time among its last this many records read
_TAIL = 4096


class _Reader:
    """One file of a trace, read a window at a time: its records not yet emitted and the bytes they are in."""

    def __init__(self, path: str, fi: int, window: int) -> None:
        self.path, self.fi, self.window = path, fi, window
        self.stream = fileio.Stream(path, size=window)
        self.it = iter(self.stream)
        self.buf = np.zeros(0, dtype=np.uint8)
        self.buf_pos = 0  # file offset of buf[0] (bytes)
        self.scan = 0  # buf offset where the bytes not yet cut into records start
        self.offs = np.zeros(0, dtype=np.int64)  # records not yet emitted: buf offsets, ascending
        self.time = np.zeros(0, dtype=np.int64)
        self.order: str | None = None
        self.done = False
        self.size = 0  # bytes read (decompressed)
        self.bound: int | None = None  # lower bound of the times of the records not read yet
        self.rejects: list[tuple[int, int, str, str]] = []

    def _pull(self, need: int) -> tuple[list[bytes], bool]:
        parts: list[bytes] = []
        got = 0
        while got < need:
            p = next(self.it, None)
            if p is None:
                return parts, True
            parts.append(p)
            got += len(p)
        return parts, False

    def read(self, emitted: int | None) -> None:
        """Read the next window; cut it into records (a file without a magic word at offset 0 first reads 1 MiB,
        to decide its byte order on the bytes parse() looks at)."""
        parts, eof = self._pull(self.window)
        if self.order is None and not eof and sum(map(len, parts)) < 1 << 20:
            head = b"".join(parts)[:4]
            if len(head) < 4 or not any(int.from_bytes(head, e) & 0xFFFFFF00 == MAGIC for e in ("little", "big")):
                more, eof = self._pull((1 << 20) - sum(map(len, parts)))
                parts += more
        self.size += sum(map(len, parts))
        keep = int(self.offs[0]) if len(self.offs) else self.scan
        self.buf = np.concatenate([self.buf[keep:], *(np.frombuffer(p, dtype=np.uint8) for p in parts)])
        self.buf_pos += keep
        self.offs -= keep
        self.scan -= keep
        if eof:
            self.done = True
        if self.order is None:
            if not len(self.buf):
                return
            self.order = _detect_order(self.path, bytes(self.buf[:1 << 20]))
        mv = memoryview(self.buf)[self.scan:]
        offs, rej, consumed = _scan(mv, self.order, eof)
        base = self.buf_pos + self.scan
        self.rejects += [(p + base, ln, r, _hexdump(bytes(mv[p:p + min(ln, 48)]))) for p, ln, r in rej]
        del mv
        offs += self.scan
        self.scan += consumed
        if len(offs):
            t = _field(self.buf, offs, np.ones(len(offs), dtype=bool) if self.order == ">" else None, "time", "i8")
            if emitted is not None and (t < emitted).any():
                raise NotTimeOrdered(f"{self.path}: a record at byte {int(offs[np.argmax(t < emitted)]) + self.buf_pos}"
                                     " is earlier than rows already emitted (the file is not in time order)")
            self.offs = np.concatenate([self.offs, offs])
            self.time = np.concatenate([self.time, t])
            self.bound = int(t[-_TAIL:].min())

    def take(self, below: int | None) -> tuple[np.ndarray, int, int]:
        """Remove the pending records with time < ``below`` (all when None): (their offsets, span start, end)."""
        if below is None:
            sel = np.arange(len(self.offs))
        else:
            sel = np.flatnonzero(self.time < below)
        if not len(sel):
            return np.zeros(0, dtype=np.int64), 0, 0
        offs = self.offs[sel]
        last = int(offs[-1])
        pl = int.from_bytes(self.buf[last + 46:last + 48].tobytes(), "little" if self.order == "<" else "big")
        if len(sel) == len(self.offs):
            self.offs = self.offs[:0]
            self.time = self.time[:0]
        else:
            rest = np.ones(len(self.offs), dtype=bool)
            rest[sel] = False
            self.offs = self.offs[rest]
            self.time = self.time[rest]
        return offs, int(offs[0]), last + HEADER + pl


#: parse_iter's defaults: bytes read from a file at a time, rows at least in a chunk (10 M records of a
#: two-file capture: 12 chunks of 0.5-0.85 M rows, peak RSS ~0.5 GB)
ITER_WINDOW = 16 << 20
ITER_ROWS = 1 << 19


def parse_iter(paths: list[str] | str, chunk_bytes: int = fileio.CHUNK, window_bytes: int = ITER_WINDOW,
               chunk_rows: int = ITER_ROWS) -> Iterator[ParseResult]:
    """The table of :func:`parse` in consecutive chunks, in memory bounded by the chunk and window sizes.

    Files are read ``window_bytes`` at a time (decompressed bytes), always the file whose newest records are the
    oldest (a k-way merge): rows older than every file's next records are emitted, at least ``chunk_rows`` at a
    time (at most about ``chunk_rows`` + the records of one window per file), sorted as parse() sorts. Concatenated, the chunks are parse()'s table, and each chunk conforms to
    BLOCK_EVENTS. Categorical columns list every value seen in that chunk or before, in parse()'s order, so
    the last chunk's categories are parse()'s (cast earlier chunks to them before concatenating).
    ``rejects``: a file's rejects come with the chunk emitted when the file is read to its end; ordered by the
    file's place in ``paths`` (stable) they are parse()'s. ``meta`` is complete on the last chunk only (earlier
    chunks carry ``clock``). A file whose records go back in time by more than a window raises
    :class:`NotTimeOrdered` (parse() reads it); ``chunk_bytes`` is accepted for parse()'s signature.
    """
    del chunk_bytes
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    readers = [_Reader(p, fi, max(int(window_bytes), 1 << 12)) for fi, p in enumerate(paths)]
    st = _State(paths)
    lost: dict[tuple[str, int], list[np.ndarray]] = {}
    emitted: int | None = None
    reported: set[int] = set()
    any_rows = False
    while True:
        active = [r for r in readers if not r.done]
        for r in active:
            if r.bound is None:  # every file read once before anything is emitted
                r.read(emitted)
        active = [r for r in readers if not r.done]
        if active and all(r.bound is not None for r in active):
            min(active, key=lambda r: r.bound).read(emitted)
            active = [r for r in readers if not r.done]
        if active and any(r.bound is None for r in active):
            continue
        below = min(r.bound for r in active) if active else None
        pending = sum(int((r.time < below).sum()) if below is not None else len(r.time) for r in readers)
        if active and pending < chunk_rows:
            continue
        df, notify = _emit(readers, below, st)
        if below is not None:
            emitted = below if emitted is None else max(emitted, below)
        rej = [reject_rows(r.path, _merge_rejects(r.rejects)) for r in readers
               if r.done and r.fi not in reported and r.rejects]
        reported |= {r.fi for r in readers if r.done}
        rejects = pd.concat(rej, ignore_index=True) if rej else REJECTS.empty()
        if len(df):
            _seq_intervals(df, notify, lost)
            any_rows = True
        if not active:
            if not any_rows:
                df = BLOCK_EVENTS.empty().assign(file=pd.Categorical([], categories=paths))
            yield ParseResult(events=df, rejects=rejects, meta=_iter_meta(readers, st, lost))
            return
        if len(df) or len(rejects):
            yield ParseResult(events=df, rejects=rejects, meta={"clock": "monotonic"})


def _emit(readers: list[_Reader], below: int | None, st: _State) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of every file older than ``below`` (all: None), in parse()'s order, as a frame."""
    got = [(r, *r.take(below)) for r in readers]
    got = [g for g in got if len(g[1])]
    n = sum(len(g[1]) for g in got)
    if n == 0:
        return _empty_chunk(st), np.zeros(0, dtype=bool)
    size = sum(e - s for _, _, s, e in got)
    buf = np.empty(size, dtype=np.uint8)
    offs, fcodes, base, bigs = [], [], np.zeros(len(st.paths), dtype=np.int64), []
    o = 0
    for r, off, s, e in got:
        buf[o:o + e - s] = r.buf[s:e]
        offs.append(off - s + o)
        fcodes.append(np.full(len(off), r.fi, dtype=np.int8 if len(st.paths) < 128 else np.int32))
        base[r.fi] = o - s - r.buf_pos
        bigs.append(np.full(len(off), r.order == ">", dtype=bool))
        o += e - s
    offs = np.concatenate(offs)
    fc = np.concatenate(fcodes)
    big = np.concatenate(bigs) if any(r.order == ">" for r, *_ in got) else None
    time = _field(buf, offs, big, "time", "i8")
    order = _time_order(time, lambda rows: _field(buf, offs[rows], None if big is None else big[rows], "device"),
                        lambda rows: _field(buf, offs[rows], None if big is None else big[rows], "sequence"))
    if order is not None:
        offs, time, fc = offs[order], time[order], fc[order]
        if big is not None:
            big = big[order]
    return _build(buf, offs, big, time, base, fc, st, threads=True)


def _empty_chunk(st: _State) -> pd.DataFrame:
    """No rows, with the categories seen so far."""
    df = BLOCK_EVENTS.empty()
    cats = {"device": list(_dev_str(st.devs)), "action": [_action_label(int(u)) for u in st.acodes],
            "rwbs": st.rwbs, "op": st.ops, "file": st.paths}
    for c, labels in cats.items():
        df[c] = _categorical(np.zeros(0, dtype=np.int32), labels)
    return df


def _seq_intervals(df: pd.DataFrame, notify: np.ndarray, acc: dict) -> None:
    """Add the sequence numbers of a chunk to ``acc``: per (device, cpu) stream, the runs of numbers seen."""
    seq = df["seq"].to_numpy()
    keep = ~notify & (seq != 0)
    if not keep.any():
        return
    cats = df["device"].cat.categories
    dev = df["device"].cat.codes.to_numpy()[keep].astype(np.int64)
    cpu = df["cpu"].to_numpy()[keep].astype(np.int64)
    s = seq[keep]
    o = np.lexsort((s, cpu, dev))
    dev, cpu, s = dev[o], cpu[o], s[o]
    new = np.flatnonzero(np.concatenate([[True], (dev[1:] != dev[:-1]) | (cpu[1:] != cpu[:-1])]))
    ends = np.append(new[1:], len(s))
    for a, b in zip(new.tolist(), ends.tolist(), strict=True):
        v = s[a:b]
        k = (str(cats[dev[a]]), int(cpu[a]))
        old = acc.get(k)
        starts = np.concatenate([[True], v[1:] > v[:-1] + 1])
        lo = v[starts]
        hi = np.append(v[np.flatnonzero(starts)[1:] - 1], v[-1])
        if old is not None:
            lo = np.concatenate([old[0], lo])
            hi = np.concatenate([old[1], hi])
            o2 = np.argsort(lo, kind="stable")
            lo, hi = lo[o2], hi[o2]
            top = np.maximum.accumulate(hi)
            grp = np.concatenate([[True], lo[1:] > top[:-1] + 1])
            idx = np.flatnonzero(grp)
            lo = lo[idx]
            hi = np.maximum.reduceat(hi, idx)
        acc[k] = (lo, hi)


def _iter_meta(readers: list[_Reader], st: _State, lost: dict) -> dict:
    """The trace's meta, as parse() gives it, from what the readers and the chunks recorded."""
    order = {d: i for i, d in enumerate(_dev_str(st.devs))}
    lost_events = {}
    for k in sorted(lost, key=lambda k: (order.get(k[0], len(order)), k[1])):
        lo, hi = lost[k]
        lost_events[k] = int(hi[-1] - lo[0] + 1 - (hi - lo + 1).sum())
    orders = {r.path: "little" if r.order == "<" else "big" for r in readers if r.order is not None}
    truncated = []
    for r in readers:
        if r.size == 0:
            continue
        cut = [x for x in _merge_rejects(r.rejects) if x[2] == "truncated record"]
        if cut or r.stream.truncated:
            truncated.append({"file": r.path, "offset": r.size, "record_start": cut[-1][0] if cut else r.size,
                              "compressed_stream_cut": r.stream.truncated})
    byte_orders = set(orders.values())
    return {"wallclock": st.wallclock, "lost_events": lost_events, "clock": "monotonic",
            "byte_order": byte_orders.pop() if len(byte_orders) == 1 else (orders or None),
            "truncated": truncated}


def _pdu_strings(buf: np.ndarray, offs: np.ndarray, lens: np.ndarray) -> list[str]:
    return [bytes(buf[o:o + ln]).split(b"\0", 1)[0].decode("utf-8", "replace")
            for o, ln in zip(offs.tolist(), lens.tolist(), strict=True)]


def _assemble(buf: np.ndarray, offs_parts: list, starts: list[int], paths: list[str],
              big_any: bool) -> tuple[pd.DataFrame, dict]:
    """Sort the records of all files by (time, device, sequence) and build the BLOCK_EVENTS frame."""
    sizes = [len(o) for _, o, _ in offs_parts]
    n = int(sum(sizes))
    if n == 0:
        return BLOCK_EVENTS.empty().assign(file=pd.Categorical([], categories=paths)), {
            "wallclock": None, "lost_events": {}}
    offs = np.concatenate([o for _, o, _ in offs_parts]) if len(offs_parts) != 1 else offs_parts[0][1]
    nonempty = [fi for fi, o, _ in offs_parts if len(o)]
    fileidx = None
    ftype = np.int8 if len(paths) < 128 else np.int32
    if len(nonempty) > 1:
        fileidx = np.repeat(np.array([fi for fi, _, _ in offs_parts], dtype=ftype), sizes)
    big = None
    if big_any:
        big = np.repeat(np.array([od == ">" for _, _, od in offs_parts], dtype=bool), sizes)
    if big is None:
        time = _take(np.ndarray((len(buf) - 15,), dtype="<i8", buffer=buf, offset=8, strides=(1,)), offs)
    else:
        time = _field(buf, offs, big, "time", "i8")
    ts: list[np.ndarray] = []
    order = _time_order(time, lambda rows: _field(buf, offs[rows], None if big is None else big[rows], "device"),
                        lambda rows: _field(buf, offs[rows], None if big is None else big[rows], "sequence"), ts)
    if order is not None:
        offs = _take(offs, order)
        time = ts[0]
        if fileidx is not None:
            fileidx = _take(fileidx, order)
        if big is not None:
            big = big[order]
    del order
    fcodes = np.full(n, nonempty[0], dtype=ftype) if fileidx is None else fileidx
    del fileidx
    st = _State(paths)
    df, notify = _build(buf, offs, big, time, np.asarray(starts, dtype=np.int64), fcodes, st, threads=True)
    meta = {"wallclock": st.wallclock, "lost_events": _lost_events(df, notify)}
    return df, meta


def _field(buf: np.ndarray, offs: np.ndarray, big: np.ndarray | None, name: str,
           dtype: str | None = None) -> np.ndarray:
    """One header field of the records at byte offsets ``offs`` of ``buf`` (rows in ``big`` are big-endian)."""
    off = _OFFSET[name]
    t = np.dtype("<" + (dtype or _TYPES[name]))
    view = np.ndarray((len(buf) - off - t.itemsize + 1,), dtype=t, buffer=buf, offset=off, strides=(1,))
    v = view[offs]
    if big is not None and big.any():
        v[big] = v[big].byteswap()
    return v


_LE = header_dtype("<")
_BE = header_dtype(">")
#: rows per block of the header decoding (blocks run on two threads; numpy releases the GIL)
_BLOCK = 1 << 16
#: category bits that rwbs and op depend on
_RW_MASK = TC["flush"] | TC["discard"] | TC["write"] | TC["fua"] | TC["ahead"] | TC["sync"] | TC["meta"]
_NONE_OPS = ("P", "U", "UT", "m", "notify_process", "notify_timestamp", "drv_data")


def _action_label(u: int) -> str:
    """Label of an action code (notify records: 100 + notify type)."""
    return NOTIFY_ACTIONS.get(u - 100, f"notify_{u - 100}") if u >= 100 else ACTION_LETTERS.get(u, f"action_{u}")


#: action code -> 1 when its op is 'none' (P, U, UT, notify records, drv_data)
_NONE_LUT = np.zeros((1 << 16) + 100, dtype=np.int32)
_NONE_LUT[[u for u in range(200) if _action_label(u) in _NONE_OPS]] = 1


class _State:
    """What one trace's chunks share: category values seen so far (in parse()'s orders), the newest process
    name per pid, the first wall-clock stamp. A fresh state for a whole trace gives parse()'s table."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.acodes = np.zeros(0, dtype=np.int64)  # action codes seen (notify: 100 + type), ascending
        self.rwbs: list[str] = []
        self.ops: list[str] = []
        self.devs = np.zeros(0, dtype=np.int64)  # dev_t values seen, ascending
        self.comm_pids = np.zeros(0, dtype=np.int64)  # pids with a known name, ascending
        self.comm_names: list[str] = []
        self.wallclock: tuple[int, int] | None = None


def _decode_block(buf: np.ndarray, offs: np.ndarray, big: np.ndarray | None, base: np.ndarray, fcodes: np.ndarray,
                  out: dict, a: int, b: int) -> None:
    """Decode the headers of rows a:b into the preallocated columns of ``out`` (one gather of 48-byte headers)."""
    np.subtract(offs[a:b], base[fcodes[a:b]], out=out["pos"][a:b])
    hv = np.ndarray((len(buf) - HEADER + 1,), dtype=f"V{HEADER}", buffer=buf, strides=(1,))
    h = hv[offs[a:b]]
    s = h.view(_LE)
    bg = None
    if big is not None:
        bg = np.flatnonzero(big[a:b])
        if len(bg):
            sb = h[bg].view(_BE)
        else:
            bg = None

    def get(name: str) -> np.ndarray:
        v = s[name]
        if bg is not None:
            v = v.copy()
            v[bg] = sb[name]
        return v

    np.copyto(out["seq"][a:b], get("sequence"), casting="unsafe")
    np.copyto(out["sector"][a:b], get("sector"), casting="unsafe")
    nb = out["bytes"][a:b]
    np.copyto(nb, get("bytes"), casting="unsafe")
    np.right_shift(nb, 9, out=out["nsect"][a:b])
    np.copyto(out["pid"][a:b], get("pid"), casting="unsafe")
    np.copyto(out["cpu"][a:b], get("cpu"), casting="unsafe")
    np.copyto(out["device"][a:b], get("device"), casting="unsafe")
    np.take(_ERRNO, get("error"), out=out["error"][a:b])
    np.copyto(out["pdu_len"][a:b], get("pdu_len"), casting="unsafe")
    action = get("action")
    cat = out["category"][a:b]
    np.right_shift(action, 16, out=cat, casting="unsafe")
    code = (action & 0xFFFF).astype(np.int32)
    cg = out["cg"][a:b]
    np.not_equal(code & CGROUP_FLAG, 0, out=cg)
    code &= ~CGROUP_FLAG
    out["code"][a:b] = code
    notify = out["notify"][a:b]
    np.not_equal(cat & _NOTIFY, 0, out=notify)
    acode = out["acode"][a:b]
    np.add(code, notify.view(np.uint8) * np.int32(100), out=acode, casting="unsafe")
    for k in ("preflush", "fua", "sync", "meta"):
        np.not_equal(cat & TC["flush" if k == "preflush" else k], 0, out=out[k][a:b])
    key = out["key"][a:b]  # what rwbs and op depend on: category bits, bytes != 0, an action without op
    np.bitwise_and(cat, _RW_MASK, out=key)
    key |= (nb != 0).view(np.uint8).astype(np.int32) << 16
    key |= _NONE_LUT[acode] << 17


def _code_block(out: dict, luts: dict, a: int, b: int) -> None:
    """Category codes of rows a:b from the per-row keys through lookup tables."""
    for dst, (src, lut) in luts.items():
        np.take(lut, out[src][a:b], out=out[dst][a:b])


_POOL = None


def _pool():
    """A two-thread pool for the header decoding (numpy releases the GIL in gathers and ufuncs)."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1), thread_name_prefix="blktrace")
    return _POOL


def _take(src: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``src[idx]``, in blocks on two threads (never ``np.take``: it copies a strided ``src`` whole)."""
    out = np.empty(len(idx), dtype=src.dtype)

    def block(a: int) -> None:
        out[a:a + _BLOCK * 4] = src[idx[a:a + _BLOCK * 4]]

    if len(idx) > _BLOCK * 8 and (os.cpu_count() or 1) > 1:
        list(_pool().map(block, range(0, len(idx), _BLOCK * 4)))
    else:
        out[:] = src[idx]
    return out


def _union_sorted(seen: np.ndarray, new: np.ndarray) -> np.ndarray:
    if len(seen) == 0:
        return new.astype(np.int64)
    return np.union1d(seen, new).astype(np.int64)


def _build(buf: np.ndarray, offs: np.ndarray, big: np.ndarray | None, time: np.ndarray, base: np.ndarray,
           fcodes: np.ndarray, st: _State, threads: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """The BLOCK_EVENTS frame of the records at ``offs`` of ``buf`` (already in time order).

    ``time`` (ns) and ``fcodes`` (index into ``st.paths``) are per row; a record's ``pos`` (byte offset in its
    file) is its offset minus ``base[file]``. ``st`` carries what a trace's chunks share and is updated.
    Returns (frame, notify-record mask).
    """
    n = len(offs)
    out = {k: np.empty(n, dtype=t) for k, t in (
        ("seq", np.int64), ("sector", np.int64), ("bytes", np.int64), ("nsect", np.int64), ("pid", np.int64),
        ("cpu", np.int32), ("device", np.uint32), ("error", np.int32), ("pdu_len", np.uint16),
        ("category", np.int32), ("cg", bool), ("code", np.int32), ("notify", bool), ("acode", np.int32),
        ("preflush", bool), ("fua", bool), ("sync", bool), ("meta", bool), ("key", np.int32), ("pos", np.int64))}
    blocks = [(a, min(a + _BLOCK, n)) for a in range(0, n, _BLOCK)]
    par = threads and len(blocks) > 1 and (os.cpu_count() or 1) > 1

    def run(fn, *args) -> None:
        if par:
            list(_pool().map(lambda ab: fn(*args, *ab), blocks))
        else:
            for a, b in blocks:
                fn(*args, a, b)

    run(_decode_block, buf, offs, big, base, fcodes, out)
    cat_bits, code, notify = out["category"], out["code"], out["notify"]
    nbytes = out["bytes"]

    # action, rwbs, op: codes into every value seen so far, in parse()'s orders (actions by code, strings sorted)
    present = np.flatnonzero(np.bincount(out["acode"])) if n else np.zeros(0, dtype=np.int64)
    st.acodes = _union_sorted(st.acodes, present)
    a_labels = [_action_label(int(u)) for u in st.acodes]
    uk = np.flatnonzero(np.bincount(out["key"])) if n else np.zeros(0, dtype=np.int64)
    uk_cat = uk & 0xFFFF
    uk_b = (uk >> 16) & 1
    uk_act = np.where((uk >> 17) & 1, "P", "Q").astype(object)  # an action with op 'none', or one with an op
    rwbs_u = rwbs_from_category(uk_cat, uk_b).astype(str)
    op_u = op_from_category(uk_cat, uk_b, uk_act).astype(str)
    st.rwbs = sorted(set(st.rwbs) | set(rwbs_u.tolist()))
    st.ops = sorted(set(st.ops) | set(op_u.tolist()))
    luts = {}
    for name, labels, vals, src, top in (("a_codes", a_labels, st.acodes, "acode", int(st.acodes[-1]) + 1 if n else 1),
                                         ("rwbs", st.rwbs, None, "key", int(uk[-1]) + 1 if n else 1),
                                         ("op", st.ops, None, "key", int(uk[-1]) + 1 if n else 1)):
        t = np.int8 if len(labels) < 127 else np.int32
        lut = np.zeros(top, dtype=t)
        if vals is not None:
            lut[vals] = np.arange(len(vals))
        elif len(uk):
            lut[uk] = np.searchsorted(np.array(labels, dtype=str), rwbs_u if name == "rwbs" else op_u)
        luts[name] = (src, lut)
        out[name] = np.empty(n, dtype=t)
    run(_code_block, out, luts)
    del out["key"], out["acode"]
    a_codes = out.pop("a_codes")
    rwbs_col = _categorical(out.pop("rwbs"), st.rwbs)
    op_col = _categorical(out.pop("op"), st.ops)

    # records with payloads that matter: unplug depth / split sector, remap, notify names, stamps, messages
    pdu_len = out.pop("pdu_len")
    has_pdu = np.flatnonzero(pdu_len)
    cg = out.pop("cg")
    sp_code = code[has_pdu]
    sp_notify = notify[has_pdu]
    sp_cg = cg[has_pdu]
    del cg
    sp_plen = pdu_len[has_pdu].astype(np.int64) - np.where(sp_cg, 8, 0)
    del pdu_len
    sp_poff = offs[has_pdu] + HEADER + np.where(sp_cg, 8, 0)

    def pick(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        j = np.flatnonzero(mask)
        return has_pdu[j], sp_poff[j], sp_plen[j]

    def be(fmt: str, at: np.ndarray) -> np.ndarray:
        t = np.dtype(fmt)
        view = np.ndarray((len(buf) - t.itemsize + 1,), dtype=t, buffer=buf, strides=(1,))
        return view[at].astype(np.int64)

    device = out.pop("device")
    remap_dev_codes = None
    remap_sector = None
    remap_names: list[str] = []
    ridx, rpoff, _ = pick(~sp_notify & (sp_code == _ACT_REMAP) & (sp_plen >= 16))
    if len(ridx):
        dfrom = be(">u4", rpoff)
        device[ridx] = be(">u4", rpoff + 4).astype(device.dtype)
        uf, fcodes_r = np.unique(dfrom, return_inverse=True)
        remap_names = list(_dev_str(uf))
        remap_dev_codes = np.full(n, -1, dtype=np.int32)
        remap_dev_codes[ridx] = fcodes_r
        remap_sector = _nullable_int(n, ridx, be(">u8", rpoff + 8))
    one = n > 0 and bool((device == device[0]).all())
    st.devs = _union_sorted(st.devs, device[:1] if one else np.unique(device))
    if len(st.devs) == 1:
        d_codes = np.zeros(n, dtype=np.int8)
    else:
        d_codes = np.searchsorted(st.devs, device).astype(np.int32)
    del device

    pid = out.pop("pid")
    # comm: the newest notify_process name of the same pid at or before each row (earlier chunks: st)
    comm_codes = None
    msg_codes = None
    msg_names: list[str] = []
    pidx, ppoff, pplen = pick(sp_notify & (sp_code == 0) & (sp_plen > 0))
    if len(pidx):
        pnames = _pdu_strings(buf, ppoff, np.minimum(pplen, 16))
        un, ncodes = np.unique(np.array(pnames, dtype=object).astype(str), return_inverse=True)
        msg_names = list(un)
        msg_codes = np.full(n, -1, dtype=np.int32)
        msg_codes[pidx] = ncodes
        comm_codes = _comm_codes(pid, pidx, ncodes)
    comm_names = list(msg_names)
    if len(st.comm_pids):
        j = np.minimum(np.searchsorted(st.comm_pids, pid), len(st.comm_pids) - 1)
        hit = st.comm_pids[j] == pid
        if comm_codes is None:
            comm_codes = np.full(n, -1, dtype=np.int32)
        hit &= comm_codes < 0
        comm_codes[hit] = len(comm_names) + j[hit]
        comm_names += st.comm_names
    if len(pidx):  # the newest name of each pid named here, for the next chunks
        p = pid[pidx][::-1]
        up, first = np.unique(p, return_index=True)
        newest = [msg_names[c] for c in ncodes[::-1][first].tolist()]
        keep = ~np.isin(st.comm_pids, up)
        allp = np.concatenate([st.comm_pids[keep], up.astype(np.int64)])
        alln = [x for x, k in zip(st.comm_names, keep.tolist(), strict=True) if k] + newest
        o = np.argsort(allp, kind="stable")
        st.comm_pids = allp[o]
        st.comm_names = [alln[i] for i in o.tolist()]
    sidx, spoff, _ = pick(sp_notify & (sp_code == 1) & (sp_plen >= 8))
    if len(sidx):
        sbig = big[sidx] if big is not None else np.zeros(len(sidx), dtype=bool)
        secs = np.where(sbig, be(">u4", spoff), be("<u4", spoff))
        nss = np.where(sbig, be(">u4", spoff + 4), be("<u4", spoff + 4))
        base = len(msg_names)
        labels = [f"{s}.{ns:09d}" for s, ns in zip(secs.tolist(), nss.tolist(), strict=True)]
        msg_names += labels
        if msg_codes is None:
            msg_codes = np.full(n, -1, dtype=np.int32)
        msg_codes[sidx] = base + np.arange(len(labels))
        if st.wallclock is None:
            st.wallclock = (int(time[sidx[0]]), int(secs[0]) * 1_000_000_000 + int(nss[0]))
    midx, mpoff, mplen = pick(sp_notify & (sp_code == 2) & (sp_plen > 0))
    if len(midx):
        texts = _pdu_strings(buf, mpoff, mplen)
        base = len(msg_names)
        msg_names += texts
        if msg_codes is None:
            msg_codes = np.full(n, -1, dtype=np.int32)
        msg_codes[midx] = base + np.arange(len(texts))
    split = unplug = None
    gidx, gpoff, _ = pick(~sp_notify & np.isin(sp_code, (*_ACT_UNPLUG, _ACT_SPLIT)) & (sp_plen >= 8))
    if len(gidx):
        vals = be(">u8", gpoff)
        is_split = code[gidx] == _ACT_SPLIT
        split = _nullable_int(n, gidx[is_split], vals[is_split])
        unplug = _nullable_int(n, gidx[~is_split], vals[~is_split])
    del code

    def nul() -> pd.arrays.IntegerArray:
        return pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))

    def strings(codes: np.ndarray | None, names: list[str]) -> pd.arrays.ArrowStringArray:
        if codes is None:
            return _null_strings(n)
        return _string_column(codes, names)

    cols = {
        "time_ns": time,
        "device": _categorical(d_codes, _dev_str(st.devs)),
        "cpu": out.pop("cpu"),
        "seq": out.pop("seq"),
        "pid": pid,
        "action": _categorical(a_codes, a_labels),
        "rwbs": rwbs_col,
        "sector": out.pop("sector"),
        "nsect": out.pop("nsect"),
        "bytes": nbytes,
        "error": out.pop("error"),
        "comm": strings(comm_codes, comm_names),
        "category": cat_bits,
        "op": op_col,
        "preflush": out.pop("preflush"),
        "fua": out.pop("fua"),
        "sync": out.pop("sync"),
        "meta": out.pop("meta"),
        "remap_device": strings(remap_dev_codes, remap_names),
        "remap_sector": remap_sector if remap_sector is not None else nul(),
        "split_sector": split if split is not None else nul(),
        "unplug_depth": unplug if unplug is not None else nul(),
        "message": strings(msg_codes, msg_names),
        "file": _categorical(fcodes, st.paths),
        "pos": out.pop("pos"),
    }
    return pd.DataFrame(cols, copy=False), notify



def _null_strings(n: int) -> pd.arrays.ArrowStringArray:
    """An all-null string column; its buffers are zero pages that are not touched (no memory until written)."""
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.zeros(n + 1, dtype=np.int64)), pa.py_buffer(b""),
                                           pa.py_buffer(np.zeros((n + 7) // 8, dtype=np.uint8)), null_count=n)
    return pd.array(arr, dtype="string")


def _comm_codes(pid: np.ndarray, pidx: np.ndarray, ncodes: np.ndarray) -> np.ndarray:
    """For every row, the code of the newest process name recorded for its pid at or before it (-1: none).

    ``pidx`` are the rows of the notify_process records (ascending) and ``ncodes`` their name codes.
    """
    n = len(pid)
    out = np.full(n, -1, dtype=np.int32)
    named = np.unique(pid[pidx])
    j = np.searchsorted(named, pid)
    rows = np.flatnonzero(named[np.minimum(j, len(named) - 1)] == pid)  # rows whose pid has a name somewhere
    is_pr = np.zeros(n, dtype=bool)
    is_pr[pidx] = True
    code_at = np.full(n, -1, dtype=np.int32)
    code_at[pidx] = ncodes
    k = j[rows].astype(np.int16 if len(named) < 1 << 15 else np.int32)  # the pid's rank: a radix sort
    order = np.argsort(k, kind="stable")
    byp = rows[order]  # by pid, then row
    k = k[order]
    src = np.where(is_pr[byp], np.arange(len(byp)), -1)
    last = np.maximum.accumulate(src)
    okp = last >= 0
    okp[okp] = k[last[okp]] == k[okp]
    out[byp[okp]] = code_at[byp[last[okp]]]
    return out


_ERRNO = errno_signed(np.arange(1 << 16))




def _time_order(time: np.ndarray, device, seq, sorted_out: list | None = None) -> np.ndarray | None:
    """Stable order by (time, device, sequence), or None when the rows already are in that order.

    A stable sort of the times (fast on per-CPU files, which are sorted runs), then equal times reordered by
    device and sequence. ``device`` and ``seq`` give those fields for an array of rows (only rows with equal
    times are looked up). ``sorted_out``, when given, receives ``time`` in that order (equal times only trade
    places, so the sorted times are those of the stable sort).
    """
    if np.greater(time[1:], time[:-1]).all():
        return None
    if np.greater_equal(time[1:], time[:-1]).all():
        order = None
        ts = time
    else:
        order = np.argsort(time, kind="stable")
        ts = time[order]
    tie = np.flatnonzero(ts[1:] == ts[:-1])
    if sorted_out is not None:
        sorted_out.append(ts)
    del ts
    if len(tie):
        rows = np.unique(np.concatenate([tie, tie + 1]))
        sub = rows if order is None else order[rows]
        srt = sub[np.lexsort((seq(sub), device(sub), time[sub]))]
        if order is None:
            if (srt == sub).all():
                return None
            order = np.arange(len(time), dtype=np.int64)
        order[rows] = srt
    if order is None or np.greater(order[1:], order[:-1]).all():
        return None
    return order


def _lost_events(df: pd.DataFrame, notify: np.ndarray) -> dict:
    """Sequence gaps per (device, cpu) stream, for streams that carry sequence numbers (not the ftrace tracer)."""
    seq = df["seq"].to_numpy()
    keep = ~notify & (seq != 0)
    if not keep.any():
        return {}
    dev = df["device"].cat.codes.to_numpy()[keep].astype(np.int64)
    cpu = df["cpu"].to_numpy()[keep].astype(np.int64)
    s = seq[keep]
    cu, cpu_codes = np.unique(cpu, return_inverse=True)
    sid = dev * len(cu) + cpu_codes
    o = np.argsort(sid, kind="stable")
    sid_o = sid[o]
    s = s[o]
    starts = np.flatnonzero(np.concatenate([[True], sid_o[1:] != sid_o[:-1]]))
    ends = np.concatenate([starts[1:], [len(s)]])
    same = sid_o[1:] == sid_o[:-1]
    if (~same | (s[1:] >= s[:-1])).all():  # each stream's sequence numbers already ascend in time order
        gap = np.where(same, np.maximum(s[1:] - s[:-1] - 1, 0), 0)
    else:
        o2 = np.lexsort((s, sid_o))
        s = s[o2]
        gap = np.where(same, np.maximum(s[1:] - s[:-1] - 1, 0), 0)
    cats = df["device"].cat.categories
    out: dict[tuple[str, int], int] = {}
    csum = np.concatenate([[0], np.cumsum(gap)])
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        out[(str(cats[sid_o[a] // len(cu)]), int(cu[sid_o[a] % len(cu)]))] = int(csum[b - 1] - csum[a])
    return out
