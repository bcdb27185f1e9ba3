"""QEMU's ``log`` trace backend: text lines, every prefix style QEMU has written (docs/formats.md section 4.2).

Accepted line shapes (the prefix is optional; the event name is the first token after it)::

    event_name args                                        bare (no -msg timestamp=on): no time, no thread
    TID@SEC.USEC:event_name args                           4.0 .. 10.0 with -msg timestamp=on
    2025-09-02T10:11:52[.402113]Z event_name args          10.1+ (ISO-8601 UTC, fraction optional)
    [ISO ][[guest] ]program(TID:thread): event_name args   proposed upstream (thread info, guest name)

Times are host CLOCK_REALTIME in ns (microsecond resolution); bare logs have null times and
``meta['timestamps'] = False``. Everything else in the file (warnings, monitor chatter, binary noise, a line cut
by the end of the file) becomes a REJECTS row with its 1-based line number: nothing is dropped silently.

Blocks of lines go through one loop in C (``_qemulogc.c``, built when the package is installed) for the two
common shapes (``TID@SEC.USEC:event`` and bare ``event``: prefix, event name, typed arguments); the other prefix
styles and non-event lines through one regex in pyarrow. An uncompressed file of at least ``PARALLEL_MIN`` bytes
is read by two processes when a core is idle (the second part, cut at a line start, in a forked child whose
tables come back through a mapped temporary file); the result is the same as one process's.
:func:`parse_iter` yields the same table in chunks (one per block), :func:`concat` joins them.
"""

from __future__ import annotations

import mmap
import os
import pickle
import re
import signal
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit import fileio, memory
from toolkit.events import QEMU_EVENTS, REJECTS
from toolkit.parsers import ParseResult, _qemulogc

#: one regex for every prefix style; an event name is snake_case with at least one underscore
LINE_RE = (
    r"^(?:(?P<tid>\d+)@(?P<sec>\d+)\.(?P<usec>\d+):"
    r"|(?:(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<frac>\d+))?Z )?"
    r"(?:\[(?P<guest>[^\]]*)\] )?"
    r"(?:(?P<prog>[^\s():]+)\((?P<ptid>\d+):(?P<tname>[^)]*)\): )?)"
    r"(?P<event>[a-z][a-z0-9]*_[A-Za-z0-9_]*)(?: (?P<args>.*))?$"
)

#: argument name in the text -> typed QEMU_EVENTS column
ARG_COLUMNS: dict[str, str] = {
    "req": "req", "luringcb": "req", "laiocb": "req", "vdev": "vdev", "blk": "blk", "bs": "bs",
    "opaque": "opaque", "sector": "sector", "nsectors": "nsectors", "offset": "offset", "bytes": "bytes",
    "nbytes": "bytes", "size": "bytes", "flags": "flags", "status": "status", "ret": "ret", "type": "type",
}
POINTER_COLUMNS = ("req", "vdev", "blk", "bs", "opaque")
INT_COLUMNS = ("sector", "nsectors", "offset", "bytes", "flags", "status", "ret", "type")
#: the typed columns in the C loop's order, and its key table (names joined by NUL, each one's column)
_COLS = list(dict.fromkeys(ARG_COLUMNS.values()))
_KEYS = b"\0".join(k.encode() for k in ARG_COLUMNS)
_KEYCOL = np.array([_COLS.index(c) for c in ARG_COLUMNS.values()], dtype=np.int64)

#: events whose state is named in their args: event -> regex with one group ``s``
STATE_RULES: dict[str, str] = {
    "runstate_set": r"new_state -?\d+ \((?P<s>[^)]*)\)",
    "vm_state_notify": r"reason -?\d+ \((?P<s>[^)]*)\)",
    "migrate_set_state": r"new state (?P<s>\S+)",
    "migration_block_activation": r"^(?P<s>\S+)",
    "vmstate_downtime_checkpoint": r"^(?P<s>\S+)",
    "migrate_global_state_pre_save": r"state: (?P<s>\S+)",
    "migrate_global_state_post_load": r"state: (?P<s>\S+)",
}

CHUNK = 32 << 20
#: uncompressed files at least this big are read by two processes
PARALLEL_MIN = 64 << 20
#: a file whose first this many bytes are less than 1 % trace event lines is not a QEMU log (TraceError)
NO_EVENT_LIMIT = 1 << 20
READ_SIZE = 64 << 10
_NAME = re.compile(r"[a-z][a-z0-9]*_[A-Za-z0-9_]*")


def parse(paths: str | os.PathLike | Iterable[str | os.PathLike], *, base: str | os.PathLike | None = None,
          chunk_size: int = CHUNK, workers: int | None = None, parallel_min: int = PARALLEL_MIN,
          **_: object) -> ParseResult:
    """Parse QEMU log-backend files into QEMU_EVENTS (file order) and REJECTS.

    ``time_ns`` is host CLOCK_REALTIME ns (null for bare lines); ``pos`` the 1-based line number in its file.
    meta: ``clock`` ('realtime' or None), ``timestamps`` (any timestamped event), ``styles`` (event counts per
    prefix style), ``lines``, ``truncated`` (files whose compressed stream or last line was cut), ``notes``.

    An uncompressed file of at least ``parallel_min`` bytes is read by two processes (the second half, cut at a
    line start, in a forked child) when a core is idle or ``workers=2`` (``workers=1``: never); the result is
    the same as with one.
    """
    ev_parts: list[pd.DataFrame] = []
    rej_parts: list[pd.DataFrame] = []
    acc = _new_acc()
    nw = _workers(workers)
    for path in _path_list(paths):
        name = fileio.display_name(path, base)
        cut = _split_point(path, parallel_min, chunk_size) if nw > 1 else None
        parts = (_file_parts(path, name, chunk_size, acc) if cut is None
                 else _parse_split(path, name, chunk_size, acc, cut))
        for ev, rej in parts:
            if ev is not None:
                ev_parts.append(ev)
            rej_parts.append(rej)
    return _combine(ev_parts, rej_parts, acc)


