"""The page's HTML shell; the app itself is ``static/explorer.js`` + ``static/explorer.css``."""

from __future__ import annotations

import html
import json
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS = ("explorer.js", "explorer.css")


def render_index(mode: str, title: str, asset_prefix: str = "/static/", data_script: str | None = None,
                 token: str | None = None) -> str:
    """``index.html`` for *mode* ``"server"`` (data from ``/api/...``) or ``"static"`` (data from
    *data_script*, a ``<script src>`` next to the page, so it also works from ``file://``)."""
    if mode not in ("server", "static"):
        raise ValueError(f"mode must be 'server' or 'static', got {mode!r}")
    template = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    boot = f"<script>window.AQQUA_MODE = {json.dumps(mode)};</script>"
    if token is not None:  # the server's per-page token, required on state-changing requests
        boot += f"\n<script>window.AQQUA_TOKEN = {json.dumps(token)};</script>"
    if data_script:
        boot += f'\n<script src="{html.escape(data_script)}"></script>'
    return (template.replace("{{TITLE}}", html.escape(title))
            .replace("{{ASSETS}}", html.escape(asset_prefix))
            .replace("{{BOOT}}", boot))
