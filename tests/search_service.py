"""The search service (orchestration.search_server) for tests: served by uvicorn on 127.0.0.1 in a
thread of the test process, on a free port."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import uvicorn

from infra.config import PairlakeConfig
from infra.local_services import free_port
from orchestration.search_server import create_app


@contextlib.contextmanager
def running_search_service(config: PairlakeConfig, token: str | None = None) -> Iterator[str]:
    """Serve ``config``'s lake until the block ends; yields the base URL (no trailing slash)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config, token), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the search service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def clip_retrieval_client():
    """clip-retrieval's own ``clip_client`` module (ClipClient, Modality), loaded from the installed
    package's file: the package's ``__init__`` imports torch, flask and faiss pins of its own."""
    import importlib.util
    from pathlib import Path

    package = importlib.util.find_spec("clip_retrieval")
    if package is None:
        raise RuntimeError("clip-retrieval is not installed: `make setup` installs it (--no-deps)")
    path = Path(package.submodule_search_locations[0]) / "clip_client.py"
    spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
