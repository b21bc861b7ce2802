"""A real HTTP server on 127.0.0.1 that serves a crawl's images, with the trouble real hosts have.

The demo and the tests point the downloader at it. A *site* is a mapping of URL path to
``Resource``; ``save_site``/``load_site`` keep one on disk (``manifest.json`` + files) so that the
sample-crawl generator can write it and ``python -m infra.image_server SITE_DIR`` can serve it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web


@dataclass
class Resource:
    """What the server answers at one path."""

    body: bytes = b""
    content_type: str = "image/jpeg"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (slow hosts, timeouts)
    redirect_to: str | None = None  # answer 302 with this Location


def save_site(resources: dict[str, Resource], site_dir: str | Path) -> None:
    """Write ``resources`` as ``site_dir/manifest.json`` plus one body file per resource."""
    site = Path(site_dir)
    (site / "files").mkdir(parents=True, exist_ok=True)
    manifest = {}
    for i, (path, res) in enumerate(sorted(resources.items())):
        body_file = f"files/{i:06d}.bin"
        (site / body_file).write_bytes(res.body)
        manifest[path] = {
            "file": body_file,
            "content_type": res.content_type,
            "status": res.status,
            "headers": res.headers,
            "delay_s": res.delay_s,
            "redirect_to": res.redirect_to,
        }
    (site / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def load_site(site_dir: str | Path) -> dict[str, Resource]:
    site = Path(site_dir)
    manifest = json.loads((site / "manifest.json").read_text())
    return {
        path: Resource(
            body=(site / entry["file"]).read_bytes(),
            content_type=entry["content_type"],
            status=entry["status"],
            headers=dict(entry["headers"]),
            delay_s=entry["delay_s"],
            redirect_to=entry["redirect_to"],
        )
        for path, entry in manifest.items()
    }


_CHUNK = 64 * 1024  # body write size: lets a client that stops reading stop the transfer early


class ImageServer:
    """An aiohttp server on ``host`` in a background thread, serving ``Resource``s by path.

    Unknown paths answer 404; ``/robots.txt`` is just another resource. A resource whose
    ``headers`` say ``Transfer-Encoding: chunked`` is sent without Content-Length. For assertions
    the server records ``access_log`` ((method, path) per request, in order), ``bytes_sent`` (body
    bytes written per path) and ``max_in_flight`` (most requests handled at once).
    """

    def __init__(self, resources: dict[str, Resource] | None = None, host: str = "127.0.0.1", port: int = 0,
                 backlog: int = 128):
        self.resources: dict[str, Resource] = dict(resources or {})
        self.host = host
        self.port = port
        # Pending connections the socket queues: a client that opens one per image (img2dataset)
        # overruns the default 128 and waits out SYN retransmits.
        self.backlog = backlog
        self.access_log: list[tuple[str, str]] = []
        self.bytes_sent: dict[str, int] = {}
        self.max_in_flight = 0
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(self, path: str, resource: Resource) -> None:
        self.resources[path] = resource  # read per request, so this works while serving

    def start(self) -> str:
        if self._thread is not None:
            raise RuntimeError("ImageServer already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="image-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        return self.url

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> ImageServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a slow handler whose client gave up (timeout tests) ends at once.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=self.backlog)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.access_log.append((request.method, request.path))
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            res = self.resources.get(request.path)
            if res is None:
                return web.Response(status=404, text="not found")
            if res.delay_s:
                await asyncio.sleep(res.delay_s)
            if res.redirect_to is not None:
                return web.Response(status=302, headers={"Location": res.redirect_to, **res.headers})
            return await self._send(request, res)
        finally:
            self._in_flight -= 1

    async def _send(self, request: web.Request, res: Resource) -> web.StreamResponse:
        chunked = any(k.lower() == "transfer-encoding" for k in res.headers)
        resp = web.StreamResponse(
            status=res.status, headers={k: v for k, v in res.headers.items() if k.lower() != "transfer-encoding"}
        )
        resp.content_type = res.content_type
        if chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(res.body)
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        body = memoryview(res.body)
        try:
            for start in range(0, len(body), _CHUNK):
                chunk = body[start : start + _CHUNK]
                await resp.write(chunk)
                self.bytes_sent[request.path] = self.bytes_sent.get(request.path, 0) + len(chunk)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client stopped reading (size cap, opt-out): expected, not a server error
        return resp


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Serve a saved site until killed: ``python -m infra.image_server SITE_DIR --port N``."""
    parser = argparse.ArgumentParser(description="Serve a saved site (manifest.json + files) over HTTP.")
    parser.add_argument("site_dir")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    # SIGTERM (how the demo stops it) unwinds like Ctrl-C, so the server closes cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    with ImageServer(load_site(args.site_dir), host=args.host, port=args.port) as server:
        print(f"serving {len(server.resources)} resources at {server.url}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
