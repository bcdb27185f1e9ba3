"""`writeorder check` on the real captures: the verdict each capture's ground truth calls for.

What is asserted comes from the captures' manifest.json ground truth (recorded by the lab) or from an
independent count over the guest trace, never from writeorder's own earlier output.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import SETS, TRACES

from toolkit.analysis import SetAnalysis
from toolkit.checks import CLASSES
from toolkit.verdict import check_analysis

DURABILITY = ("flush-not-durable", "fua-not-durable", "flush-not-forwarded", "crash-reorder")
UNSAFE = [s for s in SETS if "unsafe" in s]
SAFE = [s for s in SETS if s not in UNSAFE]



@cache
def result(name: str):
    sa = SetAnalysis.load(TRACES / name)
    return sa, check_analysis(sa)


def manifest(name: str) -> dict:
    return json.loads((TRACES / name / "manifest.json").read_text())


@pytest.mark.parametrize("name", SAFE)
def test_safe_captures_have_no_durability_violation(name):
    _, res = result(name)
    s = res.summary()
    assert {c: s[c] for c in DURABILITY} == dict.fromkeys(DURABILITY, 0), [v.sentence for v in res.violations][:3]
    if not manifest(name)["description"].startswith("FAULT"):
        assert not [c for c in s if c.startswith("migration") or c == "split-brain" if s[c]]
    assert s["clock-inconsistent"] == 0


def _flushes_with_new_data(sa) -> int:
    """Independent count on the guest trace: guest device flushes (D FN) with a write completed since the
    previous flush was issued."""
    ev = sa.disks[0].guest_events
    d = ev[(ev["action"] == "D") & (ev["op"] == "flush")]["time_ns"].to_numpy()
    c = ev[(ev["action"] == "C") & (ev["op"] == "write") & (ev["nsect"] > 0)]["time_ns"].to_numpy()
    prev = np.concatenate([[-1], d[:-1]])
    return int(sum(((c > a) & (c < b)).any() for a, b in zip(prev, d, strict=True)))


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_reports_every_flush_that_covered_unflushed_data(name):
    sa, res = result(name)
    s = res.summary()
    gt = manifest(name)["ground_truth"]["summary"]
    assert gt["host_flushes_from_qemu"] == 0  # the capture's fact: guest flushes never became host flushes
    n = _flushes_with_new_data(sa)
    assert 0 < n <= gt["guest_flush_requests_to_virtio"]
    assert s["flush-not-forwarded"] == n
    assert s["flush-not-durable"] == n
    assert s["crash-reorder"] > 0
    for v in res.violations:
        assert v.sentence and v.requests, v
        if v.cls == "flush-not-durable":
            layers = [r["layer"] for r in v.requests]
            assert layers[:2] == ["guest-block", "qemu"] and "host-block" in layers
            assert not v.uncertain  # seconds late, not microseconds


@pytest.mark.parametrize("name", SETS)
def test_inferred_cache_mode_matches_the_declared_one(name):
    sa, res = result(name)
    for da in sa.disks:
        m = res.inferred_cache[da.name]
        assert m["mode"] == manifest(name)["cache_mode"], m


@pytest.mark.parametrize("name", SETS)
def test_every_guest_write_is_linked_and_carried_to_the_host(name):
    sa, res = result(name)
    gt = manifest(name)["ground_truth"]["summary"]
    if len(sa.disks) == 1:
        assert res.coverage[sa.disks[0].name]["guest_flushes"] == gt["guest_flush_requests_to_virtio"]
    for da in sa.disks:
        cov = res.coverage[da.name]
        assert cov["write_share_carried"] == 1.0, cov["not_carried"][:5]
        if da.qemu_has_times:
            assert cov["writes_linked_to_qemu"] == cov["guest_writes"]
            assert cov["flushes_linked_to_qemu"] == cov["guest_flushes"]


def test_overlapping_inflight_matches_ground_truth():
    _, res = result("raw-overlap-none")
    gt = manifest("raw-overlap-none")["ground_truth"]["summary"]
    by_layer = pd.Series([v.layer for v in res.violations if v.cls == "overlapping-inflight"]).value_counts()
    assert by_layer.get("guest-block", 0) == gt["guest_overlapping_inflight_pairs"]
    assert by_layer.get("host-block", 0) == gt["host_overlapping_inflight_pairs"]


@pytest.mark.parametrize("name", [s for s in SETS if manifest(s)["ground_truth"]["summary"].get("host_flush_follows_guest_flush")])
def test_forwarded_flushes_seen_on_the_host(name):
    """Every guest flush that QEMU forwarded overlaps a flush of the host device."""
    sa, _ = result(name)
    f = sa.disks[0].df_flushes()
    fwd = f[f["new_writes"] > 0]
    assert (fwd["host_flushes"] > 0).all()


@pytest.mark.parametrize("name", [s for s in SETS if manifest(s)["cache_mode"] in ("writethrough", "directsync")])
def test_write_through_disks_every_write_durable_at_completion(name):
    """The guest sees no write cache and sends no flushes; QEMU makes each write durable before completing it."""
    sa, res = result(name)
    da = sa.disks[0]
    assert not da.guest_write_cache
    w = da.df_writes()
    w = w[w["completed"]]
    assert (w["hd_opt_ns"] <= w["h_ack"]).mean() >= 0.99
    assert res.summary()["fua-not-durable"] == 0


def test_guest_clock_alignment_is_tight_and_consistent():
    sa, res = result("raw-none-threads")
    c = res.clocks["vm:monotonic->host:monotonic"]
    assert c["consistent"] and c["uncertainty_ns"] < 2_000_000
    # the serial-console markers (received on the host after the guest printed them) agree with it
    off = sa.disks[0].guest_offset
    for p in sa.ts.clocks:
        if p.a == "vm:monotonic" and p.b == "host:monotonic":
            lag = p.b_ns - int(off.to_ref([p.a_ns])[0])
            assert -2_000_000 < lag < 20_000_000, lag


def test_shifted_guest_clock_is_followed(tmp_path):
    """Guest times shifted by a known offset: the alignment moves by exactly that offset."""
    sa, _ = result("raw-none-threads")
    base = sa.disks[0].guest_offset.summary()["offset_ns"]
    shift = 3_600_000_000_000
    sa2 = SetAnalysis.load(TRACES / "raw-none-threads")
    gi = [t.index for t in sa2.ts.traces if t.layer == "guest-block"][0]
    sa2.results[gi].events = sa2.results[gi].events.assign(time_ns=lambda x: x["time_ns"] + shift)
    sa2.ts.clocks = [c for c in sa2.ts.clocks if c.a != "vm:monotonic"]
    res2 = check_analysis(sa2)
    assert res2.clocks["vm:monotonic->host:monotonic"]["offset_ns"] == pytest.approx(base - shift, abs=200_000)
    assert {c: res2.summary()[c] for c in DURABILITY} == dict.fromkeys(DURABILITY, 0)


def test_contradictory_clocks_are_reported_not_guessed():
    """A guest trace whose second half runs 50 ms behind cannot be aligned: clock-inconsistent."""
    sa = SetAnalysis.load(TRACES / "raw-none-threads")
    gi = [t.index for t in sa.ts.traces if t.layer == "guest-block"][0]
    ev = sa.results[gi].events
    mid = int(ev["time_ns"].median())
    sa.results[gi].events = ev.assign(time_ns=np.where(ev["time_ns"] > mid, ev["time_ns"] + 50_000_000,
                                                       ev["time_ns"]))
    res = check_analysis(sa)
    assert res.summary()["clock-inconsistent"] >= 1


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_exit_codes_and_json_contract(tmp_path):
    r = _cli("check", str(TRACES / "raw-unsafe"), "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {"traceset", "summary", "violations", "coverage", "clocks", "inferred_cache"}
    assert set(doc["summary"]) == set(CLASSES)
    assert sum(doc["summary"].values()) == len(doc["violations"])
    assert [v["id"] for v in doc["violations"]] == list(range(len(doc["violations"])))
    r = _cli("check", str(TRACES / "raw-none-threads"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no durability or ordering violation" in r.stdout
    r = _cli("check", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope" in r.stderr
