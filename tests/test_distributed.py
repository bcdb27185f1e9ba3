"""dask.distributed engine: a real LocalCluster with two worker processes gives the single-process results."""

from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
from conftest import ROOT, TRACES

pytest.importorskip("distributed")

from toolkit import distributed, ingest, store, traceset, verdict  # noqa: E402

SETS = ["raw-unsafe", "migrate-none"]


@pytest.fixture(scope="module")
def client():
    with distributed.engine(workers=2) as c:
        assert len(c.scheduler_info()["workers"]) == 2
        yield c


@pytest.fixture
def sets(tmp_path, monkeypatch):
    """Fresh copies of the sets (no store yet), stores under a temporary WRITEORDER_CACHE."""
    monkeypatch.setenv("WRITEORDER_CACHE", str(tmp_path / "cache"))
    out = []
    for name in SETS:
        shutil.copytree(TRACES / name, tmp_path / name, ignore=shutil.ignore_patterns(".writeorder"))
        out.append(str(tmp_path / name))
    return out


def test_ingest_one_task_per_trace(client, sets, monkeypatch):
    tss = [traceset.load(p) for p in sets]
    done = []
    got = distributed.ingest_sets(client, tss, tick=done.append)
    assert len(done) == sum(len(ts.traces) for ts in tss)  # one task per trace
    # the store the workers wrote is the one a single process reads: nothing is parsed again here
    for p, ts, entries in zip(sets, tss, got, strict=True):
        with monkeypatch.context() as m:
            m.setattr(store, "parse_trace", lambda t: pytest.fail(f"parsed again: {t.path}"))
            m.setattr(store, "parse_trace_iter", lambda t: pytest.fail(f"parsed again (streamed): {t.path}"))
            back = store.ingest(traceset.load(p))
            assert ingest.summaries(ts, entries) == ingest.summarise_set(p)[1]
        fresh = store.ingest(traceset.load(p), use_cache=False)
        for i in fresh:
            pd.testing.assert_frame_equal(fresh[i].events, back[i].events, check_exact=True)
            pd.testing.assert_frame_equal(fresh[i].rejects, back[i].rejects, check_exact=True)
            assert fresh[i].meta == back[i].meta


def test_check_equals_single_process(client, sets):
    got = distributed.check_sets(client, [*sets, str(TRACES / "no-such-set")])
    assert "error" in got[-1] and "no such trace set" in got[-1]["error"]
    for p, g in zip(sets, got, strict=False):
        r = verdict.check_set(p)
        assert g["json"] == json.dumps(r.to_json(), indent=1, sort_keys=True)
        assert g["text"] == r.to_text()
        assert g["violations"] == r.violation_count
    assert got[0]["violations"] > 0  # raw-unsafe is not safe


def _cli(capsys, *args):
    from toolkit import cli

    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_fleet_output_is_the_single_process_output(client, tmp_path, monkeypatch, capsys):
    """--scheduler on the running cluster (--workers starts its own: the same code from there on)."""
    monkeypatch.setenv("WRITEORDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    one = os.path.relpath(TRACES / "raw-unsafe", ROOT)
    two = os.path.relpath(TRACES / "raw-none-threads", ROOT)
    rc1, single, _ = _cli(capsys, "check", one, "--json")
    rc, fleet, err = _cli(capsys, "check", one, two, "--json", "--scheduler", client.scheduler.address)
    assert rc1 == 1 and rc == 1, err
    docs = json.loads(fleet)
    assert [d["traceset"] for d in docs] == ["raw-unsafe", "raw-none-threads"]
    assert json.dumps(docs[0], indent=1, sort_keys=True) == single.rstrip("\n")
    # several sets without dask: the same documents and exit code; stderr quiet when not a terminal
    rc, seq, err = _cli(capsys, "check", one, two, "--json")
    assert rc == 1 and json.loads(seq) == docs and err == ""
    rc, ing, _ = _cli(capsys, "ingest", two)
    rc2, ing_fleet, _ = _cli(capsys, "ingest", two, "--scheduler", client.scheduler.address)
    assert rc == rc2 == 0 and ing == ing_fleet
    rc, _, err = _cli(capsys, "check", one, str(tmp_path / "nothing"))
    assert rc == 2 and "nothing" in err
