"""`/docs` served with Swagger UI's own files from the `swagger-ui-bundle` package, not a CDN: the docs work offline."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

STATIC = "/docs/static"


def mount_offline_docs(app: FastAPI) -> None:
    """For an app created with `docs_url=None, redoc_url=None`."""
    app.mount(STATIC, StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js", swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
        )  # fmt: skip
