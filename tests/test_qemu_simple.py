"""QEMU simple backend reader: real log events written byte-exactly in file format v4 and read back."""

from __future__ import annotations

import json
import lzma
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import QEMU_LOGS, TRACE_EVENTS_72, TRACES, simple_records_from_log

from toolkit.parsers import detect_format, qemu_log, qemu_simple
from toolkit.parsers import trace_events as te

DECLS = te.parse_text(TRACE_EVENTS_72)


@pytest.fixture()
def te_file(tmp_path) -> Path:
    p = tmp_path / "trace-events-all"
    p.write_text(TRACE_EVENTS_72.lstrip())
    return p


def test_trace_events_grammar():
    assert len(DECLS) == sum(1 for ln in TRACE_EVENTS_72.splitlines() if ln.strip() and not ln.startswith("#"))
    rs = DECLS["runstate_set"]
    assert [a.name for a in rs] == ["current_state", "current_state_str", "new_state", "new_state_str"]
    assert [a.is_string for a in rs] == [False, True, False, True]
    assert rs[0].signed_bits == 32 and DECLS["blk_co_pwritev"][2].signed_bits == 64
    assert DECLS["virtio_blk_handle_write"][0].is_pointer and DECLS["virtio_blk_handle_write"][2].signed_bits == 0
    assert DECLS["savevm_state_iterate"] == []
    name, args = te.parse_decl('disable vcpu foo_bar(const char* s, unsigned int u) "%s %u"')
    assert name == "foo_bar" and args[0].is_string and args[1].signed_bits == 0


@pytest.mark.parametrize("s,f", QEMU_LOGS, ids=[f"{s}/{f}" for s, f in QEMU_LOGS])
def test_roundtrip_real_log(tmp_path, te_file, s, f):
    src = qemu_log.parse(TRACES / s / f).events
    names, records, rows = simple_records_from_log(src, DECLS)
    assert len(rows) > 0.95 * len(src)
    p = tmp_path / "trace-123"
    qemu_simple.write(p, names, records)
    assert detect_format(p) == "qemu-simple"
    r = qemu_simple.parse(p, trace_events=te_file)
    assert len(r.rejects) == 0 and r.meta["dropped_records"] == 0 and r.meta["unknown_events"] == []
    e = r.events
    ref = src.iloc[rows].reset_index(drop=True)
    assert len(e) == len(ref)
    assert e["event"].astype(str).tolist() == ref["event"].astype(str).tolist()
    assert e["time_ns"].tolist() == ref["time_ns"].fillna(0).tolist()
    assert e["tid"].tolist() == ref["tid"].fillna(0).tolist()
    for c in ("req", "vdev", "blk", "bs", "opaque", "sector", "nsectors", "offset", "bytes", "flags", "status",
              "ret"):
        assert e[c].tolist() == ref[c].tolist(), c
    st = ref["state"].notna() & ref["event"].isin(["runstate_set", "vm_state_notify", "migrate_set_state"])
    assert e.loc[st, "state"].tolist() == ref.loc[st, "state"].tolist()
    # positions are byte offsets of each record, in file order
    assert e["pos"].is_monotonic_increasing and e["pos"].iloc[0] > 24
    assert r.meta["byte_order"] == ("little" if sys.byteorder == "little" else "big")


def test_big_endian_and_strings_and_dropped(tmp_path, te_file):
    names = {0: "runstate_set", 5: "thread_pool_complete", 7: "migrate_set_state"}
    recs = []
    for i in range(3000):
        recs.append((5, 10**9 + i, 4242, [0x55, 0x1000 + i, 0x7F00, -5 if i % 7 == 0 else 0]))
        if i % 500 == 0:
            recs.append((0, 10**9 + i, 4242, [9, "running", 7, "finish-migrate"]))
            recs.append((7, 10**9 + i, 4242, ["x" * 600]))  # longer than MAX_TRACE_STRLEN: cut to 512
    recs.append((qemu_simple.DROPPED_EVENT_ID, 2 * 10**9, 4242, [17]))
    for order in "<>":
        p = tmp_path / f"t{order == '>'}"
        qemu_simple.write(p, names, recs, order=order)
        r = qemu_simple.parse(p, trace_events=te_file)
        e = r.events
        assert r.meta["byte_order"] == ("little" if order == "<" else "big")
        assert len(e) == len(recs) and len(r.rejects) == 0
        assert r.meta["dropped_records"] == 1 and r.meta["dropped_events"] == 17
        tp = e[e["event"] == "thread_pool_complete"]
        assert tp["req"].tolist() == [0x1000 + i for i in range(3000)]
        assert tp["ret"].tolist() == [-5 if i % 7 == 0 else 0 for i in range(3000)]  # sign-extended int
        assert tp["args"].iloc[0] == "pool=0x55 req=0x1000 opaque=0x7f00 ret=0xfffffffffffffffb"
        assert e[e["event"] == "runstate_set"]["state"].tolist() == ["finish-migrate"] * 6
        ms = e[e["event"] == "migrate_set_state"]
        assert ms["state"].str.len().tolist() == [512] * 6
        assert e["event"].iloc[-1] == "dropped"


