"""Fuzzing writeorder's readers: targets (fuzz.targets), seeds from the sample traces (fuzz.seeds), the atheris
harness (fuzz/harness.py) and the campaign driver (fuzz/run.py). See docs/damaged-input.md."""
