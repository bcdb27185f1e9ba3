"""Parquet store of parsed trace sets: one partitioned dataset per set, re-ingested per trace.

``ingest(ts)`` parses every trace of a set once and keeps the events as a Parquet dataset (Arrow types, zstd)::

    <cache>/store.json                                     what is stored (below), written last, atomically
    <cache>/block/node=<node>/layer=<layer>/dev=<major,minor>/trace=<key>/<fp>.parquet   block events
    <cache>/qemu/node=<node>/layer=qemu/dev=<pid...>/trace=<key>/<fp>.parquet            QEMU events
    <cache>/rejects/<key>-<fp>.parquet                     the rejects of that trace

``store.json`` records per trace (``key``: a hash of node, layer, path and format, so reordering or adding
``[[trace]]`` entries does not touch the others) the source files (name, size, mtime, BLAKE2 hash), the parser
version (a hash of the parser code), the parts written, the event/reject counts, the category order of each
categorical column, the parser's ``meta`` and the ingest summary. A trace whose files (added, removed or
changed content) or parser changed is parsed again; nothing else is. The unit of re-ingest is the trace, not the
file, because a parser merges a trace's per-CPU files (time order across CPUs, process names from notify
records of any CPU): parsing one file alone would not give the same table. A file whose size and mtime are
those recorded is not hashed again.

Traces are parsed and written chunk by chunk (``parsers.parse_iter``: time-ordered chunks for blktrace, the
whole table as one chunk for other formats), so ingest memory follows the chunk size, not the trace; the counts,
time span, category orders and rejects of the entry are accumulated over the chunks.

Reading back gives exactly the parser's table (same rows in the same order, same dtypes and category order):
each part carries a ``_row`` column (the row number in the parser's output). ``dataset(ts, kind)`` and
``read(ts, kind, node=, layer=, device=, start_ns=, end_ns=)`` read the store with pyarrow.dataset filters, by
partition (node, layer, device) and by time (row-group statistics on ``time_ns``, which is sorted per part
for block traces), so a reader holds only the slice it asked for.

The cache lives in ``<set>/.writeorder/`` when the set's folder is writable, otherwise in
``$XDG_CACHE_HOME/writeorder/<hash of the set's path>/``; ``WRITEORDER_CACHE`` overrides both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from toolkit import parsers
from toolkit.events import BLOCK_EVENTS, QEMU_EVENTS, REJECTS
from toolkit.parsers import ParseResult
from toolkit.traceset import Trace, TraceSet

_CODE = Path(__file__).parent
STORE_VERSION = 2
#: rows per Parquet row group (and per conversion slice while writing: bounds the extra memory of a write)
ROW_GROUP = 1 << 20
KINDS = ("block", "qemu")
PARTITIONING = pds.partitioning(pa.schema([("node", pa.string()), ("layer", pa.string()), ("dev", pa.string()),
                                           ("trace", pa.string())]), flavor="hive")

_parser_version: str | None = None


def parser_version() -> str:
    """A hash of the parser and schema code: a store written by other code is not reused."""
    global _parser_version
    if _parser_version is None:
        h = hashlib.blake2b(digest_size=8)
        for f in sorted([*_CODE.glob("parsers/*.py"), _CODE / "events.py", _CODE / "fileio.py"]):
            h.update(f.read_bytes())
        h.update(f"store{STORE_VERSION}".encode())
        _parser_version = h.hexdigest()
    return _parser_version


def cache_dir(ts: TraceSet) -> Path:
    env = os.environ.get("WRITEORDER_CACHE")
    if env:
        base = Path(env) / _path_hash(ts.root)
    elif os.access(ts.root, os.W_OK):
        base = ts.root / ".writeorder"
    else:
        xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        base = xdg / "writeorder" / _path_hash(ts.root)
    return base


def _path_hash(p: Path) -> str:
    return hashlib.blake2b(str(Path(p).resolve()).encode(), digest_size=8).hexdigest()


def file_hash(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    return h.hexdigest()


def trace_key(t: Trace) -> str:
    """A stable name for a trace in the store: what it is, not where it is in the manifest."""
    return hashlib.blake2b(f"{t.node}\0{t.layer}\0{t.path}\0{t.format}".encode(), digest_size=6).hexdigest()


def kind_of(fmt: str) -> str:
    return "qemu" if fmt.startswith("qemu") else "block"


def schema_for(fmt: str):
    return QEMU_EVENTS if fmt.startswith("qemu") else BLOCK_EVENTS


# ------------------------------------------------------------------------------------------------ fingerprints
def _files_of(t: Trace, known: dict | None, root: Path) -> list[dict]:
    """Name, size, mtime and hash of each file; the hash is reused when size and mtime are those recorded."""
    old = {f["name"]: f for f in (known or {}).get("files", [])}
    out = []
    for f in t.files:
        st = os.stat(f)
        name = os.path.relpath(f, root)
        o = old.get(name)
        if o and o["size"] == st.st_size and o["mtime_ns"] == st.st_mtime_ns:
            h = o["hash"]
        else:
            h = file_hash(f)
        out.append({"name": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "hash": h})
    return out


def _same_source(entry: dict | None, files: list[dict], fmt: str) -> bool:
    if not entry or entry.get("parser") != parser_version() or entry.get("format") != fmt:
        return False
    a = [(f["name"], f["size"], f["hash"]) for f in entry.get("files", [])]
    return a == [(f["name"], f["size"], f["hash"]) for f in files]


def _fp_hash(files: list[dict]) -> str:
    h = hashlib.blake2b(digest_size=6)
    h.update(parser_version().encode())
    for f in files:
        h.update(f"{f['name']}\0{f['size']}\0{f['hash']}\0".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ index
def load_index(base: Path) -> dict:
    try:
        doc = json.loads((base / "store.json").read_text())
    except (OSError, ValueError):
        return {"version": STORE_VERSION, "traces": {}}
    if not isinstance(doc, dict) or doc.get("version") != STORE_VERSION or not isinstance(doc.get("traces"), dict):
        return {"version": STORE_VERSION, "traces": {}}
    return doc


def _save_index(base: Path, doc: dict) -> None:
    base.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=base, prefix=".store.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, sort_keys=True)
    os.replace(tmp, base / "store.json")


def _drop_legacy(base: Path) -> None:
    """The per-trace folders of the first cache layout (trace000/ ...) are not read any more."""
    for d in base.glob("trace[0-9][0-9][0-9]"):
        if (d / "store.json").exists() or (d / "events.parquet").exists():
            shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ parse + write
def parse_trace(t: Trace) -> ParseResult:
    """Parse one trace's files (no store). ``meta`` is normalised to JSON types, as read back from the store."""
    res = parsers.parse(t.format, t.files)
    res.meta = json.loads(json.dumps(_keys(res.meta), default=_jsonable, sort_keys=True))
    return res


