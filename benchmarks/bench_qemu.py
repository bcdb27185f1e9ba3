"""Benchmarks of the QEMU readers on scaled real traces (beside the blktrace ones).

    python benchmarks/bench_qemu.py                 # 5 M log lines, 2 M simple-backend records
    python benchmarks/bench_qemu.py --small         # 500 k lines, 200 k records
    python benchmarks/bench_qemu.py --simpletrace DIR   # folder with QEMU's simpletrace.py + tracetool/
    python benchmarks/bench_qemu.py --repeat 7          # runs of each reader (median; default 5)

CPU seconds are the reader's process plus its worker processes: a big uncompressed log is read by two processes
when a core is idle, a big simple-backend file decoded on two threads; ``--workers 1`` / ``--workers 2`` force one
/ two. ``--only log|simple`` runs one half. Both readers' per-record loops are C extensions built by the install.

Log backend: the real logs of traces/ (timestamped ones), copied with every copy shifted in time, parsed by
``toolkit.parsers.qemu_log`` in a fresh subprocess: lines/s and peak RSS (ru_maxrss). Simple backend: the real
events written in file format v4, replicated to the wanted record count; ``toolkit.parsers.qemu_simple`` and
QEMU's ``scripts/simpletrace.py`` (if found) read the same file in the same run.

Each reader runs ``--repeat`` times, each in a fresh process; the median is reported with the range. On a VM the
first touch of memory the host has not backed yet costs system time (here 0.05-1 s per 450 MB, from one run to
the next): ``sys`` is printed beside the wall time so that this noise can be told from the reader's own work.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy, pandas, pyarrow, pyarrow.compute  # imports are not timed
def kids():
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime
def sys_s():
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime + resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
s0 = sys_s()
t, c, k = time.perf_counter(), time.process_time(), kids()
{code}
dt, dc, dk = time.perf_counter() - t, time.process_time() - c, kids() - k
print(json.dumps({{"seconds": dt, "cpu_s": dc + dk, "cpu_parent_s": dc, "cpu_workers_s": dk, "rows": n,
                  "sys_s": sys_s() - s0, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def run_child(code: str, repeat: int = 1) -> dict:
    """``code`` in ``repeat`` fresh processes: the run with the median wall time, plus every run's seconds."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), code=code)], capture_output=True,
                             text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["seconds"])
    return {**runs[len(runs) // 2], "all_seconds": [round(r["seconds"], 2) for r in runs]}


def spread(r: dict) -> str:
    a = r["all_seconds"]
    return f"median of {len(a)}, {a[0]:.2f}-{a[-1]:.2f} s, sys {r['sys_s']:.2f} s" if len(a) > 1 else f"sys {r['sys_s']:.2f} s"


def build_log(path: Path, lines: int) -> int:
    """Write ``lines`` lines: the timestamped sample logs, copy k shifted by k * (span + 1) seconds."""
    src = []
    for p in sorted((ROOT / "traces").glob("*/qemu-*.log.xz")):
        text = lzma.decompress(p.read_bytes()).decode()
        if re.match(r"^\d+@", text):
            src += text.splitlines()
    pat = re.compile(r"^(\d+)@(\d+)\.")
    secs = [int(pat.match(ln).group(2)) for ln in src]
    base, span = min(secs), max(secs) - min(secs) + 1
    rest = [pat.sub("", ln, count=1) for ln in src]
    tids = [pat.match(ln).group(1) for ln in src]
    offs = [s - base for s in secs]
    n = 0
    with open(path, "w") as f:
        k = 0
        while n < lines:
            shift = base + k * span
            m = min(len(src), lines - n)
            f.write("".join(f"{tids[i]}@{shift + offs[i]}.{rest[i]}\n" for i in range(m)))
            n += m
            k += 1
    return n


def build_simple(path: Path, te_path: Path, records: int) -> int:
    from conftest import TRACE_EVENTS_72, simple_records_from_log

    from toolkit.parsers import qemu_log, qemu_simple
    from toolkit.parsers import trace_events as te

    decls = te.parse_text(TRACE_EVENTS_72)
    te_path.write_text(TRACE_EVENTS_72.lstrip())
    names, recs = None, []
    for p in sorted((ROOT / "traces").glob("*/qemu-*.log.xz")):
        ev = qemu_log.parse(p).events
        nm, r, _ = simple_records_from_log(ev, decls)
        names = nm
        recs += r
    out, k = [], 0
    while len(out) < records:
        shift = k * 10**12
        out += [(e, t + shift, 4242, v) for e, t, _pid, v in recs[: records - len(out)]]  # one process
        k += 1
    qemu_simple.write(path, names, out)
    return len(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=5_000_000)
    ap.add_argument("--records", type=int, default=2_000_000)
    ap.add_argument("--small", action="store_true", help="500 k lines, 200 k records")
    ap.add_argument("--simpletrace", default=os.environ.get("QEMU_SIMPLETRACE_DIR", "/work/.cache/qemu-simpletrace"))
    ap.add_argument("--skip-simpletrace", action="store_true")
    ap.add_argument("--workers", type=int, default=None,
                    help="log: processes per file; simple: threads (default: the reader's choice)")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each reader, fresh processes (median; default 5)")
    ap.add_argument("--only", choices=("log", "simple"), default=None)
    a = ap.parse_args()
    if a.small:
        a.lines, a.records = 500_000, 200_000
    res: dict = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        wk = f", workers={a.workers}" if a.workers else ""

        def measure(key: str, call: str, n: int, unit: str, label: str, **extra) -> dict:
            """``call`` (a reader's parse) in --repeat fresh processes; prints and records its line in ``res``."""
            mod = call.split(".")[0]
            r = run_child(f"from toolkit.parsers import {mod}\nr = {call}\nn = len(r.events)", a.repeat)
            assert r["rows"] == n
            res[key] = {unit: n, **extra, **r, f"{unit}_per_s": round(n / r["seconds"])}
            print(f"{label:<42} {r['seconds']:.2f} s  {n / r['seconds'] / 1e6:.2f} M {unit}/s (cpu {r['cpu_s']:.2f} s,"
                  f" workers {r['cpu_workers_s']:.2f} s)  peak {r['maxrss_mb']:.0f} MB  [{spread(r)}]")
            return r

        if a.only != "simple":
            log = d / "qemu.log"
            n = build_log(log, a.lines)
            mb = round(log.stat().st_size / 2**20, 1)
            measure("qemu_log", f"qemu_log.parse({str(log)!r}{wk})", n, "lines",
                    f"qemu_log     {n:>9} lines {mb:>7} MB", MB=mb)
            log.unlink()
        if a.only == "log":
            print(json.dumps(res))
            return
        st, tef = d / "trace-1", d / "trace-events-all"
        n = build_simple(st, tef, a.records)
        mb = round(st.stat().st_size / 2**20, 1)
        call = f"qemu_simple.parse({str(st)!r}, trace_events={str(tef)!r}{wk}"
        r = measure("qemu_simple", call + ")", n, "records", f"qemu_simple  {n:>9} recs  {mb:>7} MB", MB=mb)
        r2 = measure("qemu_simple_no_text", call + ", args_text=False)", n, "records", "  (args_text=False)")
        script = Path(a.simpletrace) / "simpletrace.py"
        if script.exists() and not a.skip_simpletrace:
            t = time.perf_counter()
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            with open(os.devnull, "w") as null:
                subprocess.run([sys.executable, str(script), str(tef), str(st)], stdout=null, check=True)
            dt = time.perf_counter() - t
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            dc = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)  # includes its start-up (~0.1 s)
            res["simpletrace_py"] = {"seconds": dt, "cpu_s": dc, "records_per_s": round(n / dt)}
            ratio = dt / r["seconds"]
            res["speedup"] = round(ratio, 1)
            res["speedup_no_text"] = round(dt / r2["seconds"], 1)
            res["speedup_cpu"] = round(dc / r["cpu_s"], 1)
            res["speedup_cpu_no_text"] = round(dc / r2["cpu_s"], 1)
            print(f"simpletrace.py {n:>7} recs            {dt:.2f} s  {n / dt / 1e6:.2f} M records/s (cpu {dc:.2f} s)"
                  f"  -> writeorder is {ratio:.1f}x faster ({dt / r2['seconds']:.1f}x without args text); "
                  f"by cpu time {res['speedup_cpu']:.1f}x ({res['speedup_cpu_no_text']:.1f}x)")
        else:
            print(f"simpletrace.py not found at {script}: no comparison")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
