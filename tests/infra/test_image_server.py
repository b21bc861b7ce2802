"""ImageServer: a real aiohttp server on 127.0.0.1, checked with a plain stdlib client."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from infra.image_server import ImageServer, Resource, load_site, save_site

ROOT = Path(__file__).resolve().parents[2]


def get(base_url: str, path: str) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def server():
    with ImageServer(
        {
            "/a.jpg": Resource(b"jpeg bytes", headers={"X-Robots-Tag": "noai"}),
            "/page": Resource(b"<html>", content_type="text/html"),
            "/gone": Resource(b"", status=410),
            "/moved": Resource(redirect_to="/a.jpg"),
            "/slow": Resource(b"late", delay_s=0.5),
            "/chunked": Resource(b"x" * 200_000, headers={"Transfer-Encoding": "chunked"}),
        }
    ) as srv:
        yield srv


def test_serves_resources_with_status_type_and_headers(server):
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    status, headers, body = get(server.url, "/a.jpg")
    assert (status, body) == (200, b"jpeg bytes")
    assert headers["Content-Type"] == "image/jpeg" and headers["X-Robots-Tag"] == "noai"
    assert headers["Content-Length"] == "10"
    assert get(server.url, "/page")[1]["Content-Type"].startswith("text/html")
    assert get(server.url, "/gone")[0] == 410
    assert get(server.url, "/nowhere")[0] == 404


def test_redirect_delay_chunked_and_access_log(server):
    status, headers, _ = get(server.url, "/moved")
    assert status == 302 and headers["Location"] == "/a.jpg"
    start = time.monotonic()
    assert get(server.url, "/slow")[2] == b"late"
    assert time.monotonic() - start >= 0.5
    status, headers, body = get(server.url, "/chunked")
    assert "Content-Length" not in headers and headers["Transfer-Encoding"] == "chunked" and len(body) == 200_000
    assert server.access_log == [("GET", "/moved"), ("GET", "/slow"), ("GET", "/chunked")]
    assert server.bytes_sent["/chunked"] == 200_000


def test_add_after_start(server):
    assert get(server.url, "/later.png")[0] == 404
    server.add("/later.png", Resource(b"png", content_type="image/png"))
    assert get(server.url, "/later.png")[2] == b"png"


def test_records_max_in_flight(server):
    threads = [threading.Thread(target=get, args=(server.url, "/slow")) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.max_in_flight == 4


def test_stop_releases_port():
    srv = ImageServer({"/x": Resource(b"x")})
    url = srv.start()
    srv.stop()
    with pytest.raises(OSError):
        get(url, "/x")


def test_main_serves_a_saved_site(tmp_path):
    site = {"/img/1.jpg": Resource(b"one"), "/robots.txt": Resource(b"User-agent: *\nDisallow: /", "text/plain")}
    save_site(site, tmp_path)
    assert load_site(tmp_path) == site
    proc = subprocess.Popen(
        [sys.executable, "-m", "infra.image_server", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        url = line.split()[-1]
        assert url.startswith("http://127.0.0.1:")
        assert get(url, "/img/1.jpg")[2] == b"one"
        assert get(url, "/robots.txt")[2].startswith(b"User-agent")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
