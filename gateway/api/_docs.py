"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), with their
scripts and styles served by the gateway from the fastapi-offline package, never from a
CDN: a hospital network without internet still has them.

Both pages carry a Content-Security-Policy that lets them load nothing from another
host: ReDoc's sidebar asks a CDN for its maker's logo, and Swagger UI can be told to
send the description to an outside validator; the browser itself refuses both.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

__all__ = ["DOCS_ASSETS", "DOCS_POLICY", "add_docs_routes"]

DOCS_ASSETS = "/static-offline-docs"  # fastapi-offline's static files, mounted here
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
    "'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; worker-src 'self' "
    "blob:; connect-src 'self'; frame-ancestors 'none'"
)


def add_docs_routes(app: FastAPI) -> None:
    """GET /docs and /redoc (not in the description itself)."""

    def page(html: HTMLResponse) -> HTMLResponse:
        html.headers["Content-Security-Policy"] = DOCS_POLICY
        return html

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return page(
            get_swagger_ui_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} – Swagger UI",
                swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                # no validator badge (it sends the description out); keep the token
                # across reloads of the page
                swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return page(
            get_redoc_html(
                openapi_url=f"{root}{app.openapi_url}",
                title=f"{app.title} – ReDoc",
                redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )
