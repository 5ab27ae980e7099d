"""Local web server of the explorer (stdlib ``http.server``, one thread per request).

Endpoints: ``/`` page, ``/static/<file>``, ``GET /api/points`` (binary point payload),
``GET /api/coastlines`` (JSON), ``GET /api/object?id=`` (JSON record), ``GET /api/image?id=``
(PNG, native resolution), ``POST /api/export`` (``{"object_ids": [...]}`` → CSV + EcoTaxa files).
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from aqqua_geo.explore.app import Explorer
from aqqua_geo.explore.coastlines import land_geojson
from aqqua_geo.explore.page import STATIC_DIR, render_index

log = logging.getLogger(__name__)
MAX_POST_BYTES = 64 * 1024 * 1024  # 1M object ids fit comfortably
_CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


class ExplorerServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` bound to one :class:`Explorer` and an export folder."""

    daemon_threads = True

    def __init__(self, explorer: Explorer, export_dir: str | Path, host: str = "127.0.0.1", port: int = 0):
        self.explorer = explorer
        self.export_dir = Path(export_dir)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start_background(self) -> threading.Thread:
        """Serve in a daemon thread (tests, notebooks); stop with ``shutdown()``."""
        thread = threading.Thread(target=self.serve_forever, name="aqqua-explore", daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args) -> None:  # route to logging, not stderr
        log.debug("%s - " + fmt, self.address_string(), *args)

    # -- responses ---------------------------------------------------------------------------
    def _send(self, body: bytes, content_type: str, status: int = HTTPStatus.OK, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = HTTPStatus.OK) -> None:
        self._send(json.dumps(obj).encode(), "application/json", status)

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        ex = self.server.explorer
        try:
            if url.path in ("/", "/index.html"):
                self._send(render_index(mode="server", title=ex.title).encode(), _CONTENT_TYPES[".html"])
            elif url.path.startswith("/static/"):
                self._static(url.path.removeprefix("/static/"))
            elif url.path == "/api/points":
                self._send(ex.payload, "application/octet-stream")
            elif url.path == "/api/coastlines":
                self._json(land_geojson())
            elif url.path == "/api/object":
                self._json(ex.record(_one(query, "id")))
            elif url.path == "/api/image":
                self._send(ex.image_png(_one(query, "id")), "image/png", cache=True)
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {url.path}")
        except KeyError as err:
            self._error(HTTPStatus.NOT_FOUND, str(err.args[0]) if err.args else "not found")
        except ValueError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/api/export":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_POST_BYTES:
            self._error(HTTPStatus.BAD_REQUEST, f"export body must be 1..{MAX_POST_BYTES} bytes, got {length}")
            return
        try:
            body = json.loads(self.rfile.read(length))
            ids = body["object_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("'object_ids' must be a list of strings")
            result = self.server.explorer.export_selection(ids, self.server.export_dir, name=body.get("name"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            self._error(HTTPStatus.BAD_REQUEST, f"export failed: {msg}")
            return
        self._json(result)

    def _static(self, name: str) -> None:
        path = (STATIC_DIR / name).resolve()
        if STATIC_DIR.resolve() not in path.parents or not path.is_file():
            self._error(HTTPStatus.NOT_FOUND, f"no such file: {name}")
            return
        self._send(path.read_bytes(), _CONTENT_TYPES.get(path.suffix, "application/octet-stream"), cache=False)


def _one(query: dict[str, list[str]], key: str) -> str:
    values = query.get(key)
    if not values:
        raise ValueError(f"missing query parameter {key!r}")
    return values[0]


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 0, export_dir: str | Path = "explore_exports",
          on_ready=None) -> None:
    """Serve *explorer* until interrupted (Ctrl-C). ``port=0`` picks a free port; *on_ready*
    (if given) is called with the server's URL once it listens."""
    server = ExplorerServer(explorer, export_dir, host, port)
    explorer.payload  # encode the points before announcing the URL
    if on_ready is not None:
        on_ready(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
