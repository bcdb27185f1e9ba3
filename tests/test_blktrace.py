"""blktrace binary reader: agreement with blkparse's text on every real set, bad input, byte order, round trips."""

from __future__ import annotations

import json
import lzma
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SETS, TRACES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit import fileio
from toolkit.parsers import blkparse, blktrace

HDR = "IIQQIIIIIHH"
NOTIFY = 1 << 10 << 16
LAYERS = {"host": ("host.blktrace.*.xz", "host.blkparse.txt.xz"),
          "guest": ("guest/guest.blktrace.*.xz", "guest/guest.blkparse.txt.xz")}


# ------------------------------------------------------------------------------------------------ helpers
def records(buf: bytes, order: str = "<") -> list[tuple[int, int]]:
    """(start, end) of every record of an intact file, walking pdu_len (test oracle, a plain loop)."""
    out, off = [], 0
    while off + 48 <= len(buf):
        (pl,) = struct.unpack_from(order + "H", buf, off + 46)
        out.append((off, off + 48 + pl))
        off += 48 + pl
    assert off == len(buf)
    return out


def to_big_endian(buf: bytes) -> bytes:
    """Rewrite a little-endian blktrace file as a big-endian machine would have written it.

    Header fields swap; pdus written with cpu_to_be* stay as they are; the TIMESTAMP notify pdu (two native u32)
    swaps.
    """
    out = bytearray()
    for s, e in records(buf):
        f = struct.unpack_from("<" + HDR, buf, s)
        pdu = buf[s + 48:e]
        if f[5] & NOTIFY and (f[5] & 0xFF) == 1 and len(pdu) == 8:
            pdu = struct.pack(">II", *struct.unpack("<II", pdu))
        out += struct.pack(">" + HDR, *f) + pdu
    return bytes(out)


def pack_record(order: str, *, seq=1, time=0, sector=0, nbytes=0, action=0, pid=0, device=0, cpu=0, error=0,
                pdu=b"") -> bytes:
    return struct.pack(order + HDR, 0x65617407, seq, time, sector, nbytes, action, pid, device, cpu, error,
                       len(pdu)) + pdu


def files(set_name: str, layer: str) -> list[str]:
    return sorted(str(p) for p in (TRACES / set_name).glob(LAYERS[layer][0]))


def manifest(set_name: str) -> dict:
    return json.loads((TRACES / set_name / "manifest.json").read_text())["ground_truth"]


def genesis(df: pd.DataFrame) -> int:
    """blkparse's genesis: the smallest time among the first non-notify record of each input file."""
    ev = df[~df["action"].astype(str).str.startswith("notify")]
    first = ev.sort_values("pos").groupby("file", observed=True)["time_ns"].first()
    return int(first.min())


def canonical(df: pd.DataFrame) -> pd.DataFrame:
    keys = ["time_ns", "cpu", "seq", "action", "sector", "nsect", "pid", "error"]
    out = df.assign(action=df["action"].astype(str), rwbs=df["rwbs"].astype(str), device=df["device"].astype(str))
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ real sets
CASES = [(s, layer) for s in SETS for layer in LAYERS if files(s, layer)]


