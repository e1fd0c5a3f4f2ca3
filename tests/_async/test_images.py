# async source: image intake tests against a real local HTTP server (and mock DNS/transport).
"""Image intake: fetching, the SSRF policy on every hop, limits, timeouts, preparation.

Written once, async; ``tests/_sync/test_images.py`` is generated from it. The image server
(``tests/imageserver.py``) runs in a background thread on 127.0.0.1, so tests that expect
success allow exactly ``127.0.0.1:<port>``; the SSRF tests use settings without the allowance.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.imageserver import JPEG, ImageServer, closed_port, make_certificate, make_image
from waste_pipeline import _async_compat as compat
from waste_pipeline._async import images as images_module
from waste_pipeline._async.images import AsyncImageFetcher
from waste_pipeline.errors import (
    ImageFetchError,
    ImageHostUnavailableError,
    ImageSourceForbiddenError,
    ImageTooLargeError,
    ImageTypeError,
    InvalidInputError,
    TransientError,
)
from waste_pipeline.imaging import PreparedImage
from waste_pipeline.models import ImageInput
from waste_pipeline.settings import Settings

PUBLIC_IP = "93.184.215.14"


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    srv = ImageServer(slow_seconds=3.0).start()
    yield srv
    srv.stop()


def allowed(server: ImageServer, **overrides: object) -> Settings:
    """Settings that exempt exactly this server's host:port from the address policy."""
    return Settings(image_allowed_hosts=[server.host], **overrides)  # type: ignore[arg-type]


async def load_url(settings: Settings, url: str) -> PreparedImage:
    async with AsyncImageFetcher(settings) as fetcher:
        return await fetcher.load(ImageInput(url=url))


# --- success paths -----------------------------------------------------------------------------


async def test_fetches_and_prepares_a_jpeg(server: ImageServer) -> None:
    image = await load_url(allowed(server), server.url("/photo.jpg"))
    assert image.media_type == "image/jpeg"
    assert image.data[:3] == b"\xff\xd8\xff"
    assert (image.width, image.height) == (640, 480)
    assert image.original_bytes == len(JPEG)
    assert image.data_url is not None
    assert image.data_url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(image.data_url.split(",", 1)[1]) == image.data
    assert image.source_url == server.url("/photo.jpg")
    assert image.model_url == image.data_url


async def test_png_with_alpha_becomes_jpeg_on_white(server: ImageServer) -> None:
    image = await load_url(allowed(server), server.url("/photo.png"))
    assert image.media_type == "image/jpeg"
    assert (image.width, image.height) == (300, 200)


async def test_follows_relative_and_absolute_redirects_within_the_limit(
    server: ImageServer,
) -> None:
    settings = allowed(server, image_max_redirects=3)
    assert (await load_url(settings, server.url("/redirect"))).width == 640
    assert (await load_url(settings, server.url("/redirect-abs"))).width == 300
    assert (await load_url(settings, server.url("/chain/2"))).width == 640


async def test_pass_through_mode_still_validates(server: ImageServer) -> None:
    settings = allowed(server, image_inline=False)
    image = await load_url(settings, server.url("/photo.jpg"))
    assert image.data_url is None
    assert image.source_url == server.url("/photo.jpg")
    assert image.model_url == server.url("/photo.jpg")
    with pytest.raises(ImageTypeError):
        await load_url(settings, server.url("/page.html"))
    async with AsyncImageFetcher(settings) as fetcher:
        inline = await fetcher.load(ImageInput(data=JPEG))
    assert inline.data_url is not None
    assert inline.source_url is None


async def test_data_url_and_raw_bytes() -> None:
    png = make_image("PNG", (2000, 500))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    async with AsyncImageFetcher(Settings(image_max_side=1024)) as fetcher:
        from_url = await fetcher.load(ImageInput(url=data_url))
        from_bytes = await fetcher.load(ImageInput(data=png))
        gif = await fetcher.load(ImageInput(data=make_image("GIF", (10, 10))))
        webp = await fetcher.load(ImageInput(data=make_image("WEBP", (10, 10))))
    for image in (from_url, from_bytes):
        assert (image.width, image.height) == (1024, 256)
        assert image.original_bytes == len(png)
        assert image.source_url is None
        assert image.data_url is not None
    assert gif.media_type == webp.media_type == "image/jpeg"


