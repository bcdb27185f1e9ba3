"""Build of the C extensions (the per-record loops of the QEMU readers); the rest is in pyproject.toml."""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(ext_modules=[Extension(f"toolkit.parsers.{m}", [f"toolkit/parsers/{m}.c"], extra_compile_args=FLAGS)
                   for m in ("_simplec", "_qemulogc")])
