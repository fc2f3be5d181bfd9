"""The dashboard's HTTP server: stdlib ThreadingHTTPServer, read-only, GET only.

Every page has a JSON twin (``/job/42`` and ``/job/42.json`` or
``/job/42?format=json``) rendered from the same data dict.  Safety: the store
is opened read-only, the default bind is 127.0.0.1, an optional bearer token
guards every route (required for a non-loopback bind unless the caller opts
out explicitly), and every HTML response carries a strict
Content-Security-Policy with no inline script.
"""

import hmac
import json
import os
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from dashboards import DashboardError, data, pages
from queries import scope
from dashboards.settings import TOKEN_ENV, AuthConfigError, DashboardSettings, resolve_dashboard  # noqa: F401

COOKIE = "hookscope_token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
STATIC = {
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "dash.js": "text/javascript; charset=utf-8",
    "dash.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
}
RELOAD_CHECK_S = 5.0
RETRY_OPEN_S = 2.0


def load_static():
    root = resources.files("dashboards") / "static"
    return {name: (root / name).read_bytes() for name in STATIC}


class Store:
    """The read-only store connection, reopened when the collector publishes a
    new snapshot (a held connection would keep reading the old file)."""

    def __init__(self, db=None, archive=None):
        self.db, self.archive = db, archive
        self._lock = threading.Lock()
        self._con, self._error = None, None
        self._stamp, self._checked = self._files_stamp(), time.monotonic()
        try:
            self._con = data.open_store(db=db, archive=archive)
        except data.StoreUnavailable as exc:
            # A store that exists but cannot be read yet (the collector holds
            # the file and has not published its first snapshot): serve 503
            # and retry.  A store that is not there at all is a usage error.
            if not any(p and os.path.exists(p) for p in (db, archive)):
                raise
            self._error = str(exc)

    def _files_stamp(self):
        if not self.db and not self.archive:
            return None
        from collector.compact import MARKER
        from collector.schema import snapshot_path

        out = []
        # An archive's views name its files: reopen after a compaction
        # (collector.compact touches MARKER after every merge).
        paths = ([self.db, snapshot_path(self.db)] if self.db else []) + \
            ([os.path.join(self.archive, MARKER)] if self.archive else [])
        for p in paths:
            try:
                out.append(os.stat(p).st_mtime_ns)
            except OSError:
                out.append(None)
        return tuple(out)

    def cursor(self):
        with self._lock:
            now = time.monotonic()
            if self._con is None:
                if now - self._checked > RETRY_OPEN_S:
                    self._checked = now
                    try:
                        self._con = data.open_store(db=self.db, archive=self.archive)
                        self._stamp, self._error = self._files_stamp(), None
                    except data.StoreUnavailable as exc:
                        self._error = str(exc)
                if self._con is None:
                    raise data.StoreUnavailable(f"the store is not readable yet: {self._error}")
                return scope.cursor(self._con)  # keeps the archive's date scopes
            if (self.db or self.archive) and now - self._checked > RELOAD_CHECK_S:
                self._checked = now
                stamp = self._files_stamp()
                if stamp != self._stamp:
                    try:
                        con = data.open_store(db=self.db, archive=self.archive)
                    except DashboardError as exc:  # keep serving the data we have
                        sys.stderr.write(f"hookscope dashboard: reopen failed, keeping the old view: {exc}\n")
                    else:
                        old, self._con, self._stamp = self._con, con, stamp
                        # Requests in flight hold their own cursors; closing the
                        # parent would close them, so the old one is left to GC.
                        del old
            return scope.cursor(self._con)  # keeps the archive's date scopes

    def run(self, fn):
        """``fn(cursor)`` on a fresh cursor.  When a file the views name has
        vanished (a compaction or a snapshot's month merge replaced it after
        this store listed its files, and before the 5 s stamp check noticed),
        reopen at once and run ``fn`` once more: the merge's output holds the
        same rows, so the request is answered instead of failing."""
        for attempt in (0, 1):
            con = self.cursor()
            try:
                return fn(con)
            except Exception as exc:
                if attempt or not _vanished_file(exc):
                    raise
            finally:
                con.close()
            self._reopen()

    def _reopen(self):
        with self._lock:
            try:
                con = data.open_store(db=self.db, archive=self.archive)
            except DashboardError as exc:
                sys.stderr.write(f"hookscope dashboard: reopen failed, keeping the old view: {exc}\n")
                return
            # as in cursor(): requests in flight keep the old connection alive
            self._con, self._stamp, self._checked = con, self._files_stamp(), time.monotonic()
            self._error = None

    def close(self):
        with self._lock:
            if self._con is not None:
                self._con.close()