async def test_bad_data_urls_and_bytes() -> None:
    async with AsyncImageFetcher(Settings(image_max_bytes=4096)) as fetcher:
        with pytest.raises(InvalidInputError):
            await fetcher.load(ImageInput(url="data:image/png;base64,%%%not-base64"))
        with pytest.raises(ImageTypeError):
            await fetcher.load(ImageInput(url="data:image/png;base64,"))
        with pytest.raises(ImageTypeError):
            await fetcher.load(ImageInput(url="data:text/html,<html></html>"))
        big = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff" + bytes(9000)).decode()
        with pytest.raises(ImageTooLargeError):
            await fetcher.load(ImageInput(url=big))
        with pytest.raises(ImageTooLargeError):
            await fetcher.load(ImageInput(data=b"\xff\xd8\xff" + bytes(5000)))
        with pytest.raises(ImageTypeError):
            await fetcher.load(ImageInput(data=b"<svg xmlns='http://www.w3.org/2000/svg'/>"))


async def test_load_all_keeps_order_and_raises_the_first_failure(server: ImageServer) -> None:
    settings = allowed(server)
    async with AsyncImageFetcher(settings) as fetcher:
        images = await fetcher.load_all(
            [
                ImageInput(url=server.url("/photo.png")),
                ImageInput(data=make_image("JPEG", (10, 20))),
                ImageInput(url=server.url("/photo.jpg")),
            ]
        )
        assert [(i.width, i.height) for i in images] == [(300, 200), (10, 20), (640, 480)]
        with pytest.raises(ImageTypeError):
            await fetcher.load_all(
                [
                    ImageInput(url=server.url("/photo.jpg")),
                    ImageInput(url=server.url("/drawing.svg")),
                    ImageInput(url=server.url("/missing")),
                ]
            )


async def test_load_all_fetches_concurrently(server: ImageServer) -> None:
    """Four 0.6 s fetches overlap (threads, greenlets or tasks): the sync twin must not
    serialise them, also under gevent."""
    urls = [server.url(f"/pause/600/{i}.jpg") for i in range(4)]
    async with AsyncImageFetcher(allowed(server)) as fetcher:
        start = time.monotonic()
        images = await fetcher.load_all([ImageInput(url=u) for u in urls])
        elapsed = time.monotonic() - start
    assert len(images) == 4
    assert elapsed < 1.8, f"4 fetches of 0.6 s took {elapsed:.2f} s: they ran one at a time"


async def test_shared_client_is_not_closed(server: ImageServer) -> None:
    async with httpx2.AsyncClient() as client:
        fetcher = AsyncImageFetcher(allowed(server), http_client=client)
        image = await fetcher.load(ImageInput(url=server.url("/photo.jpg")))
        await fetcher.aclose()
        assert not client.is_closed
        assert image.width == 640


