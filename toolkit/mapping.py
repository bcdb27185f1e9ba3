"""Image mappings: where a guest sector lives on the host device beneath the image.

A mapping is a table of extents ``g_start, g_end, h_start`` in 512-byte sectors (guest sector ``g`` in
``[g_start, g_end)`` is host sector ``h_start + g - g_start``), built from the steps of a ``[[disk]]``:

* ``raw`` with ``offset`` (bytes): a raw image at that offset of the host device;
* ``qemu-img-map``: the JSON of ``qemu-img map --output=json`` (guest byte -> image file byte; entries with
  ``data = false`` have no file offset: holes);
* ``extents``: a ``filefrag -v`` listing of the image file (file block -> host device block).

Steps compose in order: guest -> image file -> host device. ``to_host`` and ``to_guest`` map ranges both ways,
splitting a range that crosses extents; a range outside every extent maps to nothing (a coverage gap).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from toolkit import fileio
from toolkit.fileio import TraceError

INF = np.int64(1) << 62
S = 512


def _raw(step: dict) -> pd.DataFrame:
    off = int(step.get("offset", 0))
    if off % S:
        raise TraceError(f"raw mapping offset {off} is not a multiple of 512 bytes")
    return pd.DataFrame({"g_start": [0], "g_end": [INF - off // S], "h_start": [off // S]}, dtype="int64")


def read_qemu_img_map(path: str | Path) -> pd.DataFrame:
    """``qemu-img map --output=json`` -> extents (sectors). Only ``data`` entries with an ``offset`` map."""
    raw, _ = fileio.read_bytes(path)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TraceError(f"{path}: not the JSON of qemu-img map --output=json ({e})") from None
    if not isinstance(doc, list):
        raise TraceError(f"{path}: expected a JSON list of extents")
    rows = []
    for i, e in enumerate(doc):
        if not isinstance(e, dict) or "start" not in e or "length" not in e:
            raise TraceError(f"{path}: entry {i} has no start/length")
        if e.get("data") and e.get("offset") is not None:
            rows.append((int(e["start"]) // S, (int(e["start"]) + int(e["length"])) // S, int(e["offset"]) // S))
    return pd.DataFrame(rows, columns=["g_start", "g_end", "h_start"], dtype="int64")


_FRAG_SIZE = re.compile(r"blocks? of (\d+) bytes")
_FRAG_LINE = re.compile(r"^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):")


def read_filefrag(path: str | Path) -> pd.DataFrame:
    """``filefrag -v`` -> extents (sectors): file block ranges to device block ranges.

    ``unwritten`` extents map too: the data written through O_DIRECT lands there before the conversion.
    """
    raw, _ = fileio.read_bytes(path)
    text = raw.decode("utf-8", errors="replace")
    m = _FRAG_SIZE.search(text)
    if not m:
        raise TraceError(f"{path}: no 'blocks of N bytes' line: not the output of filefrag -v")
    bs = int(m.group(1)) // S
    rows = []
    for line in text.splitlines():
        x = _FRAG_LINE.match(line)
        if x:
            lo, hi, plo = int(x.group(1)), int(x.group(2)), int(x.group(3))
            rows.append((lo * bs, (hi + 1) * bs, plo * bs))
    if not rows:
        raise TraceError(f"{path}: no extents found in the filefrag -v listing")
    return pd.DataFrame(rows, columns=["g_start", "g_end", "h_start"], dtype="int64")


def compose(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Extents of ``b`` after ``a`` (a: guest -> mid, b: mid -> host)."""
    parts = []
    for r in a.itertuples(index=False):  # one row per extent of the first mapping (small tables)
        m_lo, m_hi = r.h_start, r.h_start + (r.g_end - r.g_start)
        sel = b[(b.g_start < m_hi) & (b.g_end > m_lo)]
        if sel.empty:
            continue
        lo = np.maximum(sel.g_start.to_numpy(), m_lo)
        hi = np.minimum(sel.g_end.to_numpy(), m_hi)
        parts.append(pd.DataFrame({
            "g_start": r.g_start + (lo - m_lo), "g_end": r.g_start + (hi - m_lo),
            "h_start": sel.h_start.to_numpy() + (lo - sel.g_start.to_numpy()),
        }))
    if not parts:
        return pd.DataFrame({"g_start": [], "g_end": [], "h_start": []}, dtype="int64")
    return pd.concat(parts, ignore_index=True).sort_values("g_start").reset_index(drop=True)


def build(steps: list[dict], root: Path) -> pd.DataFrame:
    """The composed extents of a disk's mapping steps (files relative to ``root``)."""
    ext = None
    for s in steps:
        k = s.get("kind")
        if k == "raw":
            t = _raw(s)
        elif k == "qemu-img-map":
            t = read_qemu_img_map(root / s["file"])
        elif k == "extents":
            t = read_filefrag(root / s["file"])
        else:
            raise TraceError(f"unknown mapping kind {k!r}")
        ext = t if ext is None else compose(ext, t)
    assert ext is not None
    return ext.sort_values("g_start").reset_index(drop=True)


def _map(start: np.ndarray, nsect: np.ndarray, src_lo: np.ndarray, src_hi: np.ndarray, dst_lo: np.ndarray
         ) -> pd.DataFrame:
    """Map ranges [start, start+nsect) through extents (sorted by src_lo, non-overlapping).

    Returns rows (i, src_start, dst_start, n): piece of range i. Vectorised: each range is paired with the
    extents it crosses via searchsorted; ranges crossing k extents give k rows.
    """
    start = np.asarray(start, np.int64)
    end = start + np.asarray(nsect, np.int64)
    order = np.argsort(src_lo, kind="stable")
    lo, hi, dl = src_lo[order], src_hi[order], dst_lo[order]
    first = np.searchsorted(hi, start, side="right")  # first extent ending after start
    last = np.searchsorted(lo, end, side="left")      # extents starting before end
    cnt = np.maximum(last - first, 0)
    i = np.repeat(np.arange(len(start)), cnt)
    k = first[i] + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    s = np.maximum(start[i], lo[k])
    e = np.minimum(end[i], hi[k])
    ok = e > s
    return pd.DataFrame({"i": i[ok], "src": s[ok], "dst": (dl[k] + (s - lo[k]))[ok], "n": (e - s)[ok]})


def to_host(extents: pd.DataFrame, sector, nsect) -> pd.DataFrame:
    """Guest ranges -> host pieces: rows (i, g_sector, h_sector, nsect)."""
    m = _map(sector, nsect, extents.g_start.to_numpy(), extents.g_end.to_numpy(), extents.h_start.to_numpy())
    return m.rename(columns={"src": "g_sector", "dst": "h_sector", "n": "nsect"})


def to_guest(extents: pd.DataFrame, sector, nsect) -> pd.DataFrame:
    """Host ranges -> guest pieces: rows (i, h_sector, g_sector, nsect). Host sectors outside the image
    (filesystem metadata, journal, other files) give no row."""
    h_lo = extents.h_start.to_numpy()
    h_hi = h_lo + (extents.g_end.to_numpy() - extents.g_start.to_numpy())
    m = _map(sector, nsect, h_lo, h_hi, extents.g_start.to_numpy())
    return m.rename(columns={"src": "h_sector", "dst": "g_sector", "n": "nsect"})
