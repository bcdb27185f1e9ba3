"""``writeorder ingest``: parse a set once (Parquet store) and summarise each trace."""

from __future__ import annotations

from collections.abc import Callable

from toolkit import store, traceset
from toolkit.traceset import TraceSet

_SUMMARY_KEYS = ("events", "rejects", "first_ns", "last_ns", "clock", "actions")


def summarise_set(path, *, use_cache: bool = True, progress: Callable[[str], None] | None = None,
                  runner=None, ts: TraceSet | None = None) -> tuple[TraceSet, list[dict]]:
    """Per-trace summary dicts: path, format, layer, node, role, events, rejects, first_ns, last_ns, actions.

    The summaries are made at ingest and kept in the store, so a set already in the store is summarised without
    reading its events back. ``runner``: see :func:`toolkit.store.update` (dask, one task per trace)."""
    ts = ts if ts is not None else traceset.load(path)
    entries, _ = store.update(ts, use_cache=use_cache, progress=progress, keep=False, runner=runner)
    return ts, summaries(ts, entries)


def summaries(ts: TraceSet, entries: dict[int, dict]) -> list[dict]:
    """The summary dicts of ``summarise_set`` from the store entries of ``ts`` (by trace index)."""
    out = []
    for t in ts.traces:
        s = entries[t.index]["summary"]
        out.append({
            "path": t.path, "format": t.format, "layer": t.layer, "node": t.node,
            "role": t.role if t.layer == "qemu" else None,
            "files": len(t.files),
            **{k: s[k] for k in _SUMMARY_KEYS},
        })
    return out


def format_summary(ts: TraceSet, summary: list[dict]) -> str:
    lines = [f"trace set {ts.name}: {len(summary)} traces"]
    for s in summary:
        span = ""
        if s["first_ns"] is not None:
            span = f"  {(s['last_ns'] - s['first_ns']) / 1e9:9.3f} s"
        top = ", ".join(f"{k} {v}" for k, v in sorted(s["actions"].items(), key=lambda kv: -kv[1])[:8])
        lines.append(f"  {s['layer']:<11} {s['node']:<6} {s['format']:<11} {s['events']:>9} events "
                     f"{s['rejects']:>5} rejects{span}  {s['path']}")
        lines.append(f"      {top}")
    for n in ts.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)
