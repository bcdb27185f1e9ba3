"""Time-sliced analysis over the store (toolkit.slicing) gives the verdict of the whole-set analysis.

The sets are real captures scaled by time-shifted copies (benchmarks/bench_scale.py: every layer copied with
all clocks shifted alike), so the shapes stay real and there are idle stretches to cut at; slices are made
small (half a copy) so that every set is cut several times.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, TRACES
from toolkit import slicing, store, traceset, verdict

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_scale  # noqa: E402


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    made = {}

    def make(name: str, copies: int = 3):
        if name not in made:
            src = TRACES / name
            per = sum(e["events"] for e in store.update(traceset.load(src), keep=False)[0].values())
            out = tmp_path_factory.mktemp("sliced") / f"{name}-x{copies}"
            bench_scale.build(src, per * copies, out)
            made[name] = (out, per)
        return made[name]
    return make


def _doc(res) -> dict:
    return json.loads(json.dumps(res.to_json(), default=str))


@pytest.mark.parametrize("name", ["raw-none-threads", "raw-unsafe", "raw-overlap-none", "ext4-writeback",
                                  "qcow2file-none", "raw-writethrough", "ext4-unsafe"])
def test_sliced_verdict_equals_whole(scaled, name):
    out, per = scaled(name)
    whole = _doc(verdict.check_set(out))
    res = slicing.check_set(out, slice_events=per // 2)
    sliced = _doc(res)
    info = sliced.pop("slicing")
    assert info[0]["slices"] >= 3, info  # it was really cut
    assert info[0]["unclean_cuts"] == []
    assert sliced == whole
    # the scaled sets keep their captures' findings: something to compare on the sets that have violations
    if name in ("raw-unsafe", "raw-overlap-none", "ext4-unsafe"):
        assert whole["violations"]


def test_cuts_fall_where_every_layer_is_idle(scaled):
    out, per = scaled("raw-none-threads")
    ts = traceset.load(out)
    p = slicing.plan(ts, ts.disks[0], per // 2)
    assert len(p.cuts) >= 2 and p.why is None
    assert p.events.sum() == p.total
    for tc in p.traces:
        ev = store.read(ts, store.kind_of(tc.trace.format), trace=tc.trace, device=tc.device, ingest_first=False)
        t = ev["time_ns"].dropna().to_numpy(np.int64) + tc.offset_ns
        near = np.abs(t[None, :] - p.cuts[:, None]).min(axis=1)
        assert (near > slicing.MARGIN_NS).all(), (tc.trace.path, near)


def test_small_sets_and_several_writers_are_not_sliced():
    # below the slice size: one piece, the whole-set path
    ts = traceset.load(TRACES / "raw-none-threads")
    store.update(ts, keep=False)
    p = slicing.plan(ts, ts.disks[0])
    assert len(p.cuts) == 0 and p.why is None
    # a migration: the handover checks need the whole shared device
    ts = traceset.load(TRACES / "migrate-none")
    store.update(ts, keep=False)
    p = slicing.plan(ts, ts.disks[0], slice_events=10)
    assert len(p.cuts) == 0 and "more than one QEMU" in p.why
    assert not slicing.sliceable(ts)


def test_unclean_cut_is_merged(scaled, monkeypatch):
    """A cut where a write is not yet durable is not used: the slice is analysed again with the next one."""
    out, per = scaled("raw-none-threads")
    ts = traceset.load(out)
    p = slicing.plan(ts, ts.disks[0], per // 2)
    real = slicing._unclean
    calls = {"n": 0}

    def first_unclean(da):
        calls["n"] += 1
        return {"guest writes not durable": 1} if calls["n"] == 1 else real(da)
    monkeypatch.setattr(slicing, "_unclean", first_unclean)
    part, doc = slicing.check_disk(ts, p)
    assert doc["slices"] == len(p.cuts)  # one cut fewer used than planned
    assert doc["unclean_cuts"] == []


def test_dask_one_task_per_disk_equals_single_process(scaled):
    from toolkit import distributed

    out, per = scaled("raw-unsafe")
    single = slicing.check_set(out, slice_events=per // 2)
    with distributed.engine(workers=2) as client:
        (got,) = distributed.check_sets(client, [str(out)], slice_events=per // 2)
    assert got["json"] == json.dumps(single.to_json(), indent=1, sort_keys=True)
    assert got["violations"] == single.violation_count > 0
