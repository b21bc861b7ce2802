"""`pairlake serve`: the kNN search service over the lake's indexes, and its web UI.

The HTTP API is clip-retrieval's back end's (``clip_retrieval/clip_back.py``, release 2.45.0), so
its ``ClipClient`` and its web front end (clip-front) work against pairlake unchanged:
``GET /indices-list``, ``POST /knn-service``, ``POST /metadata``. Where clip-back answers a bad
request with an HTTP 500, this service answers 4xx with ``{"error": "..."}`` naming the problem.
Beside it: pairlake's own UI (``/``), stored images (``/image/<index>/<id>``), lineage
(``/lineage/<index>/<id>``), removal requests into the opt-out inbox (``POST /removal-request``),
and clip-front (``/clip-front/``, when clip-retrieval is installed) with its ``config.json``.

Indexes load once and reload when their manifest names a new save (``gpu_jobs.retrieval``);
queries run on a thread pool, so a slow one never blocks the others.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
import importlib.metadata
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gpu_jobs.knn_index import IndexLoadError
from infra.config import ClipConfig, ConfigError, InputError, PairlakeConfig
from infra.delta_store import Lake

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "PAIRLAKE_SEARCH_TOKEN"
_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
         "Access-Control-Allow-Headers": "*", "Access-Control-Max-Age": "600"}
_REQUEST_BODY_BYTES = 64_000  # a removal request: a few short fields
_IMAGE_TYPES = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG", "image/png"), (b"RIFF", "image/webp"))


class RequestRefused(Exception):
    """A request answered with ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Edge:
    """ASGI middleware: collapse doubled slashes (clip-front joins ``backend + "/knn-service"``),
    answer CORS preflights, put CORS headers on every response, and check the token."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = re.sub("/{2,}", "/", scope["path"])
        scope = {**scope, "path": path, "raw_path": path.encode()}
        if scope["method"] == "OPTIONS":
            await Response(status_code=204, headers=_CORS)(scope, receive, send)
            return
        if self.token is not None and not self._authorised(Request(scope)):
            await _with_cors(_error(401, "this service needs its token: ?token=... or 'Authorization: Bearer ...'"))(
                scope, receive, send)
            return

        async def send_with_cors(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k.lower().encode(), v.encode()) for k, v in _CORS.items())]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _authorised(self, request: Request) -> bool:
        given = request.query_params.get("token") or request.headers.get("authorization", "").removeprefix("Bearer ")
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())


def _with_cors(response: Response) -> Response:
    response.headers.update(_CORS)
    return response


class _RateLimit:
    """At most ``per_hour`` events per client address in any hour."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._events: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            events = self._events[client]
            while events and now - events[0] > 3600:
                events.popleft()
            if len(events) >= self.per_hour:
                return False
            events.append(now)
            return True


