"""Benchmark of the verdict pipeline (requests, lineage, clock alignment, durability, checks) on a scaled real set.

    python benchmarks/bench_check.py                       # 10 M events from traces/raw-none-threads, both modes
    python benchmarks/bench_check.py --events 1000000 --sectors offset
    python benchmarks/bench_check.py --set traces/raw-unsafe --profile /tmp/check.prof

The set is parsed once (``SetAnalysis.load``, the Parquet cache) and scaled *in memory*: every trace's events
(guest blktrace, QEMU log, host blktrace) are copied K times, copy k shifted by k * (span + 1 s) ns on every
clock at once (guest monotonic, host monotonic, host realtime: the offsets between clocks stay those of the
capture, so the manifest's reference pairs still hold), file positions (``pos``) shifted past the previous
copy's so they stay unique and increasing per file. K = round(events / events of the set), whole copies only.

Sectors: ``same`` keeps every copy on the same sectors (each sector is written K times as often: matching must
stay order-aware); ``offset`` moves copy k by k * stride sectors on every layer (guest/host ``sector``, QEMU
``sector`` and byte ``offset``; stride = the set's highest sector, rounded up to 1 MiB), which keeps matches
unambiguous. ``offset`` needs a raw mapping (the virtual disk is then K times the region the capture used).

Each measurement runs in a fresh subprocess (imports and the in-memory build are not timed; peak RSS via
``resource.getrusage(...).ru_maxrss`` includes the build):

* ``stages``: each pipeline stage timed on its own in pipeline order (each is memoised, so a stage's time is
  its own work): the device-filtered event tables, ``df_guest_requests``, ``df_host_bios``,
  ``df_host_flushes``, ``df_qemu_requests``, ``df_lineage``, ``guest_offset``, ``df_host_writes``,
  ``direct_share``, ``df_writes``, ``df_flushes``, then ``check_analysis(sa)`` with every check, the coverage
  and the cache-mode inference timed inside it.
* ``cold``: ``check_analysis(sa)`` from nothing: the end-to-end time and events/s.

The scaled raw-none-threads must give the verdict of the capture: no violation, every write linked and carried.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GAP_NS = 1_000_000_000


def scale_set(sa, n_events: int, sectors: str = "same", gap_ns: int = GAP_NS) -> dict:
    """Replace every trace's events of ``sa`` by K time-shifted copies (in place). Returns what was built."""
    import numpy as np

    per = sum(len(r.events) for r in sa.results.values())
    k = max(1, round(n_events / per))
    spans = []
    for r in sa.results.values():
        t = r.events["time_ns"].dropna()
        if len(t):
            spans.append(int(t.max()) - int(t.min()))
    step = max(spans, default=0) + gap_ns
    stride = 0
    if sectors == "offset":
        for d in sa.ts.disks:
            if [s.get("kind") for s in d.mapping] != ["raw"]:
                raise SystemExit(f"--sectors offset needs a raw mapping; disk {d.name} has {d.mapping}")
        top = 0
        for tr in sa.ts.traces:
            ev = sa.results[tr.index].events
            if tr.layer == "qemu":
                top = max(top, int((ev["sector"] + ev["nsectors"]).max(skipna=True) or 0),
                          int(((ev["offset"] + ev["bytes"]) // 512).max(skipna=True) or 0))
            else:
                top = max(top, int((ev["sector"] + ev["nsect"]).max()))
        stride = -(-top // 2048) * 2048
    copy = {}
    for tr in sa.ts.traces:
        r = sa.results[tr.index]
        ev = r.events
        n = len(ev)
        if n not in copy:
            copy[n] = np.repeat(np.arange(k, dtype=np.int64), n)
        c = copy[n]
        big = ev.take(np.tile(np.arange(n), k)).reset_index(drop=True)

        def shift(col: str, by, big=big, ev=ev, c=c):
            if col not in big.columns:
                return
            if isinstance(ev[col].dtype, np.dtype):
                big[col] = (big[col].to_numpy() + c * by).astype(ev[col].dtype)
            else:  # nullable: keep the mask and the dtype
                big[col] = (big[col] + c * by).astype(ev[col].dtype)

        shift("time_ns", step)
        shift("pos", int(ev["pos"].max()) + 1 if n else 1)
        if tr.layer != "qemu" and "seq" in ev.columns and n:
            shift("seq", int(ev["seq"].max()) + 1)
        if stride:
            shift("sector", stride)
            if tr.layer == "qemu":
                shift("offset", stride * 512)
        assert list(big.dtypes) == list(ev.dtypes)
        r.events = big
    total = sum(len(r.events) for r in sa.results.values())
    return {"copies": k, "events": total, "events_per_copy": per, "step_ns": step, "sector_stride": stride}


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
sys.path.insert(0, {root!r} + "/benchmarks")
import numpy as np, pandas as pd
from bench_check import scale_set
from toolkit import cache_mode, verdict
from toolkit.analysis import SetAnalysis

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None

t = time.perf_counter()
sa = SetAnalysis.load({set!r})
built = scale_set(sa, {events}, {sectors!r})
built["build_s"] = round(time.perf_counter() - t, 2)
built["rss_after_build_mb"] = round(rss_mb())
mode = {mode!r}
times = {{}}
prof = None
if {profile!r}:
    import cProfile
    prof = cProfile.Profile()

def timed(name, fn):
    def run(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            times[name] = times.get(name, 0.0) + time.perf_counter() - t
    return run

if prof:
    prof.enable()
t_all = time.perf_counter()
if mode == "stages":
    for da in sa.disks:
        for name, fn in [
            ("events (device filter, sort)", lambda: (da.guest_events, da.host_events)),
            ("df_guest_requests", da.df_guest_requests),
            ("df_host_bios", da.df_host_bios),
            ("df_host_flushes", da.df_host_flushes),
            ("df_qemu_requests", da.df_qemu_requests),
            ("df_lineage", da.df_lineage),
            ("guest_offset", lambda: da.guest_offset),
            ("df_host_writes", da.df_host_writes),
            ("direct_share", lambda: da.direct_share),
            ("df_writes", da.df_writes),
            ("df_flushes", da.df_flushes),
        ]:
            timed(name, fn)()
    verdict.DISK_CHECKS = [(n, needs, timed("check " + n, fn)) for n, needs, fn in verdict.DISK_CHECKS]
    verdict.coverage = timed("coverage", verdict.coverage)
    cache_mode.infer = timed("cache mode inference", cache_mode.infer)
t = time.perf_counter()
res = verdict.check_analysis(sa)
t_check = time.perf_counter() - t
total = time.perf_counter() - t_all
if prof:
    prof.disable()
    prof.dump_stats({profile!r})
if mode == "stages":
    inner = sum(v for k, v in times.items() if k.startswith("check ") or k in ("coverage", "cache mode inference"))
    times["check_analysis: the rest"] = t_check - inner
summary = {{k: v for k, v in res.summary().items() if v}}
cov = {{d: {{k: v for k, v in c.items() if k not in ("unlinked", "not_carried")}} for d, c in res.coverage.items()}}
print(json.dumps({{"mode": mode, "built": built, "seconds": total, "stages": times,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "summary": summary, "coverage": cov,
                  "inferred_cache": {{d: m["mode"] for d, m in res.inferred_cache.items()}}}}))
"""


def run_child(set_path: str, events: int, sectors: str, mode: str, profile: str | None = None) -> dict:
    code = CHILD.format(root=str(ROOT), set=set_path, events=events, sectors=sectors, mode=mode, profile=profile)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"benchmark child ({mode}, sectors={sectors}) failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="events in the scaled set (default 10 M)")
    ap.add_argument("--set", default=str(ROOT / "traces" / "raw-none-threads"), help="the real set to scale")
    ap.add_argument("--sectors", choices=["same", "offset", "both"], default="both")
    ap.add_argument("--stages-only", action="store_true", help="skip the end-to-end (cold) run")
    ap.add_argument("--cold-only", action="store_true", help="skip the per-stage run")
    ap.add_argument("--profile", help="cProfile the cold run (stages run with --stages-only) into this file")
    ap.add_argument("--small", action="store_true", help="1 M events (what ./dev bench runs quickly)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON document at the end")
    a, _ = ap.parse_known_args()  # ./dev bench passes its arguments to every benchmark
    if a.small:
        a.events = 1_000_000
    modes = ["same", "offset"] if a.sectors == "both" else [a.sectors]
    results = []
    safe_set = Path(a.set).name == "raw-none-threads"
    for sectors in modes:
        for mode in (["stages"] if not a.cold_only else []) + (["cold"] if not a.stages_only else []):
            prof = a.profile if a.profile and (mode == "cold" or a.stages_only) else None
            if prof and len(modes) > 1:
                prof = f"{prof}.{sectors}"
            r = run_child(a.set, a.events, sectors, mode, prof)
            r["sectors"] = sectors
            results.append(r)
            b = r["built"]
            ev = b["events"]
            print(f"{Path(a.set).name} x{b['copies']} = {ev:,} events, sectors {sectors}, {mode}: "
                  f"{r['seconds']:.2f} s  {ev / r['seconds'] / 1e6:.2f} M events/s  peak RSS {r['maxrss_mb']:.0f} MB "
                  f"(build {b['build_s']:.1f} s, {b['rss_after_build_mb']} MB after it)")
            if mode == "stages":
                for k, v in r["stages"].items():
                    print(f"    {k:<34} {v:8.2f} s")
            print(f"    verdict: {r['summary'] or 'no violation'}; inferred cache {r['inferred_cache']}")
            for d, c in r["coverage"].items():
                print(f"    coverage {d}: {c}")
            if safe_set:
                for d, c in r["coverage"].items():
                    ok = (not r["summary"] and c["writes_linked_to_qemu"] == c["guest_writes"]
                          and c["flushes_linked_to_qemu"] == c["guest_flushes"]
                          and c["writes_carried_to_host"] == c["guest_writes"] and c["unlinked_count"] == 0)
                    print(f"    sanity ({d}): {'OK: no violation, 100% linked and carried' if ok else 'FAILED'}")
    if a.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