def summarise(t: Trace, res: ParseResult) -> dict:
    """What ``writeorder ingest`` prints for a trace (counts, time span, actions or QEMU events)."""
    ev = res.events
    col = "event" if t.format.startswith("qemu") else "action"
    counts = _value_counts(ev[col])
    times = ev["time_ns"].dropna()
    return {
        "events": int(len(ev)), "rejects": int(len(res.rejects)),
        "first_ns": int(times.min()) if len(times) else None,
        "last_ns": int(times.max()) if len(times) else None,
        "clock": res.meta.get("clock"),
        "actions": {str(k): int(v) for k, v in sorted(counts.items())},
    }


def _value_counts(s: pd.Series) -> dict[str, int]:
    """Rows per value as strings (nulls not counted); counted on the categories when ``s`` is categorical."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        vc = s.value_counts(sort=False)
        vc = vc[vc > 0]
    else:
        vc = s.astype(str).value_counts()
    out: dict[str, int] = {}
    for k, v in vc.items():
        out[str(k)] = out.get(str(k), 0) + int(v)
    return out


def _arrow_type(dtype: str) -> pa.DataType | None:
    return {"int64": pa.int64(), "int32": pa.int32(), "bool": pa.bool_(), "category": pa.dictionary(pa.int32(),
            pa.string()), "string": pa.string(), "Int64": pa.int64(), "UInt64": pa.uint64(), "boolean": pa.bool_(),
            "Float64": pa.float64(), "float64": pa.float64()}.get(dtype)


def _to_arrow(df: pd.DataFrame, schema) -> pa.Table:
    t = pa.Table.from_pandas(df, preserve_index=False)
    fields = []
    for f in t.schema:
        want = _arrow_type(schema.dtypes.get(f.name, "")) if f.name in schema.dtypes else None
        if f.name == "_row":
            want = pa.int64()
        fields.append(pa.field(f.name, want or f.type))
    return t.cast(pa.schema(fields), safe=False).replace_schema_metadata(None)


def _dev_values(t: Trace, ev: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Partition code per row and the partition names (block: the device; QEMU: the process)."""
    if kind_of(t.format) == "qemu" or "device" not in ev.columns:
        name = t.device or (f"pid{t.pid}" if t.pid is not None else "qemu")
        return np.zeros(len(ev), dtype=np.int64), [name]
    codes, uniq = pd.factorize(ev["device"].astype(object), sort=True, use_na_sentinel=True)
    names = [str(u) for u in uniq]
    if (codes < 0).any():
        codes = np.where(codes < 0, len(names), codes)
        names.append("-")
    return codes, names


