"""``writeorder report``: the postmortem notebook run through papermill, converted to one self-contained HTML file.

``run_report(set, out, params)`` executes ``notebooks/postmortem.ipynb`` with the set as a parameter and writes
the HTML (code hidden, figures embedded as PNG, no network reference: the ``offline`` template of
``toolkit/templates``); ``batch`` does it for several sets and writes an ``index.html`` with their verdicts.

The notebook builds its sections from the HTML helpers below. Every string that comes from a trace set (names,
descriptions, paths, process names, sentences) goes through :func:`esc` (``html.escape``); tables are rendered
by :func:`table_html`, which escapes every cell. Nothing read from a trace is ever executed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from toolkit.fileio import TraceError

PKG = Path(__file__).resolve().parent
TEMPLATES = PKG / "templates"
SEVERITIES = ("warning", "error")
#: classes that are warnings, not broken promises (verdict.CheckResult.to_text uses the same split)
WARNING_CLASSES = ("acked-not-durable-at-end", "overlapping-inflight")
#: cannot-check entries after which the set must not be called safe
BLOCKING_GAPS = ("durability", "crash-reorder", "overlapping-inflight", "guest promises", "host durability",
                 "all disk checks")


def notebook_path(name: str = "postmortem") -> Path:
    """A notebook of ``notebooks/``: shipped inside the package (``toolkit/notebooks``) or beside it in the repo
    (``pip install -e .``)."""
    for base in (PKG / "notebooks", PKG.parent / "notebooks"):
        p = base / f"{name}.ipynb"
        if p.is_file():
            return p
    raise FileNotFoundError(f"notebooks/{name}.ipynb not found beside the toolkit package ({PKG})")


# ------------------------------------------------------------------------------------------------ small helpers
#: control characters (C0 but tab/newline, DEL, C1) and invisible/bidi overrides: shown as \\xNN / \\uNNNN
_CTRL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
MAX_TEXT = 2000  # characters of one escaped string (a trace-provided string can be megabytes)
MAX_CELL = 300  # characters of one table cell


def _visible(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def esc(x: object, limit: int = MAX_TEXT) -> str:
    """HTML-escape anything (None -> empty), control characters made visible, shortened to ``limit``."""
    if x is None:
        return ""
    s = str(x)
    if len(s) > limit:
        s = s[:limit - 1] + "…"
    return html.escape(_CTRL.sub(_visible, s), quote=True)


def parse_window(window: str | None) -> tuple[float, float] | None:
    """'START:END' (seconds from the host trace's start) -> (start, end); None for no window."""
    if window in (None, ""):
        return None
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d*)?)?\s*:\s*(-?\d+(?:\.\d*)?)?\s*", window)
    if not m:
        raise ValueError(f"--window {window!r}: expected START:END in seconds, e.g. 10.5:12")
    a = float(m.group(1)) if m.group(1) else float("-inf")
    b = float(m.group(2)) if m.group(2) else float("inf")
    if a >= b:
        raise ValueError(f"--window {window!r}: START must be before END")
    return a, b


def window_ns(window: str | None, t0: int) -> tuple[int, int] | None:
    """The window as reference-clock ns (infinite ends clamped to the int64 range)."""
    w = parse_window(window)
    if w is None:
        return None
    lo = -(2**62) if w[0] == float("-inf") else int(t0 + w[0] * 1e9)
    hi = 2**62 if w[1] == float("inf") else int(t0 + w[1] * 1e9)
    return lo, hi


def rel_s(ns, t0: int) -> str:
    """Reference-clock ns -> 'S.ssssss s' from t0."""
    if ns is None or (isinstance(ns, float) and pd.isna(ns)):
        return "—"
    return f"{(float(ns) - t0) / 1e9:.6f} s"


def safe_filename(name: str) -> str:
    """A set name as a file name (trace sets name themselves: nothing but [A-Za-z0-9._-] survives)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "report"
    return s[:100]


def select_violations(violations: list, *, disk: str | None = None, min_severity: str = "warning",
                      window: tuple[int, int] | None = None) -> list[tuple[int, object]]:
    """(vid, violation) pairs kept by the report's filters; vid is the number in ``writeorder check --json``."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity {min_severity!r} is not one of {', '.join(SEVERITIES)}")
    out = []
    for vid, v in enumerate(violations):
        if disk is not None and v.disk != disk:
            continue
        if min_severity == "error" and v.severity != "error":
            continue
        if window is not None and v.start_ns is not None:
            end = v.end_ns if v.end_ns is not None else 2**62
            if end < window[0] or v.start_ns > window[1]:
                continue
        out.append((vid, v))
    return out


# ------------------------------------------------------------------------------------------------ verdict
def verdict_of(summary: dict, cannot_check: list[dict]) -> tuple[str, str]:
    """(label, css class): NOT SAFE when a promise was broken, NOT VERIFIED when a check could not be made,
    SAFE otherwise (with warnings, when there are some)."""
    errors = sum(n for c, n in summary.items() if n and c not in WARNING_CLASSES)
    warnings = sum(n for c, n in summary.items() if n and c in WARNING_CLASSES)
    if errors:
        return "NOT SAFE", "wo-bad"
    if any(c.get("check") in BLOCKING_GAPS for c in cannot_check):
        return "NOT VERIFIED", "wo-warn"
    if warnings:
        return "SAFE (with warnings)", "wo-warn"
    return "SAFE", "wo-ok"


def unchecked(res, doc: dict | None = None) -> list[str]:
    """Families of checks a set needs but the check result does not contain: a set with several QEMU processes
    (a migration, or several writers) needs the migration / split-brain checks, whose results come in the
    ``migration`` section of the check document."""
    qemu = [t for t in res.sa.ts.traces if t.layer == "qemu"]
    doc = res.to_json() if doc is None else doc
    if len(qemu) > 1 and "migration and split-brain" not in doc.get("checks_run", []):
        return ["migration / split-brain: the set has several QEMU processes, but those checks did not run"]
    return []


def verdict_for(res, doc: dict | None = None) -> tuple[str, str]:
    """The report's verdict for a CheckResult: :func:`verdict_of`, and NOT VERIFIED for :func:`unchecked`."""
    label, css = verdict_of(res.summary(), res.cannot_check)
    if label in ("SAFE", "SAFE (with warnings)") and unchecked(res, doc):
        return "NOT VERIFIED", "wo-warn"
    return label, css


def _counts_text(summary: dict) -> str:
    parts = [f"{n} {c}" for c, n in summary.items() if n]
    return ", ".join(parts) if parts else "no violation of any class"


def verdict_html(res, shown: list[tuple[int, object]], *, disk: str | None = None, window: str | None = None,
                 min_severity: str = "warning") -> str:
    """The verdict in one paragraph: safe or not, and the count per class."""
    from toolkit.checks import CLASSES

    summary = res.summary()
    label, css = verdict_for(res)
    name = esc(res.sa.ts.name)
    errors = [c for c, n in summary.items() if n and c not in WARNING_CLASSES]
    if label == "NOT SAFE":
        why = ("acknowledged writes were <b>not</b> safe: " +
               "; ".join(f"{esc(c)} ({summary[c]}×): {esc(CLASSES[c])}" for c in errors) + ".")
    elif label == "NOT VERIFIED":
        gaps = [c["check"] for c in res.cannot_check if c.get("check") in BLOCKING_GAPS] + unchecked(res)
        why = ("no broken promise was found, but some checks could not be made: this is not a pass. Not checked: "
               + esc("; ".join(gaps)) + ".")
    else:
        why = ("every guest flush and FUA write was durable on the host before the guest was told so, "
               "and no write issued after a flush could overtake one it covered.")
    uncertain = sum(1 for v in res.violations if v.uncertain)
    counts = _counts_text(summary)
    extra = []
    if uncertain:
        extra.append(f"{uncertain} of them are uncertain (they depend on the clock alignment)")
    scope = []
    if disk:
        scope.append(f"disk {esc(disk)}")
    if window:
        scope.append(f"window {esc(window)} s")
    if min_severity != "warning":
        scope.append(f"severity ≥ {esc(min_severity)}")
    shown_txt = (f" This report shows {len(shown)} of them ({', '.join(scope)})." if scope else "")
    caveats = [c for c in res.cannot_check if c.get("check") not in BLOCKING_GAPS]
    cav = ""
    if caveats:
        cav = " Limits: " + "; ".join(f"{esc(c['check'])}: {esc(c['reason'])}" for c in caveats) + "."
    return (f'<div class="wo-verdict {css}"><b class="wo-label">{esc(label)}</b> — trace set <b>{name}</b>: {why} '
            f"Counts: {esc(counts)}{'; ' + esc('; '.join(extra)) if extra else ''}.{shown_txt}{cav}</div>")