@pytest.mark.parametrize("set_name,layer", CASES)
def test_binary_equals_text(set_name: str, layer: str) -> None:
    b = blktrace.parse(files(set_name, layer))
    t = blkparse.parse([str(TRACES / set_name / LAYERS[layer][1])])
    assert len(b.rejects) == 0 and len(t.rejects) == 0
    be = b.events[~b.events["action"].astype(str).isin(["notify_process", "notify_timestamp", "drv_data"])]
    g = genesis(b.events)
    be = canonical(be.assign(time_ns=be["time_ns"] - g))
    te = canonical(t.events)
    assert len(be) == len(te)
    # counts per action and RWBS
    pd.testing.assert_series_equal(be.groupby(["action", "rwbs"]).size(), te.groupby(["action", "rwbs"]).size())
    for col in ["time_ns", "device", "cpu", "seq", "pid", "action", "rwbs", "nsect", "error"]:
        assert (be[col].to_numpy() == te[col].to_numpy()).all(), col
    printed = te["sector"] >= 0  # blkparse prints no sector for data-less Q/G/D, P, U
    assert printed.mean() > 0.5
    assert (be["sector"][printed] == te["sector"][printed]).all()
    for col in ["unplug_depth", "remap_sector"]:
        assert be[col].isna().equals(te[col].isna()), col
        assert (be[col].dropna() == te[col].dropna()).all(), col
    assert be["remap_device"].isna().equals(te["remap_device"].isna())
    assert (be["split_sector"].dropna() % 2**32 == te["split_sector"].dropna()).all()
    # process names: text shows a name where the binary had a notify record ([(null)] -> null)
    named = ~te["action"].isin(["C", "R"])
    assert (be["comm"][named].fillna("?") == te["comm"][named].fillna("?")).all()
    # blkparse's own summary count
    assert sum(t.meta["summary"]["events"].values()) == len(te)


@pytest.mark.parametrize("set_name", SETS)
def test_ground_truth(set_name: str) -> None:
    gt = manifest(set_name)
    host = blktrace.parse(files(set_name, "host"))
    assert len(host.events) == gt["host"]["total_records"]
    assert (host.events["seq"] == 0).sum() == gt["host"]["records_with_sequence_0"]
    assert host.events["time_ns"].min() == gt["host"]["first_event_time_ns"]
    assert host.events["time_ns"].max() == gt["host"]["last_event_time_ns"]
    assert host.meta["wallclock"] is None and host.meta["clock"] == "monotonic"
    for gdir, g in gt["guest"].items():  # guest/, or guest-a/ guest-b/ ... with several guests
        guest = blktrace.parse(sorted(str(p) for p in (TRACES / set_name / gdir).glob("guest.blktrace.*.xz")))
        ev = guest.events
        assert len(ev) == g["total_records"]
        notify = ev["action"].astype(str).str.startswith("notify")
        assert notify.sum() == g["notify_records"]
        note = g["blktrace_timestamp_note"]
        assert guest.meta["wallclock"] == (note["guest_mono_ns"],
                                           note["guest_realtime_s"] * 10**9 + note["guest_realtime_ns_part"])
        assert guest.meta["lost_events"] and sum(guest.meta["lost_events"].values()) == 0
        assert ev["time_ns"].is_monotonic_increasing


# ------------------------------------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def host_bytes() -> bytes:
    return lzma.decompress((TRACES / "raw-none-threads" / "host.blktrace.1.xz").read_bytes())


@pytest.fixture(scope="module")
def guest_bytes() -> bytes:
    return lzma.decompress((TRACES / "raw-none-threads" / "guest" / "guest.blktrace.0.xz").read_bytes())


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_truncated_at_many_offsets(tmp_path: Path, host_bytes: bytes) -> None:
    recs = records(host_bytes)
    ends = np.array([e for _, e in recs])
    starts = np.array([s for s, _ in recs])
    rng = np.random.default_rng(7)
    cuts = set(rng.integers(1, len(host_bytes), 150).tolist()) | set(ends[:20].tolist())
    cuts |= {s + d for s in starts[5:40:7].tolist() for d in (1, 3, 4, 47, 48, 49, 52)}
    for i, cut in enumerate(sorted(cuts)):
        path = _write(tmp_path, f"cut{i}", host_bytes[:cut])
        for chunk in (fileio.CHUNK, 1000):
            r = blktrace.parse([path], chunk_bytes=chunk)
            complete = int((ends <= cut).sum())
            assert len(r.events) == complete, (cut, chunk)
            assert sorted(r.events["pos"]) == starts[:complete].tolist()
            if cut in set(ends.tolist()):
                assert len(r.rejects) == 0 and r.meta["truncated"] == []
            else:
                assert len(r.rejects) == 1, (cut, r.rejects)
                rj = r.rejects.iloc[0]
                assert rj["reason"] == "truncated record"
                assert rj["pos"] == starts[complete] and rj["pos"] + rj["length"] == cut
                assert r.meta["truncated"][0]["offset"] == cut