def parse_trace_iter(t: Trace) -> Iterator[ParseResult]:
    """Parse one trace's files in chunks (``parsers.parse_iter``); ``meta`` normalised as in ``parse_trace``."""
    for res in parsers.parse_iter(t.format, t.files):
        res.meta = json.loads(json.dumps(_keys(res.meta), default=_jsonable, sort_keys=True))
        yield res


class _Summary:
    """``summarise`` accumulated over the chunks of a trace."""

    def __init__(self, t: Trace) -> None:
        self.col = "event" if t.format.startswith("qemu") else "action"
        self.events = self.rejects = 0
        self.first: int | None = None
        self.last: int | None = None
        self.counts: dict[str, int] = {}

    def add(self, res: ParseResult) -> None:
        ev = res.events
        self.events += len(ev)
        self.rejects += len(res.rejects)
        for k, v in _value_counts(ev[self.col]).items():
            self.counts[k] = self.counts.get(k, 0) + v
        times = ev["time_ns"].dropna()
        if len(times):
            lo, hi = int(times.min()), int(times.max())
            self.first = lo if self.first is None else min(self.first, lo)
            self.last = hi if self.last is None else max(self.last, hi)

    def result(self, meta: dict) -> dict:
        return {"events": self.events, "rejects": self.rejects, "first_ns": self.first, "last_ns": self.last,
                "clock": meta.get("clock"), "actions": {k: self.counts[k] for k in sorted(self.counts)}}


def _merge_categories(seen: list[str] | None, new: list[str]) -> list[str]:
    """A chunk's categories after the earlier chunks' (``parsers.parse_iter``: the newest list holds them all)."""
    if seen is None or set(seen) <= set(new):
        return new
    have = set(seen)
    return seen + [x for x in new if x not in have]


def write_trace(base: Path, t: Trace, res: ParseResult | Iterable[ParseResult], files: list[dict]) -> dict:
    """Write one trace's events (partitioned by device) and rejects; returns its store.json entry.

    ``res`` is the parsed trace or its chunks (``parsers.parse_iter``), written one at a time."""
    return _write_chunks(base, t, [res] if isinstance(res, ParseResult) else res, files)[0]