def _vanished_file(exc) -> bool:
    """DuckDB's error for a file named in a view that no longer exists."""
    import duckdb

    msg = str(exc)
    return isinstance(exc, duckdb.IOException) and any(
        m in msg for m in ("No files found that match", "No such file or directory"))


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, store, token, quiet=True):
        self.store, self.token, self.quiet = store, token, quiet
        self.static = load_static()
        super().__init__(addr, Handler)

    def server_close(self):
        super().server_close()
        self.store.close()

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def make_server(db=None, archive=None, host="127.0.0.1", port=0, token=None, allow_no_token=False,
                quiet=True, settings: DashboardSettings | None = None):
    """A ready-to-serve dashboard; call ``serve_forever()``, then ``shutdown()`` and ``server_close()``.

    ``settings``: resolved by the caller (the CLI); else resolved here from
    the arguments (dashboards.settings: argument, then $HOOKSCOPE_DB /
    $HOOKSCOPE_ARCHIVE / $HOOKSCOPE_DASHBOARD_TOKEN, then ``[dashboard]``).
    Binding a non-loopback address without a token is refused unless
    ``allow_no_token``.
    """
    s = settings or resolve_dashboard(db=db, archive=archive, host=host, port=port, token=token,
                                      no_auth=allow_no_token or None)
    store = Store(db=s.db, archive=s.archive)
    try:
        return DashboardServer((s.host, int(s.port)), store, s.token, quiet=quiet)
    except OSError as exc:
        store.close()
        raise DashboardError(f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}; "
                             "pick another --port or stop what is using it") from exc


# ---------------------------------------------------------------- routing
def route(con, path, query):
    """(data dict, page renderer) for a path without its .json suffix."""
    q1 = {k: v[-1] for k, v in query.items()}
    win = {"since": q1.get("since"), "until": q1.get("until")}
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if not parts or parts == ["overview"]:
        return data.overview(con, **win), pages.overview_page
    if parts[0] == "job" and len(parts) == 2:
        return data.job(con, parts[1]), pages.job_page
    if parts[0] == "node" and len(parts) == 2:
        return data.node(con, parts[1], **win), pages.node_page
    if parts == ["script"]:
        return data.script(con, q1.get("path"), **win), pages.script_page
    if parts == ["search"]:
        return data.search(con, q1.get("q")), pages.search_page
    raise data.NotFound(f"no page at {path}: try /, /job/ID, /node/NAME, /script?path=..., /search?q=...")


