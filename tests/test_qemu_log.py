"""QEMU log backend reader: every sample log, every prefix style, and damaged input."""

from __future__ import annotations

import json
import lzma
import re
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import QEMU_LOGS, TRACES

from toolkit import parsers
from toolkit.parsers import detect_format, qemu_log

IND = re.compile(r"^(?:\d+@\d+\.\d+:)?([a-z][a-z0-9]*_[A-Za-z0-9_]*)(?: |$)")


def _lines(path) -> list[str]:
    return lzma.decompress(path.read_bytes()).decode().split("\n")[:-1]


@pytest.fixture(scope="module", params=QEMU_LOGS, ids=[f"{s}/{f}" for s, f in QEMU_LOGS])
def log(request):
    s, f = request.param
    path = TRACES / s / f
    return s, f, path, qemu_log.parse(path)


def test_counts_match_independent_count_and_ground_truth(log):
    s, f, path, r = log
    lines = _lines(path)
    ind = Counter(m.group(1) for m in map(IND.match, lines) if m)
    assert r.events["event"].astype(str).value_counts().to_dict() == dict(ind)
    assert len(r.events) + len(r.rejects) == len(lines) == r.meta["lines"]
    assert r.events["pos"].is_monotonic_increasing
    gt = json.loads((TRACES / s / "manifest.json").read_text())["ground_truth"]["qemu"]
    role = f.split("qemu-")[1].split(".")[0]
    assert dict(ind) == gt[role]["event_counts"]


def test_times_and_threads(log):
    s, f, path, r = log
    m = json.loads((TRACES / s / "manifest.json").read_text())
    if m.get("qemu_log_timestamps", True) is False or s == "raw-none-bare":
        assert r.meta["timestamps"] is False and r.meta["clock"] is None
        assert r.events["time_ns"].isna().all() and r.events["tid"].isna().all()
        assert r.meta["styles"] == {"bare": len(r.events)}
        return
    assert r.meta["clock"] == "realtime" and r.meta["timestamps"]
    role = f.split("qemu-")[1].split(".")[0]
    gq = m["ground_truth"]["qemu"][role]
    assert r.events["time_ns"].min() == gq["first_realtime_ns"]
    assert r.events["time_ns"].max() == gq["last_realtime_ns"]
    assert {str(k): v for k, v in r.events["tid"].value_counts().items()} == gq["tids"]


def test_typed_columns_real_line():
    r = qemu_log.parse(TRACES / "migrate-none" / "qemu-src.log.xz")
    e = r.events
    row = e[e["event"] == "thread_pool_complete"].iloc[0]
    assert row["req"] == 0x55FADDE90670 and row["opaque"] == 0x7F03FDF9C890 and row["ret"] == 0
    assert row["args"] == "pool 0x55faddd2f000 req 0x55fadde90670 opaque 0x7f03fdf9c890 ret 0"
    w = e[e["event"] == "virtio_blk_handle_write"].iloc[0]
    assert w["vdev"] == 0x55FADE9DC5C0 and w["sector"] > 0 and w["nsectors"] > 0
    b = e[e["event"] == "blk_co_pwritev"].iloc[0]
    assert b["flags"] == 8 and b["bytes"] > 0 and b["blk"] > 0
    rs = e[e["event"] == "runstate_set"]["state"].tolist()
    assert rs == ["running", "finish-migrate", "postmigrate"]
    assert e[e["event"] == "migrate_set_state"]["state"].tolist() == ["setup", "active", "completed"]
    assert e[e["event"] == "vm_state_notify"]["state"].tolist() == ["running", "finish-migrate"]


@pytest.mark.parametrize("s,f", QEMU_LOGS, ids=[f"{s}/{f}" for s, f in QEMU_LOGS])
def test_c_loop_typed_columns_equal_the_general_rule(s, f):
    """Every real line: the typed columns the C loop reads equal the general rule (first occurrence of each
    column's keys, the next token parsed by parse_ints) applied to the line's argument text with pyarrow."""
    e = qemu_log.parse(TRACES / s / f).events
    general = qemu_log._typed_args(pa.array(e["args"].fillna("").tolist(), pa.string()), len(e))
    assert general, "no typed value at all"
    for c in (*qemu_log.POINTER_COLUMNS, *qemu_log.INT_COLUMNS):
        want = general.get(c)
        if want is None:
            assert e[c].isna().all(), c
            continue
        assert e[c].isna().tolist() == list(want.isna()), c
        assert e[c].fillna(0).tolist() == list(want.fillna(0)), c


def test_event_categories_are_the_events_read(tmp_path):
    """Lines that are no trace event leave no category behind (their first word used to)."""
    p = tmp_path / "q.log"
    p.write_text("1@1.000000:thread_pool_submit pool 0x1 req 0x2 opaque 0x3\n"
                 "qemu-system-x86_64: warning: host doesn't support requested feature\n"
                 "2025-09-02T10:11:52Z virtio_blk_req_complete vdev 0x1 req 0x2 status 0\n"
                 "12@1.5:Bad_Name x 1\n")
    r = qemu_log.parse(p)
    assert r.events["event"].astype(str).tolist() == ["thread_pool_submit", "virtio_blk_req_complete"]
    assert sorted(r.events["event"].cat.categories) == ["thread_pool_submit", "virtio_blk_req_complete"]
    assert r.rejects["pos"].tolist() == [2, 4]
    p.write_text("1@1.000000:thread_pool_submit pool 0x1 req 0x2 opaque 0x3\nqemu-system-x86_64: warning: x\n")
    assert list(qemu_log.parse(p).events["event"].cat.categories) == ["thread_pool_submit"]


def test_c_loop_checks_its_buffers():
    """The C loop refuses arrays too small for the lines it would write (a clear error, no memory corruption)."""
    from toolkit.parsers import _qemulogc

    data = b"1@1.000001:thread_pool_submit pool 0x1 req 0x2\n" * 3
    assert _qemulogc.count(data) == 3
    ncol = len(qemu_log._COLS)

    def arrays(n: int, m: int | None = None) -> list[np.ndarray]:
        m = n if m is None else m
        return [*(np.empty(n, np.int64) for _ in range(4)), np.empty(n, np.uint8), np.empty(n, np.uint8),
                np.empty(n, np.int64), np.empty(n, np.int64), np.empty(ncol * m, np.int64), np.empty(ncol * m, np.uint8)]

    ok = arrays(3)
    assert _qemulogc.lines(data, qemu_log._KEYS, qemu_log._KEYCOL, ncol, *ok) == 3
    assert ok[4].tolist() == [1, 1, 1] and ok[7].tolist() == [1_000_001_000] * 3  # fast lines, time in ns
    with pytest.raises(ValueError, match="more lines than the arrays hold"):
        _qemulogc.lines(data, qemu_log._KEYS, qemu_log._KEYCOL, ncol, *arrays(2))
    with pytest.raises(ValueError, match="cols has"):
        _qemulogc.lines(data, qemu_log._KEYS, qemu_log._KEYCOL, ncol, *arrays(3, 1))
    with pytest.raises(ValueError, match="key column out of range"):
        _qemulogc.lines(data, qemu_log._KEYS, qemu_log._KEYCOL + 99, ncol, *arrays(3))


def _restyle(lines: list[str], style: str) -> list[str]:
    out = []
    for ln in lines:
        m = re.match(r"^(\d+)@(\d+)\.(\d+):(.*)$", ln)
        tid, sec, usec, rest = m.groups()
        iso = datetime.fromtimestamp(int(sec), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        frac = "" if usec == "000000" else "." + usec
        if style == "iso":
            out.append(f"{iso}{frac}Z {rest}")
        elif style == "program":
            out.append(f"qemu-system-x86_64({tid}:main): {rest}")
        elif style == "iso-guest-program":
            out.append(f"{iso}{frac}Z [vm-1] qemu-system-x86_64({tid}:worker): {rest}")
        elif style == "bare":
            out.append(rest)
    return out


@pytest.mark.parametrize("style", ["iso", "program", "iso-guest-program", "bare"])
def test_prefix_styles(tmp_path, style):
    src = TRACES / "raw-none-threads" / "qemu-vm.log.xz"
    lines = _lines(src)
    ref = qemu_log.parse(src).events
    p = tmp_path / "q.log"
    p.write_text("\n".join(_restyle(lines, style)) + "\n")
    if style != "iso-guest-program":  # parsers.detect_format does not know the combined form yet (reported)
        assert detect_format(p) == "qemu-log"
    r = qemu_log.parse(p)
    assert len(r.rejects) == 0
    e = r.events
    assert e["event"].astype(str).tolist() == ref["event"].astype(str).tolist()
    assert e["args"].tolist() == ref["args"].tolist()
    for c in ("req", "sector", "nsectors", "offset", "bytes", "flags", "status", "ret", "state"):
        assert e[c].equals(ref[c]), c
    if style in ("iso", "iso-guest-program"):
        assert e["time_ns"].equals(ref["time_ns"])
    else:
        assert e["time_ns"].isna().all()
    if style in ("program", "iso-guest-program"):
        assert e["tid"].equals(ref["tid"])
    if style == "bare":
        assert r.meta["timestamps"] is False and r.meta["clock"] is None


def test_iso_fraction_optional(tmp_path):
    p = tmp_path / "q.log"
    p.write_text("2025-09-02T10:11:52Z virtio_blk_req_complete vdev 0x1 req 0x2 status 0\n"
                 "2025-09-02T10:11:52.000001Z virtio_blk_req_complete vdev 0x1 req 0x2 status 1\n")
    e = qemu_log.parse(p).events
    t0 = int(datetime(2025, 9, 2, 10, 11, 52, tzinfo=timezone.utc).timestamp()) * 10**9
    assert e["time_ns"].tolist() == [t0, t0 + 1000]
    assert e["status"].tolist() == [0, 1]


def test_stderr_noise_kept_as_rejects(tmp_path):
    src = TRACES / "migrate-none" / "qemu-src.log.xz"
    lines = _lines(src)
    noise = ["qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.01H:ECX.vmx [bit 5]",
             "QEMU 7.2.0 monitor - type 'help' for more information", "(qemu) info status",
             "VM status: running", "", "2025-09-02T10:11:52.402113Z qemu-system-x86_64: terminating on signal 15"]
    mixed, where = [], []
    for i, ln in enumerate(lines):
        if i % 100 == 7:
            for n in noise:
                mixed.append(n)
                where.append(len(mixed))
        mixed.append(ln)
    p = tmp_path / "q.log"
    p.write_text("\n".join(mixed) + "\n")
    r = qemu_log.parse(p)
    assert len(r.events) == len(lines)
    assert r.rejects["pos"].tolist() == where
    assert set(r.rejects["reason"]) == {"not a trace event", "empty line"}
    ref = qemu_log.parse(src).events
    assert r.events["args"].tolist() == ref["args"].tolist()
    assert r.meta["notes"]


def test_cut_last_line(tmp_path):
    raw = lzma.decompress((TRACES / "raw-unsafe" / "qemu-vm.log.xz").read_bytes())
    cut = raw[: raw.rfind(b"\n", 0, len(raw) - 1) + 30]
    p = tmp_path / "q.log"
    p.write_bytes(cut)
    r = qemu_log.parse(p)
    n = cut.count(b"\n")
    assert len(r.events) == n
    assert r.rejects["reason"].tolist() == ["truncated line"]
    assert r.rejects["pos"].tolist() == [n + 1]
    assert r.meta["truncated"][0]["line"] == n + 1


def test_cut_xz_stream(tmp_path):
    data = (TRACES / "raw-unsafe" / "qemu-vm.log.xz").read_bytes()
    p = tmp_path / "q.log.xz"
    p.write_bytes(data[: len(data) // 2])
    r = qemu_log.parse(p)
    assert len(r.events) > 100
    assert any(t["reason"] == "compressed stream ends early" for t in r.meta["truncated"])


def test_binary_noise_and_unknown_event(tmp_path):
    lines = [ln.encode() for ln in _lines(TRACES / "raw-none-threads" / "qemu-vm.log.xz")[:50]]
    rng = np.random.default_rng(1)
    junk = bytes(rng.integers(0, 256, 300, dtype=np.uint8)).replace(b"\n", b"")
    body = lines[:10] + [junk, b"\x00\x00\x00\xff\xfe"] + lines[10:20]
    body += [b"12@1795646801.013374:foo_bar_baz something (running) 0x1f -3"] + lines[20:]
    p = tmp_path / "q.log"
    p.write_bytes(b"\n".join(body) + b"\n")
    r = qemu_log.parse(p)
    assert len(r.events) == 51 and len(r.rejects) == 2
    assert r.rejects["pos"].tolist() == [11, 12]
    assert set(r.rejects["reason"]) <= {"binary data", "not a trace event"}
    u = r.events[r.events["event"] == "foo_bar_baz"].iloc[0]
    assert u["args"] == "something (running) 0x1f -3" and u["tid"] == 12 and u["pos"] == 23


def test_values_hex_decimal_nil_negative(tmp_path):
    p = tmp_path / "q.log"
    p.write_text("1@1.000000:thread_pool_complete pool 0x1 req (nil) opaque 0xffffffffffffffff ret -22\n"
                 "1@1.000001:luring_co_submit bs 0x10 s 0x20 luringcb 0x30 fd 7 offset 4096 nbytes 512 type 8\n"
                 "1@1.000002:bdrv_co_pwritev_part bs 0xAbC offset 9223372036854775807 bytes 1 flags 0x102\n"
                 "1@1.000003:thread_pool_complete pool 0x1 req zz opaque 0x1234567890abcdef0 ret x\n")
    e = qemu_log.parse(p).events
    assert e["req"].iloc[0] == 0 and e["opaque"].iloc[0] == 2**64 - 1 and e["ret"].iloc[0] == -22
    assert e["req"].iloc[1] == 0x30 and e["bytes"].iloc[1] == 512 and e["type"].iloc[1] == 8
    assert e["offset"].iloc[1] == 4096
    assert e["bs"].iloc[2] == 0xABC and e["offset"].iloc[2] == 2**63 - 1 and e["flags"].iloc[2] == 0x102
    assert e[["req", "opaque", "ret"]].iloc[3].isna().all()  # unreadable values stay null, text kept
    assert e["args"].iloc[3].endswith("ret x")



def test_decimal_out_of_range_or_odd_is_null_not_an_error(tmp_path):
    """Decimal values beyond 64 bits, a double minus, non-ASCII digits: null values, the lines kept (these made
    the reader raise before); PRIu64 values above int64 are read as unsigned."""
    p = tmp_path / "q.log"
    odd = ["99999999999999999999", "--5", "\u0663", "18446744073709551616", "-9223372036854775809"]
    p.write_text("".join(f"1@1.00000{i}:thread_pool_complete pool 0x1 req {v} opaque 0x2 ret {v}\n"
                         for i, v in enumerate(odd))
                 + "1@1.000009:bdrv_co_pwritev_part bs 0x1 offset 18446744073709551615 bytes 9223372036854775808 "
                   "flags -9223372036854775808\n")
    r = qemu_log.parse(p)
    e = r.events
    assert len(e) == 6 and len(r.rejects) == 0
    assert e["req"].iloc[:5].isna().all() and e["ret"].iloc[:5].isna().all() and (e["opaque"].iloc[:5] == 2).all()
    assert e["args"].iloc[2] == "pool 0x1 req \u0663 opaque 0x2 ret \u0663"
    assert e["offset"].iloc[5] == -1 and e["bytes"].iloc[5] == -(2**63) and e["flags"].iloc[5] == -(2**63)
    v, ok = qemu_log.parse_ints(pa.array(["9223372036854775807", "9223372036854775808", "-1", "1" * 21]))
    assert v.tolist()[:1] == [2**63 - 1] and ok.tolist() == [True, False, True, False]  # signed: int64 only

def test_small_chunks_same_result(tmp_path):
    src = TRACES / "ext4-writeback" / "qemu-vm.log.xz"
    a = qemu_log.parse(src)
    b = qemu_log.parse(src, chunk_size=4096)
    assert a.events.drop(columns=["file"]).equals(b.events.drop(columns=["file"]))


def _assert_same(a, b) -> None:
    pd.testing.assert_frame_equal(a.events, b.events, check_exact=True)
    pd.testing.assert_frame_equal(a.rejects, b.rejects, check_exact=True)
    assert a.meta == b.meta


def _noisy_log(tmp_path, long_line: bool = False):
    """A real log (5 times: 1.4 MB) with stderr noise every 300 lines, (optionally) a line of 1.1 MB (over
    fileio.MAX_LINE) near the end, and a cut last line."""
    raw = lzma.decompress((TRACES / "qcow2file-none" / "qemu-vm.log.xz").read_bytes()).split(b"\n")[:-1]
    out = []
    for i, ln in enumerate(raw * 5):
        if i % 300 == 299:
            out += [b"qemu-system-x86_64: warning: something", b""]
        out.append(ln)
    if long_line:
        out.insert(len(out) - 20, b"x" * (1100 << 10))
    p = tmp_path / "q.log"
    p.write_bytes(b"\n".join(out) + b"\n" + raw[5][:25])
    return p


@pytest.mark.parametrize("long_line", [False, True])
def test_two_processes_same_result(tmp_path, monkeypatch, long_line):
    p = _noisy_log(tmp_path, long_line)
    calls = []
    split = qemu_log._parse_split
    monkeypatch.setattr(qemu_log, "_parse_split", lambda *a, **k: calls.append(1) or split(*a, **k))
    # blocks of 16 KB: several blocks, as in any file big enough for two processes (a one-block table keeps
    # the block's category order)
    one = qemu_log.parse(p, workers=1, chunk_size=16 << 10)
    assert not calls
    two = qemu_log.parse(p, workers=2, parallel_min=0, chunk_size=16 << 10)
    assert calls, "the two-process path did not run"
    assert len(one.rejects) > 10 and one.meta["truncated"] and len(one.events) > 2000
    assert one.rejects["pos"].iloc[-1] > one.meta["lines"] // 2  # rejects in the child's half too
    _assert_same(two, one)
    pd.testing.assert_frame_equal(qemu_log.parse(p, workers=1).events, one.events, check_categorical=False)

    def fail(*_a):
        raise OSError("no space left")

    monkeypatch.setattr(qemu_log, "_dump", fail)  # the child fails: its half is read by the parent
    _assert_same(qemu_log.parse(p, workers=2, parallel_min=0, chunk_size=16 << 10), one)


@pytest.mark.parametrize("s,f", QEMU_LOGS[::3], ids=[f"{s}/{f}" for s, f in QEMU_LOGS[::3]])
def test_parse_iter_chunks_concatenate_to_parse(s, f):
    path = TRACES / s / f
    ref = qemu_log.parse(path, chunk_size=16 << 10)
    chunks = list(qemu_log.parse_iter(path, chunk_size=16 << 10))
    assert len(chunks) > 3
    _assert_same(qemu_log.concat(chunks), ref)
    # the default blocks (one here): the same rows (a one-block table keeps the block's category order)
    pd.testing.assert_frame_equal(qemu_log.concat(qemu_log.parse_iter(path)).events, qemu_log.parse(path).events,
                                  check_exact=True)
    pos = np.concatenate([c.events["pos"].to_numpy() for c in chunks])
    assert (pos == ref.events["pos"].to_numpy()).all()
    assert [c.meta["lines"] for c in chunks] == sorted(c.meta["lines"] for c in chunks)
    assert chunks[-1].meta == ref.meta
    # categories: every value used so far, in parse()'s order; the last chunk's are parse()'s
    final = list(ref.events["event"].cat.categories)
    seen: list[str] = []
    for c in chunks:
        cats = list(c.events["event"].cat.categories)
        assert set(seen) <= set(cats) and set(c.events["event"].astype(str)) <= set(cats)
        assert cats == [x for x in final if x in set(cats)]
        seen = cats
    assert seen == final and list(chunks[-1].events["file"].cat.categories) == list(ref.events["file"].cat.categories)
    via = list(parsers.parse_iter("qemu-log", [path], chunk_size=16 << 10))  # the format dispatcher
    _assert_same(qemu_log.concat(via), ref)


def test_parse_iter_cut_inputs_and_several_files(tmp_path):
    data = (TRACES / "raw-unsafe" / "qemu-vm.log.xz").read_bytes()
    cut_xz = tmp_path / "q.log.xz"
    cut_xz.write_bytes(data[: len(data) // 2])
    noisy = _noisy_log(tmp_path)
    for paths in ([cut_xz], [noisy], [noisy, cut_xz, TRACES / "raw-none-bare" / "qemu-vm.log.xz"]):
        ref = qemu_log.parse(paths, chunk_size=32 << 10)
        assert ref.meta["truncated"] and len(ref.events)
        chunks = list(qemu_log.parse_iter(paths, chunk_size=32 << 10))
        _assert_same(qemu_log.concat(chunks), ref)
        assert sum(len(c.rejects) for c in chunks) == len(ref.rejects) > 0
