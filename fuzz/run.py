#!/usr/bin/env python3
"""Run the fuzzing campaign: ``python fuzz/run.py --minutes N [--target NAME ...] [--jobs J]``.

Each target (fuzz/targets.py) runs for N minutes in its own atheris process, seeded from the sample traces
(fuzz/seeds.py writes the seeds into ``fuzz/corpus/TARGET/`` on first use; libFuzzer adds what it finds there).
Findings (inputs that crash or break the accounting contract) land in ``fuzz/crashes/TARGET/`` as ``.bin`` (the
input) and ``.txt`` (signature and traceback), one per distinct place. A libFuzzer timeout or memory-limit hit
is a finding too (``timeout-*``/``oom-*`` in the same folder); the target is restarted for the time left.

Prints one line per target and a total, and writes ``fuzz/results.json`` (executions, findings, coverage).
``--seconds S`` instead of ``--minutes`` for short runs (CI); ``--strict`` stops at the first finding and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuzz import seeds  # noqa: E402
from fuzz.targets import TARGETS  # noqa: E402

MAX_LEN = {"traceset": 8192, "compressed": 4096}


def run_target(name: str, seconds: float, corpus_root: Path, crashes: Path, strict: bool) -> dict:
    corpus = corpus_root / name
    seeds.write_corpus(name, corpus)
    out_dir = crashes / name
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FUZZ_CRASHES=str(crashes), FUZZ_STRICT="1" if strict else "0", PYTHONHASHSEED="0")
    execs, restarts, cov = 0, 0, 0
    findings: list[str] = []
    deadline = time.monotonic() + seconds
    log = ""
    while True:
        left = int(deadline - time.monotonic())
        if left < 1:
            break
        cmd = [sys.executable, str(HERE / "harness.py"), name, f"-max_total_time={left}", "-print_final_stats=1",
               f"-max_len={MAX_LEN.get(name, 8192)}", "-timeout=30", "-rss_limit_mb=3072",
               f"-artifact_prefix={out_dir}/", str(corpus)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(out_dir))
        log = p.stderr
        m = re.search(r"stat::number_of_executed_units: (\d+)", log)
        if m:
            execs += int(m.group(1))
        else:  # killed mid-run: the last status line
            st = re.findall(r"^#(\d+)\s", log, re.M)
            execs += int(st[-1]) if st else 0
        covs = re.findall(r"cov: (\d+)", log)
        cov = max(cov, int(covs[-1])) if covs else cov
        findings += re.findall(r"^FINDING (.*)$", log, re.M)
        if p.returncode == 0:
            break
        findings += [f"{name} libFuzzer {k}" for k in re.findall(r"ERROR: libFuzzer: (\S+)", log)]
        restarts += 1
        if strict or restarts > 20:
            break
    return {"target": name, "seconds": seconds, "executions": execs, "coverage": cov, "findings": findings,
            "restarts": restarts, "corpus": sum(1 for _ in corpus.iterdir()), "exit": p.returncode,
            "tail": log[-3000:] if (strict and p.returncode) else ""}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, help="minutes per target (default 1)")
    g.add_argument("--seconds", type=float, help="seconds per target")
    ap.add_argument("--target", action="append", choices=sorted(TARGETS), help="only these targets (repeatable)")
    ap.add_argument("--jobs", type=int, default=1, help="targets fuzzed at the same time")
    ap.add_argument("--corpus", type=Path, default=HERE / "corpus")
    ap.add_argument("--crashes", type=Path, default=HERE / "crashes")
    ap.add_argument("--results", type=Path, default=HERE / "results.json")
    ap.add_argument("--strict", action="store_true", help="stop at the first finding; exit 1 if any")
    a = ap.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else 60 * (a.minutes if a.minutes is not None else 1)
    names = a.target or sorted(TARGETS)
    t0 = time.monotonic()
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        res = list(pool.map(lambda n: run_target(n, seconds, a.corpus, a.crashes, a.strict), names))
    total = {"executions": sum(r["executions"] for r in res), "findings": sum(len(r["findings"]) for r in res),
             "wall_seconds": round(time.monotonic() - t0, 1), "targets": len(res)}
    for r in res:
        print(f"{r['target']:<13} {r['executions']:>8} execs  cov {r['coverage']:>5}  corpus {r['corpus']:>5}  "
              f"findings {len(r['findings'])}" + "".join(f"\n    {f}" for f in r["findings"]))
        if r["tail"]:
            print(r["tail"], file=sys.stderr)
    print(f"total         {total['executions']:>8} execs in {total['wall_seconds']} s, {total['findings']} findings")
    a.results.write_text(json.dumps({"total": total, "targets": res}, indent=1) + "\n")
    return 1 if total["findings"] and a.strict else 0


if __name__ == "__main__":
    sys.exit(main())
