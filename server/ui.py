"""The web UI's files on the server: `/` (the page), `/static/...` (its script and style, from server/static/)
and `/static/plotly.min.js`, served from the installed plotly package (plotly ships plotly.js for offline
use in its package data), so the page opens with no network beyond the server and the repository holds
no copy of a charting library's code."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import fastapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from runstream.extras import MissingExtraError

STATIC = Path(__file__).with_name("static")
#: Where the page loads plotly from (index.html names it).
PLOTLY_ROUTE = "/static/plotly.min.js"
#: The page's own files change with the package; plotly.js only with the plotly version (cached a day).
_NO_STORE = {"Cache-Control": "no-cache"}
_CACHE_DAY = {"Cache-Control": "public, max-age=86400"}


def plotly_js() -> Path:
    """plotly.min.js inside the installed plotly package; a missing plotly names the extra that brings it."""
    try:
        data = resources.files("plotly") / "package_data" / "plotly.min.js"
    except ModuleNotFoundError as error:
        raise MissingExtraError("the web UI (runstream server)", "server", "plotly") from error
    path = Path(str(data))
    if not path.is_file():
        raise FileNotFoundError(f"plotly package: {path} is missing "
                                "(reinstall plotly: pip install --force-reinstall 'runstream[server]')")
    return path


def mount_ui(app: fastapi.FastAPI) -> None:
    """Serve the UI from `app`: `/`, `/static/plotly.min.js` and the rest of `/static/`.

    plotly's route is added before the static mount so that it wins over a (never present) file of that
    name in server/static/."""
    plotly = plotly_js()
    index = STATIC / "index.html"

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=_NO_STORE)

    @app.get(PLOTLY_ROUTE, include_in_schema=False)
    def plotly_bundle() -> FileResponse:
        return FileResponse(plotly, media_type="text/javascript", headers=_CACHE_DAY)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
