"""Clock alignment: map every trace's clock onto one reference timeline, with the uncertainty of the mapping.

Clocks are named ``<node>:monotonic`` / ``<node>:realtime``. The reference is the monotonic clock of the first
host node. Sources, best first:

1. reference pairs of the manifest (``[[clock]]``: the same instant read on two clocks);
2. causal pairs between layers: a guest request is issued (guest ``D``) before QEMU handles it, and QEMU
   completes it before the guest sees the completion (guest ``C``). Each matched pair bounds the offset
   ``host - guest`` from both sides: ``ack_host - C_guest <= offset <= handle_host - D_guest``, in the spirit of
   the convex-hull synchronisation of distributed traces. Bounds are kept per time window, so a drifting guest
   clock (TCG) is followed piecewise; a window whose bounds cross means the traces contradict each other
   (``clock-inconsistent``), never a guess.

An :class:`Offset` maps times: ``ref = t + offset(t)``; ``unc_ns`` is the half-width of the interval of
offsets that fit the evidence at that time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from toolkit.traceset import TraceSet


@dataclass
class Offset:
    """``ref = t + offset``; piecewise over windows when ``knots_t`` has more than one point.

    ``lo``/``hi`` are the bounds of the offset at each knot (ns); ``offset`` the midpoint; ``source`` says
    where it came from. ``conflicts`` lists windows whose bounds crossed (lo > hi).
    """

    clock: str
    ref: str
    source: str
    knots_t: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    conflicts: list[dict] = field(default_factory=list)

    @classmethod
    def constant(cls, clock: str, ref: str, value: int, unc: int, source: str) -> Offset:
        return cls(clock, ref, source, np.array([0], np.int64), np.array([value - unc], np.int64),
                   np.array([value + unc], np.int64))

    def mid(self) -> np.ndarray:
        return (self.lo + self.hi) // 2

    def value(self, t) -> np.ndarray:
        """Offset at times ``t`` (ns on this clock), linearly interpolated between knots."""
        t = np.asarray(t, dtype=np.float64)
        if len(self.knots_t) == 1:
            return np.full(t.shape, self.mid()[0], dtype=np.int64)
        return np.interp(t, self.knots_t, self.mid()).astype(np.int64)

    def uncertainty(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        half = (self.hi - self.lo) / 2
        if len(self.knots_t) == 1:
            return np.full(t.shape, int(half[0]), dtype=np.int64)
        return np.interp(t, self.knots_t, half).astype(np.int64)

    def to_ref(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.int64)
        return t + self.value(t)

    def summary(self) -> dict:
        half = (self.hi - self.lo) / 2
        return {
            "clock": self.clock, "reference": self.ref, "source": self.source,
            "offset_ns": int(np.median(self.mid())), "uncertainty_ns": int(np.max(half)) if len(half) else None,
            "windows": int(len(self.knots_t)),
            "drift_ns": int(self.mid()[-1] - self.mid()[0]) if len(self.knots_t) > 1 else 0,
            "consistent": not self.conflicts,
        }


IDENTITY_UNC = 0


def reference_clock(ts: TraceSet) -> str:
    hosts = [n.name for n in ts.nodes if n.kind != "guest"]
    return f"{hosts[0] if hosts else ts.nodes[0].name}:monotonic"


def pair_offsets(ts: TraceSet, a: str, b: str) -> pd.DataFrame:
    """Reference pairs between clocks ``a`` and ``b`` as rows (a_ns, b_ns, diff_ns = b - a)."""
    rows = []
    for c in ts.clocks:
        if (c.a, c.b) == (a, b):
            rows.append((c.a_ns, c.b_ns))
        elif (c.a, c.b) == (b, a):
            rows.append((c.b_ns, c.a_ns))
    df = pd.DataFrame(rows, columns=["a_ns", "b_ns"], dtype="int64")
    df["diff_ns"] = df["b_ns"] - df["a_ns"]
    return df


def realtime_to_monotonic(ts: TraceSet, node: str) -> Offset | None:
    """Offset from ``node:realtime`` to ``node:monotonic`` from the manifest's reference pairs.

    The two clocks of one host tick together (NTP slews aside), so the offset is constant; its uncertainty is
    the spread of the pairs plus the 1 us resolution of QEMU's log timestamps.
    """
    p = pair_offsets(ts, f"{node}:realtime", f"{node}:monotonic")
    if p.empty:
        return None
    d = p["diff_ns"].to_numpy()
    mid = int(np.median(d))
    unc = int(max(abs(d.max() - mid), abs(mid - d.min()))) + 1000
    return Offset.constant(f"{node}:realtime", f"{node}:monotonic", mid, unc,
                           f"{len(d)} reference pairs in the manifest")


def guest_offset(ts: TraceSet, guest: str, host: str, causal: pd.DataFrame | None = None,
) -> Offset | None:
    """Offset from ``guest:monotonic`` to ``host:monotonic``.

    ``causal``: rows of matched guest/QEMU requests with ``g_d``, ``g_c`` (guest clock) and ``h_handle``,
    ``h_ack`` (host monotonic). Reference pairs where the host read its clock *after* the guest (serial
    console markers) are upper bounds only, so they are used when causal pairs are absent.
    """
    if causal is not None and len(causal) >= 3:
        c = causal.dropna(subset=["g_d", "g_c", "h_handle", "h_ack"]).sort_values("g_d")
        if len(c) >= 3:
            return causal_envelope(c["g_d"].to_numpy(np.int64), c["h_ack"].to_numpy(np.int64) - c["g_c"].to_numpy(np.int64),
                                   c["h_handle"].to_numpy(np.int64) - c["g_d"].to_numpy(np.int64),
                                   f"{guest}:monotonic", f"{host}:monotonic")
    p = pair_offsets(ts, f"{guest}:monotonic", f"{host}:monotonic")
    if p.empty:
        return None
    # serial markers: host received after the guest printed -> offset <= diff; latency up to a few ms
    d = p.sort_values("a_ns")
    diff = d["diff_ns"].to_numpy()
    lat = 5_000_000
    return Offset(f"{guest}:monotonic", f"{host}:monotonic",
                  f"{len(d)} reference pairs (upper bounds; reception latency assumed <= 5 ms)",
                  d["a_ns"].to_numpy(np.int64), diff - lat, diff)


#: how fast the offset host - guest may *fall* (ns per ns of guest time): the guest clock does not run faster
#: than the host's beyond this; it may stop (a paused VM, a migration), which makes the offset rise at will
MAX_FALL_RATE = 5e-3


def is_causal(off: Offset) -> bool:
    """Was ``off`` estimated from causal pairs (not from reference pairs alone)?"""
    return " causal pairs " in f" {off.source}"


def causal_envelope(t: np.ndarray, lo: np.ndarray, hi: np.ndarray, clock: str, ref: str,
                    max_fall: float = MAX_FALL_RATE, max_knots: int = 2000) -> Offset:
    """Offset bounds over time from per-pair bounds ``lo_i <= offset(t_i) <= hi_i`` (t sorted).

    The offset may rise at any speed (the guest clock stops while the VM is paused) but fall only by
    ``max_fall`` per ns. Lower envelope L (forward: an earlier lower bound still binds later, less the allowed
    fall) and upper envelope U (backward: a later upper bound binds earlier, plus the allowed fall); where
    L > U no alignment satisfies the pairs: a conflict, reported with its place, never smoothed over.
    """
    n = len(t)
    t = t.astype(np.float64)
    # L[i] = max over j <= i of lo[j] - fall*(t[i]-t[j]); U[i] = min over j >= i of hi[j] + fall*(t[j]-t[i])
    L = np.maximum.accumulate(lo + max_fall * t) - max_fall * t
    U = np.minimum.accumulate((hi + max_fall * t)[::-1])[::-1] - max_fall * t
    bad = L > U
    conflicts = []
    if bad.any():
        # one conflict per run of consecutive bad pairs
        starts = np.flatnonzero(bad & ~np.concatenate([[False], bad[:-1]]))
        for i in starts[:20]:
            conflicts.append({"guest_ns": int(t[i]), "lo_ns": int(L[i]), "hi_ns": int(U[i]), "pairs": int(n)})
    lo2, hi2 = np.minimum(L, U), np.maximum(L, U)
    step = max(1, n // max_knots)
    idx = np.arange(0, n, step)
    return Offset(clock, ref, f"{n} causal pairs (guest D/C vs QEMU handle/complete)",
                  t[idx].astype(np.int64), lo2[idx].astype(np.int64), hi2[idx].astype(np.int64), conflicts)


def coarse_guest_offset(ts: TraceSet, guest: str, host: str, guest_w: pd.DataFrame, qemu_w: pd.DataFrame
                        ) -> int | None:
    """A first estimate of host - guest (ns) to restrict matching: reference pairs, else rank-matched writes.

    ``guest_w``/``qemu_w``: writes with columns sector, nsect and a time (``t``) on their own clocks.
    """
    p = pair_offsets(ts, f"{guest}:monotonic", f"{host}:monotonic")
    if not p.empty:
        return int(np.median(p["diff_ns"]))
    if guest_w.empty or qemu_w.empty:
        return None
    g = guest_w.sort_values("t").assign(k=lambda x: x.groupby(["sector", "nsect"]).cumcount())
    q = qemu_w.sort_values("t").assign(k=lambda x: x.groupby(["sector", "nsect"]).cumcount())
    m = g.merge(q, on=["sector", "nsect", "k"], suffixes=("_g", "_q"))
    if m.empty:
        return None
    return int(np.median(m["t_q"] - m["t_g"]))
