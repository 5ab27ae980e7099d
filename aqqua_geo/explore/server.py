"""Local web server of the explorer (stdlib ``http.server``, one thread per connection).

Endpoints: ``/`` page, ``/static/<file>``, ``GET /api/points`` (binary point payload),
``GET /api/coastlines`` (JSON), ``GET /api/object?id=`` (JSON record), ``GET /api/image?id=``
(PNG, native resolution), ``POST /api/export`` (``{"object_ids": [...]}`` → CSV + EcoTaxa files).

Hardening (the server writes files, and any web page the user opens can talk to localhost):

* ``Host`` is checked on every request (DNS rebinding: ``Host: attacker.example`` → 403);
* the state-changing ``POST /api/export`` needs ``Content-Type: application/json`` (no HTML
  form or no-cors fetch can send it), an ``Origin`` (if sent) equal to the server's own, and
  the per-page token of the served page in ``X-Aqqua-Token`` (403 otherwise);
* a listen backlog of 1024, one daemon thread per connection and a socket timeout, so 200
  clients at once are all served and a client stalled mid-body cannot hold a thread;
* malformed requests (bad ``Content-Length``, invalid or deeply nested JSON) get a 400 JSON
  answer, never a traceback; unexpected errors a 500.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
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
MAX_JSON_DEPTH = 32
SOCKET_TIMEOUT_S = 20.0
LISTEN_BACKLOG = 1024
_LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
_CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                  ".html": "text/html; charset=utf-8", ".txt": "text/plain; charset=utf-8"}


class ExplorerServer(ThreadingHTTPServer):
    """A :class:`ThreadingHTTPServer` bound to one :class:`Explorer` and an export folder."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, explorer: Explorer, export_dir: str | Path, host: str = "127.0.0.1", port: int = 0,
                 allowed_hosts: tuple[str, ...] | list[str] = ()):
        self.explorer = explorer
        self.export_dir = Path(export_dir)
        self.token = secrets.token_urlsafe(24)  # per server start, embedded in the page
        super().__init__((host, port), _Handler)
        port = self.server_address[1]
        names = set(_LOCAL_NAMES) | {host} | {h.strip().lower() for h in allowed_hosts if h.strip()}
        if host in ("0.0.0.0", "::", ""):  # listening everywhere: this machine's names too
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.allowed_hosts = frozenset(n.lower() for n in names)
        self.allowed_authorities = frozenset(f"{n}:{port}" for n in self.allowed_hosts) | frozenset(
            f"[{n}]:{port}" for n in self.allowed_hosts if ":" in n and not n.startswith("["))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def host_ok(self, value: str | None) -> bool:
        """Whether a ``Host`` header names this server (a browser always sends one)."""
        return bool(value) and value.strip().lower() in self.allowed_authorities

    def origin_ok(self, value: str | None) -> bool:
        """Whether an ``Origin`` header is this server's own (absent: not a browser page)."""
        if value is None:
            return True
        parts = urlsplit(value.strip())
        return parts.scheme == "http" and parts.netloc.lower() in self.allowed_authorities

    def start_background(self) -> threading.Thread:
        """Serve in a daemon thread (tests, notebooks); stop with ``shutdown()``."""
        thread = threading.Thread(target=self.serve_forever, name="aqqua-explore", daemon=True)
        thread.start()
        return thread


class _BadRequest(ValueError):
    pass


def _depth_ok(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Nesting depth of a JSON text (brackets outside strings) is at most *limit*."""
    depth, in_str, esc = 0, False, False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                return False
        elif c in "]}":
            depth -= 1
    return True


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S  # a client stalled mid-request loses its connection, not a thread forever

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

    def _guard(self) -> bool:
        """Host check of every request; False (answered 403) if it is not for this server."""
        if not self.server.host_ok(self.headers.get("Host")):
            self.close_connection = True
            self._error(HTTPStatus.FORBIDDEN, f"Host {self.headers.get('Host')!r} is not this server")
            return False
        return True

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (socket.timeout, ConnectionError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never a traceback to the client or a dead thread
            log.exception("explorer request failed")
            self.close_connection = True
            try:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            except OSError:
                pass

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if not self._guard():
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        ex = self.server.explorer
        try:
            if url.path in ("/", "/index.html"):
                self._send(render_index(mode="server", title=ex.title, token=self.server.token).encode(),
                           _CONTENT_TYPES[".html"])
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
        if not self._guard():
            return
        try:
            body = self._read_body()
        except _BadRequest as err:
            self.close_connection = True  # the rest of the body (if any) cannot be trusted
            self._error(HTTPStatus.BAD_REQUEST, str(err))
            return
        if urlsplit(self.path).path != "/api/export":
            self._error(HTTPStatus.NOT_FOUND, f"no such endpoint: {self.path}")
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "export needs Content-Type: application/json")
            return
        if not self.server.origin_ok(self.headers.get("Origin")):
            self._error(HTTPStatus.FORBIDDEN, f"cross-origin request from {self.headers.get('Origin')!r} refused")
            return
        if not secrets.compare_digest(self.headers.get("X-Aqqua-Token") or "", self.server.token):
            self._error(HTTPStatus.FORBIDDEN, "missing or wrong X-Aqqua-Token (reload the explorer page)")
            return
        try:
            text = body.decode("utf-8")
            if text.count("[") + text.count("{") > MAX_JSON_DEPTH and not _depth_ok(text):
                raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("body must be a JSON object {\"object_ids\": [...]}")
            ids = data["object_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("'object_ids' must be a list of strings")
            name = data.get("name")
            if name is not None and not isinstance(name, str):
                raise ValueError("'name' must be a string")
            result = self.server.explorer.export_selection(ids, self.server.export_dir, name=name)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError, ValueError) as err:
            msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            self._error(HTTPStatus.BAD_REQUEST, f"export failed: {msg}")
            return
        self._json(result)

    def _read_body(self) -> bytes:
        """The request body; :class:`_BadRequest` for a missing/bad/oversized Content-Length or
        a body shorter than announced."""
        if self.headers.get("Transfer-Encoding"):
            raise _BadRequest("chunked bodies are not accepted; send Content-Length")
        raw = self.headers.get_all("Content-Length") or []
        if len(raw) != 1 or not raw[0].strip().isdigit():
            raise _BadRequest(f"Content-Length must be one non-negative integer, got {raw!r}")
        length = int(raw[0])
        if not 0 < length <= MAX_POST_BYTES:
            raise _BadRequest(f"export body must be 1..{MAX_POST_BYTES} bytes, got {length}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadRequest(f"body ended after {len(body)} of {length} bytes")
        return body

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
          on_ready=None, allowed_hosts: tuple[str, ...] | list[str] = ()) -> None:
    """Serve *explorer* until interrupted (Ctrl-C). ``port=0`` picks a free port; *on_ready*
    (if given) is called with the server's URL once it listens; *allowed_hosts* are extra
    names the server may be reached by (``Host`` header), e.g. behind an SSH tunnel alias."""
    server = ExplorerServer(explorer, export_dir, host, port, allowed_hosts=allowed_hosts)
    explorer.payload  # encode the points before announcing the URL
    if on_ready is not None:
        on_ready(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
