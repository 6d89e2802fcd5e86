"""``/redoc`` with ReDoc's script from the fastapi-offline package (``/static-offline-docs``), not a CDN.

fastapi-offline serves Swagger UI (``/docs``) and the assets of both pages. ReDoc's bundle still puts one
image from its vendor's CDN in the sidebar ("API docs by Redocly", ``cdn.redoc.ly/redoc/logo-mini.svg``)
and hides it when it fails: offline, a failed request and a console error on every visit. The page below
points that one image at the favicon served with the assets, before ReDoc starts, so the page makes no
request beyond this server.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse

__all__ = ["STATIC_URL", "add_redoc"]

STATIC_URL = "/static-offline-docs"  # where fastapi-offline mounts its assets
_VENDOR_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
_LOCAL_LOGO_SHIM = f"""<script>
(() => {{  // ReDoc's sidebar logo from this server instead of its vendor's CDN (attribute or property)
  const local = (value) => value === "{_VENDOR_LOGO}" ? "{STATIC_URL}/favicon.png" : value;
  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {{
    return setAttribute.call(this, name, name === "src" ? local(value) : value);
  }};
  const src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {{
    ...src, set(value) {{ src.set.call(this, local(value)); }},
  }});
}})();
</script>
"""


def add_redoc(app: FastAPI, path: str = "/redoc") -> None:
    @app.get(path, include_in_schema=False)
    async def redoc_html() -> HTMLResponse:
        page = get_redoc_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{STATIC_URL}/redoc.standalone.js", redoc_favicon_url=f"{STATIC_URL}/favicon.png",
                              with_google_fonts=False)
        body = page.body.decode().replace("<script src=", _LOCAL_LOGO_SHIM + "<script src=", 1)
        return HTMLResponse(body)