@pytest.mark.parametrize("chunk", [fileio.CHUNK, 700, 4096])
def test_damaged_record_is_skipped(tmp_path: Path, guest_bytes: bytes, chunk: int) -> None:
    recs = records(guest_bytes)
    full = blktrace.parse([_write(tmp_path, "full", guest_bytes)])
    k = len(recs) // 2
    s, e = recs[k]
    bad = bytearray(guest_bytes)
    bad[s:s + 4] = b"\xde\xad\xbe\xef"
    r = blktrace.parse([_write(tmp_path, "bad", bytes(bad))], chunk_bytes=chunk)
    assert len(r.events) == len(recs) - 1
    assert list(r.rejects[["pos", "length", "reason"]].itertuples(index=False, name=None)) == [
        (s, e - s, "bad magic")]
    kept = full.events[full.events["pos"] != s].reset_index(drop=True)
    pd.testing.assert_frame_equal(r.events.drop(columns="file"), kept.drop(columns="file"))


def test_garbage_between_records_at_odd_offsets(tmp_path: Path, guest_bytes: bytes) -> None:
    recs = records(guest_bytes)
    cut = recs[100][0]
    junk = bytes(range(13)) + b"\x07tae"  # 17 bytes, ends in a lone magic that does not chain
    data = guest_bytes[:cut] + junk + guest_bytes[cut:]
    r = blktrace.parse([_write(tmp_path, "junk", data)], chunk_bytes=2048)
    assert len(r.events) == len(recs)
    assert list(r.rejects[["pos", "length"]].itertuples(index=False, name=None)) == [(cut, len(junk))]
    # records after the junk keep their real byte offsets
    assert r.events["pos"].max() == recs[-1][0] + len(junk)


def test_not_blktrace(tmp_path: Path) -> None:
    p = _write(tmp_path, "notes.txt", b"this is not a trace\n" * 50)
    with pytest.raises(fileio.TraceError) as ei:
        blktrace.parse([p])
    assert p in str(ei.value) and "\n" not in str(ei.value)


def test_version_8_refused(tmp_path: Path) -> None:
    rec = struct.pack("<IIQQIIQIIHH12x", 0x65617408, 1, 5, 0, 4096, 1, 1 << 17, 0, 0, 0, 0)
    p = _write(tmp_path, "v8", rec * 3)
    with pytest.raises(fileio.TraceError, match="version 8 records .* not supported yet") as ei:
        blktrace.parse([p])
    assert p in str(ei.value)


def test_empty_file_is_no_events(tmp_path: Path) -> None:
    r = blktrace.parse([_write(tmp_path, "empty", b"")])
    assert len(r.events) == 0 and len(r.rejects) == 0


@pytest.mark.parametrize("name", ["host", "guest"])
def test_big_endian_gives_identical_events(tmp_path: Path, name: str) -> None:
    src = files("raw-none-threads", name)
    le = [_write(tmp_path, f"le.{i}", lzma.decompress(Path(f).read_bytes())) for i, f in enumerate(src)]
    be = [_write(tmp_path, f"be.{i}", to_big_endian(lzma.decompress(Path(f).read_bytes()))) for i, f in enumerate(src)]
    a, b = blktrace.parse(le), blktrace.parse(be)
    assert a.meta["byte_order"] == "little" and b.meta["byte_order"] == "big"
    assert a.meta["wallclock"] == b.meta["wallclock"]
    assert len(a.events) > 1000
    pd.testing.assert_frame_equal(a.events.drop(columns="file"), b.events.drop(columns="file"))