def test_without_trace_events_raw_u64(tmp_path):
    names = {3: "thread_pool_submit"}
    qemu_simple.write(tmp_path / "t", names, [(3, 5, 1, [1, 2, 3]), (3, 6, 1, [4, 5, 6])])
    r = qemu_simple.parse(tmp_path / "t", trace_events=tmp_path / "missing")
    assert r.meta["trace_events"] is None
    assert any("raw u64" in n for n in r.meta["notes"])
    assert r.events["args"].tolist() == ["arg0=0x1 arg1=0x2 arg2=0x3", "arg0=0x4 arg1=0x5 arg2=0x6"]


def test_truncated_and_garbage(tmp_path, te_file):
    names = {1: "thread_pool_complete", 2: "vm_stop_flush_all"}
    recs = [(1, i, 9, [1, i, 3, 0]) for i in range(100)] + [(2, 100, 9, [0])]
    p = tmp_path / "t"
    qemu_simple.write(p, names, recs)
    data = p.read_bytes()
    (tmp_path / "cut").write_bytes(data[:-5])
    r = qemu_simple.parse(tmp_path / "cut", trace_events=te_file)
    assert len(r.events) == 100 and r.rejects["reason"].tolist() == ["truncated record"]
    assert r.rejects["pos"].iloc[0] == len(data) - 40
    # garbage between records: rejected with its byte range, the records after it still read
    one = 8 + 24 + 32
    start = len(data) - 40 - 50 * one
    bad = data[:start] + b"\x07" * 40 + data[start:]
    (tmp_path / "bad").write_bytes(bad)
    r = qemu_simple.parse(tmp_path / "bad", trace_events=te_file)
    assert len(r.events) == 101
    assert r.rejects["pos"].tolist() == [start] and r.rejects["length"].tolist() == [40]
    with pytest.raises(Exception, match="not a QEMU simple trace"):
        (tmp_path / "nm").write_bytes(b"\0" * 64)
        qemu_simple.parse(tmp_path / "nm")


def _simpletrace_dir() -> Path | None:
    d = os.environ.get("QEMU_SIMPLETRACE_DIR", "/work/.cache/qemu-simpletrace")
    return Path(d) if (Path(d) / "simpletrace.py").exists() else None