def header_html(sa) -> str:
    ts = sa.ts
    desc = f"<p>{esc(ts.description)}</p>" if ts.description else ""
    root = Path(ts.root).resolve()
    if root.is_relative_to(PKG.parent):  # a bundled set: its path in the repository
        root = root.relative_to(PKG.parent)
    return (f"<h1>writeorder postmortem: {esc(ts.name)}</h1>{desc}"
            f'<p class="wo-muted">set folder: <code>{esc(root)}</code></p>')


# ------------------------------------------------------------------------------------------------ tables
def table_html(df: pd.DataFrame, *, raw: tuple[str, ...] = (), max_rows: int | None = None) -> str:
    """A DataFrame as an HTML table; every cell and header is escaped except the columns in ``raw`` (which the
    caller builds from escaped parts)."""
    if max_rows is not None and len(df) > max_rows:
        df = df.head(max_rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, rec, strict=True):
            cells.append(f"<td>{v if c in raw else esc('' if _isna(v) else v, MAX_CELL)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="dataframe"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _isna(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def config_html(sa, res) -> str:
    """Configuration as declared (nodes, traces, disks) and as inferred (cache mode from behaviour)."""
    ts = sa.ts
    traces = pd.DataFrame([{"#": t.index, "node": t.node, "layer": t.layer, "role": t.role, "format": t.format,
                            "path": t.path, "files": len(t.files), "QEMU pid": t.pid or ""} for t in ts.traces])
    disks = []
    for d in ts.disks:
        inf = res.inferred_cache.get(d.name, {})
        agrees = inf.get("agrees")
        disks.append({"disk": d.name, "guest": d.guest, "guest device": d.guest_device,
                      "host device": d.host_device,
                      "mapping": " → ".join(str(s.get("kind")) for s in d.mapping),
                      "cache declared": d.cache or "(not declared)",
                      "cache inferred": inf.get("mode") or "(cannot tell)",
                      "agree": {True: "yes", False: "NO", None: "—"}[agrees],
                      "evidence": ", ".join(f"{k}={v}" for k, v in inf.get("evidence", {}).items())})
    nodes = ", ".join(f"{n.name} ({n.kind})" for n in ts.nodes)
    out = [f"<p><b>Nodes:</b> {esc(nodes)}</p>", "<h3>Traces</h3>", table_html(traces)]
    out += ["<h3>Disks: cache mode declared and inferred from behaviour</h3>",
            table_html(pd.DataFrame(disks)) if disks else "<p>no [[disk]] in the manifest</p>"]
    for d in disks:
        if d["agree"] == "NO":
            out.append(f'<p class="wo-verdict wo-warn">disk {esc(d["disk"])}: declared cache={esc(d["cache declared"])}'
                       f" but the traces behave like cache={esc(d['cache inferred'])}.</p>")
    if ts.notes:
        out.append("<p><b>Notes:</b> " + "; ".join(esc(n) for n in ts.notes) + "</p>")
    return "".join(out)


#: rows per violation class in the violations table and the evidence section (the rest: counted, in the JSON)
MAX_PER_CLASS = 50


def cap_per_class(shown: list[tuple[int, object]], per_class: int = MAX_PER_CLASS
                  ) -> tuple[list[tuple[int, object]], dict[str, int]]:
    """The first ``per_class`` violations of each class, in the order of ``shown`` (worst first), and how many
    of each class were left out ({class: count}, classes in order of first appearance; empty when none)."""
    kept, seen, left = [], {}, {}
    for vid, v in shown:
        n = seen.get(v.cls, 0)
        seen[v.cls] = n + 1
        if n < per_class:
            kept.append((vid, v))
        else:
            left[v.cls] = left.get(v.cls, 0) + 1
    return kept, left


def json_label(json_path: str | Path | None) -> str:
    """Where the full list is (HTML): the .check.json beside the report, linked by its file name and shown by
    its path in the repository when it is inside it; the ``writeorder check --json`` document otherwise."""
    if not json_path:
        return "the document of <code>writeorder check --json</code>"
    p = Path(json_path).resolve()
    shown = p.relative_to(PKG.parent) if p.is_relative_to(PKG.parent) else p.name
    return f'<a href="{esc(quote(p.name))}"><code>{esc(shown)}</code></a>'


def _left_out_html(left: dict[str, int], json_path: str | Path | None) -> str:
    where = json_label(json_path)
    return "".join(f'<p class="wo-more"><b>{n} more {esc(c)} finding{"s" if n != 1 else ""}</b>, listed in the '
                   f"JSON ({where}).</p>" for c, n in left.items())


def violations_html(res, shown: list[tuple[int, object]], t0: dict[str, int], max_rows: int = 500, *,
                    per_class: int = MAX_PER_CLASS, json_path: str | Path | None = None) -> str:
    """The violations table, worst first, with each one's sentence and a link to its evidence. At most
    ``per_class`` rows of each class (the worst); past that, the count per class and one line per class saying
    how many more there are in the JSON document (``json_path``)."""
    if not shown:
        return "<p>No violation to show.</p>"
    kept, left = cap_per_class(shown, per_class)
    rows = []
    for vid, v in kept[:max_rows]:
        base = t0.get(v.disk, 0)
        rows.append({"#": vid, "class": v.cls, "severity": v.severity + (" (uncertain)" if v.uncertain else ""),
                     "disk": v.disk, "window": f"{rel_s(v.start_ns, base)} → "
                                               f"{rel_s(v.end_ns, base) if v.end_ns is not None else 'open'}",
                     "sectors": "" if v.sector is None else f"{v.sector}+{v.nsect}",
                     "sentence": v.sentence, "evidence": f'<a href="#ev-{int(vid)}">evidence #{int(vid)}</a>'})
    more = (f"<p>… and {len(kept) - max_rows} more (see the JSON document).</p>" if len(kept) > max_rows else "")
    head = ""
    if left:
        counts = Counter(v.cls for _, v in shown)
        head = (f"<p>{len(shown)} findings: " + ", ".join(f"{n} {esc(c)}" for c, n in counts.items())
                + f". The table shows at most the {per_class} worst of each class; the rest are counted below it.</p>")
    return (head + '<div class="wo-scroll wo-vtable">' + table_html(pd.DataFrame(rows), raw=("evidence",))
            + "</div>" + more + _left_out_html(left, json_path))


def evidence_frame(da, v) -> pd.DataFrame:
    """The requests a violation cites, with what each table says about them (times relative to ``da.t0``;
    guest-clock times also placed on the reference clock)."""
    tables = {"guest-block": (da.df_guest_requests() if da.guest_traces else pd.DataFrame(), "rid"),
              "qemu": (da.df_qemu_requests(), "qid"),
              "host-block": (da.df_host_bios() if da.host_traces else pd.DataFrame(), "rid")}
    off = da.guest_offset
    rows = []
    for r in v.requests:
        layer, rid = r.get("layer"), r.get("id")
        df, key = tables.get(layer, (pd.DataFrame(), "rid"))
        row = {}
        if rid is not None and len(df) and key in df.columns:
            m = df[df[key] == rid]
            if len(m):
                row = m.iloc[0].to_dict()
        times = []
        for k, val in r.items():
            if k in ("layer", "id", "what") or val is None or not isinstance(val, (int, float)):
                continue
            if k.startswith("g_") and off is not None:
                times.append(f"{k} {rel_s(int(off.to_ref([int(val)])[0]), da.t0)}")
            elif k.startswith("g_"):
                times.append(f"{k} {val} ns (guest clock)")
            else:
                times.append(f"{k} {rel_s(val, da.t0)}")
        flags = [f for f in ("fua", "preflush", "sync") if bool(row.get(f, False)) is True]
        sect = row.get("sector")
        rows.append({"layer": layer, "id": "" if rid is None else rid, "role in the finding": r.get("what", ""),
                     "op": row.get("op", ""), "flags": ",".join(flags),
                     "sectors": "" if _isna(sect) or sect is None or sect < 0 else f"{int(sect)}+{int(row.get('nsect', 0))}",
                     "process": "" if _isna(row.get("comm")) else f"{row.get('comm')} ({row.get('pid')})",
                     "times": "; ".join(times)})
    return pd.DataFrame(rows)


def evidence_html(da, vid: int, v) -> str:
    """One violation's evidence: its sentence and the chain of requests (anchored for the table's links)."""
    unc = " <i>(uncertain: it depends on the clock alignment)</i>" if v.uncertain else ""
    details = ", ".join(f"{k}={val}" for k, val in (v.details or {}).items())
    return (f'<div class="wo-evidence" id="ev-{int(vid)}"><h4>#{int(vid)} {esc(v.cls)} — disk {esc(v.disk)}, '
            f"{esc(v.severity)}{unc}</h4><p>{esc(v.sentence)}</p>"
            + (f'<p class="wo-muted">{esc(details)}</p>' if details else "")
            + table_html(evidence_frame(da, v)) + "</div>")


def evidence_list_html(by_disk: dict, shown: list[tuple[int, object]], max_items: int = 300, *,
                       per_class: int = MAX_PER_CLASS, json_path: str | Path | None = None) -> str:
    """The evidence of every violation the table shows (the targets of its links): the same ``per_class`` cap,
    and the same per-class lines for the rest."""
    if not shown:
        return "<p>No violation.</p>"
    kept, left = cap_per_class(shown, per_class)
    parts = [evidence_html(by_disk[v.disk], vid, v) for vid, v in kept[:max_items]]
    if len(kept) > max_items:
        parts.append(f"<p>… {len(kept) - max_items} more in the .check.json document.</p>")
    return "".join(parts) + _left_out_html(left, json_path)


def zoom_caption_html(vid: int, v) -> str:
    unc = " (uncertain)" if v.uncertain else ""
    return (f"<h3>#{int(vid)} {esc(v.cls)}{unc}</h3><p>{esc(v.sentence)} "
            f'<a href="#ev-{int(vid)}">evidence #{int(vid)}</a></p>')


def more_html(shown: list[tuple[int, object]], n: int) -> str:
    rest = shown[n:]
    by_cls = pd.Series([v.cls for _, v in rest]).value_counts()
    txt = ", ".join(f"{k} {c}" for k, c in by_cls.items())
    return (f"<p><b>{len(rest)} more violation(s)</b> are not zoomed ({esc(txt)}): see the table above and their "
            "evidence below.</p>")


def overview_caption_html(da, window: str | None) -> str:
    where = f"the window {esc(window)} s" if window else "the span of the guest's requests"
    return f"<p>No violation to zoom on: requests of disk {esc(da.name)} over {where}.</p>"


def latency_summary_html(da, window: tuple[int, int] | None = None) -> str:
    """Median / p90 / p99 / max per metric and layer (µs)."""
    from toolkit import plots

    lt = plots.latency_table(da, window)
    if lt.empty:
        return "<p>No latency data.</p>"
    g = lt.groupby(["metric", "layer"], sort=False)["latency_us"]
    s = pd.DataFrame({"requests": g.size(), "median µs": g.median(), "p90 µs": g.quantile(0.9),
                      "p99 µs": g.quantile(0.99), "max µs": g.max()}).reset_index()
    for c in ("median µs", "p90 µs", "p99 µs", "max µs"):
        s[c] = s[c].map(lambda x: f"{x:,.0f}")
    return table_html(s)


def coverage_html(res) -> str:
    """What could be linked through the layers, what could not and why, and the checks that could not be made."""
    out = []
    for disk, c in res.coverage.items():
        if c.get("guest_writes") is None:
            out.append(f"<p>disk {esc(disk)}: no guest trace, nothing to link.</p>")
            continue
        gw, gf = c["guest_writes"], c["guest_flushes"]
        share = c.get("write_share_carried")
        items = [("guest writes", gw), ("guest flushes", gf),
                 ("writes linked to a QEMU request", c["writes_linked_to_qemu"]),
                 ("flushes linked to a QEMU request", c["flushes_linked_to_qemu"]),
                 ("writes mapped to the host device", c["writes_mapped"]),
                 ("writes carried by host I/O", c["writes_carried_to_host"]),
                 ("share of writes carried", "—" if share is None else f"{share:.1%}"),
                 ("unlinked guest requests", c["unlinked_count"])]
        out.append(f"<h3>disk {esc(disk)}</h3>" + table_html(pd.DataFrame(items, columns=["what", "count"])))
        unl = pd.DataFrame(c.get("unlinked") or [])
        if len(unl):
            reasons = unl.groupby("reason", dropna=False).size().reset_index(name="requests")
            out.append("<p>Guest requests not linked to QEMU, by reason (a coverage gap: never counted as a "
                       "violation, never dropped):</p>" + table_html(reasons))
            out.append("<details><summary>the unlinked requests</summary>" + table_html(unl, max_rows=100)
                       + "</details>")
        if c.get("not_carried"):
            ids = ", ".join(f"#{int(i)}" for i in c["not_carried"][:50])
            out.append(f"<p>Guest writes with no host I/O found carrying them: {esc(ids)}</p>")
    if res.cannot_check:
        cc = pd.DataFrame(res.cannot_check)
        out.append("<h3>Checks that could not be made (and what to record next time)</h3>" + table_html(cc))
    else:
        out.append("<p>Every check could be made with the traces at hand.</p>")
    rej = res.sa.rejects()
    if len(rej):
        out.append(f"<p>{len(rej)} trace line(s)/record(s) could not be parsed and were kept aside (rejects).</p>")
        cols = [c for c in ("file", "line", "offset", "reason") if c in rej.columns]
        if cols:
            out.append("<details><summary>first rejects</summary>" + table_html(rej[cols], max_rows=20)
                       + "</details>")
    return "".join(out)


def clocks_html(res) -> str:
    if not res.clocks:
        return "<p>No clock alignment was needed or possible.</p>"
    rows = []
    for k, v in res.clocks.items():
        unc = v.get("uncertainty_ns")
        rows.append({"alignment": k.replace("->", " → "), "source": v.get("source"),
                     "offset": f"{v.get('offset_ns', 0) / 1e9:+.6f} s",
                     "uncertainty (±)": "—" if unc is None else f"{unc / 1e3:.1f} µs",
                     "windows": v.get("windows"), "drift": f"{(v.get('drift_ns') or 0) / 1e3:.1f} µs",
                     "consistent": "yes" if v.get("consistent", True) else "NO: the traces contradict each other"})
    return table_html(pd.DataFrame(rows))


def migration_html(mig: dict) -> str:
    """The ``migration`` document of the check, flattened to key/value rows (whatever its shape)."""
    rows = []

    def walk(x, path):
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(x, list) and x and all(isinstance(i, dict) for i in x):
            for i, v in enumerate(x[:50]):
                walk(v, f"{path}[{i}]")
        else:
            rows.append({"field": path, "value": json.dumps(x, default=str) if isinstance(x, list) else x})

    walk(mig, "")
    return ("<details><summary>the migration section of the check document</summary>"
            + table_html(pd.DataFrame(rows, columns=["field", "value"]), max_rows=300) + "</details>")


def show_figure(fig, alt: str, dpi: int = 90) -> None:
    """Display a matplotlib figure as an embedded PNG with alt text, and close it."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    display({"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": f"<figure: {alt}>"},
            raw=True, metadata={"image/png": {"alt": alt}})


def write_check_json(res, output: str, extra: dict) -> Path | None:
    """The ``writeorder check --json`` document (plus the report's own verdict) beside the HTML report."""
    if not output:
        return None
    p = Path(output).with_suffix(".check.json")
    doc = res.to_json()
    doc["report"] = extra
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    return p


# ------------------------------------------------------------------------------------------------ running
@dataclass
class ReportResult:
    set_path: str
    out: Path
    name: str = ""
    verdict: str = ""
    css: str = ""
    summary: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"writeorder report: {msg}", file=sys.stderr, flush=True)


def _ipc_kernel_manager():
    """A kernel manager that talks to the kernel over local IPC sockets, not TCP (no port, no "running over
    TCP without encryption" warning)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            kw.setdefault("transport", "ipc")
            super().__init__(**kw)

        async def start_kernel(self, **kw):
            # the kernel's own stderr is chatter ("KeyboardInterrupt caught in kernel" at shutdown); what a cell
            # prints or raises reaches the notebook through the kernel protocol, not through this stream
            import subprocess

            kw.setdefault("stderr", subprocess.DEVNULL)
            return await super().start_kernel(**kw)

    return IPCKernelManager


def export_html(nb, title: str) -> str:
    """An executed notebook as self-contained HTML: code hidden, figures embedded, no network reference."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    exp = HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)], exclude_input=True,
                       exclude_input_prompt=True, exclude_output_prompt=True)
    exp.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"report-hide"}), enabled=True)
    exp.log.setLevel("ERROR")
    nb.metadata["title"] = title
    body, _ = exp.from_notebook_node(nb, resources={"metadata": {"name": title}})
    return body