def test_sequence_gaps_are_lost_events(tmp_path: Path) -> None:
    dev = (8 << 20) | 16
    recs = b"".join(pack_record("<", seq=s, time=100 * s, action=1 | (0x12 << 16), device=dev, cpu=1, nbytes=512)
                    for s in (1, 2, 3, 7, 8, 10))
    r = blktrace.parse([_write(tmp_path, "gaps", recs)])
    assert r.meta["lost_events"] == {("8,16", 1): 4}


# ------------------------------------------------------------------------------------------------ round trip
ACTIONS = {1: "Q", 2: "M", 3: "F", 4: "G", 6: "R", 7: "D", 8: "C", 9: "P", 10: "U", 11: "UT", 12: "I", 13: "X",
           15: "A"}

record = st.fixed_dictionaries({
    "kind": st.sampled_from(["io", "io", "io", "unplug", "split", "remap", "process", "message", "stamp"]),
    "code": st.sampled_from([1, 2, 3, 4, 6, 7, 8, 9, 12]),
    "cat": st.integers(0, 0xFFFF) .map(lambda c: c & ~0x400),
    "time": st.integers(0, 2**63 - 1),
    "sector": st.integers(0, 2**63 - 1),
    "nbytes": st.integers(0, 2**32 - 1),
    "pid": st.integers(0, 2**32 - 1),
    "major": st.integers(0, 4095), "minor": st.integers(0, 0xFFFFF),
    "cpu": st.integers(0, 255), "error": st.integers(0, 0xFFFF), "seq": st.integers(0, 2**32 - 1),
    "pdu64": st.integers(0, 2**63 - 1),
    "from_major": st.integers(0, 4095), "from_minor": st.integers(0, 0xFFFFF),
    "text": st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=100),
    "cgroup": st.booleans(),
})


def _encode(r: dict, order: str) -> tuple[bytes, dict]:
    """One random record as bytes, and the values the reader must return for it."""
    dev = (r["major"] << 20) | r["minor"]
    want = {"time_ns": r["time"], "pid": r["pid"], "cpu": r["cpu"], "device": f"{r['major']},{r['minor']}"}
    kind = r["kind"]
    cg = b"\x01\0\0\0\0\0\0\0" if r["cgroup"] else b""
    flag = 0x100 if r["cgroup"] else 0
    if kind in ("process", "message", "stamp"):
        typ = {"process": 0, "stamp": 1, "message": 2}[kind]
        if kind == "process":
            name = r["text"][:15]
            pdu = name.encode().ljust(16, b"\0")
            want.update(action="notify_process", message=name, comm=name)
        elif kind == "stamp":
            pdu = struct.pack(order + "II", r["pdu64"] & 0xFFFFFFFF, r["seq"] % 10**9)
            want.update(action="notify_timestamp", message=f"{r['pdu64'] & 0xFFFFFFFF}.{r['seq'] % 10**9:09d}")
        else:
            pdu = cg + r["text"].encode()
            want.update(action="m", message=r["text"])
            typ |= flag
        rec = pack_record(order, seq=0, time=r["time"], action=NOTIFY | typ, pid=r["pid"], device=dev, cpu=r["cpu"],
                          pdu=pdu)
        return rec, want
    cat = r["cat"] & ~0x400
    code = {"io": r["code"], "unplug": 10 + (r["pdu64"] & 1), "split": 13, "remap": 15}[kind]
    pdu = b""
    if kind in ("unplug", "split"):
        pdu = struct.pack(">Q", r["pdu64"])
        want["unplug_depth" if kind == "unplug" else "split_sector"] = r["pdu64"]
    if kind == "remap":
        dfrom = (r["from_major"] << 20) | r["from_minor"]
        pdu = struct.pack(">IIQ", dfrom, dev, r["pdu64"])
        want.update(remap_device=f"{r['from_major']},{r['from_minor']}", remap_sector=r["pdu64"])
    pdu = (cg if pdu or kind == "io" else b"") + pdu
    act = code | (flag if pdu.startswith(cg) and cg else 0) | (cat << 16)
    err = r["error"]
    want.update(action=ACTIONS[code], sector=r["sector"], bytes=r["nbytes"], nsect=r["nbytes"] >> 9,
                seq=r["seq"], error=err - 0x10000 if err > 0x7FFF else err, category=cat)
    rec = pack_record(order, seq=r["seq"], time=r["time"], sector=r["sector"], nbytes=r["nbytes"], action=act,
                      pid=r["pid"], device=dev, cpu=r["cpu"], error=err, pdu=pdu)
    return rec, want


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(recs=st.lists(record, min_size=1, max_size=40), order=st.sampled_from("<>"),
       chunk=st.sampled_from([fileio.CHUNK, 64, 200, 1000]))
