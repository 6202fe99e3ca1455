"""The web page of ``vlaser serve``: drop images, ask, and see the answer's points and boxes on the image.

Plain HTML/JS/CSS shipped in ``vlaser/serve/static`` (no CDN, no build step, so it works offline). The page
talks to the server only through the public API (``POST /v1/chat/completions``) plus ``GET /ui/config``,
which tells it the model name and the exact point prompt, so the page's "point" switch builds the same
question as :func:`vlaser.points.point_question` without a second copy of the prompt in JavaScript.

The page, its assets and ``/ui/config`` carry no secrets and are served without the API key (a browser
cannot send a header when it loads a page); the key typed into the page is sent with each API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"  #: index.html, app.js, style.css (package data)


def mount_page(app: FastAPI, model_name: str, point_prompt: str) -> None:
    """Add ``GET /`` (the page), ``/static/*`` (its assets) and ``GET /ui/config`` to ``app``."""
    if not (STATIC_DIR / "index.html").is_file():
        raise FileNotFoundError(f"the web page's assets are missing from {STATIC_DIR} (a broken install?)")
    config = {"model": model_name, "point_prompt": point_prompt}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/ui/config", include_in_schema=False)
    def ui_config() -> dict[str, str]:
        return config

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
