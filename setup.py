"""Build of the one C extension (the QEMU simple-backend reader's per-record loops); the rest is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("toolkit.parsers._simplec", ["toolkit/parsers/_simplec.c"],
                             extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
