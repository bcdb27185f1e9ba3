"""The Parquet store: exact round trip on every real set, per-trace re-ingest, partition and time filters, and the
same verdict with and without the store."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import SETS, TRACES

from toolkit import store, traceset, verdict


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("WRITEORDER_CACHE", str(d))
    return d


@pytest.fixture
def parses(monkeypatch):
    """Counts the traces actually parsed (by path)."""
    calls: list[str] = []
    real, real_iter = store.parse_trace, store.parse_trace_iter

    def counting(t):
        calls.append(t.path)
        return real(t)

    def counting_iter(t):
        calls.append(t.path)
        return real_iter(t)

    monkeypatch.setattr(store, "parse_trace", counting)
    monkeypatch.setattr(store, "parse_trace_iter", counting_iter)
    return calls


def _same(a, b):
    for i in a:
        pd.testing.assert_frame_equal(a[i].events, b[i].events, check_exact=True)
        pd.testing.assert_frame_equal(a[i].rejects, b[i].rejects, check_exact=True)
        assert a[i].meta == b[i].meta
        for c in a[i].events.columns:
            if isinstance(a[i].events[c].dtype, pd.CategoricalDtype):
                assert list(a[i].events[c].cat.categories) == list(b[i].events[c].cat.categories), c


@pytest.mark.parametrize("name", SETS)
def test_round_trip_is_exact(name, cache):
    ts = traceset.load(TRACES / name)
    fresh = store.ingest(ts, use_cache=False)
    assert not (cache.exists() and any(cache.iterdir()))  # --no-cache writes nothing
    written = store.ingest(ts)
    back = store.ingest(traceset.load(TRACES / name))
    _same(fresh, written)
    _same(fresh, back)


def test_layout_and_index(cache):
    ts = traceset.load(TRACES / "migrate-none")
    store.ingest(ts)
    base = store.cache_dir(ts)
    doc = json.loads((base / "store.json").read_text())
    assert doc["version"] == store.STORE_VERSION
    assert len(doc["traces"]) == len(ts.traces)
    for t in ts.traces:
        e = doc["traces"][store.trace_key(t)]
        assert e["parser"] == store.parser_version()
        assert [f["name"] for f in e["files"]] == [str(__import__("os").path.relpath(f, ts.root)) for f in t.files]
        assert all(len(f["hash"]) == 32 and f["size"] > 0 for f in e["files"])
        for p in e["parts"]:
            assert (base / p).is_file()
            assert p.startswith(f"{e['kind']}/node={t.node}/layer={t.layer}/dev=")
    parts = sorted(str(p.relative_to(base)) for p in base.rglob("*.parquet"))
    assert parts == sorted(p for e in doc["traces"].values() for p in [*e["parts"], e["rejects_part"]])
    # zstd-compressed Arrow types
    import pyarrow.parquet as pq

    e = next(iter(doc["traces"].values()))
    md = pq.ParquetFile(base / e["parts"][0]).metadata
    assert md.row_group(0).column(0).compression == "ZSTD"


def _copy_set(tmp_path, name="raw-none-threads"):
    dst = tmp_path / name
    shutil.copytree(TRACES / name, dst, ignore=shutil.ignore_patterns(".writeorder"))
    return dst


def test_only_changed_traces_are_parsed_again(tmp_path, cache, parses):
    root = _copy_set(tmp_path)
    store.ingest(traceset.load(root))
    assert len(parses) == 3
    parses.clear()
    store.ingest(traceset.load(root))
    assert parses == []  # all from the store
    # touching a file (same content) does not parse it again
    f = root / "qemu-vm.log.xz"
    f.touch()
    store.ingest(traceset.load(root))
    assert parses == []
    # changing a file's content parses that trace only, and the store gives the new content
    import lzma

    text = lzma.decompress(f.read_bytes())
    lines = text.splitlines(keepends=True)
    f.write_bytes(lzma.compress(b"".join(lines[: len(lines) // 2])))
    ts = traceset.load(root)
    got = store.ingest(ts)
    assert parses == ["qemu-vm.log.xz"]
    _same(got, store.ingest(ts, use_cache=False))
    # a removed per-CPU file: that trace only
    parses.clear()
    (root / "host.blktrace.1.xz").unlink()
    ts = traceset.load(root)
    got = store.ingest(ts)
    assert parses == ["host.blktrace.*"]
    _same(got, store.ingest(ts, use_cache=False))
    # no stale parts are left behind
    base = store.cache_dir(ts)
    doc = store.load_index(base)
    live = {p for e in doc["traces"].values() for p in [*e["parts"], e["rejects_part"]]}
    assert {str(p.relative_to(base)) for p in base.rglob("*.parquet")} == live


def test_added_trace_is_parsed_alone(tmp_path, cache, parses):
    root = _copy_set(tmp_path)
    store.ingest(traceset.load(root))
    parses.clear()
    m = root / "traceset.toml"
    text = m.read_text()
    # a new first [[trace]]: the others move in the manifest but keep their store entries
    head, sep, rest = text.partition("[[trace]]")
    m.write_text(head + '[[trace]]\nnode = "host"\nlayer = "host-block"\npath = "host.blkparse.txt.xz"\n'
                 'format = "blkparse"\n\n' + sep + rest)
    ts = traceset.load(root)
    got = store.ingest(ts)
    assert parses == ["host.blkparse.txt.xz"]
    _same(got, store.ingest(ts, use_cache=False))


def test_parser_change_parses_again(tmp_path, cache, parses, monkeypatch):
    root = _copy_set(tmp_path)
    store.ingest(traceset.load(root))
    parses.clear()
    monkeypatch.setattr(store, "_parser_version", "0123456789abcdef")
    store.ingest(traceset.load(root))
    assert len(parses) == 3


@pytest.mark.parametrize("name", ["migrate-none", "splitbrain-none"])
def test_dataset_filters(name, cache):
    ts = traceset.load(TRACES / name)
    full = store.ingest(ts, use_cache=False)
    block = [t for t in ts.traces if store.kind_of(t.format) == "block"]
    d = store.dataset(ts, "block")
    assert d.count_rows() == sum(len(full[t.index].events) for t in block)
    for t in block:
        ev = full[t.index].events
        for dev in ev["device"].dropna().unique():
            got = store.read(ts, "block", node=t.node, layer=t.layer, device=str(dev))
            want = ev[ev["device"] == dev].reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want, check_categorical=False)
        lo, hi = (int(x) for x in ev["time_ns"].quantile([0.25, 0.75]))
        got = store.read(ts, "block", trace=t, start_ns=lo, end_ns=hi)
        want = ev[(ev["time_ns"] >= lo) & (ev["time_ns"] < hi)].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_categorical=False)
        # the projection keeps the partition columns asked for
        got = store.read(ts, "block", trace=t, columns=["time_ns", "node", "layer"])
        assert list(got.columns) == ["time_ns", "node", "layer"] and (got["node"] == t.node).all()
    q = [t for t in ts.traces if t.layer == "qemu"]
    for t in q:
        got = store.read(ts, "qemu", trace=t)
        pd.testing.assert_frame_equal(got, full[t.index].events, check_categorical=False)
        assert len(store.read(ts, "qemu", device=f"pid{t.pid}")) == len(full[t.index].events)


@pytest.mark.parametrize("name", ["raw-unsafe", "migrate-writeback"])
def test_same_verdict_with_and_without_store(name, cache):
    a = verdict.check_set(TRACES / name, use_cache=False).to_json()
    b = verdict.check_set(TRACES / name).to_json()  # writes the store
    c = verdict.check_set(TRACES / name).to_json()  # reads it back
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) == json.dumps(c, sort_keys=True)


def test_unwritable_store_still_works(tmp_path, monkeypatch):
    monkeypatch.setenv("WRITEORDER_CACHE", "/proc/no-such-place")
    ts = traceset.load(TRACES / "raw-none-threads")
    got = store.ingest(ts)
    assert any("not written" in n for n in ts.notes)
    _same(got, store.ingest(traceset.load(TRACES / "raw-none-threads"), use_cache=False))


@pytest.fixture
def small_chunks(monkeypatch):
    """blktrace traces parsed in 4 KiB windows and chunks of >= 200 rows: the store writes many chunks."""
    import functools

    from toolkit.parsers import blktrace

    monkeypatch.setattr(blktrace, "parse_iter", functools.partial(blktrace.parse_iter, window_bytes=4096,
                                                                  chunk_rows=200))


@pytest.mark.parametrize("name", ["raw-none-threads", "migrate-writeback", "ext4-unsafe"])
def test_streamed_store_equals_parse(name, cache, small_chunks):
    ts = traceset.load(TRACES / name)
    fresh = store.ingest(ts, use_cache=False)  # parse(), nothing stored
    base = store.cache_dir(ts)
    streamed = 0
    for t in ts.traces:
        entry, res, _ = store.ingest_trace(base, ts.root, t, None)
        if res is None:  # many chunks: nothing kept in memory, read back from the store
            streamed += 1
            res = store.read_trace(base, t, entry)
        _same({0: fresh[t.index]}, {0: res})
        assert entry["summary"] == store.summarise(t, fresh[t.index])
        assert entry["events"] == len(fresh[t.index].events)
    assert streamed >= 1
    back = store.ingest(traceset.load(TRACES / name))  # through store.update and store.json
    _same(fresh, back)


def test_not_time_ordered_falls_back_to_parse(cache, monkeypatch):
    from toolkit.parsers import NotTimeOrdered, blktrace

    real = blktrace.parse_iter

    def late(paths, **kw):
        it = real(paths, window_bytes=4096, chunk_rows=100)
        yield next(it)
        raise NotTimeOrdered(f"{paths[0]}: test")

    monkeypatch.setattr(blktrace, "parse_iter", late)
    ts = traceset.load(TRACES / "raw-none-threads")
    got = store.ingest(ts)
    _same(got, store.ingest(traceset.load(TRACES / "raw-none-threads"), use_cache=False))
    assert not list(cache.rglob("*.tmp"))  # the streamed parts written before the fallback are gone
