"""The browser frontend in `web/`, served with headers that forbid inline script."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["DEFAULT_DIRECTORY", "SECURITY_HEADERS", "WebFiles", "WebMount"]

_HERE = Path(__file__).resolve().parent
#: The page that ships with the gateway: the repository's `web/`, which a wheel
#: carries as `gateway/static` (pyproject.toml maps one onto the other); from a
#: checkout or an editable install, `web/` itself, next to the package.
DEFAULT_DIRECTORY = _HERE / "static" if (_HERE / "static").is_dir() else _HERE.parent / "web"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class WebFiles(StaticFiles):
    """Static files (and `index.html` for `/`) with `SECURITY_HEADERS` on every answer."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory=directory, html=True)

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


class WebMount(Mount):
    """Serves `directory` at `/`, matching only `/` and its files (listed once, at start).

    A plain `Mount("/")` matches every path, so a wrong method on an API route
    would be answered by the static files (404, or 405 with the wrong `Allow`)
    instead of the router's own 405.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__("/", app=WebFiles(directory))
        files = (path.relative_to(directory) for path in directory.rglob("*") if path.is_file())
        self._paths = {"/", *(f"/{path.as_posix()}" for path in files)}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            return Match.NONE, {}
        return super().matches(scope)
