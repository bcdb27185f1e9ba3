"""Damaged and hostile input (issue 9): truncation at many offsets, fuzzing (hypothesis, in CI), regressions for
every fuzz finding, other byte orders and versions, resource bounds, determinism of ``check --json``.

The atheris campaign and the full truncation sweep are run outside the suite: ``python fuzz/run.py --minutes N``
and ``python benchmarks/truncation_sweep.py`` (docs/damaged-input.md).
"""

from __future__ import annotations

import bz2
import functools
import gzip
import json
import lzma
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TRACE_EVENTS_72, TRACES, simple_records_from_log
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(ROOT))
from fuzz import seeds, sweep, targets  # noqa: E402
from toolkit import fileio, traceset  # noqa: E402
from toolkit.parsers import blkparse, blktrace, qemu_log, qemu_simple  # noqa: E402
from toolkit.parsers import trace_events as te  # noqa: E402

DATA = Path(__file__).parent / "data" / "fuzz"


# ------------------------------------------------------------------------------------------------ truncation
@functools.cache
def _captures() -> dict[str, sweep.Capture]:
    return {c.fmt: c for c in sweep.captures()}


@pytest.mark.parametrize("fmt", ["blktrace", "blkparse", "qemu-log", "qemu-simple"])
def test_truncation_sweep_sampled(fmt, tmp_path):
    """A real capture cut at ~40 offsets (record/line boundaries and their neighbours, random bytes): exactly the
    complete records before the cut, and the cut reported (benchmarks/truncation_sweep.py does every offset)."""
    c = _captures()[fmt]
    cuts = sweep.cuts_for(c, 40, seed=9)
    assert len(cuts) >= 30 and 0 in cuts
    for cut in cuts:
        sweep.check_cut(c, cut, str(tmp_path / "cut"))


# ------------------------------------------------------------------------------------------------ fuzzing
@functools.cache
def _seeds(target: str) -> tuple[bytes, ...]:
    return tuple(seeds.SEEDS[target]())


def _mutate(seed: bytes, ops: list[tuple[int, int, int, bytes]]) -> bytes:
    b = bytearray(seed)
    for kind, at, n, blob in ops:
        at = at % (len(b) + 1)
        if kind == 0:  # cut
            del b[at:]
        elif kind == 1:  # overwrite
            b[at:at + len(blob)] = blob
        elif kind == 2:  # insert
            b[at:at] = blob
        elif kind == 3:  # delete a range
            del b[at:at + n]
        elif kind == 4:  # duplicate a range
            b[at:at] = b[at:at + n]
        else:  # flip one byte
            if at < len(b):
                b[at] ^= 1 + n % 255
    return bytes(b)


OPS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1 << 16), st.integers(0, 400),
                         st.binary(min_size=1, max_size=24)), min_size=1, max_size=6)


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(data=st.data())
def test_fuzz_short(target, data):
    """Mutated real seeds through every reader: a result that accounts for the input, or a one-line TraceError
    (targets.py checks both); any other exception fails."""
    sd = _seeds(target)
    seed = sd[data.draw(st.integers(0, len(sd) - 1), label="seed")]
    raw = data.draw(st.booleans(), label="raw bytes")
    buf = data.draw(st.binary(max_size=300)) if raw else _mutate(seed, data.draw(OPS, label="ops"))
    targets.TARGETS[target](buf)


REGRESSIONS = sorted((p.parent.name, p.name) for p in DATA.glob("*/*.bin"))


@pytest.mark.parametrize("target,name", REGRESSIONS)
def test_fuzz_findings_stay_fixed(target, name):
    """Every input the fuzzers found (tests/data/fuzz/TARGET/*.bin) reads cleanly now."""
    targets.TARGETS[target]((DATA / target / name).read_bytes())


def test_regressions_cover_every_finding():
    assert {t for t, _ in REGRESSIONS} >= {"qemu_log", "blktrace", "blkparse", "qemu_simple"}


@pytest.mark.skipif(not shutil.which("true") or __import__("importlib").util.find_spec("atheris") is None,
                    reason="atheris not installed")
def test_atheris_campaign_short(tmp_path):
    """The campaign driver runs every target briefly (CI's short run) and finds nothing."""
    p = subprocess.run([sys.executable, str(ROOT / "fuzz" / "run.py"), "--seconds", "3", "--strict",
                        "--target", "qemu_log", "--target", "trace_events", "--corpus", str(tmp_path / "c"),
                        "--crashes", str(tmp_path / "x"), "--results", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["total"]["findings"] == 0 and all(t["executions"] > 0 for t in res["targets"])


# ------------------------------------------------------------------------------------------------ compressed
PLAIN = b"1@1795647321.584144:thread_pool_complete pool 0x1 req 0x2 opaque 0x3 ret 0\n" * 3000


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2", "zst"])
def test_damaged_compressed_stream_keeps_what_decoded(kind, tmp_path):
    import zstandard

    comp = {"gz": gzip.compress, "xz": lzma.compress, "bz2": bz2.compress,
            "zst": zstandard.ZstdCompressor().compress}[kind]
    c = comp(PLAIN)
    whole = tmp_path / "whole"
    whole.write_bytes(c + comp(b"") + (b"\0" * 4 if kind == "xz" else b""))  # concatenated streams, padding
    assert fileio.read_bytes(whole) == (PLAIN, False)
    for i, bad in enumerate([c[: len(c) // 2], c[:20] + bytes(b ^ 0x5A for b in c[20:40]) + c[40:]]):
        p = tmp_path / f"bad{i}"
        p.write_bytes(bad)
        data, cut = fileio.read_bytes(p)
        assert cut and PLAIN.startswith(data)
        r = qemu_log.parse(p)
        assert any(t["reason"] == "compressed stream ends early" for t in r.meta["truncated"])
        assert len(r.events) == data.count(b"\n")


def test_unreadable_file_is_a_trace_error(tmp_path):
    with pytest.raises(fileio.TraceError, match="cannot read"):
        blkparse.parse([str(tmp_path)])  # a folder
    with pytest.raises(fileio.TraceError, match="cannot read"):
        qemu_log.parse(tmp_path / "missing.log")


# ------------------------------------------------------------------------------------------------ byte orders, versions
def test_simple_trace_big_endian_reads_identical_events(tmp_path):
    decls = te.parse_text(TRACE_EVENTS_72)
    ev = qemu_log.parse(TRACES / "raw-none-threads" / "qemu-vm.log.xz").events
    names, records, _ = simple_records_from_log(ev, decls)
    tef = tmp_path / "trace-events-all"
    tef.write_text(TRACE_EVENTS_72)
    out = {}
    for order in "<>":
        qemu_simple.write(tmp_path / order, names, records, order=order)
        out[order] = qemu_simple.parse(tmp_path / order, trace_events=tef)
    assert len(out["<"].events) == len(records) > 500
    assert out["<"].meta["byte_order"] == "little" and out[">"].meta["byte_order"] == "big"
    pd.testing.assert_frame_equal(out["<"].events.drop(columns="file"), out[">"].events.drop(columns="file"))


@pytest.mark.parametrize("ver", [6, 5, 0x7F])
def test_unknown_blktrace_version_is_reported(ver, tmp_path):
    rec = struct.pack("<IIQQIIIIIHH", 0x65617400 | ver, 1, 5, 0, 4096, 1, 1, 0, 0, 0, 0)
    p = tmp_path / "t"
    p.write_bytes(rec * 3)
    with pytest.raises(fileio.TraceError, match=f"unsupported blktrace version {ver}"):
        blktrace.parse([str(p)])


def test_unknown_qemu_events_are_reported_not_guessed(tmp_path):
    tef = tmp_path / "te"
    tef.write_text(TRACE_EVENTS_72)
    p = tmp_path / "t"
    # id 7 has no mapping record; id 3 maps to a name without a declaration
    qemu_simple.write(p, {1: "thread_pool_complete", 3: "brand_new_event"},
                      [(1, 1, 9, [1, 2, 3, 0]), (3, 2, 9, [5, 6]), (7, 3, 9, [8])])
    r = qemu_simple.parse(p, trace_events=tef)
    assert r.meta["unknown_events"] == ["brand_new_event", "event_7"]
    assert r.events["event"].astype(str).tolist() == ["thread_pool_complete", "brand_new_event", "event_7"]
    assert r.events["args"].tolist()[1:] == ["arg0=0x5 arg1=0x6", "arg0=0x8"]  # raw values, not decoded


# ------------------------------------------------------------------------------------------------ resource bounds
_RSS = """
import resource, sys, time
sys.path.insert(0, {root!r})
from toolkit import fileio
from toolkit.parsers import blkparse, blktrace, qemu_log, qemu_simple
path = {path!r}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.monotonic()
out = {{}}
n = 0
for b in fileio.Stream(path, size=8 << 20):
    n += len(b)
out["streamed"] = n
for name, fn in [("qemu_log", lambda: qemu_log.parse(path)), ("blkparse", lambda: blkparse.parse([path])),
                 ("blktrace", lambda: blktrace.parse([path])), ("qemu_simple", lambda: qemu_simple.parse(path))]:
    try:
        r = fn()
        out[name] = [len(r.events), r.rejects["reason"].value_counts().to_dict(), r.meta.get("truncated")]
    except fileio.TraceError as e:
        out[name] = "error: " + str(e)
out["seconds"] = time.monotonic() - t
out["grown_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
print(__import__("json").dumps(out, default=str))
"""


def _bounded(path: Path) -> dict:
    p = subprocess.run([sys.executable, "-c", _RSS.format(root=str(ROOT), path=str(path))], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def test_200mb_of_garbage_bounded_memory_clear_errors(tmp_path):
    p = tmp_path / "garbage"
    rng = np.random.default_rng(3)
    block = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    with open(p, "wb") as f:
        for i in range(200):
            f.write(block[i:] + block[:i])
    out = _bounded(p)
    assert out["streamed"] == 200 << 20
    assert out["grown_mb"] < 150, out  # chunks: memory does not follow the file size
    for name in ("qemu_log", "blkparse", "blktrace", "qemu_simple"):
        assert out[name].startswith("error: ") and "\n" not in out[name], out[name]
    assert out["seconds"] < 300


def test_one_endless_line(tmp_path):
    p = tmp_path / "endless.log"
    with open(p, "wb") as f:
        for _ in range(100):
            f.write(b"a" * (1 << 20))
    out = _bounded(p)
    size = 100 << 20
    for name in ("qemu_log", "blkparse"):
        n, reasons, cut = out[name]
        assert n == 0 and reasons == {"line too long": 1} and cut[0]["line"] == 1, out
    assert out["grown_mb"] < 150, out
    r = qemu_log.parse(p)
    assert r.rejects["length"].tolist() == [size]


def test_over_long_line_between_events(tmp_path):
    lines = qemu_log.parse(TRACES / "raw-unsafe" / "qemu-vm.log.xz")
    raw = lzma.decompress((TRACES / "raw-unsafe" / "qemu-vm.log.xz").read_bytes()).split(b"\n")
    body = b"\n".join(raw[:10] + [b"x" * (3 << 20)] + raw[10:])
    p = tmp_path / "q.log"
    p.write_bytes(body)
    r = qemu_log.parse(p, chunk_size=1 << 20)
    assert len(r.events) == len(lines.events)
    assert r.rejects[["pos", "length", "reason"]].values.tolist() == [[11, 3 << 20, "line too long"]]
    assert r.events["pos"].tolist()[10] == 12


def test_glob_matching_thousands_of_files(tmp_path):
    d = tmp_path / "set"
    (d / "many").mkdir(parents=True)
    for i in range(5000):
        (d / "many" / f"host.blktrace.{i}").write_bytes(b"")
    (d / "traceset.toml").write_text('[[trace]]\nnode = "host"\nlayer = "host-block"\npath = "many/*"\n')
    t = time.monotonic()
    with pytest.raises(fileio.TraceError, match=r"matches more than 4096 files; narrow the glob") as ei:
        traceset.load(d)
    assert time.monotonic() - t < 10 and "\n" not in str(ei.value)


# ------------------------------------------------------------------------------------------------ determinism
def _check_json(set_dir: Path, *extra: str) -> bytes:
    p = subprocess.run([sys.executable, "-m", "toolkit.cli", "check", "--json", *extra, str(set_dir)],
                       capture_output=True, timeout=600, cwd=str(ROOT))
    assert p.returncode in (0, 1), p.stderr.decode()[-2000:]
    return p.stdout


def _reorder(toml: str) -> str:
    """The same manifest with its tables in another order (traces, nodes and clocks reversed)."""
    head, *blocks = re.split(r"(?m)^(?=\[\[)", toml)
    kinds = {k: [b for b in blocks if b.startswith(f"[[{k}]]")] for k in ("node", "trace", "disk", "clock")}
    return head + "".join(kinds["clock"][::-1] + kinds["disk"] + kinds["trace"][::-1] + kinds["node"][::-1])


def test_check_json_is_byte_identical(tmp_path, monkeypatch):
    """Twice, with the cache absent / present / ignored, and with the manifest's tables in another order."""
    monkeypatch.delenv("WRITEORDER_CACHE", raising=False)
    a = tmp_path / "a"
    shutil.copytree(TRACES / "raw-none-threads", a, ignore=shutil.ignore_patterns(".writeorder"))
    first = _check_json(a)  # no cache yet: parses and writes it
    assert (a / ".writeorder").is_dir()
    assert json.loads(first)["summary"] is not None
    assert _check_json(a) == first  # from the cache
    assert _check_json(a, "--no-cache") == first
    b = tmp_path / "b"
    shutil.copytree(a, b, ignore=shutil.ignore_patterns(".writeorder"))
    toml = (a / "traceset.toml").read_text()
    (b / "traceset.toml").write_text(_reorder(toml))
    assert (b / "traceset.toml").read_text() != toml
    assert _check_json(b) == first


# ------------------------------------------------------------------------------------------------ report safety
HOSTILE_COMM = b"<svg/onload=a>"  # 14 bytes: fits a kernel comm (16), an element with a handler if unescaped
IMG = "<img src=x onerror=alert(1)>"
CHROMIUM = Path("/usr/bin/chromium")


def _hostile_blktrace(data: bytes) -> bytes:
    """Every notify_process name of a blktrace file replaced by HOSTILE_COMM (same record sizes)."""
    out = bytearray(data)
    off = 0
    while off + 48 <= len(out):
        action, pl = struct.unpack_from("<I", out, off + 28)[0], struct.unpack_from("<H", out, off + 46)[0]
        if (action >> 16) & 0x400 and (action & 0xFF) == 0 and pl == 16:
            out[off + 48:off + 64] = HOSTILE_COMM.ljust(16, b"\0")
        off += 48 + pl
    return bytes(out)


@pytest.fixture(scope="module")
def hostile_set_report(tmp_path_factory) -> tuple[Path, Path]:
    """raw-unsafe (it has violations: evidence tables with process names) with HTML, control characters and a
    very long string in process names (blktrace comm), QEMU event arguments, rejected QEMU lines and a path."""
    from toolkit import report

    root = tmp_path_factory.mktemp("hostile-content")
    src = root / "set"
    shutil.copytree(TRACES / "raw-unsafe", src, ignore=shutil.ignore_patterns(".writeorder"))
    for f in [*src.glob("host.blktrace.*.xz"), *src.glob("guest/guest.blktrace.*.xz")]:
        f.write_bytes(lzma.compress(_hostile_blktrace(lzma.decompress(f.read_bytes()))))
    log = lzma.decompress((src / "qemu-vm.log.xz").read_bytes()).split(b"\n")
    evil = [f"1@1795647321.000001:thread_pool_submit pool {IMG} req \x1b[31m\u202e opaque {'L' * 5000}".encode(),
            f"qemu-system-x86_64: warning: {IMG} \x07\x1b]0;pwned\x07 {'W' * 5000}".encode()]
    log = log[:5] + evil + log[5:]
    long_name = "q\x1b[31m" + "N" * 150 + ".log.xz"
    (src / "qemu-vm.log.xz").unlink()
    (src / long_name).write_bytes(lzma.compress(b"\n".join(log)))
    toml = (src / "traceset.toml").read_text()
    toml = toml.replace('path = "qemu-vm.log.xz"', 'path = "q\\u001b[31m' + "N" * 150 + '.log.xz"')
    (src / "traceset.toml").write_text(toml)
    out = root / "r.html"
    r = report.run_report(src, out)
    return out, src, r


def test_report_escapes_and_shortens_hostile_trace_strings(hostile_set_report):
    out, src, r = hostile_set_report
    html = out.read_text(encoding="utf-8")
    assert r.verdict and "NOT SAFE" in html
    assert "<svg" not in html and "<img src=x" not in html and "onerror=alert" not in html.replace("&lt;", "")
    assert "&lt;svg/onload=a&gt;" in html  # the process names are shown, escaped
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202e]", html), "raw control characters in the report"
    assert "N" * 150 not in html or "\\x1b[31m" in html  # the path's escape character made visible
    assert "L" * 2100 not in html and "W" * 2100 not in html  # very long strings shortened


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed")
def test_report_hostile_strings_inject_no_element_in_chromium(hostile_set_report):
    out, _, _ = hostile_set_report
    p = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                       capture_output=True, text=True, timeout=180)
    dom = p.stdout
    assert "writeorder postmortem" in dom
    assert not re.search(r"<svg[^>]*onload", dom) and not re.search(r"<img[^>]*onerror", dom)
    assert "&lt;svg/onload=a&gt;" in dom
