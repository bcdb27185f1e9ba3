"""Live migration and multiple writers on the real captures, held to the lab's ground truth (manifest.json)."""

from __future__ import annotations

import json
from functools import cache

import pytest
from conftest import TRACES

from toolkit.analysis import SetAnalysis
from toolkit.verdict import check_analysis

MIGRATION = ("migration-overlap", "migration-no-flush", "migration-source-after-handover", "migration-stale-read",
             "split-brain")


@cache
def result(name: str):
    sa = SetAnalysis.load(TRACES / name)
    return sa, check_analysis(sa)


def gt(name: str) -> dict:
    return json.loads((TRACES / name / "manifest.json").read_text())["ground_truth"]


@pytest.mark.parametrize("name", ["migrate-none", "migrate-writeback"])
def test_safe_migration(name):
    sa, res = result(name)
    s = res.summary()
    assert {c: s[c] for c in MIGRATION} == dict.fromkeys(MIGRATION, 0), [v.sentence for v in res.violations]
    m = res.to_json()["migration"]
    assert m["verdict"] == "safe"
    t = m["switchover_ns"]
    assert t["source_stop"] < t["source_flush_all"] < t["source_completed"] <= t["destination_resume"]
    # the switchover window of the lab: [source finish-migrate, destination running] in host monotonic ns
    lo, hi = gt(name)["summary"]["migration_switchover_window_host_mono_ns"]
    assert abs(t["source_stop"] - lo) < 10_000 and abs(t["destination_resume"] - hi) < 10_000
    # every source write before every destination write, and none after the handover
    assert m["source_io"]["last_write"]["q_ns"] < m["destination_io"]["first_write"]["q_ns"]
    assert m["source_io"]["last_write"]["q_ns"] < t["destination_resume"]
    assert gt(name)["summary"]["migration_src_writes_after_vm_stop"] == 0


def test_split_brain_names_both_writers_the_window_and_the_blocks():
    sa, res = result("splitbrain-none")
    sb = [v for v in res.violations if v.cls == "split-brain"]
    assert len(sb) == 1
    v = sb[0]
    truth = gt("splitbrain-none")["splitbrain"]
    pids = {t.pid for t in sa.ts.traces if t.layer == "qemu"}
    assert set(v.details["writers"]) == pids
    lo, hi = truth["concurrent_window_ns"]
    assert abs(v.start_ns - lo) < 1_000 and abs(v.end_ns - hi) < 1_000
    assert sorted(v.details["writes_in_window"]) == sorted([truth["writes_in_window_a"], truth["writes_in_window_b"]])
    assert v.details["blocks_4k_written_by_both"] == truth["blocks_4k_written_by_both"]
    assert res.summary()["migration-overlap"] == 0  # no migration here: no handover to judge


def test_resumed_source_writes_after_handover():
    sa, res = result("migrate-resume-source")
    truth = gt("migrate-resume-source")["resume_source"]
    after = [v for v in res.violations if v.cls == "migration-source-after-handover"]
    assert len(after) == 1
    v = after[0]
    assert v.details["writes"] == truth["host_src_writes_after_handover"]
    first_w = [r for r in v.requests if "write" in r["what"]][0]
    assert first_w["q_ns"] == truth["first_src_write_after_handover"]["Q_ns"]
    m = res.to_json()["migration"]
    assert m["verdict"] == "unsafe"
    assert abs(m["switchover_ns"]["source_resumed_after_handover"] - truth["src_vm_resumed"]["host_mono_ns"]) < 10_000
    sb = [v for v in res.violations if v.cls == "split-brain"]
    assert len(sb) == 1
    assert sorted(sb[0].details["writes_in_window"]) == sorted([truth["writes_in_window_src"],
                                                                truth["writes_in_window_dst"]])
    assert sb[0].details["blocks_4k_written_by_both"] == truth["blocks_4k_written_by_both_after_handover"]


def test_single_vm_sets_have_no_migration_section():
    _, res = result("raw-none-threads")
    assert "migration" not in res.to_json()
    assert not any(res.summary()[c] for c in MIGRATION)
