"""Parquet cache of parsed trace sets.

``ingest(ts)`` parses every trace of a set once and stores, per trace, ``events.parquet``, ``rejects.parquet``
and ``meta.json`` under the set's cache folder, with ``store.json`` recording the source files (size, mtime,
BLAKE2 hash) and the parser version (a hash of the parser code). A trace whose files or parser changed is parsed
again; the others are read back from Parquet.

The cache lives in ``<set>/.writeorder/`` when the set's folder is writable, otherwise in
``$XDG_CACHE_HOME/writeorder/<hash of the set's path>/``; ``WRITEORDER_CACHE`` overrides both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from toolkit import parsers
from toolkit.events import BLOCK_EVENTS, QEMU_EVENTS, REJECTS
from toolkit.parsers import ParseResult
from toolkit.traceset import Trace, TraceSet

_CODE = Path(__file__).parent


def parser_version() -> str:
    """A hash of the parser and schema code: a cache written by other code is not reused."""
    h = hashlib.blake2b(digest_size=8)
    for f in sorted([*_CODE.glob("parsers/*.py"), _CODE / "events.py", _CODE / "fileio.py"]):
        h.update(f.read_bytes())
    return h.hexdigest()


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


def _fingerprint(t: Trace) -> dict:
    return {
        "format": t.format,
        "files": [{"path": os.path.basename(f), "size": os.path.getsize(f), "hash": file_hash(f)} for f in t.files],
        "parser": parser_version(),
    }


def schema_for(fmt: str):
    return QEMU_EVENTS if fmt.startswith("qemu") else BLOCK_EVENTS


def parse_trace(t: Trace) -> ParseResult:
    """Parse one trace's files (no cache). ``meta`` is normalised to JSON types, as read back from the cache."""
    res = parsers.parse(t.format, t.files)
    res.meta = json.loads(json.dumps(_keys(res.meta), default=_jsonable, sort_keys=True))
    return res


def ingest(ts: TraceSet, *, use_cache: bool = True, progress: Callable[[str], None] | None = None
           ) -> dict[int, ParseResult]:
    """Parse every trace of ``ts`` (or read it back from the Parquet cache); results by trace index."""
    out: dict[int, ParseResult] = {}
    base = cache_dir(ts)
    for t in ts.traces:
        if progress:
            progress(f"{t.path} ({t.format})")
        d = base / f"trace{t.index:03d}"
        fp = _fingerprint(t) if use_cache else None
        if use_cache and _cached(d, fp):
            out[t.index] = _read(d, t.format)
            continue
        res = parse_trace(t)
        out[t.index] = res
        if use_cache:
            try:
                _write(d, res, fp)
            except OSError as e:  # a cache that cannot be written only costs speed; say so once
                note = f"Parquet cache not written ({d}: {e.strerror})"
                if note not in ts.notes:
                    ts.notes.append(note)
    return out


def _cached(d: Path, fp: dict | None) -> bool:
    try:
        return json.loads((d / "store.json").read_text()) == fp
    except (OSError, ValueError):
        return False


def _read(d: Path, fmt: str) -> ParseResult:
    ev = schema_for(fmt).conform(pd.read_parquet(d / "events.parquet"))
    rj = REJECTS.conform(pd.read_parquet(d / "rejects.parquet"))
    meta = json.loads((d / "meta.json").read_text())
    return ParseResult(ev, rj, meta)


def _write(d: Path, res: ParseResult, fp: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "store.json").unlink(missing_ok=True)
    res.events.to_parquet(d / "events.parquet", compression="zstd", index=False)
    res.rejects.to_parquet(d / "rejects.parquet", compression="zstd", index=False)
    (d / "meta.json").write_text(json.dumps(_keys(res.meta), default=_jsonable, sort_keys=True))
    (d / "store.json").write_text(json.dumps(fp, sort_keys=True))  # written last: marks the entry complete


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
