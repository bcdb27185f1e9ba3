"""The durability model against a slow, obviously correct reference on random histories (hypothesis).

Histories have reused sectors, host writes that merge or split guest writes (different extents), failed and
missing completions, FUA writes, and flushes that fail or never complete.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from toolkit import durability
from toolkit.durability import NEVER

T = st.integers(0, 1000)


# ------------------------------------------------------------------------------------------- reference model
def ref_host_durable(writes: list[dict], flushes: list[dict], volatile: bool) -> list[int]:
    out = []
    for w in writes:
        if w["c"] is None or w["err"] != 0:
            out.append(NEVER)
        elif w["fua"] or not volatile:
            out.append(w["c"])
        else:
            cands = [f["c"] for f in flushes if f["c"] is not None and f["err"] == 0 and f["d"] >= w["c"]]
            out.append(min(cands) if cands else NEVER)
    return out


def ref_carried(pieces: list[dict], host: list[dict]) -> dict[int, tuple[int, int]]:
    """wid -> (durable, first carrying issue), sector by sector."""
    res: dict[int, list[tuple[int, int]]] = {}
    for p in pieces:
        for s in range(p["sector"], p["sector"] + p["nsect"]):
            carriers = [h for h in host if h["sector"] <= s < h["sector"] + h["nsect"] and h["q"] >= p["t"]]
            dur = min((h["durable"] for h in carriers), default=NEVER)
            first = min((h["q"] for h in carriers), default=NEVER)
            res.setdefault(p["wid"], []).append((dur, first))
    return {w: (max(d for d, _ in v), min(f for _, f in v)) for w, v in res.items()}


# ------------------------------------------------------------------------------------------- strategies
@st.composite
def host_writes(draw):
    n = draw(st.integers(0, 25))
    out = []
    for _ in range(n):
        q = draw(T)
        done = draw(st.booleans())
        out.append({"sector": draw(st.integers(0, 40)), "nsect": draw(st.integers(1, 12)), "q": q,
                    "c": q + draw(st.integers(0, 50)) if done else None,
                    "err": draw(st.sampled_from([0, 0, 0, -5])), "fua": draw(st.booleans())})
    return out


@st.composite
def flushes(draw):
    n = draw(st.integers(0, 8))
    out = []
    for _ in range(n):
        d = draw(T)
        done = draw(st.integers(0, 4)) > 0
        out.append({"d": d, "c": d + draw(st.integers(0, 60)) if done else None,
                    "err": draw(st.sampled_from([0, 0, 0, -5]))})
    return out


def _wframe(ws):
    return pd.DataFrame({"c_ns": pd.array([w["c"] for w in ws], dtype="Int64"),
                         "error": pd.array([w["err"] for w in ws], dtype="Int32"),
                         "fua": [w["fua"] for w in ws]})


def _fframe(fs):
    return pd.DataFrame({"d_ns": pd.Series([f["d"] for f in fs], dtype="int64"),
                         "c_ns": pd.array([f["c"] for f in fs], dtype="Int64"),
                         "error": pd.array([f["err"] for f in fs], dtype="Int32")})


@settings(max_examples=300, deadline=None)
@given(host_writes(), flushes(), st.booleans())
def test_host_durable_matches_reference(ws, fs, volatile):
    fast = durability.host_durable(_wframe(ws), _fframe(fs), volatile_cache=volatile)
    assert list(fast) == ref_host_durable(ws, fs, volatile)


@settings(max_examples=300, deadline=None)
@given(host_writes(), flushes(), st.lists(st.tuples(st.integers(0, 6), st.integers(0, 45), st.integers(1, 10), T),
                                          max_size=15))
def test_carried_durable_matches_reference(ws, fs, raw_pieces):
    dur = ref_host_durable(ws, fs, True)
    host = [{**w, "durable": d} for w, d in zip(ws, dur, strict=True)]
    pieces = [{"wid": a, "sector": b, "nsect": c, "t": t} for a, b, c, t in raw_pieces]
    hw = pd.DataFrame({"rid": np.arange(len(host), dtype=np.int64),
                       "sector": np.array([h["sector"] for h in host], dtype=np.int64),
                       "nsect": np.array([h["nsect"] for h in host], dtype=np.int64),
                       "q_ns": np.array([h["q"] for h in host], dtype=np.int64),
                       "durable_ns": np.array([h["durable"] for h in host], dtype=np.int64)})
    gw = pd.DataFrame({"wid": np.array([p["wid"] for p in pieces], dtype=np.int64),
                       "h_sector": np.array([p["sector"] for p in pieces], dtype=np.int64),
                       "nsect": np.array([p["nsect"] for p in pieces], dtype=np.int64),
                       "t_from": np.array([p["t"] for p in pieces], dtype=np.int64)})
    fast = durability.carried_durable(gw, hw).set_index("wid")
    ref = ref_carried(pieces, host)
    assert set(fast.index) == set(ref)
    for wid, (d, first) in ref.items():
        assert fast.loc[wid, "durable_ns"] == d, wid
        assert fast.loc[wid, "first_q_ns"] == first, wid
        via = fast.loc[wid, "via_rid"]
        if d != NEVER:  # the named host write really is one that made the last sector durable at that time
            assert host[via]["durable"] == d


@settings(max_examples=200, deadline=None)
@given(st.lists(T, max_size=20), st.lists(T, max_size=8))
def test_first_covering_flush_is_the_first_issued_after_completion(w_c, f_d):
    idx = durability.first_covering_flush(np.array(w_c, dtype=np.int64), np.array(f_d, dtype=np.int64))
    for c, k in zip(w_c, idx, strict=True):
        later = [i for i, d in enumerate(f_d) if d > c]
        if not later:
            assert k == -1
        else:
            assert f_d[k] == min(f_d[i] for i in later)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(T, st.integers(0, 300), st.integers(1, 9)), max_size=20), T)
def test_exposure_counts_writes_at_risk(ws, probe):
    sub = np.array([a for a, _, _ in ws], dtype=np.int64)
    dur = np.array([a + b for a, b, _ in ws], dtype=np.int64)
    byt = np.array([n * 512 for _, _, n in ws], dtype=np.int64)
    ex = durability.exposure(sub, dur, byt)
    at = ex[ex["time_ns"] <= probe]
    got_w = int(at["writes"].iloc[-1]) if len(at) else 0
    got_b = int(at["bytes"].iloc[-1]) if len(at) else 0
    risk = (sub <= probe) & (dur > probe)
    assert got_w == int(risk.sum())
    assert got_b == int(byt[risk].sum())
