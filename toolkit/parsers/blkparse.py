"""blkparse default text output -> BLOCK_EVENTS (docs/formats.md section 2).

Two paths read the same lines and must agree (tests check it line for line on the real traces):

* the **grammar** (:data:`GRAMMAR`, pyparsing) is the readable definition of every line shape blkparse prints:
  event lines of every action, ``-t`` elapsed times, pc-style lines, 1.2.0 and 1.3 message lines, and the
  non-event lines (``Input file ... added``, the summary blocks, ``Trace started at``, blank lines);
* the **fast path** reads the common event lines of a whole chunk at once with numpy: it finds the whitespace
  separated tokens of every line from byte masks, checks each line's shape by its action and tokens, and decodes
  the numbers with digit matrices. Every line it cannot vouch for goes to the grammar.

A file is read in blocks of whole lines (``chunk_bytes``); with ``workers`` > 1 (default 2 on a machine with 2 or
more CPUs) the blocks of a file of more than one block are parsed by that many threads, numpy and pyarrow releasing
the GIL. Every block writes its rows straight into the table's columns, from the row of its first line on (a
block has at most one row per line); the gaps that non-event lines leave are closed at the end. The result does not
depend on the number of threads or the block size.

Times are ``seconds * 1e9 + ns`` as printed, i.e. ns since blkparse's genesis (the first event of the trace):
``meta['clock'] == 'relative'``. Sectors are 512-byte units; ``bytes`` is ``nsect * 512`` (pc lines: the
printed byte count). ``sector`` is -1 where blkparse printed none (data-less Q/G/D lines, P, U). ``[(null)]``
(no process name known) gives a null comm. ``pos`` is the 1-based line number.
"""

from __future__ import annotations

import functools
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyparsing as pp

from toolkit import fileio
from toolkit.events import (
    BLOCK_EVENTS,
    REJECTS,
    TC,
    category_from_rwbs,
    errno_signed,
    op_from_category,
)
from toolkit.parsers import ParseResult, reject_rows

# ---------------------------------------------------------------------------------------------------------------
# actions

ACTIONS = ["Q", "M", "F", "G", "S", "R", "D", "C", "P", "U", "UT", "I", "X", "B", "A", "m"]
_ACT_INDEX = {a: i for i, a in enumerate(ACTIONS)}
#: category bits that come with each action constant (blktrace_api.h), added to the RWBS bits of text lines
ACTION_CATEGORY = {"Q": TC["queue"], "M": TC["queue"], "F": TC["queue"], "G": TC["queue"], "S": TC["queue"],
                   "R": TC["requeue"], "D": TC["issue"], "C": TC["complete"], "P": TC["queue"], "U": TC["queue"],
                   "UT": TC["queue"], "I": TC["queue"], "X": 0, "B": 0, "A": TC["queue"], "m": TC["notify"]}
_FLAG = {"preflush": TC["flush"], "fua": TC["fua"], "sync": TC["sync"], "meta": TC["meta"]}
_RWBS_RE = re.compile(r"F?[DWRN]F?A?S?M?\Z")

# ---------------------------------------------------------------------------------------------------------------
# the grammar (reference definition of the text format)


def _build_grammar() -> tuple[pp.ParserElement, pp.ParserElement]:
    old = pp.ParserElement.DEFAULT_WHITE_CHARS
    pp.ParserElement.set_default_whitespace_chars(" \t")  # never let a token run into the next line
    try:
        uint = pp.Word(pp.nums).set_parse_action(lambda t: int(t[0]))
        device = pp.Regex(r"\d+,\d+")
        time = pp.Regex(r"(?P<sec>\d+)\.(?P<ns>\d{9})(?!\d)")
        header = (device("device") + uint("cpu") + uint("seq") + time("time") + uint("pid"))
        rwbs = pp.Regex(r"F?[DWRN]F?A?S?M?(?=[ \t]|$)")("rwbs")
        bracket = pp.Regex(r"\[(?P<name>.*)\]")
        err = pp.Regex(r"\[(?P<err>-?\d+)\]")
        elapsed = pp.Regex(r"\(\s*(?P<elapsed>\d+)\)")
        pdu = pp.Regex(r"\((?P<pdu>[0-9a-fA-F ]*)\)")
        extent = uint("sector") + pp.Suppress("+") + uint("nsect")

        def act(*names: str) -> pp.ParserElement:
            return pp.Regex("(?:" + "|".join(sorted(names, key=len, reverse=True)) + r")(?=[ \t])")("action")

        qid = act("Q", "I", "D", "B") + rwbs + (
            extent + pp.Optional(elapsed) + bracket
            | elapsed + bracket
            | uint("pc_bytes") + pp.Optional(pdu) + bracket  # pc: byte count
            | bracket)
        mgs = act("M", "F", "G", "S") + rwbs + (extent + bracket | bracket)
        cr = act("C", "R") + rwbs + (
            extent + pp.Optional(elapsed) + err
            | uint("sector") + pp.Optional(elapsed) + err
            | pp.Optional(pdu) + err)  # pc
        plug = act("P") + rwbs + bracket
        unplug = act("UT", "U") + rwbs + bracket + uint("depth")
        split = act("X") + rwbs + uint("sector") + pp.Suppress("/") + uint("split") + bracket
        remap = (act("A") + rwbs + extent + pp.Suppress("<-") + pp.Suppress("(") + device("remap_device")
                 + pp.Suppress(")") + uint("remap_sector"))
        message = (pp.Optional(pp.Regex(r"[0-9a-f]+,[0-9a-f]+")("cgroup")) + pp.Literal("m")("action")
                   + pp.Literal("N")("rwbs") + pp.Regex(r" ?(?P<message>.*)", re.S).leave_whitespace())
        event = header + (qid | mgs | cr | plug | unplug | split | remap | message) + pp.StringEnd()

        events_line = pp.Regex(r"Events \((?P<dev>.*)\): (?P<entries>[\d,.']+[KMG]?) entries")
        other = (pp.Regex(r"Input file .* added")
                 | pp.Regex(r"(?:CPU\d+|Total) \((?P<block>.*)\):")
                 | pp.Regex(r"(?:PC )?(?:Reads?|Writes?|IO|Timer|Allocation|Dispatch|Completion) [\w ]*:.*")
                 | pp.Regex(r"Throughput \(R/W\): .*")
                 | events_line
                 | pp.Regex(r"Skips: .*")
                 | pp.Regex(r"Trace started at .*")
                 | pp.Regex(r"discarded traces containing low-level device driver specific data.*")
                 | pp.Regex(r"\S.* \(\d+(?:, \.\.\.)?\):")  # per-process block title (-s)
                 ) + pp.StringEnd()
    finally:
        pp.ParserElement.set_default_whitespace_chars(old)
    return event, other


GRAMMAR, SUMMARY_GRAMMAR = _build_grammar()


def parse_line(line: str) -> dict | None:
    """One event line through the grammar -> a dict of fields, or None when it is not an event line."""
    try:
        r = GRAMMAR.parse_string(line.lstrip(" \t").rstrip("\r\n"), parse_all=True)
    except pp.ParseException:
        return None
    d = r.as_dict()
    out = {"device": d["device"], "cpu": d["cpu"], "seq": d["seq"], "pid": d["pid"], "action": d["action"],
           "rwbs": d["rwbs"], "time_ns": int(d["sec"]) * 1_000_000_000 + int(d["ns"])}
    for k in ("sector", "nsect", "depth", "split", "remap_device", "remap_sector", "message", "pc_bytes"):
        if k in d:
            out[k] = d[k]
    if "err" in d:
        out["error"] = int(d["err"])
    if "name" in d:
        out["comm"] = d["name"]
    return out if _fits(out) else None


def _fits(d: dict) -> bool:
    """Numbers a real line can hold: int64 values, devices major < 2**12 and minor < 2**20 (dev_t)."""
    for k in ("device", "remap_device"):
        if k in d:
            a, b = d[k].split(",")
            if int(a) >= 1 << 12 or int(b) >= 1 << 20:
                return False
    return all(-(1 << 63) <= v < 1 << 63 for v in d.values() if isinstance(v, int))


# ---------------------------------------------------------------------------------------------------------------
# the fast path

