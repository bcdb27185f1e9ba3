"""blkparse text reader: the vectorised fast path and the pyparsing grammar agree; every line shape; bad input."""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SETS, TRACES
from test_blktrace import NOTIFY, pack_record

from toolkit import fileio
from toolkit.parsers import blkparse, blktrace

TEXTS = [str(p) for s in SETS for p in sorted((TRACES / s).glob("**/*.blkparse.txt.xz"))]


@pytest.mark.parametrize("path", TEXTS, ids=[Path(p).parent.name + "/" + Path(p).name for p in TEXTS])
def test_fast_path_equals_grammar(path: str) -> None:
    fast = blkparse.parse([path])
    slow = blkparse.parse([path], fast=False)
    assert len(fast.events) > 500
    pd.testing.assert_frame_equal(fast.events, slow.events)
    assert fast.meta["summary"] == slow.meta["summary"]
    assert len(fast.rejects) == len(slow.rejects) == 0
    # line numbers are the real 1-based lines of the file
    lines = lzma.decompress(Path(path).read_bytes()).decode().split("\n")
    for _, row in fast.events.sample(50, random_state=1).iterrows():
        line = lines[row["pos"] - 1]
        assert line.split()[5] == row["action"] and int(line.split()[2]) == row["seq"]


def test_small_chunks_same_result(tmp_path: Path) -> None:
    path = TEXTS[0]
    plain = tmp_path / "plain.txt"
    plain.write_bytes(lzma.decompress(Path(path).read_bytes()))
    a = blkparse.parse([str(plain)])
    b = blkparse.parse([str(plain)], chunk_bytes=777)
    pd.testing.assert_frame_equal(a.events, b.events)


# every shape blkparse prints (docs/formats.md 2.3-2.5, blkparse_fmt.c process_default)
SHAPES = """\
  8,16   2      101     1.203301122  4242  Q  WS 2099200 + 8 [worker]
  8,16   2      103     1.203302511  4242  P   N [worker]
  8,16   2      105     1.203304001  4242  U   N [worker] 1
  8,16   3       58     1.204010411  4243  Q FWS [IO iothread1]
  8,16   3       61     1.204402118     0  C  FN 0 [0]
  8,16   1       12     1.210000312  4242  A WFS 2099208 + 8 <- (8,17) 2097160
  8,16   0       77     2.500120044     0  C  WS 3145728 + 8 [65531]
  8,16   1       90     3.001002003   131 UT   N [kworker/1:1] 3
  8,16   2      120     3.100000500  4242  X  WS 4194304 / 4194560 [CPU 0/KVM]
  8,16   0      140     3.500000000  5120  Q   D 8192 + 2048 [fstrim]
  8,16   2      141     3.600000200  4242  D  WS 2099200 + 8 (   12345) [worker]
  8,16   2      142     3.600090001     0  C  WS 2099200 + 8 (   89801) [0]
  8,16   0        0     4.000000000     0  m   N xyz marker
  8,16   0        0     4.000012000  5121 1,0  m   N QEMU src switchover
  8,16   1      150     5.000000000   300  D   R 4096 (12 34 56) [sg_io]
  8,16   1      151     5.000100000     0  C   R [0]
  8,16   1      152     5.000100000  123456789  G FWFSM 7 + 1 [a]b]
  8,16   1      153 123456.000100000  1  I  RA 9 + 8 [(null)]
"""


def _parse_text(tmp_path: Path, text: str, **kw) -> blkparse.ParseResult:
    p = tmp_path / "t.txt"
    p.write_text(text)
    return blkparse.parse([str(p)], **kw)


@pytest.mark.parametrize("fast", [True, False])
def test_every_shape(tmp_path: Path, fast: bool) -> None:
    r = _parse_text(tmp_path, SHAPES, fast=fast)
    assert len(r.rejects) == 0
    ev = r.events.set_index("seq")
    assert len(ev) == 18
    assert ev.loc[101, ["sector", "nsect", "comm", "time_ns"]].tolist() == [2099200, 8, "worker", 1203301122]
    assert ev.loc[105, "unplug_depth"] == 1 and ev.loc[90, "unplug_depth"] == 3 and ev.loc[90, "action"] == "UT"
    assert ev.loc[58, "comm"] == "IO iothread1" and ev.loc[58, "sector"] == -1 and ev.loc[58, "preflush"]
    assert ev.loc[61, "sector"] == 0 and ev.loc[61, "op"] == "flush" and pd.isna(ev.loc[61, "comm"])
    assert ev.loc[12, ["remap_device", "remap_sector", "sector", "nsect"]].tolist() == ["8,17", 2097160, 2099208, 8]
    assert ev.loc[12, "fua"] and ev.loc[12, "device"] == "8,16"
    assert ev.loc[77, "error"] == -5
    assert ev.loc[120, ["split_sector", "comm", "sector"]].tolist() == [4194560, "CPU 0/KVM", 4194304]
    assert ev.loc[140, ["op", "nsect"]].tolist() == ["discard", 2048]
    assert ev.loc[141, ["sector", "nsect", "comm"]].tolist() == [2099200, 8, "worker"]
    msgs = r.events[r.events["action"] == "m"]
    assert msgs["message"].tolist() == ["xyz marker", "QEMU src switchover"] and msgs["pid"].tolist() == [0, 5121]
    assert ev.loc[150, ["bytes", "comm"]].tolist() == [4096, "sg_io"]
    assert ev.loc[152, ["pid", "comm", "rwbs"]].tolist() == [123456789, "a]b", "FWFSM"]
    assert ev.loc[153, "time_ns"] == 123456_000100000 and pd.isna(ev.loc[153, "comm"])
    fast_r = _parse_text(tmp_path, SHAPES, fast=not fast)
    pd.testing.assert_frame_equal(r.events, fast_r.events)


