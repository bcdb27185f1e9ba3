"""Figures of the postmortem report (seaborn/matplotlib). Each function takes a DiskAnalysis (or a plain dict) and
returns a matplotlib :class:`~matplotlib.figure.Figure`; they work alone in any notebook.

Times on the x axes are seconds on the reference clock relative to ``da.t0`` (the host trace's start), the same
times the violation sentences use. Trace-provided strings never reach mathtext: :func:`plain` escapes ``$``.
"""

from __future__ import annotations

from collections.abc import Iterable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

LANES = ("guest-block", "qemu", "host-block")
LANE_LABEL = {"guest-block": "guest", "qemu": "QEMU", "host-block": "host"}
OP_COLOR = {"write": "#4C72B0", "read": "#9e9e9e", "flush": "#DD8452", "discard": "#8172B3",
            "write_zeroes": "#8172B3"}
CRASH_COLOR = "#e53935"
MAX_ROWS = 8  # rows per lane before requests share rows
OVERVIEW_MAX = 1500  # guest requests in the default overview of a large set (matplotlib draws each bar)


def plain(s: object) -> str:
    """A trace-provided string made safe for matplotlib text (no mathtext)."""
    return str(s).replace("$", r"\$")


def _rel(ns, t0: int) -> np.ndarray:
    return (np.asarray(ns, dtype=np.float64) - t0) / 1e9


def _sec_formatter(span_s: float) -> FuncFormatter:
    dec = int(min(9, max(1, np.ceil(-np.log10(max(span_s, 1e-9))) + 2)))
    return FuncFormatter(lambda x, _pos: f"{x:.{dec}f}")


# ------------------------------------------------------------------------------------------------ request tables
def lane_requests(da) -> pd.DataFrame:
    """Requests of the three layers on the reference clock: lane, id, op, start_ns, end_ns, fua, preflush.

    Guest requests: guest D..C moved onto the reference clock with ``da.guest_offset`` (QEMU handle..ack when
    there is no alignment); QEMU: handle..complete; host: queue (or dispatch)..complete."""
    parts = []
    if da.guest_traces:
        g = da.df_guest_requests()
        if len(g):
            off = da.guest_offset
            if off is not None:
                s = off.to_ref(g["d_ns"].to_numpy(np.int64))
                cc = g["c_ns"].astype("Float64").to_numpy(np.float64, na_value=np.nan)
                e = np.where(np.isnan(cc), np.nan, off.to_ref(np.nan_to_num(cc).astype(np.int64)).astype(np.float64))
            else:
                lin = da.df_lineage().set_index("rid")
                s = g["rid"].map(lin["h_handle"]).to_numpy(np.float64)
                e = g["rid"].map(lin["h_ack"]).to_numpy(np.float64)
            parts.append(pd.DataFrame({"lane": "guest-block", "id": g["rid"].to_numpy(), "op": g["op"].astype(str),
                                       "start_ns": np.asarray(s, np.float64), "end_ns": e,
                                       "fua": g["fua"].to_numpy(bool), "preflush": g["preflush"].to_numpy(bool)}))
    q = da.df_qemu_requests()
    if len(q):
        s = q["h_q"].fillna(q["h_d"])
        if da.guest_traces:  # flushes are logged only at completion: QEMU's handling time comes from lineage
            lin = da.df_lineage()
            lin = lin[lin["qid"] >= 0].drop_duplicates("qid").set_index("qid")
            s = s.fillna(q["qid"].map(lin["h_handle"]))
        s = s.to_numpy(np.float64)
        parts.append(pd.DataFrame({"lane": "qemu", "id": q["qid"].to_numpy(), "op": q["op"].astype(str),
                                   "start_ns": s, "end_ns": q["h_c"].to_numpy(np.float64),
                                   "fua": q["fua"].to_numpy(bool), "preflush": q["preflush"].to_numpy(bool)}))
    if da.host_traces:
        h = da.df_host_bios()
        if len(h):
            s = h["q_ns"].fillna(h["d_ns"]).astype("Float64").to_numpy(np.float64, na_value=np.nan)
            parts.append(pd.DataFrame({"lane": "host-block", "id": h["rid"].to_numpy(), "op": h["op"].astype(str),
                                       "start_ns": s,
                                       "end_ns": h["c_ns"].astype("Float64").to_numpy(np.float64, na_value=np.nan),
                                       "fua": h["fua"].to_numpy(bool), "preflush": h["preflush"].to_numpy(bool)}))
    if not parts:
        return pd.DataFrame(columns=["lane", "id", "op", "start_ns", "end_ns", "fua", "preflush"])
    out = pd.concat(parts, ignore_index=True)
    return out[out["start_ns"].notna()].reset_index(drop=True)


