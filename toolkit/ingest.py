"""``writeorder ingest``: parse a set once (Parquet cache) and summarise each trace."""

from __future__ import annotations

from collections.abc import Callable

from toolkit import store, traceset
from toolkit.traceset import TraceSet


def summarise_set(path: str, *, use_cache: bool = True, progress: Callable[[str], None] | None = None
                  ) -> tuple[TraceSet, list[dict]]:
    """Per-trace summary dicts: path, format, layer, node, role, events, rejects, first_ns, last_ns, actions."""
    ts = traceset.load(path)
    results = store.ingest(ts, use_cache=use_cache, progress=progress)
    out = []
    for t in ts.traces:
        r = results[t.index]
        ev = r.events
        col = "event" if t.format.startswith("qemu") else "action"
        counts = ev[col].astype(str).value_counts()
        times = ev["time_ns"].dropna()
        out.append({
            "path": t.path, "format": t.format, "layer": t.layer, "node": t.node,
            "role": t.role if t.layer == "qemu" else None,
            "files": len(t.files),
            "events": int(len(ev)), "rejects": int(len(r.rejects)),
            "first_ns": int(times.min()) if len(times) else None,
            "last_ns": int(times.max()) if len(times) else None,
            "clock": r.meta.get("clock"),
            "actions": {str(k): int(v) for k, v in sorted(counts.items())},
        })
    return ts, out


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
