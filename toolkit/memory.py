"""Big output arrays and the concatenation of a reader's per-block tables into them.

numpy asks the kernel for transparent huge pages on every array of 4 MB or more; where the kernel compacts
memory to find them (``defrag`` = madvise, the Debian default), the first touch of such an array stalls. Measured
on this project's 2-core VM: 1 GB touched in 4 KB pages 0.43-0.50 s, in huge pages 0.34-1.8 s; a 2 M-record
simple-backend file parsed in 0.47-0.67 s with numpy's arrays and 0.24-0.30 s with these. The QEMU readers'
output columns go into plain anonymous mappings (populated in one call where they are written whole). Not a rule
for every reader: blktrace, which fills 1.3 GB of columns on two threads, took 1.26 s with these against 0.72 s
with numpy's huge pages (median of 5, 10 M records), and keeps numpy's.
"""

from __future__ import annotations

import mmap

import numpy as np
import pandas as pd
from pandas.core.arrays.masked import BaseMaskedArray

#: below this many bytes numpy's allocator is used (small arrays come from the heap, already mapped)
MIN_BYTES = 1 << 20


def empty(n: int, dtype, *, populate: bool = False) -> np.ndarray:
    """An array of ``n`` items in its own anonymous mapping (zero-filled, no transparent huge pages).

    ``populate``: map every page now, in one call (for an array that is about to be written whole); otherwise
    pages are mapped on first touch and pages never written stay unmapped (an upper-bound buffer).
    """
    dtype = np.dtype(dtype)
    size = n * dtype.itemsize
    if size < MIN_BYTES:
        return np.zeros(n, dtype)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    m = mmap.mmap(-1, size, flags=flags)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        m.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(m, dtype)


def concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """``pd.concat(parts, ignore_index=True)`` for tables of one schema, the columns copied into arrays from
    :func:`empty`: nullable integers, numpy columns and categoricals of one dtype; other columns (Arrow
    strings: chunked, not copied) as pandas joins them."""
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    cols = parts[0].columns
    if any(not p.columns.equals(cols) for p in parts):
        return pd.concat(parts, ignore_index=True)
    n = sum(len(p) for p in parts)
    out: dict[str, object] = {}
    for c in cols:
        arrs = [p[c].array for p in parts]
        first = arrs[0]
        if isinstance(first, BaseMaskedArray) and all(type(a) is type(first) for a in arrs):
            data = _join([a._data for a in arrs], n)
            mask = _join([a._mask for a in arrs], n)
            out[c] = type(first)(data, mask)
        elif isinstance(first, pd.Categorical) and all(isinstance(a, pd.Categorical) and a.dtype == first.dtype
                                                       and a.categories.equals(first.categories) for a in arrs):
            out[c] = pd.Categorical.from_codes(_join([a.codes for a in arrs], n), dtype=first.dtype, validate=False)
        elif isinstance(first, pd.arrays.NumpyExtensionArray) and first.dtype.numpy_dtype.kind in "iufb" \
                and all(a.dtype == first.dtype for a in arrs):
            out[c] = _join([a.to_numpy() for a in arrs], n)
        else:
            out[c] = pd.concat([p[c] for p in parts], ignore_index=True).array
    return pd.DataFrame(out, copy=False)


def _join(arrays: list[np.ndarray], n: int) -> np.ndarray:
    return np.concatenate(arrays, out=empty(n, arrays[0].dtype, populate=True))
