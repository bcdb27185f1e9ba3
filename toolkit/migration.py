"""Writers of shared storage: which QEMU process issued which host I/O, and the handover of a live migration.

* :func:`threads` - host thread id -> QEMU process (pid, role, trace), from each QEMU trace's ``threads`` file
  (columns tid, pid, ...) and its main thread (tid == pid).
* :func:`writers` - host I/O of the shared device attributed to QEMU processes (by the submitting thread).
* :func:`node_events` - run-state, migration and activation events of every QEMU process, on the reference
  clock (NODE_EVENTS plus ``trace``, ``h_ns``).
* :func:`handover` - for a source/destination pair: when the source stopped the VM, flushed (``vm_stop_flush_all``),
  completed the migration, and whether it ran again; when the destination resumed; the last I/O of the source
  and the first of the destination on the shared device.

Times: ``*_ns`` are on the reference clock (the host's CLOCK_MONOTONIC); QEMU log times are mapped with the
manifest's realtime/monotonic pairs. Sectors of 512 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from toolkit import fileio, qemu
from toolkit.traceset import Trace

NEVER = np.iinfo(np.int64).max


def threads(sa) -> pd.DataFrame:
    """tid -> (pid, role, trace) for every QEMU process of the set."""
    rows = []
    seen: set[str] = set()
    for t in sa.qemu_traces():
        if t.pid is not None:
            rows.append((t.pid, t.pid, t.role, t.index))
        if t.threads and t.threads not in seen:
            seen.add(t.threads)
            raw, _ = fileio.read_bytes(sa.ts.root / t.threads)
            lines = raw.decode("utf-8", errors="replace").splitlines()
            if not lines:
                continue
            head = lines[0].split("\t")
            try:
                ti, pi = head.index("tid"), head.index("pid")
            except ValueError:
                raise fileio.TraceError(f"{sa.ts.root / t.threads}: line 1: needs columns 'tid' and 'pid'") from None
            for n, line in enumerate(lines[1:], start=2):
                f = line.split("\t")
                try:
                    rows.append((int(f[ti]), int(f[pi]), None, None))
                except (ValueError, IndexError):
                    raise fileio.TraceError(f"{sa.ts.root / t.threads}: line {n}: not 'tid<TAB>pid...'") from None
    df = pd.DataFrame(rows, columns=["tid", "pid", "role", "trace"])
    by_pid = {t.pid: (t.role, t.index) for t in sa.qemu_traces() if t.pid is not None}
    df["role"] = df["pid"].map(lambda p: by_pid.get(p, (None, None))[0])
    df["trace"] = df["pid"].map(lambda p: by_pid.get(p, (None, None))[1])
    return df.drop_duplicates("tid").reset_index(drop=True)


def writers(da) -> pd.DataFrame:
    """Host bios of the disk's host device with ``qemu_pid``/``role``/``trace`` of the QEMU process that
    queued them (null when another thread did: kworker, journal, sync)."""
    b = da.df_host_bios().copy()
    th = threads(da.sa).set_index("tid")
    b["qemu_pid"] = pd.array(b["pid"].map(th["pid"]), dtype="Int64")
    b["role"] = b["pid"].map(th["role"])
    b["trace"] = pd.array(b["pid"].map(th["trace"]), dtype="Int64")
    return b


def node_events(sa) -> pd.DataFrame:
    """NODE_EVENTS of every QEMU trace with ``trace`` and ``h_ns`` (reference clock)."""
    parts = []
    for t in sa.qemu_traces():
        ev = qemu.node_events(sa.events(t), node=t.node, role=t.role, pid=t.pid)
        if ev.empty:
            continue
        ev = ev.assign(trace=t.index, h_ns=to_ref(sa, t, ev["time_ns"]))
        parts.append(ev)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def to_ref(sa, t: Trace, times: pd.Series) -> np.ndarray:
    return sa.qemu_to_ref(times, t)


def _first(ev: pd.DataFrame, mask) -> float:
    x = ev.loc[mask, "h_ns"]
    return float(x.min()) if len(x) else np.nan


@dataclass
class Handover:
    source: Trace
    destination: Trace
    times: dict = field(default_factory=dict)     # name -> reference ns (nan if not traced)
    notes: list[str] = field(default_factory=list)

    @property
    def point(self) -> float:
        """The handover instant: the destination resumed the guest (else the source completed)."""
        t = self.times.get("destination_resume")
        return t if t == t else self.times.get("source_completed", np.nan)


def handover(sa) -> Handover | None:
    src = [t for t in sa.qemu_traces() if t.role == "source"]
    dst = [t for t in sa.qemu_traces() if t.role == "destination"]
    if not src or not dst:
        return None
    s, d = src[0], dst[0]
    ne = node_events(sa)
    if ne.empty:
        return Handover(s, d, notes=["no run-state or migration events traced: enable runstate_set, "
                                     "migrate_set_state, vm_stop_flush_all"])
    S, D = ne[ne["trace"] == s.index], ne[ne["trace"] == d.index]
    st = S["state"].astype(str)
    dt = D["state"].astype(str)
    h = Handover(s, d)
    h.times["source_stop"] = _first(S, (S["kind"] == "runstate") & (st == "finish-migrate"))
    h.times["source_flush_all"] = _first(S, (S["event"] == "vm_stop_flush_all") & (S["h_ns"] >= h.times["source_stop"]))
    h.times["source_completed"] = _first(S, (S["event"] == "migrate_set_state") & (st == "completed"))
    h.times["source_postmigrate"] = _first(S, (S["kind"] == "runstate") & (st == "postmigrate"))
    stop = h.times["source_stop"]
    h.times["source_resumed_after_handover"] = _first(
        S, (S["kind"] == "runstate") & (st == "running") & (S["h_ns"] > (stop if stop == stop else np.inf)))
    h.times["destination_resume"] = _first(D, (D["kind"] == "runstate") & (dt == "running"))
    h.times["destination_completed"] = _first(D, (D["event"] == "migrate_set_state") & (dt == "completed"))
    act = D[(D["kind"] == "activation")]
    h.times["destination_activated"] = float(act["h_ns"].min()) if len(act) else np.nan
    for k, v in h.times.items():
        if v != v and k in ("source_stop", "destination_resume"):
            h.notes.append(f"{k.replace('_', ' ')} not traced")
    return h


def io_summary(x: pd.DataFrame, t0: int) -> dict | None:
    """First/last write of one side (reference ns and s from t0)."""
    wr = x[(x["op"] == "write") & x["q_ns"].notna()]
    if wr.empty:
        return None
    first, last = wr.iloc[wr["q_ns"].argmin()], wr.iloc[wr["q_ns"].argmax()]
    return {"writes": int(len(wr)),
            "first_write": {"rid": int(first["rid"]), "q_ns": int(first["q_ns"]), "sector": int(first["sector"]),
                            "nsect": int(first["nsect"])},
            "last_write": {"rid": int(last["rid"]), "q_ns": int(last["q_ns"]),
                           "c_ns": None if pd.isna(last["c_ns"]) else int(last["c_ns"]),
                           "sector": int(last["sector"]), "nsect": int(last["nsect"])}}