class SearchService:
    """What the routes call: the lake's indexes, the query encoder and the limits."""

    def __init__(self, config: PairlakeConfig) -> None:
        from gpu_jobs.retrieval import LakeIndexes, QueryEncoder

        self.config = config
        self.lake = Lake.of(config.lake)
        self.indexes = LakeIndexes(self.lake, config.clip, config.search.manifest_check_s)
        search = config.search
        multilingual = None
        if search.multilingual_model:
            multilingual = ClipConfig(model=search.multilingual_model, pretrained=search.multilingual_pretrained,
                                      checkpoint=search.multilingual_checkpoint, device=config.clip.device)
        self.encoder = QueryEncoder(config.clip, config.download, multilingual, search.max_query_batch)
        self.removals = _RateLimit(search.removal_requests_per_hour)

    # -- clip-retrieval's API -------------------------------------------------------------------

    def knn(self, body: dict) -> list[dict]:
        from gpu_jobs.retrieval import SearchOptions

        search = self.config.search
        modality = _field(body, "modality", str, "image")
        if modality not in ("image", "text"):
            raise RequestRefused(400, f"modality must be 'image' or 'text', got {modality!r}")
        num_images = _count(body, "num_images", 40, search.max_num_images)
        num_result_ids = _count(body, "num_result_ids", num_images, search.max_result_ids)
        score = body.get("aesthetic_score", "")
        weight = body.get("aesthetic_weight", "")
        try:
            aesthetic_score = None if score in ("", None) else int(score)
            aesthetic_weight = 0.5 if weight in ("", None) else float(weight)
        except (TypeError, ValueError):
            raise RequestRefused(400, "aesthetic_score must be an integer 0-9 and aesthetic_weight a number") from None
        if aesthetic_score is not None and not 0 <= aesthetic_score <= 9:
            raise RequestRefused(400, f"aesthetic_score must be 0-9, got {aesthetic_score}")
        if not np.isfinite(aesthetic_weight):
            raise RequestRefused(400, "aesthetic_weight must be a finite number")
        options = SearchOptions(
            num_result_ids=max(num_result_ids, num_images), num_images=num_images,
            deduplicate=_flag(body, "deduplicate"), use_safety_model=_flag(body, "use_safety_model"),
            use_violence_detector=_flag(body, "use_violence_detector"),
            aesthetic_score=aesthetic_score, aesthetic_weight=aesthetic_weight,
            duplicate_cosine=self.config.curation.near_duplicate_threshold)
        index = self.indexes.get(self._index_name(body))
        query = self._query_vector(body)
        results = index.search(query, options, modality)[:num_result_ids]
        return [{**(r.metadata or {}), "id": r.id, "similarity": r.similarity} if r.metadata is not None
                else {"id": r.id, "similarity": r.similarity} for r in results]

    def metadata(self, body: dict) -> list[dict]:
        ids = body.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RequestRefused(400, "ids must be a list of integer ids")
        if len(ids) > self.config.search.max_result_ids:
            raise RequestRefused(400, f"at most {self.config.search.max_result_ids:,} ids per request (search.max_result_ids)")
        if not ids:
            return []
        rows = self.indexes.get(self._index_name(body)).rows(ids)
        return [{"id": i, "metadata": row} for i, row in zip(ids, rows) if row is not None]

    def _index_name(self, body: dict) -> str:
        name = body.get("indice_name")
        if name in (None, ""):
            names = self.indexes.names()
            if not names:
                raise RequestRefused(404, f"the lake at {self.lake.root} has no kNN index yet: materialize knn_index")
            return names[0]
        if not isinstance(name, str):
            raise RequestRefused(400, "indice_name must be a string")
        return name

    def _query_vector(self, body: dict) -> np.ndarray:
        from spark_jobs.download.resizer import ImageRejected

        text = _field(body, "text", str, None)
        image = _field(body, "image", str, None)
        image_url = _field(body, "image_url", str, None)
        embedding = body.get("embedding_input")
        given = [name for name, value in (("text", text), ("image", image), ("image_url", image_url),
                                         ("embedding_input", embedding)) if value not in (None, "")]
        if not given:
            raise RequestRefused(400, "give one of text, image, image_url or embedding_input")
        if len(given) > 1:
            raise RequestRefused(400, f"give one query, not {' and '.join(given)}")
        if text:
            if len(text) > self.config.search.max_text_chars:
                raise RequestRefused(400, f"text is {len(text):,} characters; at most "
                                          f"{self.config.search.max_text_chars:,} (search.max_text_chars)")
            return self.encoder.text(text, multilingual=_flag(body, "use_mclip"))
        if image:
            try:
                data = base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError):
                raise RequestRefused(400, "image must be the base64 of an image file's bytes") from None
            try:
                return self.encoder.image(data)
            except ImageRejected as exc:
                raise RequestRefused(400, f"image: {exc}") from None
        if image_url:
            return self.encoder.image_url(image_url)
        if not isinstance(embedding, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                     for x in embedding):
            raise RequestRefused(400, "embedding_input must be a list of numbers")
        return np.asarray(embedding, np.float32)

    # -- pairlake's own -------------------------------------------------------------------------

    def image(self, index_name: str, item: int) -> tuple[bytes, str]:
        from infra.tables import IMAGES
        import pyarrow.compute as pc

        row = self.indexes.get(index_name).rows([item])[0]
        if row is None:
            raise RequestRefused(404, f"index {index_name} holds no id {item}")
        found = self.lake.read(IMAGES, columns=["image"], partitions=[row["warc_file"]],
                               filter=(pc.field("uid") == row["uid"]) & (pc.field("status") == "ok"))
        if not found.num_rows or found["image"][0].as_py() is None:
            raise RequestRefused(404, f"no stored image for id {item}")
        data = found["image"][0].as_py()
        kind = next((t for magic, t in _IMAGE_TYPES if data.startswith(magic)), "application/octet-stream")
        return data, kind

    def lineage(self, index_name: str, item: int) -> dict:
        from orchestration.lineage import describe

        row = self.indexes.get(index_name).rows([item])[0]
        if row is None:
            raise RequestRefused(404, f"index {index_name} holds no id {item}")
        return describe(self.lake, row["uid"])

    def removal_request(self, body: dict, client: str) -> dict:
        from orchestration.optout_requests import submit_request
        from spark_jobs.optout import RequestError

        allowed = {"kind", "value", "requester", "reason"}
        extra = sorted(set(body) - allowed)
        if extra:
            raise RequestRefused(400, f"unknown fields {', '.join(extra)}; a request has {', '.join(sorted(allowed))}")
        if not self.removals.allow(client):  # counts refused requests too: a flood is a flood
            raise RequestRefused(429, f"at most {self.removals.per_hour} removal requests per hour from one address "
                                      "(search.removal_requests_per_hour)")
        try:
            name = submit_request(self.config, {k: body[k] for k in sorted(body)})
        except (RequestError, InputError) as exc:
            raise RequestRefused(400, str(exc)) from None
        return {"request": name.removesuffix(".json"), "status": "received"}