_WS = np.zeros(256, dtype=bool)
_WS[[9, 10, 13, 32]] = True


def _num(a: np.ndarray, s: np.ndarray, e: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned decimals in byte ranges [s, e) of ``a``: (values int64, ok) -- ok False for non-digits/bad length."""
    m = len(s)
    if m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    ln = e - s
    ok = (ln >= 1) & (ln <= width)
    pos = e[:, None] - width + np.arange(width)
    valid = pos >= s[:, None]
    ch = a[np.clip(pos, 0, len(a) - 1)].astype(np.int16) - 48
    ch[~valid] = 0
    ok &= ((ch >= 0) & (ch <= 9)).all(axis=1)
    val = ch.astype(np.int64) @ (10 ** np.arange(width - 1, -1, -1, dtype=np.int64))
    return val, ok


def _pair(a: np.ndarray, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """'maj,min' in byte ranges [s, e): (major, minor, ok)."""
    w = 16
    pos = s[:, None] + np.arange(w)
    inside = pos < e[:, None]
    comma = (a[np.clip(pos, 0, len(a) - 1)] == 44) & inside
    has = comma.any(axis=1)
    c = s + comma.argmax(axis=1)
    maj, ok1 = _num(a, s, c, 7)
    mnr, ok2 = _num(a, c + 1, e, 7)
    return maj, mnr, has & ok1 & ok2 & (maj < 1 << 12) & (mnr < 1 << 20)  # dev_t; other lines: grammar


def _pack(a: np.ndarray, s: np.ndarray, e: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of at most ``width`` (<= 7) bytes packed into int64 keys (little-endian bytes); (keys, ok)."""
    ln = e - s
    ok = (ln >= 1) & (ln <= width)
    key = np.zeros(len(s), dtype=np.int64)
    for k in range(width):
        on = k < ln
        key |= np.where(on, a[np.clip(s + k, 0, len(a) - 1)].astype(np.int64), 0) << (8 * k)
    return key, ok


def _unpack(key: int) -> str:
    return int(key).to_bytes(8, "little").rstrip(b"\0").decode("latin-1")


_ACT_KEYS = {int.from_bytes(a.encode(), "little"): i for i, a in enumerate(ACTIONS)}
_ACT_KEY_ARR = np.array(sorted(_ACT_KEYS), dtype=np.int64)
_ACT_KEY_IDX = np.array([_ACT_KEYS[k] for k in sorted(_ACT_KEYS)], dtype=np.int64)
_FS = np.array([_ACT_INDEX[x] for x in ("Q", "I", "D", "B", "M", "F", "G", "S")])


def _strings(a: np.ndarray, s: np.ndarray, e: np.ndarray, valid: np.ndarray) -> pa.StringArray:
    """Byte ranges [s, e) of ``a`` as an Arrow string array (null where not ``valid``), gathered without a loop."""
    ln = np.where(valid, e - s, 0)
    off = np.zeros(len(s) + 1, dtype=np.int64)
    np.cumsum(ln, out=off[1:])
    total = int(off[-1])
    idx = np.repeat(s - off[:-1], ln) + np.arange(total, dtype=np.int64)
    data = a[idx].tobytes()
    mask = pa.array(valid).buffers()[1] if not valid.all() else None
    if total >= 2**31:
        return pa.LargeStringArray.from_buffers(len(s), pa.py_buffer(off), pa.py_buffer(data), mask)
    return pa.StringArray.from_buffers(len(s), pa.py_buffer(off.astype(np.int32)), pa.py_buffer(data), mask,
                                       null_count=int((~valid).sum()))


def _fast(buf: bytes) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """Parse the common event lines of ``buf`` (whole lines, ending in a newline).

    Returns (columns of the parsed lines, with 'line' = 0-based line index in ``buf``; indices of the lines left
    for the grammar).
    """
    a = np.frombuffer(buf, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)
    nlines = len(nl)
    ls = np.empty(nlines, dtype=np.int64)
    if nlines:
        ls[0] = 0
        ls[1:] = nl[:-1] + 1
    ws = _WS[a]
    nw = ~ws
    ts = np.flatnonzero(nw[1:] & ws[:-1]) + 1
    if len(a) and nw[0]:
        ts = np.concatenate([[0], ts])
    te = np.flatnonzero(ws[1:] & nw[:-1]) + 1
    del ws, nw
    first = np.searchsorted(ts, ls)
    ntok = np.diff(np.append(first, len(ts)))
    lines = np.flatnonzero(ntok >= 8)
    ft = first[lines]
    nt = ntok[lines]

    def tok(k: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i = np.minimum(ft + k, len(ts) - 1)
        return ts[i], te[i]

    ok = np.ones(len(lines), dtype=bool)
    s0, e0 = tok(0)
    maj, mnr, o = _pair(a, s0, e0)
    ok &= o
    cpu, o = _num(a, *tok(1), 6)
    ok &= o
    seq, o = _num(a, *tok(2), 12)
    ok &= o
    s3, e3 = tok(3)
    ok &= (e3 - s3 >= 11) & (a[np.maximum(e3 - 10, 0)] == 46)
    sec, o = _num(a, s3, e3 - 10, 11)
    o &= sec < 9_000_000_000  # seconds * 1e9 must fit int64; larger ones: the grammar (which rejects them)
    ok &= o
    ns, o = _num(a, e3 - 9, e3, 9)
    ok &= o
    pid, o = _num(a, *tok(4), 11)
    ok &= o
    akey, o = _pack(a, *tok(5), 2)
    ok &= o
    ai = np.clip(np.searchsorted(_ACT_KEY_ARR, akey), 0, len(_ACT_KEY_ARR) - 1)
    ok &= _ACT_KEY_ARR[ai] == akey
    act = _ACT_KEY_IDX[ai]
    rkey, o = _pack(a, *tok(6), 6)
    ok &= o
    ru, rcodes = np.unique(rkey, return_inverse=True)
    rlabels = [_unpack(k) for k in ru]
    rvalid = np.array([bool(_RWBS_RE.match(x)) for x in rlabels], dtype=bool)
    ok &= rvalid[rcodes] if len(ru) else ok

    s7, e7 = tok(7)
    s8, e8 = tok(8)
    s9, e9 = tok(9)
    s10, e10 = tok(10)
    sl, el = tok(nt - 1)  # last token
    sp, ep = tok(nt - 2)  # second to last
    c7, c8, c10 = a[s7], a[s8], a[np.minimum(s10, len(a) - 1)]
    plus8 = (e8 - s8 == 1) & (c8 == 43)
    last_br = a[el - 1] == 93
    isfs = np.isin(act, _FS)
    iscr = (act == _ACT_INDEX["C"]) | (act == _ACT_INDEX["R"])
    isu = (act == _ACT_INDEX["U"]) | (act == _ACT_INDEX["UT"])
    isp = act == _ACT_INDEX["P"]
    isx = act == _ACT_INDEX["X"]
    isa = act == _ACT_INDEX["A"]
    # shapes
    ext_comm = (isfs | isx) & (nt >= 11) & (c10 == 91) & last_br & (plus8 | isx & (e8 - s8 == 1) & (c8 == 47))
    only_comm = (isfs | isp) & (c7 == 91) & last_br
    u_shape = isu & (nt >= 9) & (c7 == 91) & (a[ep - 1] == 93)
    cr_ext = iscr & (nt == 11) & plus8 & (c10 == 91) & last_br
    cr_sec = iscr & (nt == 9) & (c8 == 91) & last_br
    a_shape = isa & (nt == 13) & plus8 & (e10 - s10 == 2) & (c10 == 60)
    ok &= ext_comm | only_comm | u_shape | cr_ext | cr_sec | a_shape

    has_ext = ext_comm | cr_ext | cr_sec | a_shape
    sector, o = _num(a, s7, e7, 19)
    ok &= o | ~has_ext
    sector = np.where(has_ext, sector, -1)
    has_n = (ext_comm & ~isx) | cr_ext | a_shape
    nsect, o = _num(a, s9, e9, 10)
    ok &= o | ~has_n
    nsect = np.where(has_n, nsect, 0)
    split, o = _num(a, s9, e9, 19)
    ok &= o | ~isx
    depth, o = _num(a, sl, el, 19)
    ok &= o | ~u_shape
    es = np.where(cr_ext, s10, s8) + 1
    ee = np.where(cr_ext, e10, e8) - 1
    err, o = _num(a, es, ee, 6)
    isc = cr_ext | cr_sec
    ok &= o | ~isc
    s11, e11 = tok(11)
    rmaj, rmin, o = _pair(a, s11 + 1, e11 - 1)
    ok &= (o & (a[s11] == 40) & (a[e11 - 1] == 41)) | ~a_shape
    rsec, o = _num(a, sl, el, 19)
    ok &= o | ~a_shape
    # comm byte ranges
    cs = np.where(ext_comm, s10, s7) + 1
    ce = np.where(u_shape, ep, el) - 1
    has_comm = ext_comm | only_comm | u_shape

    keep = ok
    sel = lines[keep]
    rest = np.setdiff1d(np.arange(nlines), sel, assume_unique=True)

    def k(x: np.ndarray) -> np.ndarray:
        return x[keep]

    rw = rcodes[keep] if len(ru) else np.zeros(0, dtype=np.int64)
    act_k = k(act)
    is_pc_null = k(has_comm)
    comm = _strings(a, k(cs), k(ce), is_pc_null)
    null_name = pc.fill_null(pc.equal(comm, "(null)"), False)
    comm = pc.if_else(null_name, pa.scalar(None, comm.type), comm)
    cols = {
        "line": sel,
        "time_ns": k(sec) * 1_000_000_000 + k(ns),
        "dev": (k(maj) << 20) | k(mnr),
        "cpu": k(cpu), "seq": k(seq), "pid": k(pid), "act": act_k,
        "rwbs": (rw, rlabels),
        "sector": k(sector), "nsect": k(nsect), "bytes": k(nsect) * 512,
        "error": np.where(k(isc), k(err), 0),
        "comm": comm,
        "remap_device": (np.where(k(a_shape), (k(rmaj) << 20) | k(rmin), -1)),
        "remap_sector": (k(rsec), k(a_shape)),
        "split_sector": (k(split), k(isx)),
        "unplug_depth": (k(depth), k(u_shape)),
        "message": pa.nulls(len(sel), pa.string()),
    }
    return cols, rest, ls, nl


# ---------------------------------------------------------------------------------------------------------------
# the fixed-width path: lines in blkparse's default layout whose columns did not overflow their widths
#
# "%3d,%-3d %2d %8d %5d.%09lu %5u %2s %3s " puts every header field at a fixed byte column (maj 0-2, ',' 3,
# min 4-6, cpu 8-9, seq 11-18, sec 20-24, '.' 25, ns 26-34, pid 36-41, act 42-43, rwbs 45-47, tail from 49).
# A line is taken here only when every separator is where the layout puts it, every number is right-aligned
# digits (the minor left-aligned), the line is printable ASCII and the tail is one of the common shapes:
# "S + N [name]", "[name]" (Q I D B M F G S P), "S + N [err]", "S [err]" (C R), "[name] depth" (U UT). Every
# other line goes to the token path (``_fast``) and then to the grammar, exactly as before.

_W = 112  # bytes of a line looked at (longer lines go to the token path)
_GROUP = 16384  # lines parsed at a time (a few MB of arrays)
_HDR = 49
_SEP = {3: 44, 7: 32, 10: 32, 19: 32, 25: 46, 35: 32, 41: 32, 44: 32, 48: 32}
_SEP_SPACES = sum(1 << c for c, v in _SEP.items() if v == 32)
_RIGHT = [(0, 3), (8, 10), (11, 19), (20, 25), (36, 41)]
_FIXED_RWBS = sorted(x for x in (f1 + o + f2 + a + s + m for f1 in ("", "F") for o in "DWRN" for f2 in ("", "F")
                                 for a in ("", "A") for s in ("", "S") for m in ("", "M")) if len(x) <= 3)
_RWBS_KEYS = np.array([int.from_bytes(x.rjust(3).encode(), "big") for x in _FIXED_RWBS], dtype=np.int64)
_RWBS_SORT = np.argsort(_RWBS_KEYS)
_RWBS_KEYS_S = _RWBS_KEYS[_RWBS_SORT]
_ACT_LUT = np.full(1 << 16, -1, dtype=np.int8)
for _a in ("Q", "M", "F", "G", "S", "R", "D", "C", "P", "U", "UT", "I", "B"):
    _ACT_LUT[int.from_bytes(_a.rjust(2).encode(), "big")] = _ACT_INDEX[_a]
_KEEP_TOP = np.array([0] + [(~((1 << (8 * (8 - k))) - 1)) & 0xFFFFFFFFFFFFFFFF for k in range(1, 9)],
                     dtype=np.uint64)
_ONES = 0x0101010101010101
_NULL_NAME = np.uint64(int.from_bytes(b"(null)", "little"))


def _swar8(x: np.ndarray) -> np.ndarray:
    """Eight ASCII digit bytes per u64 (first digit in the lowest byte; spaces and zero bytes count 0) -> value."""
    x = x & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = (x * np.uint64(10) + (x >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x * np.uint64(100) + (x >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x * np.uint64(10000) + (x >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return x.astype(np.int64)


def _u64_at(flat: np.ndarray, at: np.ndarray) -> np.ndarray:
    return np.ndarray((len(flat) - 7,), dtype="<u8", buffer=flat, strides=(1,))[at]


def _digits(flat: np.ndarray, s: np.ndarray, e: np.ndarray, maxw: int) -> tuple[np.ndarray, np.ndarray]:
    """Decimal numbers in byte ranges [s, e) of ``flat`` (at most 16 digits, ``e >= 16``): (values, ok)."""
    w = e - s
    ok = (w >= 1) & (w <= maxw)
    wl = np.minimum(np.maximum(w, 0), 8)  # (np.clip costs more per call than the work on a group)
    wh = np.minimum(np.maximum(w - 8, 0), 8)
    keep_l = _KEEP_TOP[wl]
    keep_h = _KEEP_TOP[wh]
    lo = _u64_at(flat, e - 8) & keep_l
    ok &= _all_digits(lo, keep_l)
    val = _swar8(lo)
    long = np.flatnonzero(wh > 0)  # more than 8 digits: the 8 bytes before too
    if len(long):
        hi = _u64_at(flat, e[long] - 16) & keep_h[long]
        ok[long] &= _all_digits(hi, keep_h[long])
        val[long] += _swar8(hi) * 100_000_000
    return val, ok


def _all_digits(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Every byte of ``x`` that ``keep`` keeps is an ASCII digit."""
    want = np.uint64(0x30 * _ONES) & keep
    return (((x & np.uint64(0xF0F0F0F0F0F0F0F0)) == want)
            & (((x + np.uint64(0x06 * _ONES)) & np.uint64(0xF0F0F0F0F0F0F0F0) & keep) == want))


def _digits_if(flat: np.ndarray, s: np.ndarray, e: np.ndarray, maxw: int, cond: np.ndarray,
               ok: np.ndarray) -> np.ndarray:
    """:func:`_digits` on the rows where ``cond`` holds (0 elsewhere); a bad number there clears ``ok``."""
    rows = np.flatnonzero(cond)
    val = np.zeros(len(s), dtype=np.int64)
    if len(rows) == len(s):
        v, o = _digits(flat, s, e, maxw)
        ok &= o
        return v
    if len(rows):
        val[rows], o = _digits(flat, s[rows], e[rows], maxw)
        ok[rows] &= o
    return val


def _ctz(x: np.ndarray) -> np.ndarray:
    """Index of the lowest set bit of each u64 (64 for 0), int64."""
    low = x & (~x + np.uint64(1))
    return np.bitwise_count(low - np.uint64(1)).astype(np.int64)


def _msb(x: np.ndarray) -> np.ndarray:
    """Index of the highest set bit of each u64 (-1 for 0), int64 (each 32-bit half converts exactly to float)."""
    hi = (x >> np.uint64(32)).astype(np.float64)
    lo = (x & np.uint64(0xFFFFFFFF)).astype(np.float64)
    return np.where(hi > 0, np.frexp(hi)[1] + 31, np.frexp(lo)[1] - 1).astype(np.int64)


def _fixed(a: np.ndarray, ls: np.ndarray, le: np.ndarray) -> tuple[dict | None, np.ndarray]:
    """Parse the fixed-layout lines among lines [ls, le) of ``a`` (which has ``_W`` bytes of padding after).

    Returns (columns of the parsed lines, with 'line' = 0-based line index; bool mask of the lines parsed).
    """
    L = le - ls
    done = np.zeros(len(ls), dtype=bool)
    fits = (L >= _HDR + 3) & (L <= _W)
    body = a[:len(a) - _W]
    if len(body) and (body.max() >= 128 or np.count_nonzero(body < 32) != len(le)):
        odd = np.flatnonzero(((body < 32) & (body != 10)) | (body >= 128))  # tabs, CRs, non-ASCII: token path
        fits[np.searchsorted(le, odd)] = False
    idx = np.flatnonzero(fits)
    del fits
    if len(idx) == 0:
        return None, done
    m = len(idx)
    rows2d = np.ndarray((len(a) - _W + 1, _W), dtype=np.uint8, buffer=a, strides=(1, 1))
    M = rows2d[ls[idx]]
    Lr = L[idx]
    ok = (M[:, 3] == 44) & (M[:, 25] == 46)  # ',' and '.'; the other separators are spaces (below)
    # byte classes as bits, column c at bit c: the spaces of all 112 columns (14 bytes a row), the header's digits
    spk = np.packbits(M == 32, axis=1, bitorder="little")
    sbits = np.ndarray((m,), dtype="<u8", buffer=spk, strides=(spk.shape[1],)).astype(np.uint64)
    tail_sp = np.ndarray((m,), dtype="<u8", buffer=spk, offset=6, strides=(spk.shape[1],)) >> np.uint64(1)
    del spk
    dpk = np.zeros((m, 8), dtype=np.uint8)
    dpk[:, :7] = np.packbits((M[:, :56] - np.uint8(48)) < 10, axis=1, bitorder="little")
    dbits = dpk.view("<u8").ravel()
    ok &= (sbits & np.uint64(_SEP_SPACES)) == np.uint64(_SEP_SPACES)
    for s, e in _RIGHT + [(4, 7)]:
        f = np.uint64(((1 << (e - s)) - 1) << s)
        d = dbits & f
        ok &= (d | (sbits & f)) == f
        y = d >> np.uint64(s)
        if s == 4:  # the minor is left-aligned: digits first (low bits), then spaces
            ok &= (y != 0) & ((y & (y + np.uint64(1))) == 0)
        else:  # spaces first, then digits up to the field's last column
            z = ~y & np.uint64((1 << (e - s)) - 1)
            ok &= (y != 0) & ((z & (z + np.uint64(1))) == 0)
    f = np.uint64(((1 << 9) - 1) << 26)  # the 9 digits of the ns
    ok &= (dbits & f) == f
    del dbits, sbits, dpk
    act = _ACT_LUT[(M[:, 42].astype(np.int64) << 8) | M[:, 43]]
    ok &= act >= 0
    rk = (M[:, 45].astype(np.int64) << 16) | (M[:, 46].astype(np.int64) << 8) | M[:, 47]
    ri = np.minimum(np.searchsorted(_RWBS_KEYS_S, rk), len(_RWBS_KEYS_S) - 1)
    ok &= _RWBS_KEYS_S[ri] == rk
    rcode = _RWBS_SORT[ri]
    # tail shapes, from the positions of the spaces after column 49
    q = Lr - _HDR
    lsr = ls[idx]
    ler = le[idx]
    last = a[ler - 1]
    t0 = M[:, _HDR]
    isfs = np.isin(act, _FS)
    isp = act == _ACT_INDEX["P"]
    iscr = (act == _ACT_INDEX["C"]) | (act == _ACT_INDEX["R"])
    isu = (act == _ACT_INDEX["U"]) | (act == _ACT_INDEX["UT"])
    # the spaces of each row's tail (columns 49..111, the line's own bytes only), tail column j at bit j
    bits = tail_sp & ((np.uint64(1) << q.astype(np.uint64)) - np.uint64(1))
    del tail_sp
    b2 = bits & (bits - np.uint64(1))  # without the first
    b3 = b2 & (b2 - np.uint64(1))
    p1 = np.minimum(_ctz(bits), q)  # first space in the tail (q: none)
    p2 = np.minimum(_ctz(b3), q)  # third space
    pl = _msb(bits)  # last space of the line (-1: none in the tail)
    plus_gap = _ctz(b2) - p1 == 2  # the second space two bytes after the first
    del b2, b3, bits
    flat = M.reshape(-1)
    base = np.arange(_HDR, m * _W, _W, dtype=np.int64)  # flat position of each row's tail
    t_at = lambda k: flat[base + np.minimum(np.maximum(k, 0), _W - _HDR - 1)]  # noqa: E731
    digit0 = (t0 >= 48) & (t0 <= 57)
    br0 = t0 == 91
    has1 = p1 < q
    # "S + N [x]"
    ext = digit0 & has1 & (t_at(p1 + 1) == 43) & plus_gap & (p2 < q) & (p2 > p1 + 3)
    ext &= (t_at(p2 + 1) == 91) & (last == 93)
    # "S [err]"
    sec_err = digit0 & has1 & (t_at(p1 + 1) == 91) & (last == 93) & ~ext
    # "[x] depth": the last space, a ']' before it
    u_ok = br0 & has1 & (pl >= 2) & (pl < q) & (t_at(pl - 1) == 93)
    only = br0 & (last == 93)
    shape_fs_ext = isfs & ext
    shape_comm = (isfs | isp) & only
    shape_cr_ext = iscr & ext
    shape_cr_sec = iscr & sec_err
    shape_u = isu & u_ok
    ok &= shape_fs_ext | shape_comm | shape_cr_ext | shape_cr_sec | shape_u
    # numbers of the tail
    te = base + q  # flat end of each line
    has_ext = shape_fs_ext | shape_cr_ext | shape_cr_sec
    sector = _digits_if(flat, base, base + p1, 16, has_ext, ok)
    has_n = shape_fs_ext | shape_cr_ext
    nsect = _digits_if(flat, base + p1 + 3, base + p2, 10, has_n, ok)
    es = np.where(shape_cr_ext, base + p2 + 2, base + p1 + 2)
    iserr = shape_cr_ext | shape_cr_sec
    err = _digits_if(flat, es, te - 1, 5, iserr, ok)
    depth = _digits_if(flat, base + pl + 1, te, 16, shape_u, ok)
    # the header numbers
    maj = (M[:, 0] & 15).astype(np.int64) * 100 + (M[:, 1] & 15) * 10 + (M[:, 2] & 15)
    d5 = (M[:, 5] >= 48) & (M[:, 5] <= 57)
    d6 = (M[:, 6] >= 48) & (M[:, 6] <= 57)
    m4, m5, m6 = ((M[:, k] & 15).astype(np.int64) for k in (4, 5, 6))
    mnr = np.where(d5, np.where(d6, m4 * 100 + m5 * 10 + m6, m4 * 10 + m5), m4)
    cpu = (M[:, 8] & 15).astype(np.int32) * 10 + (M[:, 9] & 15)
    def col64(c: int) -> np.ndarray:
        return np.ndarray((m,), dtype="<u8", buffer=M, offset=c, strides=(_W,))

    seq = _swar8(col64(11))
    sec = _swar8(col64(17) & np.uint64(_KEEP_TOP[5]))
    ns = (M[:, 26] & 15).astype(np.int64) * 100_000_000 + _swar8(col64(27))
    pid = _swar8(col64(33) & np.uint64(_KEEP_TOP[5]))

    keep = np.flatnonzero(ok)
    done[idx[keep]] = True
    if len(keep) == 0:
        return None, done

    def k(x: np.ndarray) -> np.ndarray:
        return x[keep]

    sel = idx[keep]
    lsel = lsr[keep]
    # name: "[x]" lines from column 50; "S + N [x]" after p2; "[x] depth" up to the ']' before the last space
    cs = lsel + np.where(k(shape_fs_ext), _HDR + k(p2) + 2, _HDR + 1)
    ce = np.where(k(shape_u), lsel + _HDR + k(pl) - 1, le[sel] - 1)
    has_comm = k(shape_fs_ext | shape_comm | shape_u)
    has_comm &= (ce - cs != 6) | (_u64_at(a, cs) & np.uint64((1 << 48) - 1) != _NULL_NAME)
    comm = _strings(a, cs, ce, has_comm)  # "(null)": no name
    n = len(keep)
    nsect_k = k(nsect)
    cols = {
        "line": sel,
        "time_ns": k(sec) * 1_000_000_000 + k(ns),
        "dev": ((k(maj) << 20) | k(mnr)).astype(np.int32),  # major <= 999 in this layout
        "cpu": k(cpu), "seq": k(seq), "pid": k(pid), "act": k(act),
        "rwbs": (k(rcode).astype(np.int8), _FIXED_RWBS),
        "sector": np.where(k(has_ext), k(sector), -1), "nsect": nsect_k, "bytes": nsect_k * 512,
        "error": k(err).astype(np.int32),
        "comm": comm,
        "remap_device": _Fill(-1, n),
        "remap_sector": _Fill(None, n),
        "split_sector": _Fill(None, n),
        "unplug_depth": (k(depth), k(shape_u)),
        "message": _Fill(None, n),
    }
    return cols, done


# ---------------------------------------------------------------------------------------------------------------
# the grammar path for the lines the fast path left


def _slow(texts: list[str], lines: np.ndarray, summary: dict) -> tuple[dict, list[tuple[int, str]]]:
    """Parse ``texts`` (lines at 0-based indices ``lines``) with the grammar; returns (columns, rejects)."""
    rows = []
    rejects: list[tuple[int, str]] = []
    for ln, text in zip(lines.tolist(), texts, strict=True):
        body = text.rstrip("\r\n")
        if not body.strip():
            continue
        d = parse_line(body)
        if d is not None:
            d["line"] = ln
            rows.append(d)
            continue
        try:
            r = SUMMARY_GRAMMAR.parse_string(body.strip(" \t"), parse_all=True)
        except pp.ParseException:
            rejects.append((ln, body))
            continue
        rd = r.as_dict()
        if "entries" in rd:
            summary.setdefault("events", {})[rd["dev"]] = _count(rd["entries"])
        if "block" in rd:
            summary.setdefault("blocks", []).append(body.strip().rstrip(":"))
    n = len(rows)

    def col(name: str, default: int = 0) -> np.ndarray:
        return np.array([r.get(name, default) for r in rows], dtype=np.int64)

    acts = [r["action"] for r in rows]
    rw = [r["rwbs"] for r in rows]
    rl = sorted(set(rw))
    rix = {x: i for i, x in enumerate(rl)}
    dev = np.array([_devkey(r["device"]) for r in rows], dtype=np.int64)
    nsect = col("nsect")
    has_bytes = np.array(["pc_bytes" in r for r in rows], dtype=bool)
    comm = [r.get("comm") for r in rows]
    comm = [None if c == "(null)" else c for c in comm]
    cols = {
        "line": np.array([r["line"] for r in rows], dtype=np.int64),
        "time_ns": col("time_ns"), "dev": dev, "cpu": col("cpu"), "seq": col("seq"), "pid": col("pid"),
        "act": np.array([_ACT_INDEX[x] for x in acts], dtype=np.int64),
        "rwbs": (np.array([rix[x] for x in rw], dtype=np.int64), rl),
        "sector": col("sector", -1), "nsect": nsect,
        "bytes": np.where(has_bytes, col("pc_bytes"), nsect * 512),
        "error": col("error"),
        "comm": pa.array(comm, pa.string()),
        "remap_device": np.array([_devkey(r["remap_device"]) if "remap_device" in r else -1 for r in rows],
                                 dtype=np.int64),
        "remap_sector": (col("remap_sector"), np.array(["remap_sector" in r for r in rows], dtype=bool)),
        "split_sector": (col("split"), np.array(["split" in r for r in rows], dtype=bool)),
        "unplug_depth": (col("depth"), np.array(["depth" in r for r in rows], dtype=bool)),
        "message": pa.array([r.get("message") for r in rows], pa.string()),
    }
    assert all(len(v) == n for v in cols.values() if isinstance(v, np.ndarray))
    return cols, rejects


def _devkey(s: str) -> int:
    a, b = s.split(",")
    return (int(a) << 20) | int(b)


def _count(s: str) -> int:
    s = s.replace(",", "").replace("'", "").replace(".", "")
    mult = {"K": 1000, "M": 1000**2, "G": 1000**3}.get(s[-1:], 1)
    return int(s.rstrip("KMG")) * mult


# ---------------------------------------------------------------------------------------------------------------
# chunks, files, the table


class _Fill:
    """A column of ``n`` equal values (-1, or null: None) that is not materialised unless it has to be."""

    __slots__ = ("value", "n")

    def __init__(self, value: int | None, n: int) -> None:
        self.value = value
        self.n = n

    def __len__(self) -> int:
        return self.n

    def like(self, other: object) -> object:
        """The same column materialised in the form of ``other`` (a part of the same key that is not a fill)."""
        if isinstance(other, tuple):
            return np.zeros(self.n, dtype=np.int64), np.zeros(self.n, dtype=bool)
        if isinstance(other, (pa.Array, pa.ChunkedArray)):
            return pa.nulls(self.n, pa.string())
        return np.full(self.n, self.value, dtype=np.int64)


def _merge_parts(parts: list[dict]) -> dict:
    """Concatenate column dicts (fast + grammar parts of a chunk, or chunks of a trace)."""
    parts = [p for p in parts if len(p["line"])]
    if not parts:
        return {}
    out: dict = {}
    for key in list(parts[0]):
        vals = [p.pop(key) for p in parts]  # each column's parts are released once joined (lower peak)
        fills = [isinstance(v, _Fill) for v in vals]
        if all(fills):
            out[key] = _Fill(vals[0].value, sum(v.n for v in vals))
            continue
        if any(fills):
            real = vals[fills.index(False)]
            vals = [v.like(real) if isinstance(v, _Fill) else v for v in vals]
        if key == "rwbs":
            labels = sorted({x for _, lab in vals for x in lab})
            ix = {x: i for i, x in enumerate(labels)}
            out[key] = (np.concatenate([np.array([ix[x] for x in lab], dtype=np.int16)[c] if len(lab)
                                        else c for c, lab in vals]), labels)
        elif isinstance(vals[0], tuple):
            out[key] = tuple(np.concatenate([v[i] for v in vals]) for i in range(len(vals[0])))
        elif isinstance(vals[0], (pa.Array, pa.ChunkedArray)):
            chunks = [ch for v in vals for ch in (v.chunks if isinstance(v, pa.ChunkedArray) else [v])]
            out[key] = pa.chunked_array([ch.cast(pa.large_string()) for ch in chunks], type=pa.large_string())
        else:
            out[key] = np.concatenate(vals) if len(vals) > 1 else vals[0]
        del vals
    return out




def _take(cols: dict, order: np.ndarray) -> dict:
    out = {}
    for key, v in cols.items():
        if key == "rwbs":
            out[key] = (v[0][order], v[1])
        elif isinstance(v, _Fill):
            out[key] = v
        elif isinstance(v, tuple):
            out[key] = tuple(x[order] for x in v)
        elif isinstance(v, (pa.Array, pa.ChunkedArray)):
            out[key] = v.take(pa.array(order))
        else:
            out[key] = v[order]
    return out


def _parse_chunk(a: np.ndarray, nb: int, line0: int, fast: bool,
                 summary: dict) -> tuple[dict, list[tuple[int, str]], int]:
    """One chunk of whole lines: the first ``nb`` bytes of ``a``, which has ``_W`` zero bytes after them; ``line0`` is
    the 1-based number of its first line. Returns (columns, rejects, lines in the chunk)."""
    mv = memoryview(a)
    if fast:
        le = np.flatnonzero(a[:nb] == 10)
        ls = np.empty(len(le), dtype=np.int64)
        ls[:1] = 0
        ls[1:] = le[:-1] + 1
        fixed, done = _fixed(a[:nb + _W], ls, le)
        nl = len(le)
        rest = np.flatnonzero(~done)
        cols = None
        texts = []
        if len(rest):
            sub = b"".join([mv[s:e + 1] for s, e in zip(ls[rest].tolist(), le[rest].tolist(), strict=True)])
            cols, rest2, ls2, le2 = _fast(sub)
            cols["line"] = rest[cols["line"]]
            texts = [sub[ls2[i]:le2[i]].decode("utf-8", "replace") for i in rest2.tolist()]
            rest = rest[rest2]
    else:
        fixed = cols = None
        texts = [x.decode("utf-8", "replace") for x in bytes(mv[:nb]).split(b"\n")[:-1]]
        rest = np.arange(len(texts))
        nl = len(texts)
    slow, rej = _slow(texts, rest, summary) if texts else (None, [])
    parts = [p for p in (fixed, cols, slow) if p and len(p["line"])]
    if len(parts) == 1:
        merged = parts[0]
    else:
        merged = _merge_parts(parts)
        if merged:
            merged = _take(merged, np.argsort(merged["line"], kind="stable"))
    if merged:
        merged["line"] = merged["line"] + line0
    return merged, [(ln + line0, t) for ln, t in rej], nl


def _looks_binary(head: bytes) -> bool:
    return b"\0" in head[:4096]


def _workers(workers: int | None) -> int:
    """Threads that parse chunks: ``workers``, or by default 2 when the machine has 2 or more CPUs."""
    if workers is None:
        return 2 if (os.cpu_count() or 1) >= 2 else 1
    return max(1, int(workers))


#: every RWBS string blkparse can print (F?[DWRN]F?A?S?M?), sorted: the codes of the table's rwbs column while reading
_ALL_RWBS = sorted(f1 + o + f2 + a + s + m for f1 in ("", "F") for o in "DWRN" for f2 in ("", "F") for a in ("", "A")
                   for s in ("", "S") for m in ("", "M"))
_RWBS_CODE = {x: i for i, x in enumerate(_ALL_RWBS)}


@functools.cache
def _op_tables() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Category bits of each (rwbs code, action) at ``rwbs * 16 + action``; the op code of each such pair and
    bytes != 0 at ``2 * (rwbs * 16 + action) + nonzero``, codes into the sorted list of op names (the third)."""
    rcat = category_from_rwbs(np.array(_ALL_RWBS, dtype=object))
    acat = np.array([ACTION_CATEGORY[x] for x in ACTIONS], dtype=np.int64)
    cat = (rcat[:, None] | acat[None, :]).ravel()
    acts = np.array(ACTIONS * len(_ALL_RWBS), dtype=object)
    op = op_from_category(np.repeat(cat, 2), np.tile([0, 512], len(cat)), np.repeat(acts, 2)).astype(str)
    names, codes = np.unique(op, return_inverse=True)
    return cat.astype(np.int32), codes.astype(np.int8), [str(x) for x in names]


#: the columns rows are written to while reading, and their dtypes (``*_ok``: the value is present; remap_device
#: is the device key + 1, 0 for none; comm_len: the name's length in bytes)
_OUT = {"pos": np.int64, "time_ns": np.int64, "dev": np.int64, "cpu": np.int32, "seq": np.int64, "pid": np.int64,
        "act": np.int8, "rwbs": np.int8, "sector": np.int64, "nsect": np.int64, "bytes": np.int64,
        "error": np.int32, "category": np.int32, "op": np.int8, "preflush": bool, "fua": bool, "sync": bool,
        "meta": bool, "remap_device": np.int64, "remap_sector": np.int64, "remap_sector_ok": bool,
        "split_sector": np.int64, "split_sector_ok": bool, "unplug_depth": np.int64, "unplug_depth_ok": bool,
        "comm_len": np.int64, "comm_ok": bool, "file": np.int32}


class _Out:
    """The table's columns, written in place by the threads that parse chunks.

    A chunk of lines ``[n, n + lines)`` of a file writes its rows from row ``base + n`` on (it has at most one row per
    line, so chunks never overlap); :meth:`finish` closes the gaps the non-event lines leave. The arrays are zeroed
    on allocation (pages the kernel hands out only when written), so absent values (fill columns) cost nothing.
    """

    def __init__(self, cap: int) -> None:
        self.cap = 0
        self.top = 0  # rows reserved so far (the next file starts here)
        self.a: dict[str, np.ndarray] = {}
        self.grow(cap)

    def grow(self, cap: int) -> None:
        """At least ``cap`` rows; only while no chunk is being written."""
        if cap <= self.cap:
            return
        cap = max(cap, 2 * self.cap)
        for key, dt in _OUT.items():
            new = np.zeros(cap, dtype=dt)
            if key in self.a:
                new[:self.top] = self.a[key][:self.top]
            self.a[key] = new
        self.cap = cap

    def put(self, slot: int, cols: dict, fi: int) -> tuple[int, int, bytes, pa.Array | None, np.ndarray | None]:
        """Write one chunk's merged columns at row ``slot``: (slot, rows, name bytes, message array or None, which
        rwbs / action / op codes occur: a (3, 128) bool array)."""
        if not cols:
            return slot, 0, b"", None, None
        n = len(cols["line"])
        assert slot + n <= self.cap, "more rows than the block's bytes can hold"
        sl = slice(slot, slot + n)
        a = self.a
        a["pos"][sl] = cols["line"]
        for key in ("time_ns", "dev", "cpu", "seq", "pid", "act", "sector", "nsect", "bytes"):
            a[key][sl] = cols[key]
        a["error"][sl] = errno_signed(cols["error"])
        codes, labels = cols["rwbs"]
        rw = np.array([_RWBS_CODE.get(x, 0) for x in labels], dtype=np.int8)[codes]  # kept rows: valid labels
        a["rwbs"][sl] = rw
        pair = rw.astype(np.int16) * len(ACTIONS) + cols["act"]
        cat_t, op_t, _ = _op_tables()
        cat = cat_t[pair]
        a["category"][sl] = cat
        op = op_t[2 * pair + (cols["bytes"] != 0)]
        a["op"][sl] = op
        used = np.stack([np.bincount(x.view(np.uint8) if x.dtype == np.int8 else x, minlength=128)[:128] > 0
                         for x in (rw, cols["act"], op)])
        for key in ("preflush", "fua", "sync", "meta"):
            a[key][sl] = (cat & _FLAG[key]) != 0
        rm = cols["remap_device"]
        if not isinstance(rm, _Fill):
            a["remap_device"][sl] = rm + 1
        for key in ("remap_sector", "split_sector", "unplug_depth"):
            v = cols[key]
            if not isinstance(v, _Fill) and v[1].any():
                a[key][sl] = np.where(v[1], v[0], 0)
                a[key + "_ok"][sl] = v[1]
        if fi:
            a["file"][sl] = fi
        data = _put_strings(cols["comm"], a["comm_len"][sl], a["comm_ok"][sl])
        msg = cols["message"]
        if isinstance(msg, _Fill) or msg.null_count == len(msg):
            msg = None
        elif isinstance(msg, pa.ChunkedArray):
            msg = msg.combine_chunks()
        return slot, n, data, msg, used

    def finish(self, recs: list[tuple[int, int, bytes, pa.Array | None, np.ndarray | None]]) -> dict:
        """Close the gaps between the chunks (in order) -> the columns for :func:`_frame` (views of the arrays)."""
        cum = 0
        for slot, n, *_ in recs:
            if n and slot != cum:
                for v in self.a.values():
                    v[cum:cum + n] = v[slot:slot + n]
            cum += n
        a = {k: v[:cum] for k, v in self.a.items()}
        self.a = {}
        used = [r[4] for r in recs if r[4] is not None]
        a["used"] = np.logical_or.reduce(used) if used else np.zeros((3, 128), dtype=bool)
        lens, ok = a.pop("comm_len"), a.pop("comm_ok")
        if ok.any():
            off = np.empty(cum + 1, dtype=np.int64)
            off[0] = 0
            np.cumsum(lens, out=off[1:])
            del lens
            data = b"".join(r[2] for r in recs)
            bits = np.packbits(ok, bitorder="little")
            a["comm"] = pd.array(pa.LargeStringArray.from_buffers(
                cum, pa.py_buffer(off), pa.py_buffer(data), pa.py_buffer(bits), null_count=cum - int(ok.sum())),
                dtype="string")
        else:
            a["comm"] = _null_strings(cum)
        del ok
        if any(r[3] is not None for r in recs):
            msgs = [(r[3] if r[3] is not None else pa.nulls(r[1], pa.string())).cast(pa.large_string())
                    for r in recs if r[1]]
            a["message"] = pd.array(pa.concat_arrays(msgs), dtype="string")
        else:
            a["message"] = _null_strings(cum)
        return a


def _put_strings(arr: pa.Array | pa.ChunkedArray, lens: np.ndarray, ok: np.ndarray) -> bytes:
    """String array -> its values' lengths into ``lens``, validity into ``ok``; returns the bytes of its values."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    n = len(arr)
    if n == 0 or arr.null_count == n:
        return b""
    valid = np.ones(n, dtype=bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    wide = pa.types.is_large_string(arr.type)
    off = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)[arr.offset:arr.offset + n + 1]
    ln = np.diff(off)
    if (ln[~valid] != 0).any():  # null slots that still span bytes: keep only the values
        vals = arr.filter(pa.array(valid))
        off = np.frombuffer(vals.buffers()[1], dtype=np.int64 if wide else np.int32)[vals.offset:vals.offset
                                                                                     + len(vals) + 1]
        ln = np.zeros(n, dtype=np.int64)
        ln[valid] = np.diff(off)
        arr = vals
    lens[:] = ln
    ok[:] = valid
    return arr.buffers()[2].to_pybytes()[int(off[0]):int(off[-1])]


def _workers(workers: int | None) -> int:
    """Threads that parse chunks: ``workers``, or by default 2 when the machine has 2 or more CPUs."""
    if workers is None:
        return 2 if (os.cpu_count() or 1) >= 2 else 1
    return max(1, int(workers))


def _chunk_job(out: _Out, slot: int, fi: int, body: bytes | tuple[bytearray, int, int], line0: int,
               fast: bool) -> tuple:
    """Parse one block (bytes, or (buffer, start, end) with ``_W`` zero bytes after ``end``) and write its rows
    from row ``slot`` on, :data:`_GROUP` lines at a time (their arrays stay in the CPU's cache). Returns (the
    :meth:`_Out.put` record of each group, rejects, summary, lines)."""
    summary: dict = {}
    if isinstance(body, tuple):
        buf, start, end = body
        a = np.frombuffer(buf, dtype=np.uint8, count=end - start + _W, offset=start)
    else:
        a = np.frombuffer(body + bytes(_W), dtype=np.uint8)
    nb = len(a) - _W
    starts = [0]  # byte offsets of the groups; the bytes after a group (next lines, padding) are only looked at
    if fast and nb > _GROUP * 64:
        le = np.flatnonzero(a[:nb] == 10)
        starts += (le[_GROUP - 1:-1:_GROUP] + 1).tolist()
    starts.append(nb)
    recs, rejects, nl = [], [], 0
    for s0, e0 in zip(starts[:-1], starts[1:], strict=True):
        cols, rej, k = _parse_chunk(a[s0:e0 + _W], e0 - s0, line0 + nl, fast, summary)
        recs.append(out.put(slot + nl, cols, fi))
        rejects += rej
        nl += k
    del a
    return recs, rejects, summary, nl


def _plain_blocks(path: str, size: int, bufs: list[bytearray], max_line: int = fileio.MAX_LINE) -> Iterator[tuple]:
    """The items of ``fileio.line_blocks(fileio.Stream(path, size))`` for a plain (uncompressed) file, read into
    reusable buffers: a block of lines is ``("lines", (buffer, start, end), n)``, with ``_W`` zero bytes after
    ``end``; the buffer is the caller's until it goes back to ``bufs``."""
    carry = b""
    n = 0
    skip: list | None = None  # [line number (1-based), length so far, head] of an over-long line
    try:
        with open(path, "rb") as f:
            fsize = os.fstat(f.fileno()).st_size
            rd = max(1, min(size, fsize))  # bytes read at a time (a small file: a small buffer)
            while True:
                lc = len(carry)
                buf = bufs.pop() if bufs else None
                if buf is None or len(buf) < lc + rd + _W + 1:
                    buf = bytearray(max(lc, min(max_line, fsize)) + rd + _W + 1)
                buf[:lc] = carry
                k = f.readinto(memoryview(buf)[lc:lc + rd])
                if not k:
                    bufs.append(buf)
                    break
                s0, e0 = 0, lc + k  # the data: buf[s0:e0]
                if skip is not None:  # carry is empty
                    nl = buf.find(b"\n", 0, e0)
                    if nl < 0:
                        skip[1] += k
                        bufs.append(buf)
                        continue
                    skip[1] += nl
                    yield ("long", skip[0] - 1, skip[1], skip[2])
                    n += 1
                    skip = None
                    s0 = nl + 1
                cut = buf.rfind(b"\n", s0, e0)
                if cut < 0:
                    if e0 - s0 > max_line:
                        skip = [n + 1, e0 - s0, bytes(buf[s0:min(s0 + 256, e0)])]
                        carry = b""
                    else:
                        carry = bytes(buf[s0:e0])
                    bufs.append(buf)
                    continue
                carry = bytes(buf[cut + 1:e0])
                buf[cut + 1:cut + 1 + _W] = bytes(_W)
                lines = buf.count(b"\n", s0, cut + 1)
                yield ("lines", (buf, s0, cut + 1), n)
                n += lines
                if len(carry) > max_line:
                    skip = [n + 1, len(carry), carry[:256]]
                    carry = b""
    except OSError as e:
        raise fileio.TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    if skip is not None:
        yield ("tail", skip[2], n, skip[1])
    elif carry:
        yield ("tail", carry, n, len(carry))


def _chunks(items: Iterator, fast: bool, workers: int, out: _Out, fi: int, bufs: list) -> Iterator[tuple]:
    """The items of :func:`fileio.line_blocks` (or :func:`_plain_blocks`, whose buffers go back to ``bufs`` once
    parsed) in order, each ``"lines"`` block parsed into ``out``: ("lines", (slot, rows, names, messages), rejects,
    summary, lines in the block, lines before it). With ``workers`` > 1 and more than one block, blocks are parsed
    by that many threads (numpy and pyarrow release the GIL), at most ``workers + 1`` blocks in flight; a single
    block is parsed in the calling thread."""
    pending: deque = deque()  # ("job", args, n) not started, ("fut", future, n, args) submitted, other items
    ex = None
    base = out.top
    try:
        for item in items:
            if item[0] != "lines":
                pending.append(item)
                continue
            _, body, n = item
            nb = body[2] - body[1] if isinstance(body, tuple) else len(body)
            out.top = max(out.top, base + n)  # the rows of the blocks before end here at the latest
            if base + n + _max_rows(nb) > out.cap:  # no room: wait for the blocks in flight, then grow
                for p in pending:
                    if p[0] == "fut":
                        p[1].exception()
                out.grow(base + n + 2 * _max_rows(nb))
            job = (out, base + n, fi, body, n + 1, fast)
            del body
            if workers > 1 and ex is None and any(p[0] == "job" for p in pending):
                ex = ThreadPoolExecutor(workers)
                pending = deque(("fut", ex.submit(_chunk_job, *p[1]), p[2], p[1]) if p[0] == "job" else p
                                for p in pending)
            pending.append(("fut", ex.submit(_chunk_job, *job), n, job) if ex else ("job", job, n))
            del job
            while pending and (workers == 1 or pending[0][0] not in ("job", "fut")
                               or ex is not None and (len(pending) > workers or pending[0][1].done())):
                yield _done(pending.popleft(), out, base, bufs)
        while pending:
            yield _done(pending.popleft(), out, base, bufs)
    finally:
        for p in pending:
            if p[0] == "fut":
                p[1].cancel()
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)


def _done(p: tuple, out: _Out, base: int, bufs: list) -> tuple:
    """A pending item of :func:`_chunks`, its block parsed (in this thread if it was not submitted)."""
    if p[0] not in ("job", "fut"):
        return p
    job = p[1] if p[0] == "job" else p[3]
    r = ("lines", *(_chunk_job(*job) if p[0] == "job" else p[1].result()), p[2])
    out.top = max(out.top, base + r[5] + r[4])
    if isinstance(job[3], tuple):
        bufs.append(job[3][0])  # the block's buffer can be read into again
    return r


def _max_rows(nbytes: int) -> int:
    """At most this many event lines fit in ``nbytes`` bytes (the shortest an event line can be is 27 bytes with its
    newline: 8 tokens, a 9-digit ns)."""
    return nbytes // 16 + 1


def _lines_estimate(path: str) -> int:
    """Rows to reserve for a file: for plain text as many as it can hold (:func:`_max_rows`), 1 M for a compressed
    file. More are added when needed; rows never written take no memory."""
    try:
        if fileio.compression(path) is None:
            return _max_rows(os.path.getsize(path)) + 1024
    except OSError:
        pass
    return 1 << 20


def parse(paths: list[str] | str, chunk_bytes: int = 8 << 20, fast: bool = True,
          workers: int | None = None) -> ParseResult:
    """Read blkparse default-format text files into a BLOCK_EVENTS table (in file order, then line order).

    ``fast=False`` sends every line through the pyparsing grammar (the reference; slow). ``chunk_bytes`` is the
    size of the decompressed pieces read at a time (bytes). ``workers`` threads parse the pieces of a file of more
    than one piece (default: 2 on a machine with 2 or more CPUs; 1 parses everything in the calling thread); the
    result does not depend on it.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [str(p) for p in paths]
    nworkers = _workers(workers)
    out = _Out(0)
    bufs: list[bytearray] = []  # read buffers of plain files
    recs = []
    rejects = []
    summary: dict = {}
    truncated = []
    for fi, path in enumerate(paths):
        head = fileio.head(path, 4096)
        if _looks_binary(head):
            raise fileio.TraceError(f"{path}: not blkparse text (binary content; a blktrace file? use format "
                                    f"'blktrace')")
        stream = fileio.Stream(path, size=chunk_bytes)
        plain = fileio.compression(path) is None
        blocks = _plain_blocks(path, chunk_bytes, bufs) if plain else fileio.line_blocks(stream)
        out.grow(out.top + _lines_estimate(path))
        line0 = 1
        rej_rows = []
        other = []  # (line, length, reason, text): over-long lines, the last line when it has no newline
        for item in _chunks(blocks, fast, nworkers, out, fi, bufs):
            if item[0] == "long":
                other.append((item[1] + 1, item[2], "line too long", item[3].decode("utf-8", "replace")))
            elif item[0] == "tail":  # blkparse ends every line: the file was cut inside this one
                _, text, n, length = item
                reason = "line too long" if length > fileio.MAX_LINE else "truncated line"
                other.append((n + 1, length, reason, text[:256].decode("utf-8", "replace")))
                truncated.append({"file": path, "line": n + 1, "reason": "last line has no newline"})
            else:
                _, recs_block, rej, part_summary, nl, n = item
                recs += recs_block
                rej_rows += rej
                if "events" in part_summary:
                    summary.setdefault("events", {}).update(part_summary["events"])
                if "blocks" in part_summary:
                    summary.setdefault("blocks", []).extend(part_summary["blocks"])
                line0 = n + 1 + nl
        if stream.truncated:
            truncated.append({"file": path, "line": line0, "reason": "compressed stream ends early"})
        if rej_rows or other:
            rows = [(ln, len(t), "unknown line", t) for ln, t in rej_rows] + other
            rejects.append(reject_rows(path, sorted(rows)))
    events = _frame(out.finish(recs), paths)
    rj = pd.concat(rejects, ignore_index=True) if rejects else REJECTS.empty()
    meta = {"clock": "relative", "summary": summary, "truncated": truncated,
            "notes": ["blkparse text: times are relative to blkparse's genesis (first event); no wall clock"]}
    return ParseResult(events=events, rejects=rj, meta=meta)


def _devstr(keys: np.ndarray) -> list[str]:
    return [f"{k >> 20},{k & 0xFFFFF}" for k in keys.tolist()]


def _null_strings(n: int) -> pd.arrays.ArrowStringArray:
    """An all-null string column; its buffers are zero pages that are not touched (no memory until written)."""
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(np.zeros(n + 1, dtype=np.int64)), pa.py_buffer(b""),
                                           pa.py_buffer(np.zeros((n + 7) // 8, dtype=np.uint8)), null_count=n)
    return pd.array(arr, dtype="string")


def _small_codes(x: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..127 (int8) and which of them occur -> (the codes in use, sorted; int8 codes into them)."""
    uniq = np.flatnonzero(used)
    if len(uniq) == uniq[-1] + 1:  # 0..k all in use: the codes are their own
        return uniq, x
    lut = np.zeros(128, dtype=np.int8)
    lut[uniq] = np.arange(len(uniq), dtype=np.int8)
    return uniq, lut[x]


def _frame(c: dict, paths: list[str]) -> pd.DataFrame:
    """The BLOCK_EVENTS frame from the columns of :meth:`_Out.finish` (numeric columns are used as they are)."""
    n = len(c["pos"])
    if n == 0:
        df = BLOCK_EVENTS.empty()
        df["file"] = pd.Categorical([], categories=paths)
        return df
    dev = c.pop("dev")
    if (dev == dev[0]).all():
        du, dcodes = dev[:1], np.zeros(n, dtype=np.int8)
    else:
        du, dcodes = np.unique(dev, return_inverse=True)
    del dev
    used = c.pop("used")  # which codes occur; categories: only the labels in use, in sorted order
    ru, rcodes = _small_codes(c.pop("rwbs"), used[0])
    rlabels = [_ALL_RWBS[i] for i in ru]
    au, acodes = _small_codes(c.pop("act"), used[1])
    alabels = [ACTIONS[i] for i in au]
    ou, ocodes = _small_codes(c.pop("op"), used[2])
    olabels = [_op_tables()[2][i] for i in ou]
    rm = c.pop("remap_device")  # device key + 1; 0: none
    has_rm = rm != 0
    if has_rm.any():
        rmu, rmc = np.unique(rm[has_rm] - 1, return_inverse=True)
        rm_codes = np.full(n, -1, dtype=np.int64)
        rm_codes[has_rm] = rmc
        rm_arr = pd.array(pa.DictionaryArray.from_arrays(pa.array(rm_codes, mask=~has_rm),
                                                         pa.array(_devstr(rmu), pa.large_string())
                                                         ).dictionary_decode(), dtype="string")
    else:
        rm_arr = _null_strings(n)
    del rm, has_rm

    def nint(key: str) -> pd.arrays.IntegerArray:
        v, ok = c.pop(key), c.pop(key + "_ok")
        if not ok.any():
            return pd.arrays.IntegerArray(np.zeros(n, dtype=np.int64), np.ones(n, dtype=bool))
        return pd.arrays.IntegerArray(v, ~ok)

    cols = {
        "time_ns": c.pop("time_ns"),
        "device": pd.Categorical.from_codes(dcodes, categories=_devstr(du), validate=False),
        "cpu": c.pop("cpu"),
        "seq": c.pop("seq"), "pid": c.pop("pid"),
        "action": pd.Categorical.from_codes(acodes, categories=alabels, validate=False),
        "rwbs": pd.Categorical.from_codes(rcodes, categories=rlabels, validate=False),
        "sector": c.pop("sector"), "nsect": c.pop("nsect"), "bytes": c.pop("bytes"),
        "error": c.pop("error"),
        "comm": c.pop("comm"),
        "category": c.pop("category"),
        "op": pd.Categorical.from_codes(ocodes, categories=olabels, validate=False),
        "preflush": c.pop("preflush"), "fua": c.pop("fua"), "sync": c.pop("sync"), "meta": c.pop("meta"),
        "remap_device": rm_arr,
        "remap_sector": nint("remap_sector"),
        "split_sector": nint("split_sector"),
        "unplug_depth": nint("unplug_depth"),
        "message": c.pop("message"),
        "file": pd.Categorical.from_codes(c.pop("file"), categories=paths, validate=False),
        "pos": c.pop("pos"),
    }
    return pd.DataFrame(cols, copy=False)