def parse_iter(paths: str | os.PathLike | Iterable[str | os.PathLike], *, base: str | os.PathLike | None = None,
               chunk_size: int = CHUNK, **_: object) -> Iterator[ParseResult]:
    """The table :func:`parse` returns, as consecutive chunks (one per block of about ``chunk_size`` bytes).

    Each chunk has the QEMU_EVENTS / REJECTS columns. Its ``event`` and ``file`` categories are every value
    used so far, sorted (parse()'s order, unless the first block names every value: then parse() keeps that
    block's order); the last chunk's are parse()'s and ``concat(list(parse_iter(p)))`` equals ``parse(p)``. ``meta`` of a chunk counts what was
    read so far; the last chunk's is complete (the same as ``parse``'s). One process, memory bounded by a block.
    """
    acc = _new_acc()
    held: tuple[pd.DataFrame | None, list[pd.DataFrame]] | None = None  # one chunk back: the last gets the meta
    pending: list[pd.DataFrame] = []  # rejects (over-long, cut lines) not yet in a chunk
    minis: dict[str, list[pd.Series]] = {"event": [], "file": []}
    for path in _path_list(paths):
        name = fileio.display_name(path, base)
        for ev, rej in _file_parts(path, name, chunk_size, acc):
            if ev is None:
                if held is not None:
                    held[1].append(rej)
                else:
                    pending.append(rej)
                continue
            if held is not None:
                yield _chunk((_cumulative(held[0], minis), held[1]), acc, final=False)
            held, pending = (ev, [*pending, rej]), []
    if held is None:
        held = (None, pending)
    else:
        held[1].extend(pending)
        if minis["event"]:  # not the only chunk
            held = (_cumulative(held[0], minis, final=True), held[1])
    yield _chunk(held, acc, final=True)


def _cumulative(ev: pd.DataFrame, minis: dict[str, list[pd.Series]], *, final: bool = False) -> pd.DataFrame:
    """``ev`` with its categorical columns recoded to the values used in it and in the chunks before (sorted),
    or, ``final``, to the dtype parse()'s table gets from :func:`_common_categories` and concat (from
    ``minis``: one value per category used, per chunk, with the chunk's dtype; updated)."""
    for col, ms in minis.items():
        ms.append(_used_values(ev[col].array))
        if final:  # as parse() ends up: the first block's own dtype if it names every value, else sorted
            dtype = pd.concat(ms, ignore_index=True).astype("category").dtype
            if ms[0].dtype == dtype:  # same values (order not compared)
                dtype = ms[0].dtype
        else:
            vals = pd.concat([m.astype(m.dtype.categories.dtype) for m in ms], ignore_index=True)
            dtype = vals.astype("category").dtype
        ev = _recoded(ev, col, dtype)
    return ev


def _recoded(ev: pd.DataFrame, col: str, dtype: pd.CategoricalDtype) -> pd.DataFrame:
    """``ev`` with the categorical column ``col`` recoded to ``dtype`` (its categories in that order), by hand:
    astype() keeps a categorical whose dtype compares equal (same set, other order)."""
    c = ev[col].array
    if c.dtype == dtype and c.categories.equals(dtype.categories):
        return ev
    lut = np.append(dtype.categories.get_indexer(c.categories), -1)
    return ev.assign(**{col: pd.Categorical.from_codes(lut[np.asarray(c.codes)], dtype=dtype)})


def concat(chunks: Iterable[ParseResult]) -> ParseResult:
    """One ParseResult from the chunks of :func:`parse_iter`: parse()'s (categories as the last chunk's)."""
    chunks = list(chunks)
    if not chunks:
        return _combine([], [], _new_acc())
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1].events
    parts = []
    for c in chunks:
        ev = c.events
        for col in ("event", "file"):
            ev = _recoded(ev, col, last[col].dtype)
        parts.append(ev)
    rejects = pd.concat([c.rejects for c in chunks], ignore_index=True)
    return ParseResult(events=memory.concat(parts), rejects=rejects, meta=chunks[-1].meta)


def _chunk(held: tuple[pd.DataFrame | None, list[pd.DataFrame]], acc: dict, *, final: bool) -> ParseResult:
    ev, rejs = held
    rej = rejs[0] if len(rejs) == 1 else pd.concat(rejs, ignore_index=True) if rejs else REJECTS.empty()
    if ev is None:
        ev = QEMU_EVENTS.empty()
    if final:
        return _combine([ev], [rej], acc) if held[0] is not None else _combine([], rejs, acc)
    return ParseResult(events=ev, rejects=rej, meta=_meta(acc))


