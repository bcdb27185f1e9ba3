"""Trace sets: a folder of trace files with a ``traceset.toml`` manifest (DESIGN.md), or a bare folder.

``load(path)`` returns a :class:`TraceSet`: the nodes, the traces (each with the files its ``path`` glob matched
and its format, given or detected from content), the disks followed through the layers and the clock reference
pairs. A bare folder (no manifest) is accepted: formats are detected from content and layers from the devices
and folder names; what cannot be inferred is asked for in a clear error.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.fileio import TraceError
from toolkit.parsers import FORMATS, detect_format

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LAYERS = ("guest-block", "qemu", "host-block")
ROLES = ("source", "destination", "single")
CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")
MAX_FILES_PER_TRACE = 4096


@dataclass
class Node:
    name: str
    kind: str = "host"  # host | guest | storage


@dataclass
class Trace:
    """One ``[[trace]]``: ``files`` are what ``path`` matched (per-CPU files of one trace together)."""

    index: int
    node: str
    layer: str
    path: str
    files: list[str]
    format: str
    role: str = "single"
    guest: str | None = None
    pid: int | None = None
    threads: str | None = None
    device: str | None = None


@dataclass
class Disk:
    """One virtual disk followed through the layers. ``mapping``: a list of steps (raw / extents / qemu-img-map)."""

    guest: str
    guest_device: str | None
    host_device: str | None
    mapping: list[dict]
    cache: str | None = None
    guest_write_cache: bool | None = None
    name: str = ""


@dataclass
class ClockPair:
    """The same instant read on two clocks ('node:monotonic', 'node:realtime'), in ns."""

    a: str
    b: str
    a_ns: int
    b_ns: int


@dataclass
class TraceSet:
    name: str
    root: Path
    description: str = ""
    nodes: list[Node] = field(default_factory=list)
    traces: list[Trace] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    clocks: list[ClockPair] = field(default_factory=list)
    manifest: Path | None = None
    notes: list[str] = field(default_factory=list)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def traces_of(self, layer: str) -> list[Trace]:
        return [t for t in self.traces if t.layer == layer]

    def resolve(self, rel: str) -> Path:
        return (self.root / rel).resolve()


def load(path: str | os.PathLike) -> TraceSet:
    """Read a trace set from a folder (with or without ``traceset.toml``) or from a manifest file."""
    p = Path(path)
    if not p.exists():
        raise TraceError(f"{path}: no such trace set (a folder with traceset.toml, or a folder of trace files)")
    if p.is_file():
        if p.suffix == ".toml":
            return _from_manifest(p)
        raise TraceError(f"{path}: a trace set is a folder or its traceset.toml, not a single trace file")
    m = p / "traceset.toml"
    if m.is_file():
        return _from_manifest(m)
    return _from_folder(p)


# ----------------------------------------------------------------------------------------------------------
def _from_manifest(mpath: Path) -> TraceSet:
    try:
        doc = tomllib.loads(mpath.read_text(encoding="utf-8", errors="strict"))
    except tomllib.TOMLDecodeError as e:
        raise TraceError(f"{mpath}: {e}") from None
    except UnicodeDecodeError as e:
        raise TraceError(f"{mpath}: not UTF-8 text (byte {e.start})") from None
    root = mpath.parent
    where = str(mpath)

    def req(tbl: dict, key: str, ctx: str, typ: type | tuple = str):
        if key not in tbl:
            raise TraceError(f"{where}: {ctx}: missing '{key}'")
        v = tbl[key]
        if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
            raise TraceError(f"{where}: {ctx}: '{key}' must be {_typename(typ)}, not {v!r}"[:300])
        return v

    def opt(tbl: dict, key: str, ctx: str, typ: type | tuple = str, default=None):
        if key not in tbl:
            return default
        return req(tbl, key, ctx, typ)

    ts = TraceSet(name=str(doc.get("name", root.name)), root=root, description=str(doc.get("description", "")),
                  manifest=mpath)
    for i, n in enumerate(_tables(doc, "node", where)):
        ts.nodes.append(Node(req(n, "name", f"[[node]] #{i + 1}"), opt(n, "kind", f"[[node]] #{i + 1}", default="host")))
    names = {n.name for n in ts.nodes}
    for i, t in enumerate(_tables(doc, "trace", where)):
        ctx = f"[[trace]] #{i + 1}"
        node = req(t, "node", ctx)
        layer = req(t, "layer", ctx)
        if layer not in LAYERS:
            raise TraceError(f"{where}: {ctx}: layer {layer!r} is not one of {', '.join(LAYERS)}")
        if node not in names:
            if ts.nodes:
                raise TraceError(f"{where}: {ctx}: node {node!r} is not declared in a [[node]] table")
            ts.nodes.append(Node(node, "guest" if layer == "guest-block" else "host"))
            names.add(node)
        rel = req(t, "path", ctx)
        files = _glob(root, rel, f"{where}: {ctx}")
        fmt = opt(t, "format", ctx)
        if fmt is not None and fmt not in FORMATS:
            raise TraceError(f"{where}: {ctx}: format {fmt!r} is not one of {', '.join(FORMATS)}")
        if fmt is None:
            fmt = _detect_one(files, f"{where}: {ctx}")
        role = opt(t, "role", ctx, default="single")
        if role not in ROLES:
            raise TraceError(f"{where}: {ctx}: role {role!r} is not one of {', '.join(ROLES)}")
        threads = opt(t, "threads", ctx)
        if threads is not None and not (root / threads).is_file():
            raise TraceError(f"{where}: {ctx}: threads file {threads!r} not found")
        ts.traces.append(Trace(
            index=i, node=node, layer=layer, path=rel, files=files, format=fmt, role=role,
            guest=opt(t, "guest", ctx), pid=opt(t, "pid", ctx, int), threads=threads, device=opt(t, "device", ctx),
        ))
    if not ts.traces:
        raise TraceError(f"{where}: no [[trace]] entries")
    for i, d in enumerate(_tables(doc, "disk", where)):
        ctx = f"[[disk]] #{i + 1}"
        mapping = d.get("mapping", {"kind": "raw", "offset": 0})
        steps = mapping if isinstance(mapping, list) else [mapping]
        for s in steps:
            if not isinstance(s, dict) or s.get("kind") not in ("raw", "extents", "qemu-img-map"):
                raise TraceError(f"{where}: {ctx}: mapping step {s!r} needs kind = raw | extents | qemu-img-map"[:300])
            if s["kind"] != "raw":
                f = s.get("file")
                if not isinstance(f, str) or not (root / f).is_file():
                    raise TraceError(f"{where}: {ctx}: mapping file {f!r} not found")
        cache = opt(d, "cache", ctx)
        if cache is not None and cache not in CACHE_MODES:
            raise TraceError(f"{where}: {ctx}: cache {cache!r} is not one of {', '.join(CACHE_MODES)}")
        ts.disks.append(Disk(
            guest=req(d, "guest", ctx), guest_device=opt(d, "guest_device", ctx),
            host_device=opt(d, "host_device", ctx), mapping=steps, cache=cache,
            guest_write_cache=opt(d, "guest_write_cache", ctx, bool), name=opt(d, "name", ctx, default=f"disk{i}"),
        ))
    for i, c in enumerate(_tables(doc, "clock", where)):
        ctx = f"[[clock]] #{i + 1}"
        ts.clocks.append(ClockPair(req(c, "a", ctx), req(c, "b", ctx), req(c, "a_ns", ctx, int), req(c, "b_ns", ctx, int)))
    return ts


def _typename(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {"str": "a string", "int": "an integer", "bool": "true or false"}.get(t.__name__, t.__name__)


def _tables(doc: dict, key: str, where: str) -> list[dict]:
    v = doc.get(key, [])
    if isinstance(v, dict):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise TraceError(f"{where}: '{key}' must be an array of tables ([[{key}]])")
    return v


def _glob(root: Path, rel: str, ctx: str) -> list[str]:
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        # allowed, but said plainly: a manifest that points outside its folder
        pass
    pattern = str(root / rel)
    files = []
    for f in glob.iglob(pattern, recursive=True):  # stops at the limit: a glob over a huge tree ends quickly
        if os.path.isfile(f):
            files.append(f)
            if len(files) > MAX_FILES_PER_TRACE:
                raise TraceError(f"{ctx}: path {rel!r} matches more than {MAX_FILES_PER_TRACE} files; "
                                 "narrow the glob")
    if not files:
        raise TraceError(f"{ctx}: path {rel!r} matches no file under {root}")
    return sorted(files, key=_cpu_key)


_CPU = re.compile(r"\.blktrace\.(\d+)")


def _cpu_key(f: str):
    m = _CPU.search(os.path.basename(f))
    return (f[: m.start()] if m else f, int(m.group(1)) if m else -1, f)


def _detect_one(files: list[str], ctx: str) -> str:
    fmts = {f: detect_format(f) for f in files}
    bad = [f for f, v in fmts.items() if v is None]
    if bad:
        raise TraceError(f"{bad[0]}: not a recognised trace format ({', '.join(FORMATS)}); "
                         f"set format = ... in {ctx.split(':')[0]}")
    kinds = set(fmts.values())
    if len(kinds) > 1:
        raise TraceError(f"{ctx}: files of different formats in one trace: {sorted(kinds)}")
    return kinds.pop()


# ----------------------------------------------------------------------------------------------------------
_AUX = re.compile(r"(threads\.tsv|saved_cmdlines|manifest\.json|index\.json|qemu-img-map|filefrag|oplog|serial-|qmp-|"
                  r"dmesg|uname|cmdline|wl\.out|write_cache|blktrace\.stdout|README)", re.I)


def _from_folder(root: Path) -> TraceSet:
    """A folder without a manifest: detect every trace file's format from content."""
    ts = TraceSet(name=root.name, root=root, notes=["no traceset.toml: formats and layers were detected"])
    found: dict[str, list[str]] = {}
    fmt_of: dict[str, str] = {}
    for f in sorted(glob.iglob(str(root / "**" / "*"), recursive=True)):
        if not os.path.isfile(f) or _AUX.search(os.path.basename(f)):
            continue
        fmt = detect_format(f)
        if fmt is None:
            continue
        m = _CPU.search(os.path.basename(f))
        key = os.path.join(os.path.dirname(f), os.path.basename(f)[: m.start()] + ".blktrace.*") if m else f
        found.setdefault(key, []).append(f)
        fmt_of[key] = fmt
        if sum(len(v) for v in found.values()) > 20 * MAX_FILES_PER_TRACE:
            raise TraceError(f"{root}: more than {20 * MAX_FILES_PER_TRACE} trace files; write a traceset.toml")
    if not found:
        raise TraceError(f"{root}: no trace files found (blktrace binary, blkparse text, QEMU log or simple trace)")
    # blkparse text next to the binary it was made from is the same data: keep the binary
    binaries = {os.path.dirname(k) for k, v in fmt_of.items() if v == "blktrace"}
    keys = [k for k in found if not (fmt_of[k] == "blkparse" and os.path.dirname(k) in binaries)]
    for i, key in enumerate(sorted(keys)):
        files = sorted(found[key], key=_cpu_key)
        fmt = fmt_of[key]
        rel = os.path.relpath(key, root)
        if fmt.startswith("qemu"):
            layer, node = "qemu", "host"
        else:
            layer = "guest-block" if "guest" in rel.lower() else "host-block"
            node = "vm" if layer == "guest-block" else "host"
        ts.traces.append(Trace(index=i, node=node, layer=layer, path=rel, files=files, format=fmt,
                               guest="vm" if layer == "qemu" else None))
    for name, kind in (("host", "host"), ("vm", "guest")):
        if any(t.node == name for t in ts.traces):
            ts.nodes.append(Node(name, kind))
    ts.notes.append("layers inferred from folder names ('guest' in the path = guest-block); "
                    "write a traceset.toml to say otherwise")
    return ts


def describe(ts: TraceSet) -> str:
    lines = [f"trace set {ts.name} ({ts.root})"]
    for t in ts.traces:
        lines.append(f"  #{t.index} {t.layer:<11} node={t.node:<6} {t.format:<11} {t.path} ({len(t.files)} files)")
    return "\n".join(lines)