def _field(body: dict, name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if value is not None and not isinstance(value, kind):
        raise RequestRefused(400, f"{name} must be a {kind.__name__}")
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise RequestRefused(400, f"{name} must be true or false")
    return bool(value)


def _count(body: dict, name: str, default: int, cap: int) -> int:
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestRefused(400, f"{name} must be a positive integer")
    if value > cap:
        raise RequestRefused(400, f"{name} is {value:,}; at most {cap:,} (search.max_{name.removeprefix('num_')})")
    return value


async def _json_body(request: Request, cap: int) -> dict:
    """The body parsed as JSON whatever its Content-Type (ClipClient sends none, clip-front
    text/plain), read no further than ``cap`` bytes."""
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise RequestRefused(413, f"the request body is over {cap:,} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestRefused(400, f"the request body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestRefused(400, "the request body must be a JSON object")
    return body


async def _answer(work: Callable[[], Response]) -> Response:
    """``work()`` on the thread pool: refusals and bad input become 4xx JSON, never a 500 page."""
    try:
        return await run_in_threadpool(work)
    except RequestRefused as exc:
        return _error(exc.status, str(exc))
    except InputError as exc:  # the query's fault (gpu_jobs.retrieval.SearchError among them)
        return _error(400, str(exc))
    except ConfigError as exc:  # the service's configuration: the index and the model disagree
        return _error(500, str(exc))
    except IndexLoadError as exc:
        return _error(503, str(exc))
    except Exception as exc:  # a bug: logged with its traceback, answered in one JSON line
        log.exception("search request failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def _posted(work: Callable[[dict, Request], Any], cap: int, status: int = 200) -> Callable:
    """A POST route answering ``work(body, request)`` as JSON, its body capped at ``cap`` bytes."""
    async def route(request: Request) -> Response:
        try:
            body = await _json_body(request, cap)
        except RequestRefused as exc:
            return _error(exc.status, str(exc))
        return await _answer(lambda: JSONResponse(work(body, request), status_code=status))
    return route


def create_app(config: PairlakeConfig, token: str | None = None) -> ASGIApp:
    service = SearchService(config)
    cap = config.search.max_body_bytes

    def ui_file(name: str) -> bytes:
        return resources.files("orchestration").joinpath("search_ui", name).read_bytes()

    async def indices_list(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(service.indexes.names))

    def _item(request: Request) -> tuple[str, int]:
        try:
            return request.path_params["index"], int(request.path_params["item"])
        except ValueError:
            raise RequestRefused(400, "an id is an integer") from None

    async def image(request: Request) -> Response:
        def work() -> Response:
            data, kind = service.image(*_item(request))
            return Response(data, media_type=kind, headers={"Cache-Control": "no-store"})
        return await _answer(work)

    async def lineage(request: Request) -> Response:
        # Timestamps and the like as strings: lineage is read by people.
        return await _answer(lambda: Response(json.dumps(service.lineage(*_item(request)), default=str),
                                              media_type="application/json"))

    def removal_request(body: dict, request: Request) -> dict:
        return service.removal_request(body, request.client.host if request.client else "unknown")

    async def clip_front_config(request: Request) -> Response:
        # clip-front reads /config.json beside its page: point it at this service.
        base = str(request.base_url).rstrip("/")
        names = await run_in_threadpool(service.indexes.names)
        return JSONResponse({"defaultBackend": base, "defaultIndex": names[0] if names else "", "urlColumn": "url"})

    async def page(request: Request) -> Response:
        return Response(ui_file("index.html"), media_type="text/html; charset=utf-8")

    async def health(request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    routes = [
        Route("/", page), Route("/health", health), Route("/config.json", clip_front_config),
        Route("/clip-front/config.json", clip_front_config),
        Route("/indices-list", indices_list),
        Route("/knn-service", _posted(lambda body, _: service.knn(body), cap), methods=["POST"]),
        Route("/metadata", _posted(lambda body, _: service.metadata(body), cap), methods=["POST"]),
        Route("/image/{index}/{item}", image), Route("/lineage/{index}/{item}", lineage),
        Route("/removal-request", _posted(removal_request, _REQUEST_BODY_BYTES, status=201), methods=["POST"]),
    ]
    front = clip_front_build()
    if front is not None:
        # The wheel's page loads this polyfill from vendor/, but ships it deeper.
        loader = front / "vendor/node_modules/@webcomponents/webcomponentsjs/webcomponents-loader.js"
        if loader.is_file():
            routes.append(Route("/clip-front/vendor/webcomponents-loader.js",
                                lambda request: FileResponse(loader, media_type="text/javascript")))
        routes.append(Mount("/clip-front", StaticFiles(directory=front, html=True)))
    return _Edge(Starlette(routes=routes), token)


def clip_front_build() -> Path | None:
    """clip-retrieval's built web front end, when the package is installed (its wheel ships it as a
    top-level ``front/build`` folder): served at /clip-front/, pointed at this service."""
    try:
        folder = Path(str(importlib.metadata.distribution("clip-retrieval").locate_file("front/build")))
    except importlib.metadata.PackageNotFoundError:
        return None
    return folder if (folder / "index.html").is_file() else None


def check_bind(host: str, token: str | None) -> None:
    """Loopback needs no token; any other address does (the service reads the lake and takes
    removal requests)."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not token:
        raise ConfigError(f"search.host {host} is not loopback: set ${TOKEN_VARIABLE} to a secret token first")


def serve(config: PairlakeConfig, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    host = host or config.search.host
    port = port or config.search.port
    token = os.environ.get(TOKEN_VARIABLE) or None
    check_bind(host, token)
    # One query is one vector and many run at once on the thread pool: OpenMP threads per faiss
    # search would only fight each other. (Process-wide, so set here, where the process is ours.)
    import faiss

    faiss.omp_set_num_threads(1)
    app = create_app(config, token)
    print(f"pairlake search on http://{host}:{port}/ (clip-retrieval API: /knn-service, /indices-list, /metadata)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
