"""toolkit.memory: output arrays outside numpy's allocator, and the concatenation of per-block tables into them."""

from __future__ import annotations

import mmap

import numpy as np
import pandas as pd
import pytest
from conftest import QEMU_LOGS, TRACES

from toolkit import memory
from toolkit.parsers import blktrace, qemu_log


def mapped(a: np.ndarray) -> bool:
    """Whether ``a``'s memory is an mmap (through views and memoryviews)."""
    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    return isinstance(getattr(b, "obj", b), mmap.mmap)


def test_empty_is_a_zeroed_mapping():
    a = memory.empty(1 << 20, np.int64)
    assert len(a) == 1 << 20 and a.dtype == np.int64 and not a.any()
    assert mapped(a)  # its own mapping, not numpy's (huge-page) allocation
    a[-1] = 7
    assert a[-1] == 7
    b = memory.empty(1 << 21, np.uint8, populate=True)
    assert mapped(b) and not b.any()
    small = memory.empty(10, np.int32)  # small arrays: numpy's own
    assert small.dtype == np.int32 and not small.any() and not mapped(small)


@pytest.mark.parametrize("s,f", QEMU_LOGS[:4], ids=[f"{s}/{f}" for s, f in QEMU_LOGS[:4]])
def test_concat_equals_pandas_on_real_log_blocks(s, f):
    """Blocks of a real QEMU log (nullable ints, Arrow strings, categoricals, int64): joined as pd.concat joins
    them, value for value and dtype for dtype."""
    parts = [c.events for c in qemu_log.parse_iter(TRACES / s / f, chunk_size=1 << 14)]
    assert len(parts) > 2
    last = parts[-1]
    parts = [p.assign(event=p["event"].astype(last["event"].dtype), file=p["file"].astype(last["file"].dtype))
             for p in parts]
    got = memory.concat(parts)
    want = pd.concat(parts, ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert mapped(got["req"].array._data) or len(got) * 8 < memory.MIN_BYTES


def test_concat_blktrace_blocks_and_mixed_dtypes():
    """Tables whose categoricals differ, or whose columns differ, are joined by pandas (same result)."""
    paths = sorted(str(p) for p in (TRACES / "raw-none-threads").glob("host.blktrace.*"))
    ev = blktrace.parse(paths).events
    parts = [ev.iloc[i:i + 5000] for i in range(0, len(ev), 5000)]
    pd.testing.assert_frame_equal(memory.concat(parts), pd.concat(parts, ignore_index=True), check_exact=True)
    a = pd.DataFrame({"x": pd.Categorical(["a", "b"]), "y": pd.array([1, None], "Int64")})
    b = pd.DataFrame({"x": pd.Categorical(["c"]), "y": pd.array([3], "Int64")})
    pd.testing.assert_frame_equal(memory.concat([a, b]), pd.concat([a, b], ignore_index=True))
    c = pd.DataFrame({"z": [1]})
    pd.testing.assert_frame_equal(memory.concat([a, c]), pd.concat([a, c], ignore_index=True))
    assert memory.concat([a]).equals(a)
