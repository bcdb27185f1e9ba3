"""Benchmark: writeorder's blktrace binary and blkparse text readers beside Debian's blkparse.

A real capture (traces/raw-none-threads, host or guest per-CPU files) is scaled by time-shifted copies of its
records, keeping their shapes and pdus, to ``--records`` binary records and ``--lines`` text lines (the text is
what Debian's ``blkparse`` prints for a scaled binary when it is installed, else formatted from our own table).
Each reader runs in a fresh subprocess; peak memory is that process's ru_maxrss.

    python benchmarks/bench_blktrace.py                      # 10 M records, 5 M lines
    python benchmarks/bench_blktrace.py --records 1e6 --lines 5e5 --source guest
    python benchmarks/bench_blktrace.py --only text       # the text reader, and blkparse on the text's records

Targets: binary ingest >= 10x blkparse's rate, text >= 1.5 M lines/s, peak memory <= 2x the table size.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.parsers import blktrace  # noqa: E402

SOURCES = {"host": "traces/raw-none-threads/host.blktrace.{}.xz",
           "guest": "traces/raw-none-threads/guest/guest.blktrace.{}.xz"}


def scale(source: str, n_records: int, out_dir: Path, name: str) -> int:
    """Write ``name.blktrace.<cpu>`` files with about ``n_records`` records in all; returns the exact count."""
    srcs = []
    for cpu in range(2):
        p = ROOT / SOURCES[source].format(cpu)
        data = lzma.decompress(p.read_bytes())
        if data:
            srcs.append((cpu, data))
    datas = [d for _, d in srcs]
    offs = [blktrace._walk(d, "<", final=True)[0] for d in datas]
    total = sum(len(o) for o in offs)
    copies = max(1, round(n_records / total))
    times = [np.ndarray((len(d) - 7,), "<u8", buffer=d, strides=(1,))[o + 8] for d, o in zip(datas, offs,
                                                                                               strict=True)]
    t0 = min(int(t.min()) for t in times)
    span = max(int(t.max()) for t in times) - t0 + 1_000
    count = 0
    for (cpu, data), o, _ in zip(srcs, offs, times, strict=True):
        buf = np.tile(np.frombuffer(data, np.uint8), copies)
        pos = (o[None, :] + 8 + np.arange(copies)[:, None] * len(data)).ravel()
        shift = np.repeat(np.arange(copies, dtype=np.uint64) * np.uint64(span), len(o))
        view = np.ndarray((len(buf) - 7,), "<u8", buffer=buf, strides=(1,))
        view[pos] = view[pos] + shift
        (out_dir / f"{name}.blktrace.{cpu}").write_bytes(buf.tobytes())
        count += len(o) * copies
    return count


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from toolkit.parsers import {mod}
paths = {paths!r}
t, c = time.perf_counter(), time.process_time()
r = {mod}.parse(paths)
dt, dc = time.perf_counter() - t, time.process_time() - c
print(json.dumps({{"seconds": dt, "cpu_s": dc, "events": len(r.events), "rejects": len(r.rejects),
                  "table_bytes": int(r.events.memory_usage(deep=True).sum()),
                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""

WRAP = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
dt = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": dt, "cpu_s": ru.ru_utime + ru.ru_stime, "rc": p.returncode,
                  "maxrss": ru.ru_maxrss * 1024}))
"""


def _median(runs: list[dict]) -> dict:
    """The run with the median wall time, and the median CPU time and the largest peak RSS of all runs."""
    runs = sorted(runs, key=lambda r: r["seconds"])
    out = dict(runs[len(runs) // 2])
    out["cpu_s"] = sorted(r["cpu_s"] for r in runs)[len(runs) // 2]
    out["maxrss"] = max(r["maxrss"] for r in runs)
    out["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return out


def run_reader(mod: str, paths: list[str], repeat: int = 1) -> dict:
    """``mod.parse(paths)`` in ``repeat`` fresh subprocesses (median)."""
    code = CHILD.format(root=str(ROOT), mod=mod, paths=paths)
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return _median(runs)


def run_blkparse(args: list[str], repeat: int = 1) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", WRAP, *args], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return _median(runs)


def make_text(source: str, n_lines: int, tmp: Path, keep: bool = False) -> tuple[Path, str]:
    """A blkparse text file of about ``n_lines`` event lines; returns (path, how it was made). ``keep``: leave the
    scaled binary it was printed from (``txt.blktrace.<cpu>``) in ``tmp``."""
    n = scale(source, n_lines, tmp, "txt")
    out = tmp / "txt.blkparse.txt"
    if shutil.which("blkparse"):
        with open(out, "wb") as f:
            subprocess.run(["blkparse", "-i", "txt", "-D", str(tmp)], stdout=f, check=True, cwd=tmp)
        how = "Debian blkparse"
    else:  # format our own table the way blkparse prints it
        df = blktrace.parse(sorted(str(p) for p in tmp.glob("txt.blktrace.*"))).events
        t = df["time_ns"] - df["time_ns"].min()
        lines = [f"{d:>3s}{'':<0} {c:2d} {s:8d} {tt // 10**9:5d}.{tt % 10**9:09d} {p:5d} {a:>2s} {r:>3s} "
                 f"{sec} + {ns} [{cm if isinstance(cm, str) else '(null)'}]"
                 for d, c, s, tt, p, a, r, sec, ns, cm in zip(df["device"].astype(str), df["cpu"], df["seq"], t,
                                                            df["pid"], df["action"].astype(str),
                                                            df["rwbs"].astype(str), df["sector"], df["nsect"],
                                                            df["comm"], strict=True)]
        out.write_text("\n".join(lines) + "\n")
        how = f"formatted ({n} records)"
    for p in tmp.glob("txt.blktrace.*") if not keep else ():
        p.unlink()
    return out, how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=float, default=10e6, help="binary records (default 10 M)")
    ap.add_argument("--lines", type=float, default=5e6, help="text lines (default 5 M)")
    ap.add_argument("--source", choices=sorted(SOURCES), default="host")
    ap.add_argument("--tmp", default=None, help="directory for the scaled files (default: a temp dir)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each reader; the median is reported (default 3)")
    ap.add_argument("--only", choices=["text", "binary"], default=None,
                    help="text: only the text reader, with blkparse -o /dev/null on the records the text was printed "
                         "from; binary: only the binary reader")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        tmp = Path(d)
        if a.only == "text":
            main_text(a, tmp)
            return
        if a.only == "binary":
            main_binary(a, tmp)
            return
        n, paths = scaled_binary(a, tmp)
        txt, how = make_text(a.source, int(a.lines), tmp)
        nlines = txt.read_bytes().count(b"\n")
        print(f"text: {nlines:,} lines, {txt.stat().st_size / 1e6:.0f} MB ({how})")
        rows = []
        load0 = os.getloadavg()[0]
        b = run_reader("blktrace", paths, a.repeat)
        rows.append(("writeorder binary", b["events"], b))
        x = run_reader("blkparse", [str(txt)], a.repeat)
        rows.append(("writeorder text", nlines, x))
        bp = None
        if shutil.which("blkparse"):
            bp = run_blkparse(["blkparse", "-i", "big", "-D", str(tmp), "-o", "/dev/null"], a.repeat)
            bp["table_bytes"] = 0
            rows.append(("blkparse -o /dev/null", n, bp))
        print(f"\nmedian of {a.repeat} runs, each in a fresh process; load average before {load0:.1f}, "
              f"after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{'reader':24s} {'items':>12s} {'wall s':>7s} {'cpu s':>7s} {'items/s':>12s} {'items/cpu-s':>12s} "
              f"{'peak RSS':>10s} {'table':>10s} {'RSS/table':>9s}  runs (wall s)")
        for name, cnt, r in rows:
            tb = r["table_bytes"]
            ratio = f"{r['maxrss'] / tb:9.2f}" if tb else f"{'':9s}"
            tbs = f"{tb / 1e6:8.0f}MB" if tb else f"{'':10s}"
            print(f"{name:24s} {cnt:12,d} {r['seconds']:7.2f} {r['cpu_s']:7.2f} {cnt / r['seconds']:12,.0f} "
                  f"{cnt / r['cpu_s']:12,.0f} {r['maxrss'] / 1e6:8.0f}MB {tbs} {ratio}  {r['all_seconds']}")
        print()
        brate = b["events"] / b["seconds"]
        if bp:
            bprate = n / bp["seconds"]
            print(f"binary vs blkparse: {brate / bprate:.1f}x wall, "
                  f"{(b['events'] / b['cpu_s']) / (n / bp['cpu_s']):.1f}x per CPU second (target >= 10x; "
                  f"needs {10 * bprate / 1e6:.1f} M records/s)")
        print(f"text: {nlines / x['seconds'] / 1e6:.2f} M lines/s wall, {nlines / x['cpu_s'] / 1e6:.2f} M per CPU "
              f"second (target >= 1.5)")
        print(f"binary peak RSS / table: {b['maxrss'] / b['table_bytes']:.2f} (target <= 2)")
        print(f"text peak RSS / table: {x['maxrss'] / x['table_bytes']:.2f} (target <= 2)")

CHILD_ITER = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from toolkit.parsers import blktrace
paths = {paths!r}
t, c = time.perf_counter(), time.process_time()
n = chunks = biggest = 0
for r in blktrace.parse_iter(paths):
    n += len(r.events)
    chunks += 1
    biggest = max(biggest, int(r.events.memory_usage(deep=True).sum()))
    del r
dt, dc = time.perf_counter() - t, time.process_time() - c
print(json.dumps({{"seconds": dt, "cpu_s": dc, "events": n, "chunks": chunks, "table_bytes": biggest,
                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def run_iter(paths: list[str], repeat: int = 1) -> dict:
    """``blktrace.parse_iter(paths)`` consumed chunk by chunk in ``repeat`` fresh subprocesses (median)."""
    code = CHILD_ITER.format(root=str(ROOT), paths=paths)
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return _median(runs)


def scaled_binary(a: argparse.Namespace, tmp: Path) -> tuple[int, list[str]]:
    """Write the scaled per-CPU files ``tmp/big.blktrace.<cpu>`` and say what they are: (records, paths)."""
    t = time.perf_counter()
    n = scale(a.source, int(a.records), tmp, "big")
    paths = sorted(str(p) for p in tmp.glob("big.blktrace.*"))
    size = sum(os.path.getsize(p) for p in paths)
    print(f"scaled {a.source} capture: {n:,} records, {size / 1e6:.0f} MB in {len(paths)} files "
          f"({time.perf_counter() - t:.1f} s)")
    return n, paths


def main_binary(a: argparse.Namespace, tmp: Path) -> None:
    """``--only binary``: the binary reader (whole table, and chunk by chunk) and blkparse on the same files."""
    n, paths = scaled_binary(a, tmp)
    load0 = os.getloadavg()[0]
    b = run_reader("blktrace", paths, a.repeat)
    it = run_iter(paths, a.repeat)
    bp = run_blkparse(["blkparse", "-i", "big", "-D", str(tmp), "-o", "/dev/null"], a.repeat) \
        if shutil.which("blkparse") else None
    print(f"median of {a.repeat} runs in fresh processes; load average before {load0:.1f}, after "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, r in (("parse()", b), ("parse_iter()", it)) + ((("blkparse -o /dev/null", bp),) if bp else ()):
        print(f"{name:22s} {n / r['seconds'] / 1e6:6.2f} M records/s wall ({r['seconds']:.2f} s), "
              f"{n / r['cpu_s'] / 1e6:6.2f} M per CPU second ({r['cpu_s']:.2f} s), peak RSS {r['maxrss'] / 1e6:.0f} MB"
              f"  runs (wall s) {r['all_seconds']}")
    print(f"parse() peak RSS / table: {b['maxrss'] / b['table_bytes']:.2f} (target <= 2; table "
          f"{b['table_bytes'] / 1e6:.0f} MB)")
    print(f"parse_iter(): {it['chunks']} chunks, the largest {it['table_bytes'] / 1e6:.0f} MB; peak RSS "
          f"{it['maxrss'] / 1e6:.0f} MB")
    if bp:
        print(f"binary vs blkparse: {(n / b['seconds']) / (n / bp['seconds']):.1f}x wall, "
              f"{(n / b['cpu_s']) / (n / bp['cpu_s']):.1f}x per CPU second (target >= 10x wall)")


def main_text(a: argparse.Namespace, tmp: Path) -> None:
    """``--only text``: the text reader and blkparse on the same records."""
    txt, how = make_text(a.source, int(a.lines), tmp, keep=True)
    nlines = txt.read_bytes().count(b"\n")
    print(f"text: {nlines:,} lines, {txt.stat().st_size / 1e6:.0f} MB ({how})")
    load0 = os.getloadavg()[0]
    x = run_reader("blkparse", [str(txt)], a.repeat)
    print(f"median of {a.repeat} runs in fresh processes; load average before {load0:.1f}, after "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; runs (wall s) {x['all_seconds']}")
    print(f"text: {nlines / x['seconds'] / 1e6:.2f} M lines/s wall ({x['seconds']:.2f} s), "
          f"{nlines / x['cpu_s'] / 1e6:.2f} M per CPU second ({x['cpu_s']:.2f} s) (target >= 1.5 wall)")
    print(f"text peak RSS {x['maxrss'] / 1e6:.0f} MB / table {x['table_bytes'] / 1e6:.0f} MB = "
          f"{x['maxrss'] / x['table_bytes']:.2f} (target <= 2)")
    if shutil.which("blkparse"):
        n = x["events"]
        bp = run_blkparse(["blkparse", "-i", "txt", "-D", str(tmp), "-o", "/dev/null"], a.repeat)
        print(f"blkparse -o /dev/null on the same {n:,} records: {n / bp['seconds'] / 1e6:.2f} M records/s wall "
              f"({bp['seconds']:.2f} s), {n / bp['cpu_s'] / 1e6:.2f} M per CPU second; writeorder text reader "
              f"{(nlines / x['seconds']) / (n / bp['seconds']):.1f}x its wall rate")


if __name__ == "__main__":
    main()
