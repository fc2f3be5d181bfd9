"""Fixtures for the queries tests: one realistic scenario (queries_scenario),
written both as a DuckDB store and as a Parquet archive (every archive file
written twice, as after a redelivery, so the archive's dedup is exercised).
"""

import sys
from pathlib import Path

# tests/ is on sys.path (tests/conftest.py) and holds a directory named like
# the package: make sure ``import queries`` finds the real package, also when
# pytest runs from another directory than the repo root.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
if getattr(sys.modules.get("queries"), "__file__", None) is None:
    sys.modules.pop("queries", None)

import pytest  # noqa: E402
from queries_scenario import build_scenario  # noqa: E402


@pytest.fixture(scope="session")
def scenario():
    return build_scenario()


@pytest.fixture(scope="session")
def scenario_db(scenario, tmp_path_factory):
    return scenario.write_db(tmp_path_factory.mktemp("qdb") / "hookscope.duckdb")


@pytest.fixture(scope="session")
def scenario_archive(scenario, tmp_path_factory):
    return scenario.write_archive(tmp_path_factory.mktemp("qarchive") / "archive", duplicate=True)
