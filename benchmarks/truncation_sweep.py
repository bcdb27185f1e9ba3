#!/usr/bin/env python3
"""Full truncation sweep (fuzz/sweep.py): a real capture of every format cut at many byte offsets.

    python benchmarks/truncation_sweep.py                 # up to 20000 cuts per format (all boundaries +-)
    python benchmarks/truncation_sweep.py --max-cuts 0    # every byte offset (hours)
    python benchmarks/truncation_sweep.py --format blktrace

Exit 1 when any cut breaks the contract; prints per-format counts and writes benchmarks/out/truncation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fuzz import sweep  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-cuts", type=int, default=20000, help="cuts per format (0: every byte offset)")
    ap.add_argument("--format", action="append", choices=["blktrace", "blkparse", "qemu-log", "qemu-simple"])
    a = ap.parse_args()
    res = sweep.run(a.max_cuts, a.format)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "truncation.json").write_text(json.dumps(res, indent=1) + "\n")
    for fmt, r in res.items():
        for f in r["first_failures"]:
            print(f"FAIL {fmt}: {f}")
    return 1 if any(r["failures"] for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