def test_round_trip(tmp_path: Path, recs: list[dict], order: str, chunk: int) -> None:
    enc = [_encode(r, order) for r in recs]
    data = b"".join(b for b, _ in enc)
    path = tmp_path / f"rt{order == '<'}"
    path.write_bytes(data)
    out = blktrace.parse([str(path)], chunk_bytes=chunk)
    assert len(out.rejects) == 0
    ev = out.events.sort_values("pos").reset_index(drop=True)
    assert len(ev) == len(enc)
    assert ev["pos"].tolist() == np.cumsum([0] + [len(b) for b, _ in enc[:-1]]).tolist()
    assert out.meta["byte_order"] == ("little" if order == "<" else "big")
    for i, (_, want) in enumerate(enc):
        row = ev.iloc[i]
        for k, v in want.items():
            got = row[k]
            got = str(got) if k in ("action", "device") else got
            assert got == v, (i, k, got, v, recs[i])


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(["io", "io", "io", "unplug", "msg", "false_magic", "junk"]), min_size=1,
                      max_size=60),
       texts=st.lists(st.integers(1, 40), min_size=60, max_size=60), order=st.sampled_from("<>"),
       cut=st.integers(0, 47))
def test_find_records_equals_walk(kinds: list[str], texts: list[int], order: str, cut: int) -> None:
    """The alignment-class fast path finds the same records and rejects as the general walk over the whole file."""
    out = b""
    for i, kind in enumerate(kinds):
        if kind == "junk":
            out += bytes(range(texts[i] % 13))
            continue
        pdu = b""
        if kind == "unplug":
            pdu = struct.pack(">Q", 3)
        elif kind == "msg":
            pdu = b"\1" + bytes(7) + b"m" * texts[i]  # odd lengths move the records to another alignment
        elif kind == "false_magic":
            pdu = struct.pack(order + "I", 0x65617407) + bytes(4)  # a magic word inside a pdu
        act = (NOTIFY | 2 | 0x100) if kind == "msg" else (10 if kind == "unplug" else 1) | (0x12 << 16)
        out += pack_record(order, seq=i + 1, time=i, action=act, nbytes=4096, pdu=pdu)
    data = out[:len(out) - cut] if cut < len(out) else out
    offs, rej = blktrace._find_records(memoryview(data), order)
    w_offs, w_rej, _ = blktrace._walk(data, order, final=True)
    assert offs.tolist() == w_offs.tolist()
    assert blktrace._merge_rejects([(*r, "") for r in rej]) == blktrace._merge_rejects([(*r, "") for r in w_rej])


@pytest.mark.parametrize("order", "<>")
def test_find_records_equals_walk_beyond_one_window(order: str) -> None:
    """Breaks far apart (odd-length messages, junk, a magic word inside a pdu) in a file of many windows."""
    parts = []
    for i in range(20000):
        if i % 3001 == 1000:
            msg = bytes(8) + b"x" * (i % 7 + 1)
            parts.append(pack_record(order, seq=0, time=i, action=NOTIFY | 2 | 0x100, pdu=msg))
        elif i % 4999 == 2000:
            parts.append(bytes(range(11)))
        elif i % 7001 == 3000:
            parts.append(pack_record(order, seq=i, time=i, action=10 | (0x10 << 16),
                                     pdu=struct.pack(order + "I", 0x65617407) + bytes(4)))
        else:
            parts.append(pack_record(order, seq=i, time=i, action=1 | (0x12 << 16), nbytes=4096))
    data = b"".join(parts)[:-5]
    offs, rej = blktrace._find_records(memoryview(data), order)
    w_offs, w_rej, _ = blktrace._walk(data, order, final=True)
    assert len(offs) > 19000 and len(rej) >= 4
    assert offs.tolist() == w_offs.tolist()
    assert blktrace._merge_rejects([(*r, "") for r in rej]) == blktrace._merge_rejects([(*r, "") for r in w_rej])


# ------------------------------------------------------------------------------------------------ parse_iter
def concat_chunks(chunks: list) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(events, rejects, paths) of parse_iter's chunks put together as parse() gives them: categoricals cast to
    the last chunk's categories, rejects ordered by file (stable)."""
    last = chunks[-1].events
    evs = []
    for c in chunks:
        e = c.events.copy()
        for col in last.columns:
            if isinstance(last[col].dtype, pd.CategoricalDtype):
                assert set(e[col].cat.categories) <= set(last[col].cat.categories), col
                e[col] = e[col].astype(last[col].dtype)
        evs.append(e)
    rj = pd.concat([c.rejects for c in chunks], ignore_index=True)
    return pd.concat(evs, ignore_index=True), rj, list(last["file"].cat.categories)


def assert_iter_equals_parse(paths: list[str], **kw) -> int:
    """parse_iter(paths, **kw) put together equals parse(paths): events, categories, rejects, meta. Returns the
    number of chunks."""
    full = blktrace.parse(paths)
    chunks = list(blktrace.parse_iter(paths, **kw))
    assert all(c.events.columns.tolist() == full.events.columns.tolist() for c in chunks)
    ev, rj, files_ = concat_chunks(chunks)
    pd.testing.assert_frame_equal(ev, full.events, check_exact=True)
    for col in ev.columns:
        if isinstance(ev[col].dtype, pd.CategoricalDtype):
            assert list(ev[col].cat.categories) == list(full.events[col].cat.categories), col
    rank = {p: i for i, p in enumerate(files_)}
    rj = rj.iloc[np.argsort(rj["file"].map(rank).to_numpy(), kind="stable")] if len(rj) else rj
    pd.testing.assert_frame_equal(rj.reset_index(drop=True), full.rejects, check_exact=True)
    assert chunks[-1].meta == full.meta
    for a, b in zip(chunks[:-1], chunks[1:], strict=False):  # chunks follow each other in time
        if len(a.events) and len(b.events):
            assert a.events["time_ns"].max() <= b.events["time_ns"].min()
    return len(chunks)


@pytest.mark.parametrize("set_name,layer", CASES)
def test_parse_iter_equals_parse(set_name: str, layer: str) -> None:
    paths = files(set_name, layer)
    assert assert_iter_equals_parse(paths) >= 1
    n = len(blktrace.parse(paths).events)
    # 4 KiB windows: many windows per file, chunks of >= 100 rows
    chunks = assert_iter_equals_parse(paths, window_bytes=4096, chunk_rows=100)
    if n > 400:
        assert chunks > 1


def _iter_or_justified(paths: list[str], **kw) -> bool:
    """parse_iter equals parse(), or raised NotTimeOrdered on a file whose records parse() finds out of time
    order (a damaged record with a garbage time). Returns whether it streamed."""
    try:
        assert_iter_equals_parse(paths, **kw)
        return True
    except blktrace.NotTimeOrdered as e:
        ev = blktrace.parse(paths).events
        f = str(e).split(":")[0]
        t = ev[ev["file"] == f].sort_values("pos")["time_ns"].to_numpy()
        assert (np.diff(t) < 0).any(), str(e)
        return False


