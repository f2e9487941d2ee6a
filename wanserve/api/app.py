"""The FastAPI app: `create_app(settings)`.

Routes: the original API (routes_original), OpenAI's /v1/videos (routes_openai), /health,
/metrics, /docs + /openapi.json (Swagger UI served from the installed package: no CDN), and the
web page at / and /static/*. Errors everywhere share one shape (errors.py).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from wanserve.api import routes_openai, routes_original
from wanserve.api.auth import require_caller
from wanserve.api.bodies import BodySizeLimit
from wanserve.api.errors import install_error_handlers
from wanserve.api.events import TaskChangeFeed
from wanserve.api.health import read_health
from wanserve.api.inputs import RemoteFetcher
from wanserve.api.metrics import CONTENT_TYPE, ApiMetrics, HttpMetricsMiddleware
from wanserve.api.schemas import (
    HealthResponse,
    SubmitForm,
    SubmitRequest,
    VideoCreateForm,
    VideoCreateRequest,
)
from wanserve.api.served_model import ServedModels
from wanserve.api.ssrf import Resolver, system_resolve
from wanserve.api.state import ApiState
from wanserve.settings import Settings
from wanserve.tasks import TaskStore

log = logging.getLogger("wanserve.api")


def _version() -> str:
    try:
        return importlib.metadata.version("wanserve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


STATIC_DIR = Path(__file__).parent / "static"
# Bodies carry up to three inputs (image, last_image, video), base64 in JSON at worst.
BODY_SLACK = 1024 * 1024
# Models documented in /openapi.json although routes read them by hand (JSON or multipart).
BODY_MODELS = (SubmitRequest, SubmitForm, VideoCreateRequest, VideoCreateForm)


def create_app(settings: Settings, *, store: TaskStore | None = None, resolver: Resolver = system_resolve) -> FastAPI:
    """The API for `settings`. `store`: share an open TaskStore (else one is opened at startup
    and closed at shutdown). `resolver`: how image URL hosts are resolved (tests substitute it)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_store = store is None
        task_store = store or await anyio.to_thread.run_sync(lambda: TaskStore(settings))
        feed = TaskChangeFeed(task_store)
        feed.start()
        app.state.api = ApiState(settings=settings, store=task_store, models=ServedModels(settings, task_store),
                                 fetcher=RemoteFetcher.from_settings(settings, resolver), feed=feed,
                                 metrics=metrics)
        try:
            yield
        finally:
            feed.close()
            if own_store:
                task_store.close()

    app = FastAPI(
        title="wanserve",
        version=_version(),
        summary="Wan2.x video generation: the original /submit API and an OpenAI-compatible /v1/videos API.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=None,  # served below, behind the API key when one is set
    )
    app.state.settings = settings
    metrics = ApiMetrics()
    install_error_handlers(app)
    app.include_router(routes_original.router)
    app.include_router(routes_openai.router)
    _add_service_routes(app)
    _add_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodySizeLimit, limit=4 * settings.max_upload_bytes + BODY_SLACK)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics)
    return app


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=HealthResponse, tags=["service"], summary="Service health",
             responses={503: {"model": HealthResponse, "description": "No worker group is serving."}})
    async def health(request: Request) -> JSONResponse:
        state: ApiState = request.app.state.api
        report = await anyio.to_thread.run_sync(read_health, state.settings, state.store, state.models)
        return JSONResponse(report.model_dump(mode="json"), status_code=503 if report.status == "unhealthy" else 200)

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics",
             responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}}}, response_class=Response)
    async def metrics(request: Request) -> Response:
        state: ApiState = request.app.state.api
        body = await anyio.to_thread.run_sync(state.metrics.render, state.store)
        return Response(body, media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


def _add_docs(app: FastAPI) -> None:
    swagger = _swagger_assets()
    if swagger is not None:
        app.mount("/docs/assets", StaticFiles(directory=swagger), name="swagger-assets")

    def openapi_schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in BODY_MODELS:
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_schema  # type: ignore[method-assign]

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_caller)])
    async def openapi_json() -> JSONResponse:
        return JSONResponse(openapi_schema())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_caller)])
    async def docs() -> HTMLResponse:
        if swagger is None:
            return HTMLResponse("<p>Swagger UI is not installed; the API is described at "
                                "<a href='/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="wanserve API",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the swagger-ui-bundle package (offline machines have no CDN)."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


__all__ = ["create_app"]
