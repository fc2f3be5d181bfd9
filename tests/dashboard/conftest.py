"""Dashboard fixtures: one store per session (dash_builder), servers on free
loopback ports started in threads and shut down in finally, and one real
headless Debian chromium per session (Playwright with executable_path)."""

import threading
from pathlib import Path

import pytest

from tests.dashboard import dash_builder
from tests.dashboard.dash_builder import TOKEN

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="session")
def store_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("dashstore") / "hookscope.duckdb"
    dash_builder.build(path)
    return str(path)


@pytest.fixture(scope="session")
def store_archive(store_db, tmp_path_factory):
    """The same rows as a Parquet archive in the collector/schema.py layout."""
    import duckdb

    root = tmp_path_factory.mktemp("dasharchive")
    con = duckdb.connect(store_db, read_only=True)
    try:
        for table in ("hook_runs", "script_runs", "gpu_samples", "node_events"):
            d = root / table / f"cluster={dash_builder.CLUSTER}" / "date=2026-12-01"
            d.mkdir(parents=True)
            # Written twice, as after a redelivery: readers must dedupe.
            for name in ("collector-000000000001-000000000100", "collector-000000000050-000000000100"):
                con.execute(f"COPY (SELECT * EXCLUDE (cluster) FROM {table}) TO '{d / name}.parquet' "
                            "(FORMAT parquet)")
    finally:
        con.close()
    return str(root)


def _serve(**kw):
    from dashboards.server import make_server

    srv = make_server(**kw)
    t = threading.Thread(target=srv.serve_forever, name="dashboard", daemon=True)
    t.start()
    return srv, t


def _serving(**kw):
    srv, t = _serve(**kw)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@pytest.fixture(scope="session")
def server(store_db):
    yield from _serving(db=store_db)


@pytest.fixture(scope="session")
def token_server(store_db):
    yield from _serving(db=store_db, token=TOKEN)


# Module scope, not session: Playwright's sync API keeps an event loop running
# in the main thread while it is alive, which breaks asyncio.run() in every
# later test module.
@pytest.fixture(scope="module")
def browser():
    from tests.tiers import require_browser, CHROMIUM

    require_browser()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
    finally:
        pw.stop()


class PageWatch:
    """Everything a page did that a test may need to refute: dialogs, errors."""

    def __init__(self, page):
        self.page, self.dialogs, self.errors, self.console = page, [], [], []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))

    def _dialog(self, d):
        self.dialogs.append(d.message)
        d.dismiss()

    def csp_violations(self):
        return [c for c in self.console if "Content Security Policy" in c or "Refused to" in c]


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(15000)
        yield PageWatch(pg)
    finally:
        ctx.close()


@pytest.fixture(scope="session")
def shots(artifacts_dir):
    d = Path(artifacts_dir) / "dashboard"
    d.mkdir(parents=True, exist_ok=True)
    return d