def test_parse_iter_on_damaged_input(tmp_path: Path, host_bytes: bytes, guest_bytes: bytes) -> None:
    recs = records(host_bytes)
    rng = np.random.default_rng(11)
    other = _write(tmp_path, "ok.0", guest_bytes)
    streamed = 0
    cases = []
    for cut in sorted(set(rng.integers(1, len(host_bytes), 25).tolist()) | {recs[50][0] + 3, recs[60][1]}):
        cases.append(host_bytes[:cut])  # truncated
    s, e = recs[len(recs) // 2]
    bad = bytearray(host_bytes)
    bad[s:s + 4] = b"\xde\xad\xbe\xef"
    cases.append(bytes(bad))  # a damaged record
    cut = recs[100][0]
    cases.append(host_bytes[:cut] + bytes(range(13)) + b"\x07tae" + host_bytes[cut:])  # junk at an odd offset
    for i in range(6):  # random bytes overwritten or inserted
        b = bytearray(host_bytes)
        p = int(rng.integers(0, len(b)))
        if i % 2:
            b[p:p] = rng.integers(0, 256, int(rng.integers(1, 3000)), dtype=np.uint8).tobytes()
        else:
            b[p:p + 64] = rng.integers(0, 256, 64, dtype=np.uint8).tobytes()
        cases.append(bytes(b))
    cases.append(b"")  # an empty file
    for i, data in enumerate(cases):
        path = _write(tmp_path, f"dmg{i}.1", data)
        for kw in ({"window_bytes": 4096, "chunk_rows": 50}, {"window_bytes": 5000, "chunk_rows": 1}):
            streamed += _iter_or_justified([other, path], **kw)
    assert streamed >= 2 * len(cases) - 4


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parent / "data" / "fuzz" / "blktrace").glob(
    "*.bin")))
def test_parse_iter_on_fuzz_findings(tmp_path: Path, name: str) -> None:
    data = (Path(__file__).parent / "data" / "fuzz" / "blktrace" / name).read_bytes()
    path = _write(tmp_path, "fz.blktrace.0", data)
    try:
        blktrace.parse([path])
    except fileio.TraceError as e:
        with pytest.raises(fileio.TraceError) as ei:
            list(blktrace.parse_iter([path], window_bytes=4096, chunk_rows=10))
        assert str(ei.value) == str(e)
        return
    _iter_or_justified([path], window_bytes=4096, chunk_rows=10)


@pytest.mark.parametrize("name", ["host", "guest"])
def test_parse_iter_big_endian(tmp_path: Path, name: str) -> None:
    src = files("raw-none-threads", name)
    be = [_write(tmp_path, f"be.{i}", to_big_endian(lzma.decompress(Path(f).read_bytes()))) for i, f in enumerate(src)]
    assert assert_iter_equals_parse(be, window_bytes=4096, chunk_rows=64) > 1


def test_parse_iter_not_time_ordered(tmp_path: Path) -> None:
    """A record far older than what was already emitted: parse_iter says so instead of a wrong order."""
    dev = (8 << 20) | 16
    a = b"".join(pack_record("<", seq=s, time=1000 * s, action=1 | (0x12 << 16), device=dev, nbytes=512)
                 for s in range(1, 400))
    late = pack_record("<", seq=400, time=5, action=1 | (0x12 << 16), device=dev, nbytes=512)
    b = b"".join(pack_record("<", seq=s, time=1000 * s + 1, action=1 | (0x12 << 16), device=dev, cpu=1, nbytes=512)
                 for s in range(1, 400))
    paths = [_write(tmp_path, "t.0", a + late), _write(tmp_path, "t.1", b)]
    with pytest.raises(blktrace.NotTimeOrdered, match="t.0"):
        list(blktrace.parse_iter(paths, window_bytes=4096, chunk_rows=10))
    assert int(blktrace.parse(paths).events["time_ns"].iloc[0]) == 5
    assert_iter_equals_parse(paths)  # one window per file: in order
