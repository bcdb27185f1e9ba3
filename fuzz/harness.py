"""atheris (libFuzzer) harness for one target: ``python fuzz/harness.py TARGET [libFuzzer flags] CORPUS...``.

Run through ``fuzz/run.py`` (which seeds the corpus and sums the figures). An input that raises anything but a
one-line TraceError, or breaks the accounting contract (fuzz/targets.py), is a finding: its bytes and traceback
are saved once per distinct place (exception type + innermost toolkit frame) under ``$FUZZ_CRASHES/TARGET/`` and
fuzzing goes on; with ``FUZZ_STRICT=1`` the first finding stops the run (libFuzzer's crash exit).
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["toolkit", "fuzz"]):
    from fuzz import targets  # noqa: E402
    from toolkit import fileio, parsers, store, traceset  # noqa: E402, F401
    from toolkit.parsers import blkparse, blktrace, qemu_log, qemu_simple, trace_events  # noqa: E402, F401

NAME = sys.argv[1]
FN = targets.TARGETS[NAME]
CRASHES = Path(os.environ.get("FUZZ_CRASHES", ROOT / "fuzz" / "crashes")) / NAME
STRICT = os.environ.get("FUZZ_STRICT") == "1"
SEEN: set[str] = set()


def signature(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    ours = [f for f in tb if "/toolkit/" in f.filename] or tb[-1:]
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(e).__name__}@{where}"


def one_input(data: bytes) -> None:
    try:
        FN(data)
    except Exception as e:  # noqa: BLE001 -- every exception that reaches here is a finding
        sig = signature(e)
        if sig not in SEEN:
            SEEN.add(sig)
            CRASHES.mkdir(parents=True, exist_ok=True)
            h = hashlib.sha1(sig.encode()).hexdigest()[:10]
            (CRASHES / f"{h}.bin").write_bytes(data)
            (CRASHES / f"{h}.txt").write_text(f"{sig}\n\n{traceback.format_exc()}")
            print(f"FINDING {NAME} {sig} -> {CRASHES / h}.bin", file=sys.stderr, flush=True)
        if STRICT:
            raise


if __name__ == "__main__":
    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()