# --- content and size failures -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/page.html", ImageTypeError),  # HTML served as image/jpeg: magic bytes decide
        ("/drawing.svg", ImageTypeError),
        ("/truncated.jpg", ImageTypeError),
        ("/empty", ImageFetchError),
        ("/missing", ImageFetchError),
        ("/no-location", ImageFetchError),
        ("/error", ImageHostUnavailableError),
        ("/big.bin", ImageTooLargeError),  # refused from Content-Length
        ("/big-stream", ImageTooLargeError),  # no Content-Length: refused while streaming
    ],
)
async def test_bad_responses(server: ImageServer, path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await load_url(allowed(server, image_max_bytes=100_000), server.url(path))


async def test_truncated_jpeg_message(server: ImageServer) -> None:
    with pytest.raises(ImageTypeError, match="truncated or corrupt"):
        await load_url(allowed(server), server.url("/truncated.jpg"))


async def test_5xx_is_transient(server: ImageServer) -> None:
    with pytest.raises(TransientError) as info:
        await load_url(allowed(server), server.url("/error"))
    assert info.value.code == "image_host_unavailable"
    assert info.value.details["status"] == 503


async def test_redirect_chain_longer_than_the_limit(server: ImageServer) -> None:
    with pytest.raises(ImageFetchError, match="redirected more than 2 times"):
        await load_url(allowed(server, image_max_redirects=2), server.url("/chain/3"))
    with pytest.raises(ImageFetchError):
        await load_url(allowed(server, image_max_redirects=0), server.url("/redirect"))


async def test_slow_host_times_out(server: ImageServer) -> None:
    start = time.monotonic()
    with pytest.raises(ImageHostUnavailableError) as info:
        await load_url(allowed(server, image_timeout=0.5), server.url("/slow"))
    assert time.monotonic() - start < 2.5
    assert info.value.transient


async def test_connection_refused_is_transient() -> None:
    port = closed_port()
    settings = Settings(image_allowed_hosts=["127.0.0.1"])
    with pytest.raises(ImageHostUnavailableError):
        await load_url(settings, f"http://127.0.0.1:{port}/photo.jpg")


# --- SSRF ------------------------------------------------------------------------------------


async def test_loopback_and_metadata_are_forbidden_without_allowance(server: ImageServer) -> None:
    before = len(server.requests)
    urls = [
        server.url("/photo.jpg"),
        f"http://localhost:{server.port}/",
        f"http://LOCALHOST.:{server.port}/photo.jpg",
        f"http://[::1]:{server.port}/",
        f"http://[::ffff:127.0.0.1]:{server.port}/",
        f"http://2130706433:{server.port}/photo.jpg",
        f"http://0x7f.1:{server.port}/photo.jpg",
        f"http://0177.0.0.1:{server.port}/photo.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://10.0.0.1/x.jpg",
        "http://100.64.0.1/x.jpg",
    ]
    async with AsyncImageFetcher(Settings()) as fetcher:
        for url in urls:
            with pytest.raises(ImageSourceForbiddenError):
                await fetcher.load(ImageInput(url=url))
        for url in ("file:///etc/passwd", "ftp://example.com/x.jpg", "gopher://x/"):
            with pytest.raises(ImageSourceForbiddenError):
                await fetcher.fetch(url)
        with pytest.raises(ImageSourceForbiddenError):
            await fetcher.load(ImageInput(url=f"http://user:pw@{server.host}/photo.jpg"))
    assert len(server.requests) == before  # nothing reached the server


async def test_allowance_is_exact_host_and_port(server: ImageServer) -> None:
    settings = Settings(image_allowed_hosts=[f"127.0.0.1:{closed_port()}"])
    with pytest.raises(ImageSourceForbiddenError):
        await load_url(settings, server.url("/photo.jpg"))


@pytest.mark.parametrize("path", ["/to-localhost", "/to-file", "/to-metadata"])
async def test_redirect_to_a_forbidden_target(server: ImageServer, path: str) -> None:
    before = len(server.requests)
    with pytest.raises(ImageSourceForbiddenError):
        await load_url(allowed(server), server.url(path))
    # the redirect itself was served; its target was never requested
    assert [p for p, _ in server.requests[before:]] == [path]


# --- DNS: every address checked, the request pinned to a checked address ---------------------


async def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        "mixed.example.com": [PUBLIC_IP, "10.1.2.3"],
        "mapped.example.com": ["::ffff:169.254.169.254"],
        "loop.example.com": ["127.0.0.1"],
        "v6.example.com": ["fd00::1"],
    }

    async def fake_getaddrinfo(host: str, port: int) -> list[str]:
        return answers[host]

    monkeypatch.setattr(compat, "getaddrinfo", fake_getaddrinfo)
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, content=JPEG)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        fetcher = AsyncImageFetcher(Settings(), http_client=client)
        for host in answers:
            with pytest.raises(ImageSourceForbiddenError):
                await fetcher.load(ImageInput(url=f"https://{host}/x.jpg"))
    assert seen == []