class Handler(BaseHTTPRequestHandler):
    server_version = "hookscope-dashboard"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        if not self.server.quiet:
            sys.stderr.write("dashboard %s - %s\n" % (self.address_string(), fmt % args))

    # ------------------------------------------------------------ responses
    def _send(self, status, body, ctype, extra=()):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, obj):
        self._send(status, json.dumps(obj, allow_nan=False, indent=1), "application/json; charset=utf-8",
                   [("Cache-Control", "no-store")])

    def _error(self, status, message, want_json):
        if want_json:
            self._json(status, {"error": message, "status": int(status)})
        else:
            self._send(status, pages.error_page(int(status), message, pages.server_assets()),
                       "text/html; charset=utf-8", [("Cache-Control", "no-store")])

    # ------------------------------------------------------------ auth
    def _authorized(self, query):
        token = self.server.token
        if not token:
            return True, False
        expected = token.encode()
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), expected):
            return True, False
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:  # someone else's malformed cookie on this host: ignore it
            cookie = {}
        if COOKIE in cookie and hmac.compare_digest(cookie[COOKIE].value.encode(), expected):
            return True, False
        given = (query.get("token") or [""])[-1]
        if given and hmac.compare_digest(given.encode(), expected):
            return True, True
        return False, False

    # ------------------------------------------------------------ GET
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        path = url.path
        want_json = path.endswith(".json") or (query.get("format") or [""])[-1] == "json"
        if path == "/healthz":
            return self._send(200, "ok\n", "text/plain; charset=utf-8")
        ok, via_query = self._authorized(query)
        if not ok:
            return self._refuse(want_json)
        if via_query:
            # Trade the token in the URL for a cookie, and drop it from the URL
            # (history, logs) with a redirect to the same page.
            rest = {k: v for k, v in query.items() if k != "token"}
            loc = path + ("?" + urlencode(rest, doseq=True) if rest else "")
            return self._send(303, "", "text/plain", [
                ("Location", loc), ("Cache-Control", "no-store"),
                ("Set-Cookie", f"{COOKIE}={self.server.token}; Path=/; HttpOnly; SameSite=Strict")])
        if path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        if path == "/favicon.ico":
            return self._send(204, "", "image/x-icon")
        if path.endswith(".json"):
            path = path[:-len(".json")]
            if path == "/index":
                path = "/"
        try:
            if want_json is False and path == "/search":
                loc = self._search_shortcut(query)
                if loc:
                    return self._send(302, "", "text/plain", [("Location", loc)])
            page, renderer = self.server.store.run(lambda con: route(con, path, query))
        except data.NotFound as exc:
            return self._error(HTTPStatus.NOT_FOUND, str(exc), want_json)
        except data.BadRequest as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc), want_json)
        except data.StoreUnavailable as exc:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc), want_json)
        except Exception as exc:  # report, never leak a traceback to the browser
            traceback.print_exc(file=sys.stderr)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR,
                               f"the dashboard failed to build this page ({type(exc).__name__}); "
                               "the server's stderr has the details", want_json)
        if want_json:
            return self._json(200, page)
        body = renderer(page, pages.server_assets())
        self._send(200, body, "text/html; charset=utf-8", [("Cache-Control", "no-store")])

    def _search_shortcut(self, query):
        """An exact job ID, node name or script path goes straight to its page."""
        q = (query.get("q") or [""])[-1].strip()
        if not q:
            return None
        d = self.server.store.run(lambda con: data.search(con, q))
        if d["jobs"] and d["jobs"][0]["job_id"] == q:
            return pages.job_url(q)
        if d["nodes"] and d["nodes"][0]["node"] == q:
            return pages.node_url(q)
        if d["scripts"] and d["scripts"][0]["path"] == q:
            return pages.script_url(q)
        return None

    def _refuse(self, want_json):
        msg = ("this dashboard needs a token: send 'Authorization: Bearer TOKEN', or open "
               "the page once with ?token=TOKEN (the browser then keeps it in a cookie)")
        body = (json.dumps({"error": msg, "status": 401}) if want_json else msg + "\n")
        self._send(401, body, "application/json" if want_json else "text/plain; charset=utf-8",
                   [("WWW-Authenticate", 'Bearer realm="hookscope"'), ("Cache-Control", "no-store")])

    def _static(self, name):
        if name not in STATIC:
            return self._send(404, "no such asset\n", "text/plain; charset=utf-8")
        self._send(200, self.server.static[name], STATIC[name], [("Cache-Control", "max-age=3600")])

    def _method_not_allowed(self):
        self._send(405, "the dashboard is read-only: GET only\n", "text/plain; charset=utf-8",
                   [("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed
