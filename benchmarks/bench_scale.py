"""Scale benchmark: ingest into the Parquet store and check, on a real capture scaled to 1 M / 10 M / 100 M events,
beside Debian's ``blkparse`` on the same binary input in the same run.

    python benchmarks/bench_scale.py --events 1e6 1e7            # build, ingest, check, blkparse for each size
    python benchmarks/bench_scale.py --events 1e8 --no-check     # ingest only (and blkparse)
    python benchmarks/bench_scale.py --events 1e6 --workers 2    # also ingest + check on a 2-process LocalCluster

The scaled set is written as real files, the shapes of the capture kept (traces/raw-none-threads by default):
K time-shifted copies of every layer, copy k shifted by k * step on every clock at once (step = the longest
trace's span + 1 s, a whole millisecond: guest monotonic, host monotonic and host realtime keep the offsets of
the capture, so the manifest's reference pairs still hold):

* host and guest blktrace: the binary ``struct blk_io_trace`` records of each per-CPU file, copied K times with
  ``time`` shifted and the per-CPU ``sequence`` continued (copy k's numbers follow copy k-1's, no gap), written
  as plain per-CPU files ``host.blktrace.<cpu>`` / ``guest/guest.blktrace.<cpu>``;
* the QEMU log: every line copied K times with its ``pid@sec.usec:`` timestamp shifted.

K = round(events / events of the capture). Each measurement runs in a fresh process (peak RSS is its
``ru_maxrss``; the child's address space is capped by ``--mem-limit`` so a run that would exhaust the machine
fails instead; imports are not timed; with ``--workers`` the time includes starting the cluster):
``ingest`` = ``writeorder ingest`` (parse every trace, write the partitioned Parquet store);
``check`` = ``writeorder check`` reading that store (by disk and time slice: toolkit.slicing). ``blkparse -o /dev/null`` runs on the same host and guest
binary files. The scaled raw-none-threads must keep the capture's verdict: no violation, every write linked.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GAP_NS = 1_000_000_000
BATCH = 256  # copies written at a time (bounds the builder's memory)
_QLINE = re.compile(rb"^(\d+)@(\d+)\.(\d{6}):", re.M)


def _read(p: Path) -> bytes:
    data = p.read_bytes()
    return lzma.decompress(data) if data[:6] == b"\xfd7zXZ\x00" else data


def build(src: Path, n_events: int, out: Path) -> dict:
    """Write the scaled set into ``out`` (a traceset.toml and plain trace files); returns what was built."""
    from toolkit import store, traceset
    from toolkit.parsers import blktrace

    ts = traceset.load(src)
    res = store.ingest(ts)
    per = sum(len(r.events) for r in res.values())
    k = max(1, round(n_events / per))
    spans = [int(r.events["time_ns"].max()) - int(r.events["time_ns"].min()) for r in res.values()
             if r.events["time_ns"].notna().any()]
    step = -(-(max(spans) + GAP_NS) // 1_000_000) * 1_000_000
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest = (src / "traceset.toml").read_text()
    total = 0
    for t in ts.traces:
        if t.format == "blktrace":
            rel_glob = t.path
            for f in t.files:
                data = _read(Path(f))
                name = os.path.basename(f)
                name = name[:-3] if name.endswith(".xz") else name
                dst = out / os.path.dirname(os.path.relpath(f, src)) / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if len(data) < 48:  # an empty per-CPU file (a CPU that saw no I/O) stays empty
                    dst.write_bytes(data)
                    continue
                offs = blktrace._walk(data, "<", final=True)[0]
                buf0 = np.frombuffer(data, np.uint8)
                seq0 = np.ndarray((len(data) - 3,), "<u4", buffer=data, strides=(1,))[offs + 4].astype(np.int64)
                live = seq0 > 0
                seq_step = int(seq0[live].max() - seq0[live].min() + 1) if live.any() else 0
                with open(dst, "wb") as fo:
                    for b0 in range(0, k, BATCH):
                        nb = min(BATCH, k - b0)
                        buf = np.tile(buf0, nb)
                        kk = np.arange(b0, b0 + nb, dtype=np.uint64)
                        pos = (offs[None, :] + np.arange(nb)[:, None] * len(data)).ravel()
                        tv = np.ndarray((len(buf) - 7,), "<u8", buffer=buf, strides=(1,))
                        tv[pos + 8] += np.repeat(kk * np.uint64(step), len(offs))
                        if seq_step:
                            sv = np.ndarray((len(buf) - 3,), "<u4", buffer=buf, strides=(1,))
                            add = np.repeat((kk * np.uint64(seq_step)).astype(np.uint32), len(offs))
                            sv[pos + 4] += np.where(np.tile(live, nb), add, np.uint32(0))
                        fo.write(buf.tobytes())
                total += len(offs) * k
            manifest = manifest.replace(f'path = "{rel_glob}"', f'path = "{rel_glob.replace(".xz", "")}"')
        elif t.format == "qemu-log":
            (f,) = t.files
            lines = _read(Path(f)).splitlines(keepends=True)
            parsed = []
            for ln in lines:
                m = _QLINE.match(ln)
                if m:
                    parsed.append((m.group(1), int(m.group(2)) * 1_000_000 + int(m.group(3)), ln[m.end():]))
                else:
                    parsed.append((None, 0, ln))
            step_us = step // 1000
            name = os.path.basename(f).removesuffix(".xz")
            with open(out / name, "wb") as fo:
                for c in range(k):
                    sh = c * step_us
                    fo.write(b"".join(ln if pid is None else b"%s@%d.%06d:%s" % (pid, (us + sh) // 1_000_000,
                                                                                (us + sh) % 1_000_000, ln)
                                      for pid, us, ln in parsed))
            total += len(res[t.index].events) * k
            manifest = manifest.replace(f'path = "{t.path}"', f'path = "{t.path.removesuffix(".xz")}"')
        else:
            raise SystemExit(f"{t.path}: format {t.format} is not scaled by this benchmark")
    # the other files of the set (thread ids, image mappings, ...) as they are
    traced = {os.path.abspath(f) for t in ts.traces for f in t.files}
    for f in src.rglob("*"):
        rel = f.relative_to(src)
        if (f.is_file() and str(f.resolve()) not in traced and os.path.abspath(f) not in traced
                and rel.parts[0] != ".writeorder" and f.name != "traceset.toml"):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, out / rel)
    (out / "traceset.toml").write_text(manifest.replace(f'name = "{ts.name}"', f'name = "{ts.name}-x{k}"'))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"copies": k, "events_per_copy": per, "events_est": per * k, "step_ns": step, "bytes": size}


CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
mode, path, workers = {mode!r}, {path!r}, {workers!r}

def main():
    from toolkit import distributed, ingest, slicing, traceset  # imports are not timed
    import pandas, pyarrow.parquet  # noqa: F401
    t = time.perf_counter()
    out = {{}}
    if mode == "ingest":
        if workers:
            ts = traceset.load(path)
            with distributed.engine(workers) as c:
                entries = distributed.ingest_sets(c, [ts])[0]
            summary = ingest.summaries(ts, entries)
        else:
            ts, summary = ingest.summarise_set(path)
        out["events"] = sum(s["events"] for s in summary)
        out["rejects"] = sum(s["rejects"] for s in summary)
        out["traces"] = {{s["path"]: s["events"] for s in summary}}
    else:
        if workers:
            with distributed.engine(workers) as c:
                g = distributed.check_sets(c, [path])[0]
            doc = json.loads(g["json"])
        else:
            doc = slicing.check_set(path).to_json()  # what `writeorder check` runs
        out["slicing"] = doc.get("slicing")
        out["summary"] = {{k: v for k, v in doc["summary"].items() if v}}
        out["coverage"] = {{d: {{k: v for k, v in c.items() if k not in ("unlinked", "not_carried")}}
                           for d, c in doc["coverage"].items()}}
    out["seconds"] = time.perf_counter() - t
    out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["maxrss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""

WRAP = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(json.dumps({"seconds": time.perf_counter() - t, "rc": p.returncode,
                  "maxrss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def _limit(mem_gb: float):
    def f():
        lim = int(mem_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    return f


def run_child(mode: str, path: Path, cache: Path, mem_gb: float, workers: int | None = None) -> dict:
    code = CHILD.format(root=str(ROOT), mode=mode, path=str(path), workers=workers)
    script = cache / f"child_{mode}.py"
    script.write_text(code)
    env = {**os.environ, "WRITEORDER_CACHE": str(cache)}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         preexec_fn=None if workers else _limit(mem_gb))
    if out.returncode:
        tail = out.stderr.strip().splitlines()[-3:]
        return {"error": f"exit {out.returncode}: {' | '.join(tail)}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_blkparse(out: Path) -> dict | None:
    if not shutil.which("blkparse"):
        return None
    runs = []
    for d, name in ((out, "host"), (out / "guest", "guest")):
        if list(d.glob(f"{name}.blktrace.*")):
            p = subprocess.run([sys.executable, "-c", WRAP, "blkparse", "-i", name, "-D", str(d), "-o", "/dev/null"],
                               capture_output=True, text=True, check=True)
            runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return {"seconds": sum(r["seconds"] for r in runs), "maxrss": max(r["maxrss"] for r in runs),
            "rc": [r["rc"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7], help="sizes (default 1e6 1e7)")
    ap.add_argument("--set", default=str(ROOT / "traces" / "raw-none-threads"), help="the real set to scale")
    ap.add_argument("--out", default="/tmp/writeorder-scale", help="where the scaled sets and stores go")
    ap.add_argument("--no-check", action="store_true", help="ingest (and blkparse) only")
    ap.add_argument("--workers", type=int, help="also run ingest and check on a LocalCluster of N processes")
    ap.add_argument("--mem-limit", type=float, default=20.0, help="address-space cap of a child, GiB (default 20)")
    ap.add_argument("--keep", action="store_true", help="keep the scaled files and stores")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON document at the end")
    a, _ = ap.parse_known_args()
    results = []
    for n in (int(x) for x in a.events):
        out = Path(a.out) / f"set-{n}"
        cache = Path(a.out) / f"store-{n}"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        t = time.perf_counter()
        built = build(Path(a.set), n, out)
        built["build_s"] = round(time.perf_counter() - t, 1)
        print(f"\n== {Path(a.set).name} x{built['copies']} (~{built['events_est']:,} events, "
              f"{built['bytes'] / 1e9:.2f} GB of trace files; built in {built['build_s']} s)", flush=True)
        r = {"target": n, "built": built}
        bp = run_blkparse(out)
        r["blkparse"] = bp
        ing = run_child("ingest", out, cache, a.mem_limit)
        r["ingest"] = ing
        store_bytes = sum(p.stat().st_size for p in cache.rglob("*.parquet"))
        r["store_bytes"] = store_bytes
        ev = ing.get("events", built["events_est"])
        blk_ev = sum(v for k, v in ing.get("traces", {}).items() if "blktrace" in k)
        rows = []
        if bp:
            rows.append(("blkparse -o /dev/null (host+guest binary)", blk_ev or None, bp["seconds"], bp["maxrss"]))
        if "error" in ing:
            print(f"  ingest FAILED: {ing['error']}")
        else:
            rows.append(("writeorder ingest (parse + Parquet store)", ev, ing["seconds"], ing["maxrss"]))
            rows.append(("  of which blktrace records", blk_ev, None, None))
        if not a.no_check and "error" not in ing:
            chk = run_child("check", out, cache, a.mem_limit)
            r["check"] = chk
            if "error" in chk:
                print(f"  check FAILED: {chk['error']}")
            else:
                rows.append(("writeorder check (from the store)", ev, chk["seconds"], chk["maxrss"]))
        if a.workers and "error" not in ing:
            shutil.rmtree(cache, ignore_errors=True)
            cache.mkdir(parents=True)
            wi = run_child("ingest", out, cache, a.mem_limit, a.workers)
            r["ingest_workers"] = wi
            if "error" not in wi:
                rows.append((f"writeorder ingest --workers {a.workers}", ev, wi["seconds"], None))
            if not a.no_check:
                wc = run_child("check", out, cache, a.mem_limit, a.workers)
                r["check_workers"] = wc
                if "error" not in wc:
                    rows.append((f"writeorder check --workers {a.workers}", ev, wc["seconds"], None))
        print(f"  {'':44s} {'events':>12s} {'seconds':>8s} {'events/s':>12s} {'peak RSS':>10s}")
        for name, cnt, sec, rss in rows:
            c = f"{cnt:12,d}" if cnt else f"{'':12s}"
            s = f"{sec:8.2f}" if sec else f"{'':8s}"
            rate = f"{cnt / sec:12,.0f}" if cnt and sec else f"{'':12s}"
            m = f"{rss / 2**20:8.0f}MB" if rss else f"{'':10s}"
            print(f"  {name:44s} {c} {s} {rate} {m}")
        print(f"  store: {store_bytes / 1e6:.0f} MB of Parquet (zstd) for {built['bytes'] / 1e6:.0f} MB of plain "
              "trace files")
        if "check" in r and "error" not in r["check"]:
            ch = r["check"]
            print(f"  verdict: {ch['summary'] or 'no violation'}")
            for d in ch.get("slicing") or []:
                print(f"  sliced {d['disk']}: {d['slices']} slices, {len(d['unclean_cuts'])} unclean cuts, "
                      f"{d['passes']} pass(es)")
            for d, c in ch["coverage"].items():
                ok = (not ch["summary"] and c["writes_linked_to_qemu"] == c["guest_writes"]
                      and c["writes_carried_to_host"] == c["guest_writes"] and c["unlinked_count"] == 0)
                print(f"  coverage {d}: {c['guest_writes']:,} guest writes, {c['writes_linked_to_qemu']:,} linked, "
                      f"{c['writes_carried_to_host']:,} carried, {c['unlinked_count']} unlinked"
                      + (" (sanity OK)" if ok and Path(a.set).name == "raw-none-threads" else ""))
            for k in ("check_workers",):
                if k in r and "error" not in r[k]:
                    same = r[k]["summary"] == ch["summary"] and r[k]["coverage"] == ch["coverage"]
                    print(f"  {k}: {'same verdict and coverage' if same else 'DIFFERENT: ' + json.dumps(r[k])}")
        results.append(r)
        if not a.keep:
            shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)
    if a.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
