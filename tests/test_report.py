"""writeorder report: the postmortem notebook runs under papermill on real sample sets, the HTML is self-contained,
its figures are real images, trace-provided strings are escaped, and Chromium renders it."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nbformat
import numpy as np
import pytest
from conftest import TRACES
from PIL import Image

from toolkit import report

CHROMIUM = Path("/usr/bin/chromium")
UNSAFE, SAFE = "raw-unsafe", "raw-none-threads"
XSS = "<script>alert(1)</script>"
pytestmark = pytest.mark.skipif(not (TRACES / UNSAFE).exists() or not (TRACES / SAFE).exists(),
                                reason="sample trace sets not present")


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory) -> Path:
    """One batch run (2 sets), kept notebooks: shared by the tests below (each report takes ~10 s)."""
    out = tmp_path_factory.mktemp("reports")
    results = report.batch([str(TRACES / UNSAFE), str(TRACES / SAFE)], out, keep_notebooks=True)
    assert all(r.error is None for r in results), [r.error for r in results]
    return out


def _html(d: Path, name: str) -> str:
    return (d / f"{name}.html").read_text(encoding="utf-8")


def _pngs(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m)))
            for m in re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=\s]+)"', html)]


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as prof:
        return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--no-first-run", f"--user-data-dir={prof}", "--hide-scrollbars", *args],
                              capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------------ notebooks
@pytest.mark.parametrize("name", [UNSAFE, SAFE])
def test_executed_notebook_has_no_errors(batch_dir, name):
    nb = nbformat.read(batch_dir / f"{name}.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert ["parameters"] in tags and ["injected-parameters"] in tags
    for c in nb.cells:
        if c.cell_type == "code":
            assert not [o for o in c.outputs if o.output_type == "error"], c.source[:80]
            assert not [o for o in c.outputs if o.get("name") == "stderr"], c.source[:80]


def test_verdicts_and_index(batch_dir):
    doc = json.loads((batch_dir / f"{UNSAFE}.check.json").read_text())
    assert doc["report"]["verdict"] == "NOT SAFE" and doc["summary"]["flush-not-forwarded"] > 0
    assert json.loads((batch_dir / f"{SAFE}.check.json").read_text())["report"]["verdict"] == "SAFE"
    index = (batch_dir / "index.html").read_text()
    assert f'href="{UNSAFE}.html"' in index and f'href="{SAFE}.html"' in index
    assert "NOT SAFE" in index and ">SAFE<" in index


@pytest.mark.parametrize("name", [UNSAFE, SAFE])
def test_html_self_contained_and_ordered(batch_dir, name):
    html = _html(batch_dir, name)
    assert "<script src" not in html and "cdnjs" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\(["']?(https?:)?//|import\(["']https?:""", html)
    assert "import papermill" not in html and "check_analysis(sa)" not in html  # code hidden
    order = ["Verdict", "Configuration, as declared", "Violations, worst first", "Zoom on the worst",
             "Exposure", "Latency per layer", "Clock alignment", "Coverage", "Evidence of every violation"]
    pos = [html.find(f">{h}") for h in order]
    assert all(p > 0 for p in pos) and pos == sorted(pos), dict(zip(order, pos, strict=True))
    assert "Migration handover" not in html  # not a migration: the section is skipped


def test_unsafe_report_content(batch_dir):
    html = _html(batch_dir, UNSAFE)
    assert "NOT SAFE" in html and "flush-not-forwarded" in html
    links = set(re.findall(r'href="#(ev-\d+)"', html))
    anchors = set(re.findall(r'id="(ev-\d+)"', html))
    assert links and links <= anchors  # every evidence link lands
    n = len(json.loads((batch_dir / f"{UNSAFE}.check.json").read_text())["violations"])
    assert f"{n - 4} more violation(s)" in html  # zoom the 4 worst, say how many more


@pytest.mark.parametrize("name,at_least", [(UNSAFE, 7), (SAFE, 4)])
def test_figures_present_and_readable(batch_dir, name, at_least):
    imgs = _pngs(_html(batch_dir, name))
    assert len(imgs) >= at_least
    for im in imgs:
        assert im.width >= 400 and im.height >= 150, im.size
        a = np.asarray(im.convert("L"), dtype=np.float64)
        assert a.std() > 10, "blank figure"
        assert (a < 128).mean() > 0.005, "no ink"


