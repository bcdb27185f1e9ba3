"""Shared fixtures: the real sample trace sets in traces/."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT / "traces"
#: every bundled sample set (a folder of traces/ with a manifest.json)
SETS = sorted(p.name for p in TRACES.iterdir() if (p / "manifest.json").exists()) if TRACES.exists() else []
sets = SETS


@pytest.fixture(scope="session")
def traces_dir() -> Path:
    """The folder holding the real sample trace sets."""
    return TRACES
