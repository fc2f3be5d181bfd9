"""The one compiled part: the collector's span decoder (collector/_fastspans.c).

Optional: when it cannot be built, the collector decodes in Python (the same
rows, slower), and ``hookscope doctor`` says so.  Everything else is in
pyproject.toml.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("collector._fastspans", ["collector/_fastspans.c"], optional=True,
                             depends=["collector/fastspans_wire.h", "collector/fastspans_rows.h"],
                             extra_compile_args=["-O2", "-Wall", "-Wno-missing-braces"])])