# ------------------------------------------------------------------------------------------------ escaping
@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> Path:
    """A real set whose name, description, disk name and a trace path carry HTML; rendered through the CLI with
    the default output path."""
    from toolkit import cli

    root = tmp_path_factory.mktemp("hostile")
    src = root / "set"
    shutil.copytree(TRACES / SAFE, src, ignore=shutil.ignore_patterns(".writeorder"))
    evil_dir = src / "x<script>alert(1)<"
    evil_dir.mkdir()
    (src / "qemu-vm.log.xz").rename(evil_dir / "script>.log.xz")
    toml = (src / "traceset.toml").read_text()
    toml = re.sub(r'^name = .*$', f'name = "{XSS}"', toml, count=1, flags=re.M)
    toml = re.sub(r'^description = .*$', 'description = "<img src=x onerror=alert(2)> & $x$"', toml, count=1,
                  flags=re.M)
    toml = toml.replace('path = "qemu-vm.log.xz"', f'path = "x{XSS}.log.xz"')
    toml = toml.replace("[[disk]]\n", f'[[disk]]\nname = "d{XSS}"\n', 1)
    (src / "traceset.toml").write_text(toml)
    work = root / "cwd"
    work.mkdir()
    import os

    old = os.getcwd()
    os.chdir(work)
    try:
        assert cli.main(["report", str(src)]) == 0
    finally:
        os.chdir(old)
    out = list((work / "reports").glob("*.html"))
    assert len(out) == 1 and "<" not in out[0].name and "/" not in out[0].stem
    return out[0]


def test_trace_strings_escaped(hostile_report):
    html = hostile_report.read_text(encoding="utf-8")
    assert XSS not in html and "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "d&lt;script&gt;" in html  # the disk name, escaped
    assert "x&lt;script&gt;alert(1)&lt;/script&gt;.log.xz" in html  # the trace path, escaped
    assert len(_pngs(html)) >= 4  # '$' in a name did not break a figure


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install chromium)")
def test_chromium_dom_has_no_injected_script(hostile_report):
    p = _chromium("--dump-dom", hostile_report.resolve().as_uri())
    dom = p.stdout
    assert "writeorder postmortem" in dom
    assert "<script>alert" not in dom and not re.search(r"<script[^>]*>[^<]*alert\(", dom)
    assert "onerror=" not in re.sub(r"&lt;.*?&gt;", "", dom)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


# ------------------------------------------------------------------------------------------------ chromium
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install chromium)")
@pytest.mark.parametrize("name", [UNSAFE, SAFE])
def test_chromium_screenshot(batch_dir, name):
    shot = batch_dir / f"{name}.png"
    p = _chromium("--window-size=1200,2600", f"--screenshot={shot}", (batch_dir / f"{name}.html").as_uri())
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    im = Image.open(shot)
    assert im.size == (1200, 2600)
    a = np.asarray(im.convert("L"), dtype=np.float64)
    assert a.std() > 20  # text and figures, not a blank page
    top = np.asarray(im.convert("RGB").crop((0, 0, 1200, 700)), dtype=np.int32)
    red, green = (top[..., 0] - top[..., 1] > 20).mean(), (top[..., 1] - top[..., 0] > 10).mean()
    assert (red > green) if name == UNSAFE else (green > red)  # the verdict box's colour


# ------------------------------------------------------------------------------------------------ explore, CLI
def test_explore_notebook_executes(tmp_path):
    import papermill as pm

    out = tmp_path / "explore.ipynb"
    pm.execute_notebook(str(report.notebook_path("explore")), str(out), parameters={"trace_set": str(TRACES / UNSAFE)},
                        kernel_name="python3", progress_bar=False, cwd=str(tmp_path),
                        kernel_manager_class=report._ipc_kernel_manager())
    nb = nbformat.read(out, as_version=4)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outs) >= 5


@pytest.mark.parametrize("argv,msg", [
    (["report", "/nonexistent/set"], "no such trace set"),
    (["report", str(TRACES / SAFE), "--window", "abc"], "START:END"),
    (["report", str(TRACES / SAFE), "--window", "5:1"], "before END"),
    (["report", str(TRACES / SAFE), "--disk", "nope"], "no disk named"),
    (["report", str(TRACES / SAFE), str(TRACES / UNSAFE), "-o", "x.html"], "--batch"),
])
def test_bad_input_exits_2_with_one_line(argv, msg, capsys):
    from toolkit import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err


def test_helpers():
    assert report.parse_window("1.5:2") == (1.5, 2.0)
    assert report.parse_window(":2")[0] == float("-inf")
    assert report.window_ns("1:2", 10) == (1_000_000_010, 2_000_000_010)
    assert report.safe_filename(XSS) == "script_alert_1_script"
    assert report.verdict_of({"crash-reorder": 1}, []) == ("NOT SAFE", "wo-bad")
    assert report.verdict_of({"overlapping-inflight": 2}, [])[0] == "SAFE (with warnings)"
    assert report.verdict_of({}, [{"check": "host durability"}])[0] == "NOT VERIFIED"
    assert report.verdict_of({}, [{"check": "QEMU timing"}])[0] == "SAFE"
    t = report.table_html(__import__("pandas").DataFrame({"a": [XSS]}))
    assert "<script>" not in t and "&lt;script&gt;" in t