def run_report(set_path: str | Path, out: str | Path, params: dict | None = None, *,
               executed_copy: str | Path | None = None) -> ReportResult:
    """Execute the postmortem notebook for one set and write ``out`` (HTML) and ``out``'s ``.check.json``.

    ``params``: window ("START:END" s), disk, min_severity, max_zooms. Raises TraceError/ValueError on bad
    input; a failing notebook raises papermill's PapermillExecutionError (the executed notebook is kept beside
    ``out`` as ``.failed.ipynb``). ``executed_copy``: also keep the executed notebook there."""
    import nbformat
    import papermill as pm

    t = time.monotonic()
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    p = {"trace_set": str(Path(set_path).resolve()), "output": str(out), **(params or {})}
    with tempfile.TemporaryDirectory(prefix="writeorder-report-") as tmp:
        executed = Path(tmp) / "postmortem.ipynb"
        try:
            pm.execute_notebook(str(notebook_path()), str(executed), parameters=p, kernel_name="python3",
                                progress_bar=sys.stderr.isatty(), log_output=False, cwd=tmp,
                                request_save_on_cell_execute=False, kernel_manager_class=_ipc_kernel_manager())
        except pm.PapermillExecutionError:
            if executed.exists():
                (out.with_suffix(".failed.ipynb")).write_bytes(executed.read_bytes())
            raise
        nb = nbformat.read(executed, as_version=4)
        if executed_copy is not None:
            Path(executed_copy).write_bytes(executed.read_bytes())
    doc_path = out.with_suffix(".check.json")
    doc = json.loads(doc_path.read_text(encoding="utf-8")) if doc_path.exists() else {}
    rep = doc.get("report", {})
    name = str(doc.get("traceset", Path(set_path).name))
    out.write_text(export_html(nb, f"writeorder postmortem: {name}"), encoding="utf-8")
    stale = out.with_suffix(".failed.ipynb")
    if stale.exists():
        stale.unlink()
    return ReportResult(str(set_path), out, name=name, verdict=rep.get("verdict", ""), css=rep.get("css", ""),
                        summary=doc.get("summary", {}), seconds=time.monotonic() - t)


