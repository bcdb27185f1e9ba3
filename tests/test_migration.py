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


def _shift_log(src, dst, shift_s: int) -> None:
    """Rewrite a QEMU log with every ``TID@SEC.USEC:`` moved by ``shift_s`` seconds (another host's clock)."""
    import lzma
    import re

    with lzma.open(src, "rt") as f:
        text = f.read()
    text = re.sub(r"^(\d+)@(\d+)\.", lambda m: f"{m.group(1)}@{int(m.group(2)) + shift_s}.", text, flags=re.M)
    dst.write_text(text)


def test_destination_on_another_clock_is_aligned_by_causality(tmp_path):
    """The destination QEMU on a node of its own whose clock is 1 h ahead, with no reference pairs: its clock is
    recovered from causal pairs with the host trace, and the verdict and the switchover stay the same."""
    import shutil

    base_sa, base = result("migrate-none")
    d = tmp_path / "migrate-none"
    shutil.copytree(TRACES / "migrate-none", d, ignore=shutil.ignore_patterns(".writeorder"))
    shift = 3600
    _shift_log(d / "qemu-dst.log.xz", d / "qemu-dst.log", shift)
    (d / "qemu-dst.log.xz").unlink()
    toml = (d / "traceset.toml").read_text()
    toml = toml.replace('[[node]]\nname = "host"\nkind = "host"\n',
                        '[[node]]\nname = "host"\nkind = "host"\n\n[[node]]\nname = "host2"\nkind = "host"\n', 1)
    i = toml.index('path = "qemu-dst.log.xz"')
    block_start = toml.rindex("[[trace]]", 0, i)
    block = toml[block_start:i].replace('node = "host"', 'node = "host2"')
    toml = toml[:block_start] + block + 'path = "qemu-dst.log"' + toml[i + len('path = "qemu-dst.log.xz"'):]
    (d / "traceset.toml").write_text(toml)
    sa = SetAnalysis.load(d)
    res = check_analysis(sa)
    assert {c: res.summary()[c] for c in MIGRATION} == dict.fromkeys(MIGRATION, 0)
    dst = next(t for t in sa.ts.traces if t.role == "destination")
    assert dst.node == "host2"
    off = sa.qemu_offset(dst).summary()
    true = base_sa.qemu_offset(next(t for t in base_sa.ts.traces if t.role == "destination")).summary()
    unc = off["uncertainty_ns"]
    assert "causal" in off["source"] and unc < 2_000_000
    assert abs(off["offset_ns"] - (true["offset_ns"] - shift * 10**9)) <= unc + true["uncertainty_ns"]
    a, b = base.to_json()["migration"]["switchover_ns"], res.to_json()["migration"]["switchover_ns"]
    assert abs(a["destination_resume"] - b["destination_resume"]) <= unc + 2_000
    assert a["source_stop"] == b["source_stop"]


def test_handover_without_the_source_flush_is_caught():
    """The real migrate-none capture with the source's flush at VM stop removed from the host trace: the
    source's last writes are no longer durable at the handover (migration-no-flush) and the destination writes
    before they become durable (migration-overlap)."""
    sa = SetAnalysis.load(TRACES / "migrate-none")
    from toolkit import migration

    h = migration.handover(sa)
    hi = next(t.index for t in sa.ts.traces if t.layer == "host-block")
    ev = sa.results[hi].events
    stop, resume = h.times["source_stop"], h.times["destination_resume"]
    src_flush_q = ev[(ev["action"] == "Q") & (ev["op"] == "flush") & (ev["time_ns"] > stop)
                     & (ev["time_ns"] < resume)]
    assert len(src_flush_q) == 1  # the flush QEMU's vm_stop_flush_all sent
    t0 = int(src_flush_q["time_ns"].iloc[0])
    # that flush's Q, G, D FN, C FN and the bio's zero-byte completion
    drop = (ev["time_ns"] >= t0) & (ev["time_ns"] < resume) & ((ev["op"] == "flush") | (ev["nsect"] == 0)) & (
        ev["action"].isin(["Q", "G", "D", "C"]))
    sa.results[hi].events = ev[~drop].reset_index(drop=True)
    res = check_analysis(sa)
    s = res.summary()
    assert s["migration-no-flush"] == 1 and s["migration-overlap"] == 1, [v.sentence for v in res.violations]
    nf = next(v for v in res.violations if v.cls == "migration-no-flush")
    assert nf.end_ns == int(resume) and "no flush" in nf.sentence
    ov = next(v for v in res.violations if v.cls == "migration-overlap")
    assert [r["what"] for r in ov.requests] == ["source write not yet durable", "first destination write"]
    assert res.to_json()["migration"]["verdict"] == "unsafe"