async def test_request_is_pinned_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    resolved: list[str] = []

    async def fake_getaddrinfo(host: str, port: int) -> list[str]:
        resolved.append(host)
        return {"images.example.com": [PUBLIC_IP], "cdn.example.net": ["2606:4700::6810:1"]}[
            host
        ]

    monkeypatch.setattr(compat, "getaddrinfo", fake_getaddrinfo)
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.url.path == "/start.jpg":
            return httpx2.Response(302, headers={"Location": "http://cdn.example.net:8080/b.jpg"})
        return httpx2.Response(200, content=JPEG)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        fetcher = AsyncImageFetcher(Settings(), http_client=client)
        image = await fetcher.load(ImageInput(url="https://images.example.com/start.jpg?v=1"))
    assert image.width == 640
    assert resolved == ["images.example.com", "cdn.example.net"]
    first, second = seen
    assert first.url.scheme == "https"
    assert first.url.host == PUBLIC_IP
    assert first.url.query == b"v=1"
    assert first.headers["host"] == "images.example.com"
    assert first.extensions["sni_hostname"] == "images.example.com"
    assert second.url.scheme == "http"
    assert second.url.host == "2606:4700::6810:1"
    assert second.url.port == 8080
    assert second.headers["host"] == "cdn.example.net:8080"
    assert "sni_hostname" not in second.extensions


async def test_redirect_hop_is_resolved_and_checked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fake_getaddrinfo(host: str, port: int) -> list[str]:
        return {"images.example.com": [PUBLIC_IP], "internal.example.com": ["192.168.1.10"]}[
            host
        ]

    monkeypatch.setattr(compat, "getaddrinfo", fake_getaddrinfo)
    seen: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        return httpx2.Response(301, headers={"Location": "http://internal.example.com/admin"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        fetcher = AsyncImageFetcher(Settings(), http_client=client)
        with pytest.raises(ImageSourceForbiddenError):
            await fetcher.load(ImageInput(url="https://images.example.com/a.jpg"))
    assert len(seen) == 1


async def test_dns_failure_is_permanent(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    async def fake_getaddrinfo(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(compat, "getaddrinfo", fake_getaddrinfo)
    async with AsyncImageFetcher(Settings()) as fetcher:
        with pytest.raises(ImageFetchError):
            await fetcher.load(ImageInput(url="https://nonexistent.example.com/a.jpg"))


async def test_https_is_pinned_with_sni_and_verified_against_the_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real TLS: the request goes to the checked IP, SNI and the certificate check use the name."""
    made = make_certificate(tmp_path, "images.test")
    if made is None:
        pytest.skip("needs the openssl command to make a test certificate")
    srv = ImageServer(tls=made).start()
    try:

        async def fake_getaddrinfo(host: str, port: int) -> list[str]:
            return ["127.0.0.1"]

        monkeypatch.setattr(compat, "getaddrinfo", fake_getaddrinfo)
        # let the loopback test server pass the address policy, to exercise the pinned path
        monkeypatch.setattr(images_module, "check_address", lambda ip: None)
        context = ssl.create_default_context(cafile=str(made[0]))
        async with httpx2.AsyncClient(verify=context) as client:
            fetcher = AsyncImageFetcher(Settings(), http_client=client)
            image = await fetcher.load(ImageInput(url=f"https://images.test:{srv.port}/photo.jpg"))
            assert image.width == 640
            assert srv.requests[-1] == ("/photo.jpg", f"images.test:{srv.port}")
            assert srv.sni_names == ["images.test"]
            with pytest.raises(ImageFetchError, match="TLS certificate"):
                await fetcher.load(ImageInput(url=f"https://other.test:{srv.port}/photo.jpg"))
        async with AsyncImageFetcher(Settings()) as own:  # system CAs: the test CA is unknown
            with pytest.raises(ImageFetchError, match="TLS certificate"):
                await own.load(ImageInput(url=f"https://images.test:{srv.port}/photo.jpg"))
    finally:
        srv.stop()
