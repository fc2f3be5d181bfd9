"""Fixtures for the queries tests: one realistic scenario (queries_scenario),
written both as a DuckDB store and as a Parquet archive (every archive file
written twice, as after a redelivery, so the archive's dedup is exercised).
"""

import pytest

from tests.queries.queries_scenario import build_scenario


@pytest.fixture(scope="session")
def scenario():
    return build_scenario()


@pytest.fixture(scope="session")
def scenario_db(scenario, tmp_path_factory):
    return scenario.write_db(tmp_path_factory.mktemp("qdb") / "hookscope.duckdb")


@pytest.fixture(scope="session")
def scenario_archive(scenario, tmp_path_factory):
    return scenario.write_archive(tmp_path_factory.mktemp("qarchive") / "archive", duplicate=True)
