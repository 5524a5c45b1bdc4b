"""The web page at `/`: a playground and a live queue panel. Plain HTML, CSS and JS from api/static/,
no build step and nothing fetched from elsewhere; the page talks to the same JSON API as any client."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, send_from_directory
from werkzeug.exceptions import NotFound

from api.contract import operation

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Only these files are served, each with its type; anything else is 404.
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}

bp = Blueprint("web", __name__)


@bp.get("/")
@operation("The web page: playground and live queue panel", {200: ("HTML page", "text/html")}, rate_limited=False)
def index():
    return _send("index.html")


@bp.get("/static/<path:filename>")
@operation("The web page's script and style sheet",
           {200: ("Static file", tuple(sorted(set(STATIC_FILES.values()))))}, errors=(404,),
           path={"filename": {"type": "string", "enum": sorted(STATIC_FILES)}}, rate_limited=False)
def static_file(filename: str):
    if filename not in STATIC_FILES:
        raise NotFound(f"no static file '{filename}'")
    return _send(filename)


def _send(filename: str):
    response = send_from_directory(STATIC_DIR, filename, mimetype=STATIC_FILES[filename], max_age=60)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