def test_garbage_line_is_rejected_with_its_line_number(tmp_path: Path) -> None:
    lines = lzma.decompress(Path(TEXTS[0]).read_bytes()).decode().split("\n")
    good = blkparse.parse([TEXTS[0]])
    lines.insert(500, "  8,0 garbage ### not a blkparse line")
    lines.insert(900, "254,0    0        1     0.0000x0000   127  Q WFS 27992 + 224 [wl]")
    r = _parse_text(tmp_path, "\n".join(lines))
    assert r.rejects["pos"].tolist() == [501, 901]
    assert r.rejects["reason"].tolist() == ["unknown line"] * 2
    assert "garbage" in r.rejects["text"].iloc[0]
    assert len(r.events) == len(good.events)
    pd.testing.assert_series_equal(r.events["time_ns"], good.events["time_ns"])


def test_binary_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "host.blktrace.0"
    p.write_bytes(lzma.decompress((TRACES / SETS[0] / "host.blktrace.0.xz").read_bytes()))
    with pytest.raises(fileio.TraceError) as ei:
        blkparse.parse([str(p)])
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.skipif(shutil.which("blkparse") is None, reason="Debian's blkparse is not installed")
def test_debian_blkparse_remap_split_unplug_message(tmp_path: Path) -> None:
    """Records blkparse prints with pdus (A, X, U, UT, m) read the same from binary and from blkparse's text."""
    dev, part = (8 << 20) | 16, (8 << 20) | 17
    cat_w = 0x2 | 0x8  # WRITE|SYNC
    recs = [
        pack_record("<", seq=0, time=900, action=NOTIFY | 0, pid=77, device=dev, pdu=b"qemu-worker".ljust(16, b"\0")),
        pack_record("<", seq=1, time=1000, sector=2099208, nbytes=4096, action=15 | ((cat_w | 0x10) << 16), pid=77,
                    device=dev, pdu=struct.pack(">IIQ", part, dev, 2097160)),
        pack_record("<", seq=2, time=1500, sector=2099208, nbytes=4096, action=1 | ((cat_w | 0x10) << 16), pid=77,
                    device=dev),
        pack_record("<", seq=3, time=2000, sector=4194304, nbytes=8192, action=13 | (cat_w << 16), pid=77,
                    device=dev, pdu=struct.pack(">Q", 4194312)),
        pack_record("<", seq=4, time=2500, action=10 | (0x10 << 16), pid=77, device=dev, pdu=struct.pack(">Q", 3)),
        pack_record("<", seq=5, time=3000, action=11 | (0x10 << 16), pid=77, device=dev, pdu=struct.pack(">Q", 2)),
        pack_record("<", seq=0, time=3500, action=NOTIFY | 2, pid=77, device=dev, pdu=b"switchover marker"),
        pack_record("<", seq=6, time=4000, sector=2099208, nbytes=4096, action=8 | ((cat_w | 0x80) << 16), pid=0,
                    device=dev, error=0xFFFB),
    ]
    (tmp_path / "sdb.blktrace.0").write_bytes(b"".join(recs))
    out = subprocess.run(["blkparse", "-i", "sdb", "-D", str(tmp_path), "-o", str(tmp_path / "sdb.txt")],
                         capture_output=True, check=True, cwd=tmp_path)
    assert out.returncode == 0
    b = blktrace.parse([str(tmp_path / "sdb.blktrace.0")])
    t = blkparse.parse([str(tmp_path / "sdb.txt")])
    assert len(t.rejects) == 0
    be = b.events[~b.events["action"].astype(str).str.startswith("notify")].reset_index(drop=True)
    te = t.events.reset_index(drop=True)
    text_actions = te["action"].astype(str).tolist()
    assert [a for a in be["action"].astype(str) if a in text_actions] == text_actions
    be = be[be["action"].astype(str).isin(text_actions)].reset_index(drop=True)
    assert (be["time_ns"] - 1000).tolist() == te["time_ns"].tolist()
    for col in ["remap_device", "remap_sector", "split_sector", "unplug_depth", "error", "message"]:
        assert be[col].astype(str).tolist() == te[col].astype(str).tolist(), col
    io = te["action"] != "m"  # blkparse 1.2.0 prints pid 0 on message lines
    ext = ~te["action"].isin(["X", "m", "U", "UT"])  # X prints 'sector / split', no length
    assert be["nsect"][ext].tolist() == te["nsect"][ext].tolist()
    assert be["pid"][io].tolist() == te["pid"][io].tolist()
    assert te.loc[~io, "message"].tolist() == ["switchover marker"]
    assert {"A", "Q", "X", "U", "UT", "C"} <= set(text_actions)
    assert te.loc[te["action"] == "A", "comm"].isna().all()
    assert te.loc[te["action"] == "Q", "comm"].tolist() == ["qemu-worker"]
    assert t.meta["summary"]["events"] == {"sdb": len(te)}


FIXED_EDGES = """\
  8,16   2      101     1.203301122  4242  Q  WS 2099200 + 8 [worker]
  8,16   2      102     1.203301123  4242  Q  WS 2099200 + 8 [a] 5]
259,123  1      103     1.203301124     7  U   N [a] b] 3
  8,0    0        1     0.000000000     0  C  RS 0 [65531]
  8,0    0        2     0.000000001     0  C  RS 0 + 8 [0]
  8,0    0        3     0.000000002    12  P   N []
  8,0    0        4     0.000000003    12  G   N [two  spaces]
  8,0    0        5     0.000000004    12  G   N [caf\u00e9]
  8,0    0        6     0.000000005    12  G   N [x]y
  8,0    0        7     0.000000006    12  C  WS 12 + 8 [x]
  8,0    0  123456789     0.000000007    12  G   N [seq overflow]
  8,0    0        8     0.000000008    12  D  WS 99999999999999999 + 8 [17 digits]
  8,0    0        9     0.000000009    12  U   N [w] x
"""


def test_fixed_width_path_agrees_with_grammar(tmp_path: Path) -> None:
    """Lines in the default layout are read by fixed columns; odd ones fall through, and all agree with the grammar."""
    buf = FIXED_EDGES.encode()
    a = np.frombuffer(buf + bytes(blkparse._W), dtype=np.uint8)
    le = np.flatnonzero(a[:len(buf)] == 10)
    ls = np.concatenate([[0], le[:-1] + 1])
    cols, done = blkparse._fixed(a, ls, le)
    # taken: plain, "]" inside names, 3-digit minor/major, C with and without length (an empty name is too short)
    assert done.tolist() == [True, True, True, True, True, False, True, False, False, False, False, False, False]
    assert cols["comm"].to_pylist()[:3] == ["worker", "a] 5", "a] b"]
    assert cols["unplug_depth"][0].tolist()[2] == 3 and cols["dev"][2] == (259 << 20) | 123
    fast = _parse_text(tmp_path, FIXED_EDGES)
    slow = _parse_text(tmp_path, FIXED_EDGES, fast=False)
    pd.testing.assert_frame_equal(fast.events, slow.events)
    pd.testing.assert_frame_equal(fast.rejects, slow.rejects)


@pytest.mark.parametrize("compressed", [False, True])
def test_threads_equal_single_thread(tmp_path: Path, compressed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks parsed by 2 threads, in groups of lines, give the same table, rejects (line numbers) and summary as one
    thread parsing whole blocks."""
    path = max(TEXTS, key=lambda p: Path(p).stat().st_size)
    lines = lzma.decompress(Path(path).read_bytes()).decode().split("\n")
    bad = [3, len(lines) // 3, len(lines) // 2]
    for at in bad:
        lines.insert(at, f"  8,0 garbage line {at} ###")
    text = "\n".join(lines).encode()
    p = tmp_path / "t.txt"
    if compressed:
        p = tmp_path / "t.txt.xz"
        p.write_bytes(lzma.compress(text))
    else:
        p.write_bytes(text)
    one = blkparse.parse([str(p)], chunk_bytes=20_000, workers=1)
    default = blkparse.parse([str(p)])
    monkeypatch.setattr(blkparse, "_GROUP", 50)  # blocks of 20 kB parsed 50 lines at a time
    two = blkparse.parse([str(p)], chunk_bytes=20_000, workers=2)
    assert len(text) > 10 * 20_000 and len(one.events) > 4000
    pd.testing.assert_frame_equal(one.events, two.events, check_exact=True)
    pd.testing.assert_frame_equal(one.events, default.events, check_exact=True)
    pd.testing.assert_frame_equal(one.rejects, two.rejects, check_exact=True)
    assert one.rejects["pos"].tolist() == [at + 1 for at in bad]
    assert one.meta == two.meta and one.meta["summary"]["events"]
    assert one.events["pos"].is_monotonic_increasing