def _write_chunks(base: Path, t: Trace, chunks: Iterable[ParseResult], files: list[dict]
                  ) -> tuple[dict, ParseResult | None]:
    """Write the chunks of one trace; returns (its store.json entry, the result when it came as one chunk)."""
    key, fp = trace_key(t), _fp_hash(files)
    kind = kind_of(t.format)
    schema = schema_for(t.format)
    writers: dict[str, pq.ParquetWriter] = {}
    tmps: dict[str, tuple[str, Path]] = {}
    summary = _Summary(t)
    cats: dict[str, list[str]] = {}
    rejects: list[pd.DataFrame] = []
    row = 0
    nchunks = 0
    single: ParseResult | None = None
    meta: dict = {}
    last_ev = None

    def writer(dev: str, schema_: pa.Schema) -> pq.ParquetWriter:
        if dev not in writers:
            rel = (f"{kind}/node={quote(t.node, safe='')}/layer={quote(t.layer, safe='')}/"
                   f"dev={quote(dev, safe='')}/trace={key}/{fp}.parquet")
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{fp}.{os.getpid()}.tmp")
            writers[dev] = pq.ParquetWriter(tmp, schema_, compression="zstd")
            tmps[dev] = (rel, tmp)
        return writers[dev]

    def write(ev: pd.DataFrame, row: int) -> None:
        codes, devs = _dev_values(t, ev)
        for s in range(0, len(ev), ROW_GROUP):
            chunk = ev.iloc[s:s + ROW_GROUP].copy()
            chunk["_row"] = np.arange(row + s, row + s + len(chunk), dtype=np.int64)
            tbl = _to_arrow(chunk, schema)
            cc = codes[s:s + ROW_GROUP]
            present = np.unique(cc)
            for c in present.tolist():
                part = tbl if len(present) == 1 else tbl.filter(pa.array(cc == c))
                writer(devs[c], part.schema).write_table(part, row_group_size=ROW_GROUP)
            del tbl, chunk

    # one chunk is written (Arrow, zstd) on a thread while the parser builds the next one
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
    inflight: Future | None = None
    try:
        for res in chunks:
            nchunks += 1
            single = res if nchunks == 1 else None
            ev = res.events
            if inflight is not None:
                inflight.result()
            inflight = pool.submit(write, ev, row)
            row += len(ev)
            summary.add(res)
            for c in ev.columns:
                if isinstance(ev[c].dtype, pd.CategoricalDtype):
                    cats[c] = _merge_categories(cats.get(c), [str(x) for x in ev[c].cat.categories])
            if len(res.rejects):
                rejects.append(res.rejects)
            meta = res.meta
            last_ev = ev.iloc[:0]
            del ev, res
        if inflight is not None:
            inflight.result()
            inflight = None
        if not writers and last_ev is not None:  # no events: one empty part keeps the schema
            chunk = last_ev.copy()
            chunk["_row"] = np.zeros(0, dtype=np.int64)
            tbl = _to_arrow(chunk, schema)
            _, devs = _dev_values(t, last_ev)
            writer(devs[0] if devs else "-", tbl.schema).write_table(tbl, row_group_size=ROW_GROUP)
    except BaseException:
        if inflight is not None:
            wait([inflight])
        pool.shutdown()
        for w in writers.values():
            w.close()
        for _, tmp in tmps.values():
            tmp.unlink(missing_ok=True)
        raise
    pool.shutdown()
    for w in writers.values():
        w.close()
    names = sorted(d for d in tmps if d != "-") + (["-"] if "-" in tmps else [])
    parts = []
    for d in names:
        rel, tmp = tmps[d]
        os.replace(tmp, base / rel)
        parts.append(rel)
    rj = pd.concat(rejects, ignore_index=True) if rejects else REJECTS.empty()
    if nchunks > 1 and len(rj):  # chunks give a file's rejects when it is read: parse() lists them by file
        rank = {f: i for i, f in enumerate(t.files)}
        rj = rj.iloc[np.argsort(rj["file"].map(lambda f: rank.get(f, len(rank))).to_numpy(), kind="stable")]
        rj = rj.reset_index(drop=True)
    rj_rel = f"rejects/{key}-{fp}.parquet"
    (base / "rejects").mkdir(parents=True, exist_ok=True)
    rtmp = base / "rejects" / f".{key}-{fp}.{os.getpid()}.tmp"
    pq.write_table(_to_arrow(rj, REJECTS), rtmp, compression="zstd")
    os.replace(rtmp, base / rj_rel)
    entry = {"key": key, "fp": fp, "node": t.node, "layer": t.layer, "path": t.path, "format": t.format,
             "kind": kind, "parser": parser_version(), "files": files, "paths": list(t.files), "parts": parts,
             "devices": names, "rejects_part": rj_rel, "events": int(row), "rejects": int(len(rj)),
             "categories": cats, "meta": meta, "summary": summary.result(meta)}
    return entry, single