def _both_print(trace: Path, te_all: Path) -> tuple[list[str], list[str]]:
    """The lines QEMU's simpletrace.py prints for ``trace`` (strings without their bytes repr), and the same
    lines formatted from our events (name, delta us, pid, args)."""
    out = subprocess.run([sys.executable, str(_simpletrace_dir() / "simpletrace.py"), str(te_all), str(trace)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    out = [re.sub(r"=b'([^']*)'", r"=\1", ln) for ln in out]  # simpletrace prints strings as bytes reprs
    e = qemu_simple.parse(trace, trace_events=te_all).events
    t = e["time_ns"].to_numpy(np.int64)
    delta = np.diff(t, prepend=t[0]) / 1000.0
    mine = [" ".join([n, f"{d:0.3f}", f"pid={p_}"] + ([a] if a else []))
            for n, d, p_, a in zip(e["event"].astype(str), delta, e["tid"], e["args"], strict=True)]
    return out, mine


@pytest.mark.skipif(_simpletrace_dir() is None, reason="QEMU's scripts/simpletrace.py not available "
                    "(set QEMU_SIMPLETRACE_DIR to a folder with simpletrace.py and tracetool/)")
def test_cross_check_with_simpletrace(tmp_path, te_file):
    src = qemu_log.parse(TRACES / "migrate-none" / "qemu-src.log.xz").events
    names, records, rows = simple_records_from_log(src, DECLS)
    p = tmp_path / "trace-1"
    qemu_simple.write(p, names, records)
    out, mine = _both_print(p, te_file)
    assert len(out) == len(rows)
    assert mine == out


def test_header_checks(tmp_path):
    p = tmp_path / "v3"
    p.write_bytes(struct.pack("=QQQ", qemu_simple.HEADER_EVENT_ID, qemu_simple.MAGIC, 3))
    with pytest.raises(Exception, match="version 3"):
        qemu_simple.parse(p)


def test_args_text_false_keeps_typed_columns(tmp_path, te_file):
    names = {0: "runstate_set", 5: "thread_pool_complete", 7: "migrate_set_state", 8: "savevm_state_iterate"}
    recs = [(5, 1, 9, [0x55, 0x10, 0x7F00, -1]), (7, 2, 9, ["setup"]), (0, 3, 9, [9, "running", 7, "paused"]),
            (8, 4, 9, []), (5, 5, 9, [0x55, 0x11, 0x7F00, 0])]
    p = tmp_path / "t"
    qemu_simple.write(p, names, recs)
    full = qemu_simple.parse(p, trace_events=te_file).events
    bare = qemu_simple.parse(p, trace_events=te_file, args_text=False).events
    assert full["args"].tolist() == ["pool=0x55 req=0x10 opaque=0x7f00 ret=0xffffffffffffffff", "new_state=setup",
                                     "current_state=0x9 current_state_str=running new_state=0x7 new_state_str=paused",
                                     "", "pool=0x55 req=0x11 opaque=0x7f00 ret=0x0"]
    # without text: null for rows with integer arguments, strings-only and empty ones as written
    assert bare["args"].isna().tolist() == [True, False, True, False, True]
    assert bare["args"].iloc[1] == "new_state=setup" and bare["args"].iloc[3] == ""
    for c in ("req", "opaque", "ret", "state", "event", "time_ns", "pos"):
        assert bare[c].equals(full[c]), c
    assert full["ret"].tolist()[::4] == [-1, 0]


@pytest.mark.parametrize("order", "<>")
def test_two_threads_same_result(tmp_path, te_file, monkeypatch, order):
    """A real log's events (with strings), an unknown event id, a dropped-event record, garbage between records
    and a cut last record: decoded in two halves on two threads, the tables and meta equal those of one."""
    src = qemu_log.parse(TRACES / "migrate-none" / "qemu-src.log.xz").events
    names, records, _ = simple_records_from_log(src, DECLS)
    names = {**names, 999: "brand_new_event"}
    q = len(records) // 4
    records = [*records[:q], (999, 5, 1, [7, 8]), *records[q:3 * q], (qemu_simple.DROPPED_EVENT_ID, 2 * 10**9,
               4242, [17]), *records[3 * q:]]
    p = tmp_path / "trace"
    qemu_simple.write(p, names, records[:3 * q + 10], order=order)
    at = p.stat().st_size  # where record 3q + 10 starts
    qemu_simple.write(p, names, records, order=order)
    data = p.read_bytes()
    p.write_bytes(data[:at] + b"\x07" * 24 + data[at:-5])
    halves = []
    fill = qemu_simple._Layout.fill
    monkeypatch.setattr(qemu_simple._Layout, "fill", lambda self, *a: halves.append(a[-2:]) or fill(self, *a))
    one = qemu_simple.parse(p, trace_events=te_file, workers=1)
    assert halves == [(0, len(one.events))]
    halves.clear()
    two = qemu_simple.parse(p, trace_events=te_file, workers=2, parallel_min=0)
    assert sorted(halves) == [(0, len(one.events) // 2), (len(one.events) // 2, len(one.events))]
    assert len(one.rejects) == 2 and one.meta["dropped_events"] == 17 and one.meta["unknown_events"]
    assert one.events["state"].notna().sum() > 3
    pd.testing.assert_frame_equal(two.events, one.events, check_exact=True)
    pd.testing.assert_frame_equal(two.rejects, one.rejects, check_exact=True)
    assert two.meta == one.meta
    a = qemu_simple.parse(p, trace_events=te_file, workers=1, args_text=False)
    b = qemu_simple.parse(p, trace_events=te_file, workers=2, parallel_min=0, args_text=False)
    pd.testing.assert_frame_equal(b.events, a.events, check_exact=True)


def test_strings_not_utf8(tmp_path, te_file):
    """String arguments are bytes in the file: invalid UTF-8 becomes U+FFFD in args and state (as Python's
    decode with errors='replace'); valid non-ASCII stays as it is."""
    names = {0: "runstate_set", 7: "migrate_set_state"}
    raw = [b"ok", "d\u00e9j\u00e0".encode(), b"bad\xff\xfe", b"\xc3", b"cut\xe2\x82"]
    p = tmp_path / "t"
    with open(p, "wb") as f:  # written by hand: write() takes str
        f.write(struct.pack("<QQQ", qemu_simple.HEADER_EVENT_ID, qemu_simple.MAGIC, 4))
        for eid, nm in names.items():
            f.write(struct.pack("<QQI", 0, eid, len(nm)) + nm.encode())
        for i, s in enumerate(raw):
            body = struct.pack("<I", len(s)) + s
            f.write(struct.pack("<QQQII", 1, 7, i, 24 + len(body), 9) + body)
            body = struct.pack("<Q", 3) + struct.pack("<I", 2) + b"xx" + struct.pack("<Q", 4) + struct.pack("<I", len(s)) + s
            f.write(struct.pack("<QQQII", 1, 0, i, 24 + len(body), 9) + body)
    for w in (1, 2):
        e = qemu_simple.parse(p, trace_events=te_file, workers=w, parallel_min=0).events
        want = [s.decode("utf-8", errors="replace") for s in raw]
        assert e["state"].tolist() == [x for s in want for x in (s, s)]
        assert e["args"].tolist()[0::2] == [f"new_state={s}" for s in want]
        assert e["args"].tolist()[1::2] == [f"current_state=0x3 current_state_str=xx new_state=0x4 new_state_str={s}"
                                            for s in want]


def test_c_loops_check_their_buffers(tmp_path, te_file):
    """The C loops refuse arrays too small for what they would write (a clear error, no memory corruption)."""
    from toolkit.parsers import _simplec

    names = {5: "thread_pool_complete"}
    p = tmp_path / "t"
    qemu_simple.write(p, names, [(5, i, 9, [1, 2, 3, 4]) for i in range(100)])
    data = p.read_bytes()
    small = [np.empty(10, t) for t in (np.int64, np.uint64, np.uint64, np.int64, np.int64)]
    with pytest.raises(ValueError, match="starts has 80 bytes"):
        _simplec.events(data, False, 24, qemu_simple.MAX_EVENT_ID, qemu_simple.DROPPED_EVENT_ID, *small, 0)
    big = [np.empty(len(data) // 32 + 1, t) for t in (np.int64, np.uint64, np.uint64, np.int64, np.int64)]
    stop, n = _simplec.events(data, False, 24 + 20 + len("thread_pool_complete"), qemu_simple.MAX_EVENT_ID,
                              qemu_simple.DROPPED_EVENT_ID, *big, 0)
    assert (stop, n) == (len(data), 100) and big[1][:n].tolist() == [5] * 100 and big[2][:n].tolist() == list(range(100))
    assert _simplec.next_event(data, False, 25, qemu_simple.MAX_EVENT_ID, qemu_simple.DROPPED_EVENT_ID) == big[0][0]
    lay = qemu_simple._Layout(["thread_pool_complete"], [DECLS["thread_pool_complete"]], True)
    starts, length = big[0][:n], big[4][:n]
    code = np.zeros(n, np.int32)
    cols, nulls = np.empty((13, n), np.int64), np.empty((13, n), np.uint8)
    text, toff = np.empty(10, np.uint8), np.empty(n + 1, np.int64)
    flags = [np.empty(n, np.uint8) for _ in range(3)]
    args = (data, False, starts, length, code, lay.g_lo, lay.g_text, lay.a_string, lay.a_col, lay.a_bits,
            lay.a_state, lay.lab, lay.lab_lo)
    with pytest.raises(ValueError, match="text buffer too small"):
        _simplec.fill(*args, cols, nulls, 13, 0, n, text, toff, flags[0], np.empty(1, np.uint8), np.empty(n + 1, np.int64),
                      flags[1], flags[2])
    with pytest.raises(ValueError, match="cols has"):
        _simplec.fill(*args, cols[:5], nulls, 13, 0, n, text, toff, flags[0], np.empty(1, np.uint8),
                      np.empty(n + 1, np.int64), flags[1], flags[2])
    with pytest.raises(ValueError, match="g_lo"):
        _simplec.fill(data, False, starts, length, code, lay.g_lo[:1], *args[6:], cols, nulls, 13, 0, n, text, toff,
                      flags[0], np.empty(1, np.uint8), np.empty(n + 1, np.int64), flags[1], flags[2])


REAL = TRACES / "raw-none-simple"


def test_real_recording_of_a_simple_backend_qemu():
    """A trace QEMU itself wrote: QEMU 7.2.0 built with the simple backend, recorded by the trace lab
    (traces/raw-none-simple). Every record read, every event named and declared (the build's trace-events-all,
    found beside the trace), the QEMU process's pid, times within the process's lifetime on the host monotonic
    clock, and the request counts the guest and host traces of the same run show."""
    m = json.loads((REAL / "manifest.json").read_text())
    r = qemu_simple.parse(REAL / "qemu-vm.trace.xz")
    assert r.meta["trace_events"] == str(REAL / "trace-events-all.xz")
    assert len(r.rejects) == 0 and r.meta["unknown_events"] == [] and r.meta["dropped_records"] == 0
    assert r.meta["byte_order"] == "little" and r.meta["clock"] == "monotonic"
    e = r.events
    assert set(e["tid"]) == {m["processes"][0]["pid"]}
    pairs = {c["label"]: c["mono_ns"] for c in m["clock_pairs"]}
    assert pairs["qemu_vm_started"] <= e["time_ns"].min() and e["time_ns"].max() <= pairs["all_qemu_exited"]
    n = e["event"].value_counts()
    checks, summary = m["ground_truth"]["checks"], m["ground_truth"]["summary"]
    assert n["virtio_blk_handle_write"] == checks["host_writes_queued_by_qemu_threads"]  # one host write each
    # a virtio request completed without a read/write handle event is a flush (QEMU 7.2 has no flush event)
    assert n["virtio_blk_req_complete"] - n["virtio_blk_rw_complete"] == summary["guest_flush_requests_to_virtio"]
    assert n["virtio_blk_rw_complete"] == n["virtio_blk_handle_write"] + n["virtio_blk_handle_read"]
    w = e[e["event"] == "virtio_blk_handle_write"]
    assert w["req"].notna().all() and w["sector"].notna().all() and (w["nsectors"] > 0).all()
    for ev in ("runstate_set", "vm_state_notify"):  # the string arguments: prelaunch -> running -> shutdown
        assert e.loc[e["event"] == ev, "state"].tolist() == ["running", "shutdown"]


@pytest.mark.skipif(_simpletrace_dir() is None, reason="QEMU's scripts/simpletrace.py not available")
def test_real_recording_cross_checked_with_simpletrace(tmp_path):
    """QEMU's own simpletrace.py reads the same records, values and strings from the real recording."""
    p = tmp_path / "trace-1"
    p.write_bytes(lzma.decompress((REAL / "qemu-vm.trace.xz").read_bytes()))
    te_all = tmp_path / "trace-events-all"
    te_all.write_bytes(lzma.decompress((REAL / "trace-events-all.xz").read_bytes()))
    out, mine = _both_print(p, te_all)
    assert len(out) == len(mine) > 3000 and mine == out


def test_real_recording_qemu_requests_and_host_jobs():
    """QEMU-layer requests rebuilt from the real simple-backend trace: as many flushes as the guest sent to
    virtio, as many host writes and flushes as the host trace shows from QEMU's threads (ground truth)."""
    from toolkit import qemu

    summary = json.loads((REAL / "manifest.json").read_text())["ground_truth"]["summary"]
    ev = qemu_simple.parse(REAL / "qemu-vm.trace.xz").events
    q, j = qemu.qemu_requests(ev), qemu.host_jobs(ev)
    assert int((q["op"] == "flush").sum()) == summary["guest_flush_requests_to_virtio"]
    assert int(((j["op"] == "write") & (j["rid"] >= 0)).sum()) == summary["host_writes_from_qemu"]
    assert int((j["op"] == "flush").sum()) == summary["host_flushes_from_qemu"]
    rw = q[q["op"] != "flush"]
    assert (rw["submissions"] == 1).all() and (q["status"] == 0).all()
    assert (rw["q_ns"] <= rw["d_ns"]).all() and (rw["d_ns"] <= rw["c_ns"]).all()


@pytest.mark.parametrize("order", "<>")
def test_detected_in_either_byte_order(tmp_path, order):
    """A simple trace is recognised by its header in both byte orders (a big-endian one was not: its header
    was compared with the little-endian one reversed), by the traceset's detection and by capture."""
    from toolkit import capture_qemu

    p = tmp_path / "trace-1"
    qemu_simple.write(p, {3: "thread_pool_submit"}, [(3, 1, 1, [1, 2, 3])], order=order)
    assert detect_format(p) == "qemu-simple" and capture_qemu.is_simple_trace(str(p))