def index_html(results: list[ReportResult], out_dir: Path) -> str:
    """index.html of a batch: one row per set with its verdict and counts, linking the report."""
    rows = []
    for r in results:
        href = quote(r.out.name) if r.error is None else ""
        link = f'<a href="{esc(href)}">{esc(r.name or r.set_path)}</a>' if href else esc(r.name or r.set_path)
        verdict = esc(r.verdict) if r.error is None else f"FAILED: {esc(r.error)}"
        css = r.css if r.error is None else "wo-bad"
        rows.append(f'<tr><td>{link}</td><td class="{esc(css)}"><b>{verdict}</b></td>'
                    f"<td>{esc(_counts_text(r.summary) if r.summary else '')}</td>"
                    f"<td>{r.seconds:.1f} s</td></tr>")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>writeorder reports</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:6px 8px;text-align:left}}
.wo-bad{{background:#fdecea}}.wo-ok{{background:#e8f5e9}}.wo-warn{{background:#fff8e1}}</style></head>
<body><h1>writeorder postmortem reports</h1><p>{len(results)} trace set(s), rendered {esc(time.strftime('%Y-%m-%d %H:%M'))}.</p>
<table><thead><tr><th>trace set</th><th>verdict</th><th>violations</th><th>time</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table></body></html>
"""


def batch(sets: list[str], out_dir: str | Path, params: dict | None = None, *,
          keep_notebooks: bool = False) -> list[ReportResult]:
    """One report per set into ``out_dir`` plus ``index.html``; a set that fails is listed as failed.
    ``keep_notebooks``: keep each executed notebook beside its report (``.ipynb``)."""
    import papermill as pm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, used = [], set()
    for i, s in enumerate(sets, 1):
        name = _set_name(s)
        stem = safe_filename(name)
        while stem in used:
            stem += "_"
        used.add(stem)
        _progress(f"[{i}/{len(sets)}] {name} …")
        try:
            r = run_report(s, out_dir / f"{stem}.html", params,
                           executed_copy=out_dir / f"{stem}.ipynb" if keep_notebooks else None)
        except (pm.PapermillExecutionError, TraceError, ValueError) as e:
            r = ReportResult(s, out_dir / f"{stem}.html", name=name, error=_one_line(e))
        results.append(r)
        _progress(f"[{i}/{len(sets)}] {name}: {r.error or r.verdict} ({r.seconds:.1f} s) -> {r.out}")
    (out_dir / "index.html").write_text(index_html(results, out_dir), encoding="utf-8")
    return results


def _one_line(e: BaseException) -> str:
    ename = getattr(e, "ename", type(e).__name__)
    evalue = getattr(e, "evalue", str(e))
    return f"{ename}: {evalue}".splitlines()[0][:300]


def _set_name(s: str) -> str:
    from toolkit import traceset

    return traceset.load(s).name


def _validate(sets: list[str], disk: str | None, window: str | None) -> None:
    from toolkit import traceset

    parse_window(window)
    for s in sets:
        ts = traceset.load(s)
        if disk is not None and disk not in [d.name for d in ts.disks]:
            raise ValueError(f"{s}: no disk named {disk!r} (disks: {', '.join(d.name for d in ts.disks) or 'none'})")


def main(args) -> int:
    """``writeorder report SET... [-o OUT] [--batch] [--window START:END] [--disk NAME]``."""
    import papermill as pm

    sets = list(args.set)
    params = {"window": args.window, "disk": args.disk}
    try:
        _validate(sets, args.disk, args.window)
        if len(sets) > 1 and not args.batch and args.output:
            raise ValueError("several sets: use --batch -o DIR (one report each plus index.html)")
        if args.output and not args.batch and Path(args.output).is_dir():
            raise ValueError(f"-o {args.output}: is a folder; give the HTML file (or use --batch)")
    except (TraceError, ValueError) as e:
        print(f"writeorder: {_one_line(e) if isinstance(e, ValueError) else e}", file=sys.stderr)
        return 2
    try:
        if args.batch:
            results = batch(sets, args.output or "reports", params)
            print(Path(args.output or "reports") / "index.html")
            for r in results:
                print(f"  {r.out}  {r.error or r.verdict}")
            return 0 if all(r.error is None for r in results) else 1
        for s in sets:
            out = Path(args.output) if args.output else Path("reports") / f"{safe_filename(_set_name(s))}.html"
            _progress(f"{s} …")
            r = run_report(s, out, params)
            _progress(f"{r.name}: {r.verdict} ({r.seconds:.1f} s)")
            print(f"{r.out}  {r.verdict}")
        return 0
    except pm.PapermillExecutionError as e:
        code = 2 if e.ename in ("TraceError", "ValueError") else 1
        print(f"writeorder: report failed: {_one_line(e)}", file=sys.stderr)
        return code