def _path_list(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def _new_acc() -> dict:
    """Running totals over the files: lines, styles, truncated, notes, events, events without a time, rejects."""
    return {"lines": 0, "styles": {}, "truncated": [], "notes": [], "events": 0, "untimed": 0, "rejects": 0}


def _combine(ev_parts: list[pd.DataFrame], rej_parts: list[pd.DataFrame], acc: dict) -> ParseResult:
    """The final tables from the parts (file order) and the meta from the running totals."""
    if len(ev_parts) > 1:
        ev_parts = _common_categories(ev_parts, ("event", "file"))
    events = memory.concat(ev_parts) if ev_parts else QEMU_EVENTS.empty()
    if ev_parts:
        events["event"] = events["event"].astype("category")
        events["file"] = events["file"].astype("category")
    rejects = pd.concat(rej_parts, ignore_index=True) if rej_parts else REJECTS.empty()
    return ParseResult(events=events, rejects=rejects, meta=_meta(acc))


def _meta(acc: dict) -> dict:
    """meta from the running totals (complete once every file is read)."""
    notes = list(acc["notes"])
    nev, untimed = acc["events"], acc["untimed"]
    timestamps = nev > untimed
    if nev and not timestamps:
        notes.append("QEMU log has no timestamps (run without -msg timestamp=on): events are in file order, "
                     "time_ns and tid are null")
    elif nev and untimed:
        notes.append(f"{untimed} event lines without a timestamp among timestamped ones")
    if acc["rejects"]:
        notes.append(f"{acc['rejects']} lines are not trace events (see rejects)")
    return {
        "format": "qemu-log", "clock": "realtime" if timestamps else None, "timestamps": timestamps,
        "styles": dict(acc["styles"]), "lines": acc["lines"], "truncated": list(acc["truncated"]),
        "notes": notes,
    }


def _file_parts(path: str | os.PathLike, name: str, chunk_size: int, acc: dict,
                span: tuple[int, int] | None = None) -> Iterator[tuple[pd.DataFrame | None, pd.DataFrame]]:
    """(events or None, rejects) per block of one file, in file order; ``acc`` gets the lines, styles, cuts.

    ``span=(start, stop)``: only those bytes of an uncompressed file (``start`` at a line start; its lines are
    numbered from 1 and it is not checked for garbage unless it starts the file); ``acc['long']`` is set when
    a line is longer than fileio.MAX_LINE (how such a line is read depends on where the blocks are cut).
    """
    if span is None and (fileio.compression(path) is not None or not _regular(path)):
        # small reads (a cut .xz loses only the last read), parsed in blocks of about chunk_size
        st: fileio.Stream | None = fileio.Stream(path, min(chunk_size, READ_SIZE))
        items = fileio.line_blocks(_blocks(st, chunk_size, first=min(chunk_size, NO_EVENT_LIMIT)))
        check = True
    else:
        st = None
        start, stop = span if span is not None else (0, None)
        items = _plain_line_blocks(path, start, stop, chunk_size)
        check = start == 0
    styles = acc["styles"]
    stats: dict | None = {} if span is not None else None
    line0 = 0  # lines before the current block
    seen = nev = nrej = 0  # bytes, events, rejects (garbage is refused early, not kept as millions of rejects)
    for item in items:
        if item[0] == "lines":
            block = item[1]
            ev, rej, n, sty = _parse_block(block, name, line0, stats)
            first = seen == 0
            seen += len(block)
            nev += len(ev)
            nrej += len(rej)
            if check and first and seen >= NO_EVENT_LIMIT // 2 and nev * 100 < nrej:
                raise fileio.TraceError(f"{name}: not a QEMU log: {nev} trace event lines among the "
                                        f"{nev + nrej} lines of the first {seen >> 10} KB")
            line0 += n
            for k, v in sty.items():
                styles[k] = styles.get(k, 0) + v
            acc["events"] += len(ev)
            acc["untimed"] += int(ev["time_ns"].isna().sum())
            acc["rejects"] += len(rej)
            if stats is not None and stats.get("max_line", 0) > fileio.MAX_LINE:
                acc["long"] = True
            yield ev, rej
            continue
        # an over-long line (skipped, not held in memory), or the last line without its newline
        _, a, b, c = item
        text, length = (c, b) if item[0] == "long" else (a, c)
        ln = line0 + 1
        reason = "line too long" if length > fileio.MAX_LINE else "truncated line"
        if length > fileio.MAX_LINE:
            acc["long"] = True
        line0 = ln
        if item[0] == "tail":
            acc["truncated"].append({"file": name, "line": ln, "reason": "last line has no newline"})
        acc["rejects"] += 1
        yield None, _rejects(name, np.array([ln]), np.array([length]), [reason],
                             [text[:256].decode("utf-8", errors="replace")])
    if st is not None and st.truncated:
        acc["truncated"].append({"file": name, "line": line0, "reason": "compressed stream ends early"})
        acc["notes"].append(f"{name}: compressed stream ends early after line {line0}")
    acc["lines"] += line0


def _regular(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (read straight into block buffers; pipes and devices stream)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _plain_line_blocks(path: str | os.PathLike, start: int, stop: int | None, chunk_size: int,
                       max_line: int = fileio.MAX_LINE) -> Iterator[tuple]:
    """``fileio.line_blocks`` of the blocks ``_blocks`` makes of an uncompressed file's bytes [start, stop),
    item for item (line counts left to the caller: -1), each block read straight into one buffer (no joins)."""
    rs = min(chunk_size, READ_SIZE)

    def whole_reads(want: int) -> int:  # _blocks joins whole reads until it has ``want`` bytes
        return -(-want // rs) * rs

    want = whole_reads(min(chunk_size, NO_EVENT_LIMIT))
    carry = b""
    skip: list | None = None  # [length so far, head] of an over-long line
    try:
        with open(path, "rb") as f:
            f.seek(start)
            pos = start
            end = False
            while not end and (stop is None or pos < stop):  # stop None: to the end of the file
                m = want if stop is None else min(want, stop - pos)
                want = whole_reads(chunk_size)
                lc = len(carry)
                data = bytearray(lc + m)
                data[:lc] = carry
                view = memoryview(data)
                got = 0
                while got < m and (r := f.readinto(view[lc + got:])):
                    got += r
                if not got:
                    break
                pos += got
                if got < m:  # the end of the file (or it shrank while read)
                    del view
                    del data[lc + got:]
                    view = memoryview(data)
                    end = True
                base = 0
                if skip is not None:
                    nl = data.find(b"\n", lc)
                    if nl < 0:
                        skip[0] += got
                        continue
                    skip[0] += nl - lc
                    yield ("long", -1, skip[0], skip[1])
                    skip = None
                    base = nl + 1
                cut = data.rfind(b"\n", base)
                if cut < 0:
                    if len(data) - base > max_line:
                        skip = [len(data) - base, bytes(view[base:base + 256])]
                        carry = b""
                    else:
                        carry = bytes(view[base:])
                    continue
                carry = bytes(view[cut + 1:])
                yield ("lines", view[base:cut + 1], -1)
                if len(carry) > max_line:
                    skip = [len(carry), carry[:256]]
                    carry = b""
    except OSError as e:
        raise fileio.TraceError(f"{path}: cannot read: {e.strerror or e}") from None
    if skip is not None:
        yield ("tail", skip[1], -1, skip[0])
    elif carry:
        yield ("tail", carry, -1, len(carry))


# ------------------------------------------------------------------------------------------- two processes
def _workers(workers: int | None) -> int:
    """How many processes may read one file: 2 where fork exists and this is the main thread (forking beside
    other threads is not safe) if ``workers`` >= 2, or, by default, if a core is idle (2 cores or more and a
    load average below cores - 1/2: with every core busy, a second process only adds its copies)."""
    if workers is not None and workers <= 1:
        return 1
    if not hasattr(os, "fork") or threading.current_thread() is not threading.main_thread():
        return 1
    if workers is not None:
        return 2
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return 2 if cores >= 2 and load < cores - 0.5 else 1


def _split_point(path: str | os.PathLike, parallel_min: int, chunk_size: int) -> int | None:
    """A line start near the middle (52 %) of an uncompressed file of at least ``parallel_min`` bytes, or None.

    The first half holds at least the whole first block (the one checked for garbage)."""
    rs = min(chunk_size, READ_SIZE)
    first = -(-min(chunk_size, NO_EVENT_LIMIT) // rs) * rs
    try:
        if fileio.compression(path) is not None:
            return None
        size = os.path.getsize(path)
        mid = size * 13 // 25  # the child also writes its tables out (~8 % more): the parent reads 52 %
        if size < parallel_min or mid < first:
            return None
        with open(path, "rb") as f:
            f.seek(mid - 1)
            look = f.read(fileio.MAX_LINE + 1)
    except (OSError, fileio.TraceError):
        return None
    i = look.find(b"\n")
    if i < 0:
        return None
    cut = mid + i
    return cut if cut < size else None


def _parse_split(path: str | os.PathLike, name: str, chunk_size: int, acc: dict,
                 cut: int) -> list[tuple[pd.DataFrame | None, pd.DataFrame]]:
    """The parts of the two halves of a file: [0, cut) here, [cut, end) in a forked child (its tables come back
    through a temporary file, pickled with out-of-band buffers and mapped, not copied). Lines of the second
    half are renumbered after the first; if the child fails, the second half is read here; if a line is longer
    than fileio.MAX_LINE, the file is read again by one process (the result depends on where blocks are cut).
    """
    size = os.path.getsize(path)
    pacc = _new_acc()
    it = _file_parts(path, name, chunk_size, pacc, span=(0, cut))
    first = []
    for part in it:  # up to the first block of lines: garbage is refused before the child starts
        first.append(part)
        if part[0] is not None:
            break
    def work(f) -> None:  # in the child: each part as soon as it is read, the totals last
        cacc = _new_acc()
        for part in _file_parts(path, name, chunk_size, cacc, span=(cut, size)):
            _dump(f, part)
        _dump(f, cacc)

    child = _fork(work)
    t0 = time.monotonic()
    try:
        first.extend(it)
    except BaseException:
        if child is not None:
            _stop_child(child[0])
            os.close(child[1])
        raise
    objs = _collect(child, max(CHILD_WAIT_MIN, 10 * (time.monotonic() - t0))) if child is not None else None
    second, cacc = (objs[:-1], objs[-1]) if objs else (None, None)
    if second is None:  # the child failed (or could not start): the same work here
        cacc = _new_acc()
        second = list(_file_parts(path, name, chunk_size, cacc, span=(cut, size)))
    if pacc.get("long") or cacc.get("long"):  # lines over MAX_LINE: read as one process would
        del first, second
        return list(_file_parts(path, name, chunk_size, acc))
    off = pacc["lines"]
    cacc["truncated"] = [{**t, "line": t["line"] + off} for t in cacc["truncated"]]
    for part in (pacc, cacc):
        for k, v in part["styles"].items():
            acc["styles"][k] = acc["styles"].get(k, 0) + v
        acc["truncated"] += part["truncated"]
        acc["notes"] += part["notes"]
        for k in ("lines", "events", "untimed", "rejects"):
            acc[k] += part[k]
    return first + [(None if ev is None else _shift_pos(ev, off), _shift_pos(rej, off)) for ev, rej in second]


#: seconds a worker may take beyond the parent's own half (at least; else 10x the parent's time) before it is
#: stopped and its half read by the parent (a stuck child must not hang the reader)
CHILD_WAIT_MIN = 120.0


def _fork(work: Callable[[BinaryIO], None]) -> tuple[int, int] | None:
    """Fork a worker running ``work(file)``: what it writes goes to a temporary file that has no name (removed
    at once: nothing is left behind, however either process ends). Returns (pid, fd), or None."""
    try:
        fd, tmp = tempfile.mkstemp(prefix="writeorder-", dir=_shm_dir())
    except OSError:
        return None
    os.unlink(tmp)
    try:
        pid = os.fork()
    except OSError:
        os.close(fd)
        return None
    if pid == 0:
        code = 1
        try:
            with os.fdopen(fd, "wb") as f:
                work(f)
            code = 0
        finally:
            os._exit(code)
    return pid, fd


def _collect(child: tuple[int, int], limit: float) -> list | None:
    """What the worker wrote (:func:`_load_all`), or None if it failed or was stopped after ``limit`` s."""
    pid, fd = child
    try:
        return _load_all(fd) if _wait_child(pid, limit) == 0 else None
    finally:
        os.close(fd)


def _wait_child(pid: int, limit: float) -> int | None:
    """The child's exit status, or None (it was killed) if it is not done within ``limit`` seconds."""
    end = time.monotonic() + limit
    delay = 0.001
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if time.monotonic() > end:
                break
            time.sleep(delay)
            delay = min(delay * 2, 0.01)
    except BaseException:  # interrupted while waiting: the worker is stopped too
        _stop_child(pid)
        raise
    _stop_child(pid)
    return None


def _stop_child(pid: int) -> None:
    """Kill and reap a worker this reader forked (not reaped yet, so the pid is still its own)."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _shift_pos(df: pd.DataFrame, off: int) -> pd.DataFrame:
    df = df.copy(deep=False)
    df["pos"] = df["pos"].to_numpy() + np.int64(off)
    return df


def _shm_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


_ALIGN = 64


def _dump(f, obj: object) -> None:
    """Append ``obj`` to the open file, pickled with its large buffers out of band, each 64-byte aligned."""
    bufs: list[pickle.PickleBuffer] = []
    main = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    raws = [b.raw() for b in bufs]
    head = pickle.dumps((len(main), [r.nbytes for r in raws]))
    f.write(struct.pack("<Q", len(head)) + head + main)
    pos = f.tell()
    for r in raws:
        pad = -pos % _ALIGN
        f.write(b"\0" * pad)
        f.write(r)
        pos += pad + r.nbytes


def _load_all(fd: int) -> list:
    """Every object :func:`_dump` wrote to the file open as ``fd``, in order, their buffers mapped from it
    (private copy-on-write pages, no copy)."""
    if not os.fstat(fd).st_size:
        return []
    view = memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_COPY))
    out = []
    pos = 0
    while pos < len(view):
        (hl,) = struct.unpack_from("<Q", view, pos)
        nmain, sizes = pickle.loads(view[pos + 8:pos + 8 + hl])
        main = view[pos + 8 + hl:pos + 8 + hl + nmain]
        pos += 8 + hl + nmain
        bufs = []
        for n in sizes:
            pos += -pos % _ALIGN
            bufs.append(view[pos:pos + n])
            pos += n
        out.append(pickle.loads(main, buffers=bufs))
    return out


def _used_values(c: pd.Categorical) -> pd.Series:
    """One value per category ``c`` uses (and a null if it has one), with ``c``'s dtype: what decides the dtype
    concat + astype('category') gives, at the cost of a few rows."""
    codes = np.asarray(c.codes)
    used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(c.categories)))
    if (codes < 0).any():
        used = np.append(used, -1)
    return pd.Series(pd.Categorical.from_codes(used, dtype=c.dtype))


def _common_categories(parts: list[pd.DataFrame], cols: tuple[str, ...]) -> list[pd.DataFrame]:
    """The parts with these categorical columns recoded to the dtype that concat + astype('category') gives them.

    pandas concatenates categoricals with different categories as plain values and ``astype('category')`` then
    re-encodes millions of strings; the dtype depends only on the categories in use, so it is computed on one
    value per used category and the parts are recoded to it (same frame, a fraction of the time).
    """
    parts = list(parts)
    for col in cols:
        minis = [_used_values(p[col].array) for p in parts]
        dtype = pd.concat(minis, ignore_index=True).astype("category").dtype
        parts = [p if p[col].dtype == dtype and p[col].array.categories.equals(dtype.categories)
                 else p.assign(**{col: p[col].astype(dtype)}) for p in parts]
    return parts


def _blocks(st: Iterable[bytes], size: int, first: int | None = None) -> Iterator[bytes]:
    """Join the small reads into blocks of about ``size`` bytes (the first one ``first`` bytes)."""
    buf: list[bytes] = []
    n = 0
    want = first or size
    for b in st:
        buf.append(b)
        n += len(b)
        if n >= want:
            yield b"".join(buf)
            buf, n, want = [], 0, size
    if buf:
        yield b"".join(buf)


# --------------------------------------------------------------------------------------------------------------
def _parse_block(data: bytes | memoryview, file: str, line0: int,
                 stats: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, int, dict[str, int]]:
    """Parse complete lines (``data`` ends with a newline). Returns events, rejects, line count, style counts.

    The C loop takes the two common shapes (``TID@SEC.USEC:event`` and bare ``event``: the same rules as
    ``LINE_RE``, :func:`_typed_args` and :func:`parse_ints`); the other prefix styles and non-event lines go
    through one regex (``LINE_RE``).
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.max(initial=0) >= 0x80:
        try:
            str(data, "utf-8")
        except UnicodeDecodeError:  # binary noise: replace invalid bytes so that Arrow strings stay valid UTF-8
            data = str(data, "utf-8", errors="replace").encode("utf-8")
            buf = np.frombuffer(data, dtype=np.uint8)
    # the per-line loop (C): bounds, prefix, event name, whether the fast path takes the line, typed columns
    n = _qemulogc.count(data)
    s, e, ev_s, sp, tid_all, t_all = (np.empty(n, np.int64) for _ in range(6))
    fast, lf_all = np.empty(n, np.uint8), np.empty(n, np.uint8)
    cols = memory.empty(len(_COLS) * n, np.int64, populate=True).reshape(len(_COLS), n)
    nulls = memory.empty(len(_COLS) * n, np.uint8, populate=True).reshape(len(_COLS), n)
    _qemulogc.lines(data, _KEYS, _KEYCOL, len(_COLS), s, e, ev_s, sp, fast, lf_all, tid_all, t_all, cols, nulls)
    if stats is not None and n:
        stats["max_line"] = int((e - s).max())
    lineno = np.arange(line0 + 1, line0 + n + 1, dtype=np.int64)
    fast = fast.view(bool)
    fi = np.flatnonzero(fast)
    nfast = len(fi)
    if nfast == n:  # every line (the usual case): views, no copies
        fi = slice(None)
    ev_name = pc.dictionary_encode(_gather(buf, ev_s[fi], sp[fi]))
    args = _gather(buf, np.minimum(sp[fi] + 1, e[fi]), e[fi])
    lf = lf_all[fi].view(bool)
    tmask = ~lf
    tid, t = tid_all[fi], t_all[fi]
    typed = {c: (cols[j][fi].view(np.uint64) if c in POINTER_COLUMNS else cols[j][fi], nulls[j][fi].view(bool))
             for j, c in enumerate(_COLS)}
    need = np.zeros(nfast, dtype=bool)
    core = {
        "pos": lineno[fi], "time_ns": pd.arrays.IntegerArray(t, tmask.copy()),
        "tid": pd.arrays.IntegerArray(tid, tmask.copy()), "event": ev_name, "args": args,
        "typed": typed, "need": need,
    }
    nleg = int(np.count_nonzero(lf))
    styles = {"tid@sec.usec": nleg, "bare": nfast - nleg}

    # slow path: other prefix styles, and lines that are no trace events
    si = np.flatnonzero(~fast)
    rej = REJECTS.empty()
    if len(si):
        lines = _gather(buf, s[si], e[si])
        slow, rej, sty = _parse_slow(lines, lineno[si], file)
        for key, v in sty.items():
            styles[key] = styles.get(key, 0) + v
        if len(slow["pos"]):
            order = np.argsort(np.concatenate([core["pos"], slow["pos"]]), kind="stable")
            core = {
                "pos": np.concatenate([core["pos"], slow["pos"]])[order],
                "time_ns": pd.array(np.concatenate([core["time_ns"], slow["time_ns"]]), dtype="Int64")[order],
                "tid": pd.array(np.concatenate([core["tid"], slow["tid"]]), dtype="Int64")[order],
                "event": pa.concat_arrays([pc.cast(core["event"], pa.string()), slow["event"]]).take(
                    pa.array(order)),
                "args": pa.concat_arrays([core["args"], slow["args"]]).take(pa.array(order)),
                "typed": {c: (np.concatenate([d, np.zeros(len(slow["pos"]), d.dtype)])[order],
                              np.concatenate([m, np.ones(len(slow["pos"]), bool)])[order])
                          for c, (d, m) in core["typed"].items()},
                "need": np.concatenate([core["need"], np.ones(len(slow["pos"]), bool)])[order],
            }
    styles = {k: v for k, v in styles.items() if v}
    return _build_events(core, file), rej, n, styles


def _gather(buf: np.ndarray, a: np.ndarray, b: np.ndarray) -> pa.StringArray:
    """An Arrow string array of the byte ranges buf[a_i:b_i] (disjoint, increasing), copied contiguously."""
    n = len(a)
    if n == 0:
        return pa.array([], pa.string())
    big = len(buf) >= 2**31
    bnd = np.empty(2 * n, dtype=np.int64 if big else np.int32)
    bnd[0::2] = a
    bnd[1::2] = b
    cls = pa.LargeStringArray if big else pa.StringArray
    whole = cls.from_buffers(2 * n - 1, pa.py_buffer(bnd), pa.py_buffer(buf))
    keep = np.zeros(2 * n - 1, dtype=bool)
    keep[0::2] = True
    out = whole.filter(pa.array(keep))
    return pc.cast(out, pa.string()) if big else out


def _parse_slow(lines: pa.Array, lineno: np.ndarray, file: str) -> tuple[dict, pd.DataFrame, dict[str, int]]:
    """The full line regex for what the fast path did not take: ISO / program prefixes and rejects."""
    m = pc.extract_regex(lines, LINE_RE)
    ok = m.is_valid().to_numpy(zero_copy_only=False)
    # numbers that do not fit (thread ids, seconds past year 2286, an impossible date) are no trace prefix
    bad = pc.or_(pc.greater(pc.utf8_length(pc.struct_field(m, "tid")), 18),
                 pc.greater(pc.utf8_length(pc.struct_field(m, "ptid")), 18))
    bad = pc.or_(bad, pc.greater(pc.utf8_length(pc.struct_field(m, "sec")), 10))
    iso_f = pc.struct_field(m, "iso")
    iso_t = pc.strptime(pc.if_else(pc.equal(iso_f, ""), "1970-01-01T00:00:00", iso_f), format="%Y-%m-%dT%H:%M:%S",
                        unit="s", error_is_null=True)
    bad = pc.or_(bad, pc.is_null(iso_t))
    bad = pc.fill_null(bad, False).to_numpy(zero_copy_only=False)
    ok = ok & ~bad
    rej_idx = np.flatnonzero(~ok)
    if len(rej_idx):
        rl = lines.take(pa.array(rej_idx))
        rtext = rl.to_pylist()
        bad_r = bad[rej_idx]
        reasons = ["empty line" if t == "" else ("binary data" if ("\x00" in t or "\ufffd" in t)
                                                 else "bad number" if b else "not a trace event")
                   for t, b in zip(rtext, bad_r, strict=True)]
        lengths = np.asarray(pc.binary_length(rl).to_numpy(zero_copy_only=False))
        rej = _rejects(file, lineno[rej_idx], lengths, reasons,
                       [repr(t)[1:-1] if r == "binary data" else t for t, r in zip(rtext, reasons, strict=True)])
    else:
        rej = REJECTS.empty()
    keep = np.flatnonzero(ok)
    f = m.take(pa.array(keep)).flatten()
    g = dict(zip([fld.name for fld in m.type], f, strict=True))
    tid = pc.if_else(pc.not_equal(g["tid"], ""), g["tid"], g["ptid"])
    tid_v = pc.cast(pc.if_else(pc.equal(tid, ""), pa.scalar(None, pa.string()), tid), pa.int64())
    legacy = pc.not_equal(g["sec"], "")
    iso = pc.not_equal(g["iso"], "")
    frac = pc.if_else(legacy, g["usec"], g["frac"])
    frac_ns = pc.cast(pc.utf8_slice_codeunits(pc.utf8_rpad(frac, 9, "0"), 0, 9), pa.int64())
    sec_legacy = pc.cast(pc.if_else(legacy, g["sec"], "0"), pa.int64())
    iso_s = pc.strptime(pc.if_else(iso, g["iso"], "1970-01-01T00:00:00"), format="%Y-%m-%dT%H:%M:%S", unit="s")
    secs = pc.if_else(legacy, sec_legacy, pc.cast(iso_s, pa.int64()))
    t = pc.add(pc.multiply(secs, 1_000_000_000), frac_ns)
    t = pc.if_else(pc.or_(legacy, iso), t, pa.scalar(None, pa.int64()))
    args = pc.fill_null(g["args"], "")
    core = {"pos": lineno[keep], "time_ns": _int64_array(t), "tid": _int64_array(tid_v),
            "event": pc.cast(g["event"], pa.string()), "args": pc.cast(args, pa.string())}
    styles: dict[str, int] = {}
    if len(keep):
        prog = pc.not_equal(g["prog"], "")
        nleg = int(pc.sum(legacy).as_py() or 0)
        niso = int(pc.sum(pc.and_(iso, pc.invert(prog))).as_py() or 0)
        nprog = int(pc.sum(prog).as_py() or 0)
        styles = {"tid@sec.usec": nleg, "iso8601": niso, "program(tid:thread)": nprog,
                  "bare": len(keep) - nleg - niso - nprog}
    return core, rej, styles


def _build_events(core: dict, file: str) -> pd.DataFrame:
    """QEMU_EVENTS columns from the core fields (pos, time_ns, tid, event, args as Arrow strings)."""
    k = len(core["pos"])
    ev = core["event"]
    ev = ev if pa.types.is_dictionary(ev.type) else pc.dictionary_encode(ev)
    args = core["args"]
    cols: dict[str, object] = {
        "time_ns": core["time_ns"], "tid": core["tid"], "event": ev.to_pandas(),
        "args": pd.arrays.ArrowStringArray(pc.cast(args, pa.large_string())) if k else pd.array([], "string"),
    }
    pre = core.get("typed")
    if pre is None:
        typed = _typed_args(args, k)
    else:
        need = np.flatnonzero(core["need"])
        typed = {c: pd.arrays.IntegerArray(d, m) for c, (d, m) in pre.items()}
        if len(need):
            rest = _typed_args(args.take(pa.array(need)), len(need))
            for c, arr in rest.items():
                d, m = pre[c]
                d[need] = arr.to_numpy(dtype=d.dtype, na_value=0)
                m[need] = arr.isna()
            for c in pre:
                if c not in rest:
                    pre[c][1][need] = True
    for c in POINTER_COLUMNS:
        cols[c] = typed.get(c) or pd.arrays.IntegerArray(np.zeros(k, np.uint64), np.ones(k, bool))
    for c in INT_COLUMNS:
        cols[c] = typed.get(c) or pd.arrays.IntegerArray(np.zeros(k, np.int64), np.ones(k, bool))
    cols["state"] = _states(ev, args, k)
    cols["file"] = pd.Categorical.from_codes(np.zeros(k, dtype=np.int8), categories=[file])
    cols["pos"] = core["pos"]
    return pd.DataFrame(cols, copy=False)


def _typed_args(args: pa.Array, k: int) -> dict[str, pd.api.extensions.ExtensionArray]:
    """Typed columns from ``key value`` pairs of the argument text (first occurrence of each key per line)."""
    out: dict[str, pd.api.extensions.ExtensionArray] = {}
    if k == 0:
        return out
    toks = pc.split_pattern(args, " ")
    flat = pc.list_flatten(toks)
    parent = pc.list_parent_indices(toks).to_numpy(zero_copy_only=False)
    keys = pa.array(list(ARG_COLUMNS), pa.string())
    is_key = pc.is_in(flat, value_set=keys).to_numpy(zero_copy_only=False)
    kpos = np.flatnonzero(is_key[:-1]) if len(flat) else np.array([], dtype=np.int64)
    # the value must be the next token of the same line
    kpos = kpos[parent[kpos] == parent[kpos + 1]]
    if not len(kpos):
        return out
    kname = pc.index_in(flat.take(pa.array(kpos)), value_set=keys).to_numpy(zero_copy_only=False)
    rows = parent[kpos]
    v_all, valid_all = parse_ints(flat.take(pa.array(kpos + 1)), unsigned=True)
    cols = list(dict.fromkeys(ARG_COLUMNS.values()))
    colidx = np.array([cols.index(c) for c in ARG_COLUMNS.values()])[kname]
    for ci, col in enumerate(cols):
        sel = np.flatnonzero(colidx == ci)
        if not len(sel):
            continue
        r = rows[sel]
        firstocc = np.ones(len(r), dtype=bool)
        firstocc[1:] = r[1:] != r[:-1]  # rows are ascending: keep each line's first occurrence
        sel, r = sel[firstocc], r[firstocc]
        data = np.zeros(k, dtype=np.uint64)
        mask = np.ones(k, dtype=bool)
        data[r] = v_all[sel]
        mask[r] = ~valid_all[sel]
        out[col] = pd.arrays.IntegerArray(data if col in POINTER_COLUMNS else data.view(np.int64), mask)
    return out


_LUT = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _LUT[_c] = 10 + _i


def parse_ints(a: pa.Array, *, unsigned: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Integers from strings: ``0x`` hex, decimal (signed), ``(nil)`` = 0. Returns (values, valid mask).

    Decimal is ASCII digits with at most one ``-``, within int64 (and, ``unsigned``, up to 2**64 - 1, as QEMU
    prints ``PRIu64``); anything else (more digits, other digits) is not valid, never an error.
    Vectorised: hex digits are decoded from the Arrow data buffer with a lookup table.
    """
    a = pc.cast(a, pa.string())
    n = len(a)
    out = np.zeros(n, dtype=np.uint64 if unsigned else np.int64)
    nil = pc.equal(a, "(nil)").to_numpy(zero_copy_only=False)
    is_hex = pc.starts_with(a, "0x").to_numpy(zero_copy_only=False)
    is_dec = pc.match_substring_regex(a, r"^(-[0-9]{1,19}|[0-9]{1,20})$").to_numpy(zero_copy_only=False)
    if a.null_count:
        nil, is_hex, is_dec = (np.asarray(pd.array(x, dtype="boolean").fillna(False), dtype=bool)
                               for x in (nil, is_hex, is_dec))
    is_dec &= ~is_hex
    if is_dec.any():
        d = np.flatnonzero(is_dec)
        ds = a.take(pa.array(d))
        # in range: shorter than the limit, or as long and not above it (same length: compared as text)
        ln = pc.utf8_length(ds)
        lim = pc.if_else(pc.starts_with(ds, "-"), "-9223372036854775808",
                         "18446744073709551615" if unsigned else "9223372036854775807")
        fits = pc.or_(pc.less(ln, pc.utf8_length(lim)),
                      pc.and_(pc.equal(ln, pc.utf8_length(lim)), pc.less_equal(ds, lim))).to_numpy(zero_copy_only=False)
        is_dec[d[~fits]] = False
        d, ds = d[fits], ds.filter(pa.array(fits))
        ln = pc.utf8_length(ds)  # above int64 (unsigned only): 20 digits, or 19 above its maximum
        big = pc.or_(pc.greater(ln, 19), pc.and_(pc.equal(ln, 19), pc.greater(ds, "9223372036854775807")))
        big = pc.and_(big, pc.invert(pc.starts_with(ds, "-"))).to_numpy(zero_copy_only=False)
        small = np.flatnonzero(~big)
        if len(small):
            out[d[small]] = pc.cast(ds.take(pa.array(small)), pa.int64()).to_numpy(zero_copy_only=False).astype(
                out.dtype)
        if big.any():
            out[d[big]] = pc.cast(ds.filter(pa.array(big)), pa.uint64()).to_numpy(zero_copy_only=False)
    if is_hex.any():
        h = np.flatnonzero(is_hex)
        hs = pc.utf8_slice_codeunits(a.take(pa.array(h)), 2)
        asc = pc.string_is_ascii(hs)  # a non-ASCII character is no hex digit (and pads by code points)
        okl = pc.and_(pc.less_equal(pc.utf8_length(hs), 16), asc).to_numpy(zero_copy_only=False)
        hs = pc.if_else(asc, hs, "")
        hx = pc.utf8_lpad(pc.utf8_slice_codeunits(hs, 0, 16), 16, "0")
        hx = pc.cast(hx, pa.large_string())
        bufs = hx.buffers()
        offs = np.frombuffer(bufs[1], dtype=np.int64)[hx.offset:hx.offset + len(hx) + 1]
        raw = np.frombuffer(bufs[2], dtype=np.uint8)[offs[0]:offs[-1]].reshape(-1, 16)
        nib = _LUT[raw]
        is_hex[h] = okl & (nib != 255).all(axis=1)
        byts = (nib[:, 0::2] << 4) | nib[:, 1::2]
        hv = np.ascontiguousarray(byts).view(">u8").ravel().astype(np.uint64)
        out[h] = hv if unsigned else hv.view(np.int64)
    return out, (is_hex | is_dec | nil)


def _states(ev: pa.DictionaryArray, args: pa.Array, k: int) -> pd.arrays.StringArray:
    """The ``state`` column: the state named by run-state, migration and activation events."""
    if k == 0:
        return pd.array(np.full(0, None, dtype=object), dtype="string")
    names = ev.dictionary.to_pylist()
    idx = ev.indices.to_numpy(zero_copy_only=False)
    rows_l: list[np.ndarray] = []
    vals_l: list[pa.Array] = []
    for code, name in enumerate(names):
        rule = STATE_RULES.get(name)
        if rule is None:
            continue
        rows = np.flatnonzero(idx == code)
        if not len(rows):
            continue
        ex = pc.extract_regex(args.take(pa.array(rows)), rule)
        rows_l.append(rows)
        vals_l.append(pc.cast(pc.struct_field(ex, [0]), pa.large_string()))
    if not rows_l:
        return pd.arrays.ArrowStringArray(pa.nulls(k, pa.large_string()))
    vals = pa.concat_arrays([*vals_l, pa.nulls(1, pa.large_string())])
    take = np.full(k, len(vals) - 1, dtype=np.int64)
    take[np.concatenate(rows_l)] = np.arange(len(vals) - 1, dtype=np.int64)
    return pd.arrays.ArrowStringArray(vals.take(pa.array(take)))


def _int64_array(a: pa.Array) -> pd.arrays.IntegerArray:
    """A nullable pandas Int64 array from an Arrow int64 array."""
    a = pc.cast(a, pa.int64())
    mask = a.is_null().to_numpy(zero_copy_only=False)
    data = pc.fill_null(a, 0).to_numpy(zero_copy_only=False)
    return pd.arrays.IntegerArray(np.asarray(data, dtype=np.int64), np.asarray(mask, dtype=bool))


def _rejects(file: str, pos: np.ndarray, length: np.ndarray, reason: list[str], text: list[str]) -> pd.DataFrame:
    text = [t if len(t) <= 200 else t[:197] + "..." for t in text]
    return REJECTS.conform(pd.DataFrame({
        "file": [file] * len(pos), "pos": np.asarray(pos, dtype=np.int64),
        "length": np.asarray(length, dtype=np.int64), "reason": reason, "text": text,
    }))
