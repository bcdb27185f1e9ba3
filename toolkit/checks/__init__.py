"""Checks: one module per family of violations. Each check is a function ``(DiskAnalysis) -> list[Violation]``
registered in ``CHECKS`` with its class ids and the layers it needs; a check whose evidence is absent is
reported as "cannot check", never as a pass.

| family      | module                          | classes                                                        |
|-------------|---------------------------------|----------------------------------------------------------------|
| durability  | :mod:`toolkit.checks.durability` | flush-not-durable, fua-not-durable, flush-not-forwarded, acked-not-durable-at-end |
| ordering    | :mod:`toolkit.checks.ordering`   | crash-reorder, overlapping-inflight                            |
| clocks      | :mod:`toolkit.checks.clocks`     | clock-inconsistent                                             |
| migration   | :mod:`toolkit.checks.migration`  | migration-overlap, migration-no-flush, migration-source-after-handover, migration-stale-read, split-brain |
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from toolkit.events import VIOLATIONS

CLASSES = {
    "flush-not-durable": "a guest flush completed while a write it covers was not yet durable on the host",
    "fua-not-durable": "a guest FUA write completed before its host counterpart was durable",
    "flush-not-forwarded": "a guest flush reached QEMU but no host flush of the backing device followed before "
                           "it completed while covered data was not durable",
    "crash-reorder": "a write issued after a completed guest flush could reach stable storage while a write "
                     "covered by that flush could not",
    "acked-not-durable-at-end": "writes acknowledged to the guest and still not durable when the trace ends",
    "overlapping-inflight": "two writes to overlapping sectors in flight at once at one layer",
    "migration-overlap": "the destination wrote to shared storage while writes of the source were still in "
                         "flight or not durable",
    "migration-no-flush": "the source handed the disk over without a flush after its last write",
    "migration-source-after-handover": "the source issued I/O after it handed the disk over",
    "migration-stale-read": "the destination read sectors whose newest write from the source was not yet durable",
    "split-brain": "two writers wrote to the same storage in overlapping time without a handover",
    "clock-inconsistent": "no clock alignment satisfies the causal pairs between two traces",
}
SEVERITY = {c: "error" for c in CLASSES} | {"acked-not-durable-at-end": "warning",
                                            "overlapping-inflight": "warning"}


@dataclass
class Violation:
    """One finding: class, where and when, the requests involved (evidence chain), one readable sentence."""

    cls: str
    node: str
    layer: str
    start_ns: int | None
    end_ns: int | None
    sector: int | None
    nsect: int | None
    requests: list[dict] = field(default_factory=list)
    uncertain: bool = False
    sentence: str = ""
    disk: str = ""
    details: dict = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return SEVERITY[self.cls]

    def to_json(self, vid: int) -> dict:
        return {
            "id": vid, "class": self.cls, "severity": self.severity, "disk": self.disk, "node": self.node,
            "layer": self.layer, "window_ns": [self.start_ns, self.end_ns],
            "sectors": None if self.sector is None else [self.sector, self.nsect],
            "requests": self.requests, "uncertain": self.uncertain, "sentence": self.sentence,
            **({"details": self.details} if self.details else {}),
        }


def to_frame(vs: list[Violation]) -> pd.DataFrame:
    """Violations as a VIOLATIONS table (worst first: errors, then certain, then earliest)."""
    if not vs:
        return VIOLATIONS.empty()
    df = pd.DataFrame({
        "vid": range(len(vs)), "cls": [v.cls for v in vs], "severity": [v.severity for v in vs],
        "node": [v.node for v in vs], "layer": [v.layer for v in vs],
        "start_ns": [v.start_ns for v in vs], "end_ns": [v.end_ns for v in vs],
        "sector": [v.sector for v in vs], "nsect": [v.nsect for v in vs],
        "requests": [v.requests for v in vs], "uncertain": [v.uncertain for v in vs],
        "sentence": [v.sentence for v in vs],
    })
    return VIOLATIONS.conform(df)


def fmt_s(ns: float | int | None, t0: int = 0) -> str:
    """ns on the reference clock -> 'S.mmm s' relative to t0."""
    if ns is None or pd.isna(ns):
        return "?"
    return f"{(float(ns) - t0) / 1e9:.6f} s"