def ingest_trace(base: Path, root: Path, t: Trace, known: dict | None, use_cache: bool = True
                 ) -> tuple[dict | None, ParseResult | None, str | None]:
    """Bring one trace into the store: (entry, the parsed result, a note). ``root``: the set's folder (file names
    are recorded relative to it). The trace is parsed and written chunk by chunk (``parsers.parse_iter``), so
    memory follows the chunk size, not the trace: the result is returned only when the trace came as one chunk
    (else None: read it back with ``read_trace``). When nothing was stored (``use_cache`` false, or the write
    failed) the trace is parsed whole, the result returned, and the entry is ``{"summary": ..., "stored": False}``."""
    files = _files_of(t, known, root)
    if use_cache and _same_source(known, files, t.format) and all((base / p).exists() for p in
                                                                 [*known["parts"], known["rejects_part"]]):
        return known, None, None
    if not use_cache:
        res = parse_trace(t)
        return {"summary": summarise(t, res), "stored": False}, res, None
    try:
        try:
            entry, res = _write_chunks(base, t, parse_trace_iter(t), files)
        except parsers.NotTimeOrdered:  # records too far out of time order to stream: the whole trace at once
            res = parse_trace(t)
            entry = write_trace(base, t, res, files)
        return entry, res, None
    except OSError as e:  # a store that cannot be written only costs speed; say so
        res = parse_trace(t)
        return ({"summary": summarise(t, res), "stored": False}, res,
                f"Parquet cache not written ({base}: {e.strerror})")


def read_trace(base: Path, t: Trace, entry: dict) -> ParseResult:
    """One trace back from the store, exactly as the parser returned it."""
    schema = schema_for(t.format)
    tables = [pq.read_table(base / p) for p in entry["parts"]]
    tbl = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    df = tbl.to_pandas()
    if len(tables) > 1:
        df = df.sort_values("_row", kind="stable")
    df = df.drop(columns="_row").reset_index(drop=True)
    remap = dict(zip(entry.get("paths", []), t.files, strict=False))
    for c, cats in entry.get("categories", {}).items():
        if c in df.columns:
            s = df[c]
            # set_categories, not astype: an unordered dtype with the same values in another order is "equal"
            s = s.cat.set_categories(cats) if isinstance(s.dtype, pd.CategoricalDtype) else s.astype(
                pd.CategoricalDtype(cats))
            if c == "file" and remap:
                s = s.cat.rename_categories([remap.get(x, x) for x in cats])
            df[c] = s
    ev = schema.conform(df)
    rj = REJECTS.conform(pq.read_table(base / entry["rejects_part"]).to_pandas())
    if remap and len(rj):
        rj["file"] = rj["file"].map(lambda x: remap.get(x, x)).astype(REJECTS.dtypes["file"])
    return ParseResult(ev, rj, _remap_strings(json.loads(json.dumps(entry.get("meta", {}))), remap))


