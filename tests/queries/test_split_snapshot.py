"""The source contract against the collector's split snapshot
(collector/snapshot.py): the scenario committed in chunks by a live Store
that seals several parts, read by ``open_source(db=...)`` while the Store
holds the file, through the catalog of views over the parts."""

import pytest

from collector.store import Store
from queries.source import open_source
from tests.queries.test_queries_sources import SourceContract


def _chunks(tb, n):
    step = max(1, -(-tb.num_rows // n))
    return [tb.slice(i, step) for i in range(0, tb.num_rows, step)] or [tb]


@pytest.fixture(scope="module")
def split_store(scenario_db, tmp_path_factory):
    """A live Store holding the scenario's rows, committed in 4 chunks with a
    publication after each (tiny seal_rows: every chunk seals a part)."""
    import duckdb

    from collector import schema
    src = duckdb.connect(str(scenario_db), read_only=True)
    tables = {t: src.sql(f"SELECT * FROM {t}").to_arrow_table()
              for t in schema.TABLES if t != "ingest_state"}
    src.close()
    live = tmp_path_factory.mktemp("split") / "hookscope.duckdb"
    st = Store(live, snapshot_interval=0, seal_rows=10)
    chunks = {t: _chunks(tb, 4) for t, tb in tables.items()}
    for i in range(4):
        st.commit({t: c[i] for t, c in chunks.items() if i < len(c)}, i + 1)
        st.snapshot()
    assert len(st._split.parts) >= 3
    yield live
    st.close()


class TestSplitSnapshotSource(SourceContract):
    @pytest.fixture
    def con(self, split_store):
        c = open_source(db=split_store, quiet=True)
        # read through the catalog (the Store holds the live file), not the file
        paths = [r[0] for r in c.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = 'store'").fetchall()]
        assert paths and paths[0].endswith(".snapshot.duckdb")
        yield c
        c.close()