def evidence_times(da, violation) -> list[float]:
    """Reference-clock times named by a violation: its window and the times of the requests it cites."""
    ts: list[float] = [t for t in (violation.start_ns, violation.end_ns) if t is not None]
    off = da.guest_offset
    for r in violation.requests:
        for k, v in r.items():
            if v is None or k in ("layer", "id", "what") or not isinstance(v, (int, float)):
                continue
            if k.startswith("g_"):
                if off is None:
                    continue
                v = int(off.to_ref(np.array([v]))[0])
            ts.append(float(v))
    return ts


def _segments(times: list[float], min_pad: float) -> list[tuple[float, float]]:
    """Cluster key times into at most 3 x-ranges (a broken axis when a window spans long idle stretches)."""
    t = np.sort(np.asarray(times, dtype=np.float64))
    span = t[-1] - t[0]
    if span <= 20 * min_pad or len(t) < 2:
        pad = max(span * 0.15, min_pad)
        return [(t[0] - pad, t[-1] + pad)]
    gaps = np.diff(t)
    cut = sorted(np.argsort(gaps)[::-1][:2])
    cut = [i for i in cut if gaps[i] > 0.2 * span]
    bounds, start = [], 0
    for i in [*cut, len(t) - 1]:
        bounds.append((t[start], t[i]))
        start = i + 1
    return [(a - max((b - a) * 0.15, min_pad), b + max((b - a) * 0.15, min_pad)) for a, b in bounds]


