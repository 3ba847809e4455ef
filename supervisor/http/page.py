"""The status page at ``/``: one HTML file, one script, one style sheet, served from the
package (no CDN, nothing fetched from anywhere else, no build step).

Rules:

- only the three files named in ``FILES`` are served, looked up by exact name (a request never
  becomes a path on disk);
- every answer carries ``Content-Security-Policy: default-src 'self'`` (and no framing, no
  base URL, no form posts), so neither an inline script nor anything from another origin runs
  even if hostile text got into the document; the page itself inserts every piece of data
  with textContent, never as markup (a worker's status text is hostile input);
- the page reads the API like any client: GET /api/v1/status and the event stream without a
  token; the buttons exist only when the operator pasted the token into the page, which sends
  it only as ``Authorization: Bearer`` on POST (never in a cookie, so another site cannot
  make the browser send it; see supervisor.http.routes).
"""

from __future__ import annotations

import os

from supervisor.http.exchange import Exchange

STATIC = os.path.join(os.path.dirname(__file__), "static")
FILES: dict[str, bytes] = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "style.css": b"text/css; charset=utf-8",
}
CSP = (b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; "
       b"object-src 'none'")
HEADERS = [(b"content-security-policy", CSP), (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer")]


class Page:
    def __init__(self) -> None:
        self._cache: dict[str, bytes] = {}

    def _file(self, name: str) -> bytes:
        data = self._cache.get(name)
        if data is None:
            with open(os.path.join(STATIC, name), "rb") as f:
                data = self._cache[name] = f.read()
        return data

    def index(self, ex: Exchange) -> None:
        ex.reply(200, self._file("index.html"), FILES["index.html"], HEADERS)

    def static(self, ex: Exchange) -> None:
        name = ex.params["file"]
        if name not in FILES or name == "index.html":
            ex.text(404, f"no such file: /static/{name}\n", HEADERS)
            return
        ex.reply(200, self._file(name), FILES[name], HEADERS)