def _remap_strings(o, remap: dict):
    if not remap:
        return o
    if isinstance(o, str):
        return remap.get(o, o)
    if isinstance(o, dict):
        return {remap.get(k, k): _remap_strings(v, remap) for k, v in o.items()}
    if isinstance(o, list):
        return [_remap_strings(v, remap) for v in o]
    return o


# ------------------------------------------------------------------------------------------------ the set
def update(ts: TraceSet, *, use_cache: bool = True, progress: Callable[[str], None] | None = None,
           keep: bool = True, runner=None) -> tuple[dict[int, dict], dict[int, ParseResult]]:
    """Bring every trace of ``ts`` into the store. Returns (store entries by trace index, results parsed now by
    index: only when ``keep`` or when they could not be stored, and only for traces that were parsed as one chunk;
    the others are read back with ``read_trace``). Every entry has the trace's ``summary``.
    ``runner(base, root, traces, known)`` may do the per-trace work elsewhere (dask): it returns
    ``[(entry, note)]`` in the order of ``traces``; the entries are committed to store.json here."""
    base = cache_dir(ts)
    doc = load_index(base) if use_cache else {"version": STORE_VERSION, "traces": {}}
    entries: dict[int, dict] = {}
    parsed: dict[int, ParseResult] = {}
    notes: list[str] = []
    if runner is not None:
        got = runner(base, ts.root, ts.traces, [doc["traces"].get(trace_key(t)) for t in ts.traces])
        for t, (entry, note) in zip(ts.traces, got, strict=True):
            entries[t.index] = entry
            if note:
                notes.append(note)
    else:
        for t in ts.traces:
            if progress:
                progress(f"{t.path} ({t.format})")
            entry, res, note = ingest_trace(base, ts.root, t, doc["traces"].get(trace_key(t)), use_cache)
            entries[t.index] = entry
            if res is not None and (keep or not entry.get("parts")):
                parsed[t.index] = res
            if note:
                notes.append(note)
    for n in dict.fromkeys(notes):
        if n not in ts.notes:
            ts.notes.append(n)
    if use_cache:
        _commit(base, doc, {i: e for i, e in entries.items() if e.get("parts") is not None})
    return entries, parsed


def _commit(base: Path, doc: dict, entries: dict[int, dict]) -> None:
    """Record the new entries (store.json last), then delete the parts no entry names any more."""
    new = dict(doc["traces"])
    for e in entries.values():
        new[e["key"]] = e
    if not entries or new == doc["traces"] and (base / "store.json").exists():
        return
    try:
        _save_index(base, {"version": STORE_VERSION, "traces": new})
    except OSError:
        return
    live = {p for e in new.values() for p in [*e["parts"], e["rejects_part"]]}
    for kind in (*KINDS, "rejects"):
        for f in (base / kind).rglob("*.parquet") if (base / kind).exists() else []:
            if str(f.relative_to(base)) not in live:
                f.unlink(missing_ok=True)
    _drop_legacy(base)


def ingest(ts: TraceSet, *, use_cache: bool = True, progress: Callable[[str], None] | None = None
           ) -> dict[int, ParseResult]:
    """Parse every trace of ``ts`` (or read it back from the Parquet store); results by trace index."""
    entries, parsed = update(ts, use_cache=use_cache, progress=progress)
    base = cache_dir(ts)
    out: dict[int, ParseResult] = {}
    for t in ts.traces:
        out[t.index] = parsed[t.index] if t.index in parsed else read_trace(base, t, entries[t.index])
    return out


# ------------------------------------------------------------------------------------------------ readers
def dataset(ts: TraceSet, kind: str = "block", *, ingest_first: bool = True) -> pds.Dataset:
    """The set's events of one kind (``block`` or ``qemu``) as a pyarrow dataset over the store's current parts,
    with the partition fields ``node``, ``layer``, ``dev`` and ``trace`` (the store key: ``trace_key``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    base = cache_dir(ts)
    if ingest_first:
        entries, _ = update(ts, keep=False)
    else:
        keys = {trace_key(t) for t in ts.traces}
        entries = {i: e for i, e in enumerate(load_index(base)["traces"].values()) if e["key"] in keys}
    files = [str(base / p) for e in entries.values() if e.get("kind") == kind for p in e["parts"]]
    if len(files) < sum(1 for e in entries.values() if e.get("kind") == kind) or any(
            e.get("parts") is None for e in entries.values()):
        raise OSError(f"{base}: the Parquet store could not be written: {'; '.join(ts.notes)}")
    if not files:
        return pds.dataset(pa.table({}), schema=pa.schema([]))
    schemas = [pq.read_schema(f) for f in files]
    schema = pa.unify_schemas([*schemas, PARTITIONING.schema], promote_options="permissive") \
        if len({s.to_string() for s in schemas}) > 1 else pa.unify_schemas([schemas[0], PARTITIONING.schema])
    return pds.dataset(files, format="parquet", partitioning=PARTITIONING, partition_base_dir=str(base / kind),
                       schema=schema)


def time_filter(start_ns: int | None = None, end_ns: int | None = None, *, node: str | None = None,
                layer: str | None = None, device: str | Iterable[str] | None = None,
                trace: str | Iterable[str] | None = None):
    """A pyarrow expression: time in [start_ns, end_ns) and the given partitions (None: any)."""
    expr = None

    def add(e):
        nonlocal expr
        expr = e if expr is None else expr & e

    for name, v in (("node", node), ("layer", layer), ("dev", device), ("trace", trace)):
        if v is None:
            continue
        add(pds.field(name) == v if isinstance(v, str) else pds.field(name).isin(list(v)))
    if start_ns is not None:
        add(pds.field("time_ns") >= start_ns)
    if end_ns is not None:
        add(pds.field("time_ns") < end_ns)
    return expr


def read(ts: TraceSet, kind: str = "block", *, node: str | None = None, layer: str | None = None,
         device: str | Iterable[str] | None = None, trace: Trace | Iterable[Trace] | None = None,
         start_ns: int | None = None, end_ns: int | None = None, columns: list[str] | None = None,
         ingest_first: bool = True) -> pd.DataFrame:
    """Events of the set filtered by partition and time range, in the parsers' schema (plus ``node``, ``layer``,
    ``trace`` columns when asked for in ``columns``); rows of one trace stay in the parser's order."""
    d = dataset(ts, kind, ingest_first=ingest_first)
    if not d.schema.names:
        return (QEMU_EVENTS if kind == "qemu" else BLOCK_EVENTS).empty()
    keys = None
    if trace is not None:
        keys = [trace_key(trace)] if isinstance(trace, Trace) else [trace_key(x) for x in trace]
    expr = time_filter(start_ns, end_ns, node=node, layer=layer, device=device, trace=keys)
    want = None
    if columns is not None:
        want = list(dict.fromkeys([*columns, "trace", "_row"]))
    tbl = d.to_table(columns=want, filter=expr)
    df = tbl.to_pandas()
    if len(df):
        df = df.sort_values(["trace", "_row"], kind="stable")
    drop = [c for c in ("_row", "node", "layer", "dev", "trace") if c in df.columns and (columns is None or c not in
                                                                                           columns)]
    df = df.drop(columns=drop).reset_index(drop=True)
    if columns is None:
        df = (QEMU_EVENTS if kind == "qemu" else BLOCK_EVENTS).conform(df)
    return df


# ------------------------------------------------------------------------------------------------ JSON helpers
def _keys(o):
    """Dict keys as strings (tuple keys joined with ','), recursively: meta must survive a JSON round trip."""
    if isinstance(o, dict):
        return {(",".join(map(str, k)) if isinstance(k, tuple) else str(k)): _keys(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_keys(v) for v in o]
    return o


def _jsonable(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