def test_handover_figure_from_a_migration_document():
    from toolkit import plots

    mig = {"switchover_ns": {"source_stop": 2_000_000_000, "destination_resume": 2_010_000_000,
                             "destination_activated": None},
           "source_io": {"last_write": {"rid": 3, "q_ns": 1_500_000_000, "c_ns": 1_500_100_000}},
           "clock": {"offset_ns": 5}}
    ev = plots._events_of(mig)
    assert {(e["label"], e["who"]) for e in ev} == {("source stop", "source"), ("destination resume", "destination"),
                                                    ("last write q", "source"), ("last write c", "source")}
    fig = plots.handover(mig, t0=1_000_000_000)
    assert fig is not None and [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["source", "destination"]
    assert plots.handover({"ok": True}) is None
    assert "switchover_ns.source_stop" in report.migration_html(mig)


@pytest.mark.skipif(not (TRACES / "migrate-none").exists(), reason="migration sample set not present")
def test_migration_section_when_present(tmp_path):
    r = report.run_report(TRACES / "migrate-none", tmp_path / "m.html")
    html = (tmp_path / "m.html").read_text()
    doc = json.loads((tmp_path / "m.check.json").read_text())
    assert ("Migration handover" in html) == bool(doc.get("migration"))
    if doc.get("migration"):
        assert any('alt="migration handover timeline"' in m for m in re.findall(r"<img [^>]*>", html))
    assert r.verdict


# ------------------------------------------------------------------------------------------------ many findings
def test_many_violations_capped_per_class():
    """~5,000 findings (the unsafe set's, copied with shifted times): the table and the evidence show at most
    MAX_PER_CLASS of each class, worst first, and one line per class says how many more are in the JSON."""
    import dataclasses
    from collections import Counter

    from toolkit.analysis import SetAnalysis
    from toolkit.verdict import check_analysis

    sa = SetAnalysis.load(TRACES / UNSAFE)
    res = check_analysis(sa)
    base = list(res.violations)
    copies = -(-5000 // len(base))
    many = [dataclasses.replace(v, start_ns=None if v.start_ns is None else v.start_ns + k * 10**9,
                                end_ns=None if v.end_ns is None else v.end_ns + k * 10**9)
            for k in range(copies) for v in base]
    assert len(many) >= 5000
    shown = report.select_violations(many)
    by_disk = {da.name: da for da in sa.disks}
    t0 = {da.name: da.t0 for da in sa.disks}
    cap = report.MAX_PER_CLASS
    total = Counter(v.cls for _, v in shown)
    json_path = report.PKG.parent / "reports" / "raw-unsafe.check.json"

    table = report.violations_html(res, shown, t0, json_path=json_path)
    rows = re.findall(r"<tr><td>(\d+)</td><td>([^<]*)</td>", table)
    per_class = Counter(c for _, c in rows)
    assert per_class == {c: min(n, cap) for c, n in total.items()}
    ids = [int(i) for i, _ in rows]
    expected = {c: [vid for vid, v in shown if v.cls == c][:cap] for c in total}  # the worst of each class
    assert all([i for i, c in rows if c == k] == [str(x) for x in expected[k]] for k in total)
    assert ids == sorted(ids, key=[vid for vid, _ in shown].index)  # worst first, as selected
    for c, n in total.items():
        assert (f"<b>{n - cap} more {c} findings</b>, listed in the JSON "
                f'(<a href="raw-unsafe.check.json"><code>reports/raw-unsafe.check.json</code></a>)') in table
        assert f"{n} {c}" in table  # the per-class counts above the table
    links = set(re.findall(r'href="#ev-(\d+)"', table))
    assert links == {str(i) for i in ids}

    ev = report.evidence_list_html(by_disk, shown, json_path=json_path)
    anchors = re.findall(r'id="ev-(\d+)"', ev)
    assert len(anchors) == len(set(anchors)) and set(anchors) == links  # evidence only for the rows shown
    assert all(f"{n - cap} more {c} findings" in ev for c, n in total.items())
    assert len(table) + len(ev) < 2_000_000


def test_few_violations_not_capped():
    """Fewer than the cap in every class: the table and the evidence are unchanged, no "more" line."""
    from types import SimpleNamespace

    mk = [SimpleNamespace(cls=c, severity="error", uncertain=False, disk="d", start_ns=i, end_ns=i + 1,
                          sector=None, nsect=None, sentence=f"s{i}", requests=[], details={})
          for i, c in enumerate(["crash-reorder"] * 3 + ["flush-not-durable"] * 2)]
    shown = list(enumerate(mk))
    assert report.cap_per_class(shown) == (shown, {})
    t = report.violations_html(None, shown, {"d": 0}, json_path="/x/y.check.json")
    assert t.startswith('<div class="wo-scroll wo-vtable">') and "more" not in t and "findings" not in t
    assert len(re.findall(r'href="#ev-\d+"', t)) == 5
    kept, left = report.cap_per_class(shown, 2)
    assert [vid for vid, _ in kept] == [0, 1, 3, 4] and left == {"crash-reorder": 1}
    assert "1 more crash-reorder finding</b>" in report.violations_html(None, shown, {"d": 0}, per_class=2)
