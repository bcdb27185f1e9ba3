"""``writeorder check``: run every check on every disk of a set and build the verdict document.

``check_set(path)`` returns a :class:`CheckResult`; ``to_json()`` is the CLI contract of DESIGN.md:
``{"traceset", "summary": {class: count}, "violations": [...], "coverage": {...}, "clocks": {...},
"inferred_cache": {...}, "cannot_check": [...]}``. Violations are ordered worst first (errors before warnings,
certain before uncertain, then by time), and numbered in that order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from toolkit import cache_mode
from toolkit.analysis import DiskAnalysis, SetAnalysis
from toolkit.checks import CLASSES, Violation, durability, ordering
from toolkit.checks import clocks as clock_checks
from toolkit.checks import migration as migration_checks

DISK_CHECKS = [
    ("durability", ("guest-block", "qemu", "host-block"), durability.check),
    ("crash-reorder", ("guest-block", "qemu", "host-block"), ordering.crash_reorder),
    ("overlapping-inflight", ("guest-block",), ordering.overlapping_inflight),
    ("clocks", ("guest-block", "qemu"), clock_checks.check),
]


@dataclass
class CheckResult:
    sa: SetAnalysis
    violations: list[Violation] = field(default_factory=list)
    cannot_check: list[dict] = field(default_factory=list)
    coverage: dict = field(default_factory=dict)
    clocks: dict = field(default_factory=dict)
    inferred_cache: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    checks_run: list[str] = field(default_factory=list)

    @property
    def violation_count(self) -> int:
        return len(self.violations)

    def summary(self) -> dict:
        out = dict.fromkeys(CLASSES, 0)
        for v in self.violations:
            out[v.cls] += 1
        return out

    def to_json(self) -> dict:
        return {
            "traceset": self.sa.ts.name,
            "summary": self.summary(),
            "violations": [v.to_json(i) for i, v in enumerate(self.violations)],
            "coverage": self.coverage, "clocks": self.clocks, "inferred_cache": self.inferred_cache,
            "cannot_check": self.cannot_check, "checks_run": self.checks_run, **self.extra,
        }

    def rendered(self, path: str) -> dict:
        """What ``writeorder check`` prints for one of several sets: ``{"path", "text", "json", "violations"}``
        (the same from one process and from dask workers)."""
        return {"path": path, "text": self.to_text(), "json": json.dumps(self.to_json(), indent=1, sort_keys=True),
                "violations": self.violation_count}

    def to_text(self) -> str:
        s = self.summary()
        errors = sum(n for c, n in s.items() if n and c not in ("acked-not-durable-at-end", "overlapping-inflight"))
        lines = [f"trace set {self.sa.ts.name}: " + ("NOT SAFE" if errors else
                 ("no durability or ordering violation" + (" (warnings below)" if self.violations else "")))]
        for c, n in s.items():
            if n:
                lines.append(f"  {n:5d}  {c}")
        for disk, m in self.inferred_cache.items():
            lines.append(f"  disk {disk}: cache inferred {m['mode']}, declared {m['declared']}")
        for v in self.violations[:10]:
            lines.append(f"  - [{v.cls}{', uncertain' if v.uncertain else ''}] {v.sentence}")
        if len(self.violations) > 10:
            lines.append(f"  ... {len(self.violations) - 10} more (--json for all)")
        for c in self.cannot_check:
            lines.append(f"  cannot check {c['check']} ({c['disk']}): {c['reason']}")
        for d in self.extra.get("slicing", []):
            if d["slices"] > 1:
                lines.append(f"  disk {d['disk']}: {d['events']:,} events checked in {d['slices']} time slices"
                             + (f", {len(d['unclean_cuts'])} cut(s) not clean" if d["unclean_cuts"] else ""))
        return "\n".join(lines)


def _order(vs: list[Violation]) -> list[Violation]:
    return sorted(vs, key=lambda v: (v.severity != "error", v.uncertain, v.start_ns if v.start_ns is not None
                                     else np.iinfo(np.int64).max, v.cls))


def coverage(da: DiskAnalysis) -> dict:
    """Share of guest writes and flushes linked to QEMU and carried to host I/O, with the unlinked listed."""
    if not da.guest_traces:
        return {"guest_writes": None}
    w = da.df_writes()
    f = da.df_flushes()
    lin = da.df_lineage()
    unl = lin[(lin["qid"] < 0) & lin["op"].isin(["write", "flush"])]
    carried = int((w["first_rid"] >= 0).sum())
    return {
        "guest_writes": int(len(w)), "guest_flushes": int(len(f)),
        "writes_linked_to_qemu": int((w["qid"] >= 0).sum()), "flushes_linked_to_qemu": int((f["qid"] >= 0).sum()),
        "writes_mapped": int(w["mapped"].sum()), "writes_carried_to_host": carried,
        "write_share_carried": round(carried / len(w), 4) if len(w) else None,
        "unlinked": [{"rid": int(x.rid), "op": x.op, "sector": int(x.sector), "nsect": int(x.nsect),
                      "reason": x.reason} for x in unl.head(100).itertuples()],
        "unlinked_count": int(len(unl)),
        "not_carried": [int(r) for r in w.loc[w["first_rid"] < 0, "rid"].head(100)],
    }


@dataclass
class DiskPart:
    """What the checks found on one disk (or one time slice of it): the pieces of a CheckResult."""

    disk: str
    violations: list[Violation] = field(default_factory=list)
    cannot_check: list[dict] = field(default_factory=list)
    checks_run: list[str] = field(default_factory=list)
    coverage: dict = field(default_factory=dict)
    cache_counts: dict = field(default_factory=dict)
    declared: str | None = None
    clocks: dict = field(default_factory=dict)


def check_disk(sa: SetAnalysis, da: DiskAnalysis) -> DiskPart:
    """Every disk check on one disk of ``sa`` (a whole set, or a time slice of it: toolkit.slicing)."""
    layers = {t.layer for t in sa.ts.traces}
    part = DiskPart(da.name, declared=da.disk.cache)
    for m in da.requires():
        part.cannot_check.append({"disk": da.name, **m.to_json()})
    for name, needs, fn in DISK_CHECKS:
        missing = [x for x in needs if x not in layers]
        if missing:
            part.cannot_check.append({"disk": da.name, "check": name,
                                      "reason": f"no {', '.join(missing)} trace in the set"})
            continue
        part.violations += fn(da)
        part.checks_run.append(name)
    part.coverage = coverage(da)
    part.cache_counts = cache_mode.counts(da)
    off = da.guest_offset
    if off is not None:
        part.clocks[f"{off.clock}->{off.ref}"] = off
    for t in da.qemu_traces:
        qo = sa.qemu_offset(t)
        if qo is not None:
            part.clocks[f"qemu {t.path} ({t.node}, {t.role})->{qo.ref}"] = qo
    return part


def _clock_doc(key: str, off) -> dict:
    return {**off.summary(), "clock": off.clock} if key.startswith("qemu ") else off.summary()


def check_set_level(sa: SetAnalysis, res: CheckResult, single_writer: bool = False) -> list[Violation]:
    """The checks over the whole set (migration and split-brain) and what the set as a whole lacks.

    ``single_writer``: the set has at most one QEMU process, so there is no handover (it needs a source and a
    destination) and no second writer: the migration checks find nothing and are not run on the data (the
    time-sliced path, which never holds a whole device)."""
    vs: list[Violation] = []
    if not sa.ts.disks:
        res.cannot_check.append({"disk": None, "check": "all disk checks",
                                 "reason": "no [[disk]] in traceset.toml: say which guest device maps to which "
                                           "host device and how"})
    if any(t.layer == "qemu" for t in sa.ts.traces) and any(t.layer == "host-block" for t in sa.ts.traces):
        mv, mdoc = ([], None) if single_writer else migration_checks.check(sa)
        res.checks_run.append("migration and split-brain")
        vs += mv
        if mdoc is not None:
            res.extra["migration"] = mdoc
    else:
        res.cannot_check.append({"disk": None, "check": "migration and split-brain",
                                 "reason": "needs the QEMU traces of every writer and the host-block trace of the "
                                           "shared device"})
    return vs


def assemble(sa: SetAnalysis, parts: list[DiskPart], single_writer: bool = False) -> CheckResult:
    """The verdict document from the disk parts (in disk order) and the set-level checks."""
    res = CheckResult(sa)
    vs: list[Violation] = []
    for p in parts:
        res.cannot_check += p.cannot_check
        vs += p.violations
        for name in p.checks_run:
            if name not in res.checks_run:
                res.checks_run.append(name)
        res.coverage[p.disk] = p.coverage
        res.inferred_cache[p.disk] = cache_mode.decide(p.cache_counts, p.declared)
        for k, off in p.clocks.items():
            res.clocks[k] = _clock_doc(k, off)
    vs += check_set_level(sa, res, single_writer)
    res.violations = _order(vs)
    return res


def check_analysis(sa: SetAnalysis) -> CheckResult:
    return assemble(sa, [check_disk(sa, da) for da in sa.disks])


def check_set(path, *, use_cache: bool = True, progress=None) -> CheckResult:
    return check_analysis(SetAnalysis.load(path, use_cache=use_cache, progress=progress))