def _pack(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Greedy interval packing: a row per request so that requests in one row do not overlap."""
    rows = np.zeros(len(starts), dtype=int)
    row_end: list[float] = []
    for i in np.argsort(starts, kind="stable"):
        for r, e in enumerate(row_end):
            if e <= starts[i]:
                rows[i], row_end[r] = r, ends[i]
                break
        else:
            rows[i] = len(row_end)
            row_end.append(ends[i])
    return rows % MAX_ROWS


# ------------------------------------------------------------------------------------------------ swimlanes
def swimlanes(da, window: tuple[int, int] | None = None, violation=None, *, width: float = 11.0) -> Figure:
    """Guest, QEMU and host requests as bars on one reference timeline.

    ``window``: (start_ns, end_ns) on the reference clock (default: around the violation, else the span of
    the guest's requests). With a violation, the requests it cites are outlined and labelled, its window (the crash window) is
    shaded, and long idle stretches between its key times are cut out (one panel per cluster of times).
    Guest/QEMU flushes are orange bars; flushes of the host device are red triangles and dashed lines."""
    req = lane_requests(da)
    t0 = da.t0
    note = ""
    hf = da.df_host_flushes() if da.host_traces else pd.DataFrame(columns=["d_ns", "c_ns"])
    if window is not None:
        segs = [(float(window[0]), float(window[1]))]
    elif violation is not None:
        segs = _segments(evidence_times(da, violation), min_pad=200_000.0)
    elif len(req):  # the guest's activity (else everything), padded; on a large set only its first requests
        g = req[req["lane"] == "guest-block"]
        g = g if len(g) else req
        if len(g) > OVERVIEW_MAX:
            g = g.nsmallest(OVERVIEW_MAX, "start_ns")
            note = f" (overview: the first {OVERVIEW_MAX:,} guest requests; pass a window to see others)"
        a, b = float(g["start_ns"].min()), float(g["end_ns"].fillna(g["start_ns"]).max())
        segs = [(a - 0.02 * (b - a), b + 0.02 * (b - a))]
    else:
        segs = [(float(t0), float(t0) + 1e9)]
    cited = set()
    if violation is not None:
        cited = {(r.get("layer"), r.get("id")) for r in violation.requests}
    end_fill = req["end_ns"].fillna(req["start_ns"]).to_numpy(np.float64) if len(req) else np.array([])

    # lanes: rows of requests that touch any segment
    vis = np.zeros(len(req), dtype=bool)
    for a, b in segs:
        vis |= (req["start_ns"].to_numpy(np.float64) <= b) & (end_fill >= a)
    sub = req[vis].copy()
    sub["end_fill"] = end_fill[vis]
    lanes = [ln for ln in LANES if ln in set(req["lane"])] or list(LANES)
    y0, yticks, ylabels, lane_spans = 0.0, [], [], {}
    sub["y"] = 0.0
    for ln in reversed(lanes):  # host at the bottom, guest on top
        m = (sub["lane"] == ln).to_numpy()
        if m.any():
            span_total = max(b - a for a, b in segs)
            mins = span_total * 0.004
            rows = _pack(sub.loc[m, "start_ns"].to_numpy(), np.maximum(sub.loc[m, "end_fill"].to_numpy(),
                                                                        sub.loc[m, "start_ns"].to_numpy() + mins))
            sub.loc[m, "y"] = y0 + rows
            n = int(rows.max()) + 1
        else:
            n = 1
        lane_spans[ln] = (y0 - 0.5, y0 + n - 0.5)
        yticks.append(y0 + (n - 1) / 2)
        label = LANE_LABEL[ln]
        if ln == "guest-block" and da.guest_offset is not None:
            off = da.guest_offset
            gt = np.array([(a + b) / 2 for a, b in segs]) - float(np.median(off.mid()))
            unc = float(np.max(off.uncertainty(gt)))
            label += f"\n(±{unc / 1e3:.0f} µs)" if unc >= 1000 else f"\n(±{unc:.0f} ns)"
        ylabels.append(label)
        y0 += n + 1

    widths = [b - a for a, b in segs]
    ratios = [max(w, max(widths) * 0.3) for w in widths]
    fig, axes = plt.subplots(1, len(segs), figsize=(width, 1.6 + 0.26 * y0), sharey=True, squeeze=False,
                             width_ratios=ratios, layout="constrained")
    fig.get_layout_engine().set(wspace=0.0, w_pad=0.02)
    axes = axes[0]
    for k, (ax, (a, b)) in enumerate(zip(axes, segs, strict=True)):
        span = b - a
        mins = span * 0.004
        for ln, (lo, hi) in lane_spans.items():
            ax.axhspan(lo, hi, color="#f5f5f5" if LANES.index(ln) % 2 == 0 else "#fbfbfb", zorder=0)
        if violation is not None and violation.start_ns is not None:
            cs, ce = float(violation.start_ns), float(violation.end_ns if violation.end_ns is not None else b)
            if ce >= a and cs <= b:
                ax.axvspan(_rel(max(cs, a), t0), _rel(min(ce, b), t0), color=CRASH_COLOR, alpha=0.12, zorder=0.5, lw=0)
        for f in hf.itertuples():
            if pd.notna(f.c_ns) and a <= f.c_ns <= b:
                ax.axvline(_rel(f.c_ns, t0), color=CRASH_COLOR, ls="--", lw=0.8, alpha=0.6, zorder=1)
        s = sub[(sub["start_ns"] <= b) & (sub["end_fill"] >= a)]
        for op, grp in s.groupby("op"):
            st = grp["start_ns"].to_numpy()
            w = np.maximum(grp["end_fill"].to_numpy() - st, mins)
            ax.barh(grp["y"], w / 1e9, left=_rel(st, t0), height=0.7, color=OP_COLOR.get(op, "#55A868"),
                    edgecolor="none", alpha=0.85, zorder=2)
        if len(hf):
            inside = hf[(hf["d_ns"] <= b) & (hf["c_ns"].fillna(hf["d_ns"]) >= a)]
            lo_host = lane_spans.get("host-block", (0, 0))[1]
            ax.scatter(_rel(inside["c_ns"].fillna(inside["d_ns"]), t0), np.full(len(inside), lo_host + 0.1),
                       marker="v", color=CRASH_COLOR, s=40, zorder=4, clip_on=False)
        if cited:
            c = s[[(ln, int(i)) in cited for ln, i in zip(s["lane"], s["id"], strict=True)]]
            for r in c.itertuples():
                w = max(r.end_fill - r.start_ns, mins)
                ax.barh(r.y, w / 1e9, left=_rel(r.start_ns, t0), height=0.8, fill=False, edgecolor="black",
                        lw=1.4, zorder=3)
                ax.annotate(f"#{int(r.id)}", (_rel(r.start_ns + w / 2, t0), r.y + 0.42), ha="center",
                            va="bottom", fontsize=7, zorder=5, annotation_clip=True)
        ax.set_xlim(_rel(a, t0), _rel(b, t0))
        ax.xaxis.set_major_formatter(_sec_formatter(span / 1e9))
        ax.xaxis.set_major_locator(MaxNLocator(max(2, int(8 * ratios[k] / sum(ratios)) + 1)))
        ax.tick_params(axis="x", labelsize=8, labelrotation=30 if ratios[k] / sum(ratios) < 0.3 else 0)
        ax.grid(axis="x", color="#dddddd", lw=0.6)
        if k > 0:
            ax.spines["left"].set_visible(False)
            ax.tick_params(axis="y", left=False)
        if k < len(segs) - 1:
            ax.spines["right"].set_visible(False)
            d = 0.012
            kw = {"transform": ax.transAxes, "color": "k", "clip_on": False, "lw": 1}
            ax.plot((1 - d, 1 + d), (-0.02, 0.02), **kw)
            ax.plot((1 - d, 1 + d), (0.98, 1.02), **kw)
    axes[0].set_yticks(yticks, ylabels)
    axes[0].set_ylim(-0.8, y0 - 0.6)
    axes[int(np.argmax(ratios))].set_xlabel("time (s, reference clock, from the host trace's start)" + note,
                                            fontsize=9)
    handles = [Patch(color=OP_COLOR[o], label=o) for o in ("write", "flush", "read")]
    handles.append(plt.Line2D([], [], color=CRASH_COLOR, ls="--", marker="v", label="host device flush"))
    if violation is not None:
        handles.append(Patch(color=CRASH_COLOR, alpha=0.15, label="crash window"))
        handles.append(Patch(fill=False, edgecolor="black", label="cited request"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if violation is not None:
        fig.suptitle(plain(f"{violation.cls} on {violation.disk}" + (" (uncertain)" if violation.uncertain else "")),
                     fontsize=11)
    return fig


# ------------------------------------------------------------------------------------------------ exposure
def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def exposure(da, window: tuple[int, int] | None = None, violations: Iterable | None = None) -> Figure:
    """Writes and bytes at risk (issued, not yet durable on the host) over time, for one disk / guest node.
    Crash windows of ``violations`` are shaded."""
    e = da.df_exposure()
    t0 = da.t0
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 4.2), sharex=True)
    title = plain(f"at-risk set of {da.name} (guest {da.disk.guest})")
    if len(e) == 0:
        a1.text(0.5, 0.5, "no guest writes linked to the host: nothing to plot", ha="center", transform=a1.transAxes)
    else:
        x = _rel(e["time_ns"], t0)
        a1.step(x, e["writes"], where="post", color="#4C72B0")
        a1.fill_between(x, e["writes"], step="post", alpha=0.2, color="#4C72B0")
        mib = e["bytes"] / 2**20
        a2.step(x, mib, where="post", color="#C44E52")
        a2.fill_between(x, mib, step="post", alpha=0.2, color="#C44E52")
    spans = []
    for v in violations or []:
        if v.start_ns is not None and v.severity == "error" and v.disk == da.name:
            end = v.end_ns if v.end_ns is not None else (e["time_ns"].max() if len(e) else v.start_ns)
            spans.append((float(v.start_ns), float(end)))
    for k, (s, end) in enumerate(_union(spans)):
        for ax in (a1, a2):
            ax.axvspan(_rel(s, t0), _rel(end, t0), color=CRASH_COLOR, alpha=0.1, lw=0,
                       label="crash windows of the findings" if k == 0 else None)
    if spans:
        a1.legend(fontsize=8, loc="upper left")
    a1.set_ylabel("writes at risk")
    a2.set_ylabel("MiB at risk")
    a2.set_xlabel("time (s, reference clock, from the host trace's start)")
    if window is not None:
        a2.set_xlim(_rel(window[0], t0), _rel(window[1], t0))
    for ax in (a1, a2):
        ax.grid(color="#e5e5e5", lw=0.6)
        ax.set_ylim(bottom=0)
    a1.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ latencies
def latency_table(da, window: tuple[int, int] | None = None) -> pd.DataFrame:
    """Long table of latencies (µs): metric (Q2C, D2C, flush), layer, op, latency_us."""
    rows = []

    def add(metric, layer, op, vals):
        v = pd.to_numeric(pd.Series(vals), errors="coerce").astype("float64").to_numpy() / 1e3
        v = v[np.isfinite(v) & (v > 0)]
        if len(v):
            rows.append(pd.DataFrame({"metric": metric, "layer": layer, "op": op, "latency_us": v}))

    def inwin(df, col):
        if window is None or not len(df):
            return df
        t = pd.to_numeric(df[col], errors="coerce").astype("float64")
        return df[(t >= window[0]) & (t <= window[1])]

    if da.guest_traces:
        g = da.df_guest_bios()
        if window is not None and da.guest_offset is not None and len(g):
            g = g.assign(h=da.guest_offset.to_ref(g["d_ns"].fillna(g["q_ns"]).fillna(0).to_numpy(np.int64)))
            g = inwin(g, "h")
        io = g[g["op"].isin(["write", "read"])]
        add("Q2C", "guest", "io", io["q2c_ns"])
        add("D2C", "guest", "io", io["d2c_ns"])
        r = da.df_guest_requests()
        if window is not None and da.guest_offset is not None and len(r):
            r = inwin(r.assign(h=da.guest_offset.to_ref(r["d_ns"].to_numpy(np.int64))), "h")
        add("flush", "guest", "flush", r.loc[r["op"] == "flush", "d2c_ns"])
    q = inwin(da.df_qemu_requests(), "h_q")
    if len(q):
        io = q[q["op"].isin(["write", "read"])]
        add("Q2C", "QEMU", "io", io["h_c"] - io["h_q"])
        add("D2C", "QEMU", "io", io["h_done"] - io["h_sub"])
        add("flush", "QEMU", "flush", q.loc[q["op"] == "flush", "h_c"] - q.loc[q["op"] == "flush", "h_q"])
    if da.host_traces:
        h = inwin(da.df_host_bios(), "d_ns")
        io = h[h["op"].isin(["write", "read"]) & (h["nsect"] > 0)]
        add("Q2C", "host", "io", io["q2c_ns"])
        add("D2C", "host", "io", io["d2c_ns"])
        f = inwin(da.df_host_flushes(), "d_ns")
        add("flush", "host device", "flush", f["c_ns"] - f["d_ns"])
    if not rows:
        return pd.DataFrame(columns=["metric", "layer", "op", "latency_us"])
    return pd.concat(rows, ignore_index=True)


def latencies(da, window: tuple[int, int] | None = None) -> Figure:
    """Latency distributions per layer (ECDF, log scale): Q2C and D2C of reads and writes, flush latency."""
    lt = latency_table(da, window)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    palette = {"guest": "#4C72B0", "QEMU": "#55A868", "host": "#C44E52", "host device": "#C44E52"}
    for ax, metric, title in zip(axes, ("Q2C", "D2C", "flush"),
                                 ("Q2C: queued → completed", "D2C: issued → completed", "flush latency"),
                                 strict=True):
        d = lt[lt["metric"] == metric]
        if len(d):
            counts = d.groupby("layer")["latency_us"].size()
            d = d.assign(layer=d["layer"].map(lambda x, c=counts: f"{x} (n={c[x]})"))
            pal = {f"{k} (n={counts[k]})": v for k, v in palette.items() if k in counts}
            sns.ecdfplot(data=d, x="latency_us", hue="layer", ax=ax, log_scale=True, palette=pal)
            leg = ax.get_legend()
            if leg is not None:
                leg.set_title(None)
                for t in leg.get_texts():
                    t.set_fontsize(8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#777")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("latency (µs)")
        ax.grid(color="#e5e5e5", lw=0.6)
    axes[0].set_ylabel("share of requests ≤ x")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ clocks
def clock_alignment(da) -> Figure:
    """The guest clock's offset to the reference clock over time: the band of offsets that fit the evidence
    (causal pairs or reference pairs) around its midpoint, in µs from the median offset."""
    off = da.guest_offset
    fig, ax = plt.subplots(figsize=(11, 3.0))
    if off is None:
        ax.text(0.5, 0.5, "no guest clock alignment (no guest trace or no evidence)", ha="center", va="center",
                transform=ax.transAxes, color="#777")
        ax.set_axis_off()
        return fig
    med = float(np.median(off.mid()))
    t = off.knots_t.astype(np.float64)
    if len(t) == 1:
        g = da.df_guest_requests() if da.guest_traces else pd.DataFrame()
        t = np.array([float(g["d_ns"].min()), float(g["d_ns"].max())]) if len(g) else np.array([t[0], t[0] + 1e9])
        lo, hi = np.repeat(off.lo, 2), np.repeat(off.hi, 2)
    else:
        lo, hi = off.lo, off.hi
    x = _rel(t + off.value(t), da.t0)
    ax.fill_between(x, (lo - med) / 1e3, (hi - med) / 1e3, color="#4C72B0", alpha=0.25, step=None,
                    label="offsets that fit the evidence")
    ax.plot(x, ((lo + hi) / 2 - med) / 1e3, color="#4C72B0", lw=1.2, label="offset used (midpoint)")
    for c in off.conflicts:
        if "t" in c:
            ax.axvline(_rel(c["t"], da.t0), color=CRASH_COLOR, lw=1)
    s = off.summary()
    ax.set_title(plain(f"{off.clock} → {off.ref}: offset {s['offset_ns'] / 1e9:.6f} s ± "
                       f"{(s['uncertainty_ns'] or 0) / 1e3:.1f} µs (max), {s['windows']} window(s), "
                       f"source: {off.source}"), fontsize=10)
    ax.set_ylabel("offset − median (µs)")
    ax.set_xlabel("time (s, reference clock, from the host trace's start)")
    ax.grid(color="#e5e5e5", lw=0.6)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------ migration
_NOT_EVENTS = ("offset_ns", "uncertainty_ns", "drift_ns", "duration_ns", "unc_ns")


def _events_of(mig: dict) -> list[dict]:
    """Time-stamped events of a migration document: every number under a key ending in ``_ns`` (or inside a
    table whose key ends in ``_ns``), labelled by its path, on the row of source / destination when the path
    says which."""
    out: list[dict] = []

    def who(path: list[str]) -> str:
        for p in reversed(path):
            for side in ("source", "destination"):
                if p.startswith(side) or p.startswith(side[:3]):
                    return side
        return "migration"

    def walk(x, path: list[str]) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                k = str(k)
                if isinstance(v, (dict, list)):
                    walk(v, [*path, k])
                elif (isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_EVENTS
                      and (k.endswith("_ns") or (path and path[-1].endswith("_ns")))):
                    if k.endswith("_ns"):
                        label = f"{path[-1]} {k[:-3]}" if path and len(k) <= 6 else k[:-3]
                    else:
                        label = k
                    out.append({"t": float(v), "label": label.replace("_", " "), "who": who([*path, k])})
        elif isinstance(x, list):
            for v in x:
                walk(v, path)

    walk(mig, [])
    return out


def handover(mig: dict, t0: int = 0) -> Figure | None:
    """Timeline of a migration's handover (time-stamped events of the ``migration`` section of
    ``writeorder check --json``), one row per side; idle stretches are cut out. None when there is no event."""
    ev = pd.DataFrame(_events_of(mig))
    if ev.empty:
        return None
    ev = ev.drop_duplicates().sort_values("t").reset_index(drop=True)
    who = [w for w in ("source", "destination", "migration") if w in set(ev["who"])]
    segs = _segments(list(ev["t"]), min_pad=2e6)
    widths = [b - a for a, b in segs]
    ratios = [max(w, max(widths) * 0.3) for w in widths]
    fig, axes = plt.subplots(1, len(segs), figsize=(11, 1.3 + 0.9 * len(who)), sharey=True, squeeze=False,
                             width_ratios=ratios, layout="constrained")
    axes = axes[0]
    colors = {"source": "#4C72B0", "destination": "#C44E52", "migration": "#555555"}
    for k, (ax, (a, b)) in enumerate(zip(axes, segs, strict=True)):
        e = ev[(ev["t"] >= a) & (ev["t"] <= b)]
        for i, r in enumerate(e.itertuples()):
            y = who.index(r.who)
            x = _rel(r.t, t0)
            ax.plot([x, x], [y - 0.25, y + 0.25], color=colors[r.who], lw=2)
            ax.annotate(plain(r.label)[:40], (x, y + 0.25), xytext=(2, 2 + 9 * (i % 3)), textcoords="offset points",
                        fontsize=7, color=colors[r.who])
        ax.set_xlim(_rel(a, t0), _rel(b, t0))
        ax.xaxis.set_major_formatter(_sec_formatter((b - a) / 1e9))
        ax.xaxis.set_major_locator(MaxNLocator(max(2, int(6 * ratios[k] / sum(ratios)) + 1)))
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", color="#e5e5e5", lw=0.6)
        if k > 0:
            ax.spines["left"].set_visible(False)
            ax.tick_params(axis="y", left=False)
    axes[0].set_yticks(range(len(who)), who)
    axes[0].set_ylim(-0.6, len(who) - 0.1)
    axes[int(np.argmax(ratios))].set_xlabel("time (s, reference clock, from the host trace's start)", fontsize=9)
    fig.suptitle("migration handover", fontsize=10)
    return fig
