"""Test helpers for image intake: sample images and a real HTTP image server on 127.0.0.1.

The server is stdlib ``ThreadingHTTPServer`` in a background thread, so it works the same for
the async tests (the event loop is never blocked by it) and for the generated sync tests (also
under gevent, where its threads are greenlets). It speaks HTTP/1.0: every response closes the
connection; a body without ``Content-Length`` ends at the close.
"""

from __future__ import annotations

import io
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = [
    "ImageServer",
    "closed_port",
    "make_certificate",
    "make_image",
    "patch_png_size",
]


def make_image(
    fmt: str = "JPEG",
    size: tuple[int, int] = (64, 48),
    *,
    mode: str = "RGB",
    color: Any = (200, 30, 30),
    exif_orientation: int | None = None,
) -> bytes:
    """Encode a small solid image (``fmt``: JPEG, PNG, WEBP or GIF)."""
    img = Image.new(mode, size, color)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR to declare another size (a decompression-bomb stand-in)."""
    assert png[12:16] == b"IHDR"
    ihdr = png[16:29]
    ihdr = struct.pack(">II", width, height) + ihdr[8:]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return png[:16] + ihdr + crc + png[33:]


def closed_port() -> int:
    """A loopback TCP port with nothing listening on it (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_certificate(folder: Path, name: str) -> tuple[Path, Path] | None:
    """A self-signed certificate for DNS name ``name``: (cert.pem, key.pem); None without the
    ``openssl`` command."""
    if shutil.which("openssl") is None:
        return None
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}"],
        check=True, capture_output=True,
    )
    return cert, key


JPEG = make_image("JPEG", (640, 480))
PNG = make_image("PNG", (300, 200), mode="RGBA", color=(0, 0, 255, 0))
BIG_SIZE = 200_000
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10"/></svg>'
)
HTML = b"<!doctype html><html><body>not an image</body></html>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: ImageServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up (timeouts, size limits) are expected


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "image/jpeg",
        *,
        length: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _redirect(self, location: str, status: int = 302) -> None:
        self._send(status, b"", "text/plain", headers={"Location": location})

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.requests.append((self.path, self.headers.get("Host", "")))
        path = self.path.split("?", 1)[0]
        base = f"http://127.0.0.1:{owner.port}"
        if path == "/photo.jpg":
            self._send(200, JPEG)
        elif path == "/photo.png":
            self._send(200, PNG, "image/png")
        elif path == "/big.bin":
            self._send(200, JPEG[:3] + bytes(BIG_SIZE))
        elif path == "/big-stream":
            self._send(200, JPEG[:3] + bytes(BIG_SIZE), length=False)
        elif path == "/empty":
            self._send(200, b"")
        elif path == "/page.html":
            self._send(200, HTML, "image/jpeg")
        elif path == "/drawing.svg":
            self._send(200, SVG, "image/svg+xml")
        elif path == "/truncated.jpg":
            self._send(200, JPEG[: len(JPEG) // 2])
        elif path == "/missing":
            self._send(404, b"not found", "text/plain")
        elif path == "/error":
            self._send(503, b"busy", "text/plain")
        elif path == "/no-location":
            self._send(302, b"", "text/plain")
        elif path == "/redirect":
            self._redirect("/photo.jpg")
        elif path == "/redirect-abs":
            self._redirect(f"{base}/photo.png", 301)
        elif path.startswith("/chain/"):
            left = int(path.rsplit("/", 1)[1])
            self._redirect(f"/chain/{left - 1}" if left > 0 else "/photo.jpg", 307)
        elif path == "/to-localhost":
            self._redirect(f"http://localhost:{owner.port}/photo.jpg")
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/to-metadata":
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif path.startswith("/pause/"):  # /pause/<ms>/<anything>: answer after a short wait
            time.sleep(int(path.split("/")[2]) / 1000)
            self._send(200, JPEG)
        elif path == "/slow":
            time.sleep(owner.slow_seconds)
            self._send(200, JPEG)
        else:
            self._send(404, b"no such test path", "text/plain")


class ImageServer:
    """The test image server; ``url(path)`` gives an absolute ``http://127.0.0.1:<port>`` URL."""

    def __init__(
        self, *, slow_seconds: float = 3.0, tls: tuple[Path, Path] | None = None
    ) -> None:
        self.slow_seconds = slow_seconds
        self.requests: list[tuple[str, str]] = []
        self.sni_names: list[str | None] = []
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        if tls is not None:  # HTTPS with this (cert, key); records the SNI name clients send
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            context.sni_callback = lambda _sock, name, _ctx: self.sni_names.append(name)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, as listed in ``image_allowed_hosts``."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        """The absolute URL of ``path`` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> ImageServer:
        """Serve in a background thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (slow handlers are abandoned)."""
        self._httpd.shutdown()
        self._httpd.server_close()
