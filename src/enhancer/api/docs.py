"""The interactive API documentation, served entirely by this server.

/docs (Swagger UI) and /redoc (ReDoc) are FastAPI's own pages, pointed at the copies of Swagger UI
and ReDoc that the `fastapi-offline` package ships instead of a CDN, with the web page's icon and
no web fonts (ReDoc falls back to the system's): a machine without internet shows them whole.
Both pages carry a Content-Security-Policy that allows this origin only, so the browser does not
even try what the bundles still link elsewhere (ReDoc's footer logo): nothing waits for a network
that is not there, and nobody elsewhere learns who reads the docs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: The pages load from this origin only; inline scripts and styles are FastAPI's page templates and
#: ReDoc's styling, data: and blob: URLs are icons and the answers "Try it out" shows.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
    ]
)
#: Where the Swagger UI and ReDoc scripts and styles are served.
ASSETS_PATH = "/docs-assets"
#: The files of `fastapi-offline`'s asset folder the pages load.
SWAGGER_JS, SWAGGER_CSS, REDOC_JS, PACKAGE_FAVICON = (
    "swagger-ui-bundle.js",
    "swagger-ui.css",
    "redoc.standalone.js",
    "favicon.png",
)


def assets_dir() -> Path:
    """The folder holding the packaged Swagger UI and ReDoc builds (refuses to start without them:
    the pages would be blank)."""
    folder = Path(str(resources.files("fastapi_offline") / "static"))
    missing = [name for name in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, PACKAGE_FAVICON) if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"the fastapi-offline package lacks {', '.join(missing)} in {folder}; reinstall it")
    return folder


def install_docs(app: FastAPI, favicon_path: str | None = None) -> None:
    """Serve /docs and /redoc for `app` (built with docs_url=None and redoc_url=None) from local
    assets. `favicon_path` is the icon the pages show (default: the package's own)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets_dir())), name="docs-assets")
    icon = favicon_path or f"{ASSETS_PATH}/{PACKAGE_FAVICON}"

    def local(request: Request, path: str) -> str:
        return request.scope.get("root_path", "") + path

    def self_only(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return page

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return self_only(get_swagger_ui_html(
            openapi_url=local(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title}: API documentation",
            swagger_js_url=local(request, f"{ASSETS_PATH}/{SWAGGER_JS}"),
            swagger_css_url=local(request, f"{ASSETS_PATH}/{SWAGGER_CSS}"),
            swagger_favicon_url=local(request, icon),
            oauth2_redirect_url=None,
            # no badge that asks validator.swagger.io about the document
            swagger_ui_parameters={"validatorUrl": None, **(app.swagger_ui_parameters or {})},
        ))

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return self_only(get_redoc_html(
            openapi_url=local(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title}: API reference",
            redoc_js_url=local(request, f"{ASSETS_PATH}/{REDOC_JS}"),
            redoc_favicon_url=local(request, icon),
            with_google_fonts=False,
        ))
