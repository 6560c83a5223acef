"""The one compiled piece: the chain index's lookup walk (bcr/prefix/_walk.c); the rest is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("bcr.prefix._walk", ["bcr/prefix/_walk.c"], extra_compile_args=["-O2"])])
