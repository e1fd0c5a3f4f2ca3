# GENERATED from src/waste_pipeline/_async/images.py by `nox -s generate`; do not edit.
"""Turn each :class:`~waste_pipeline.models.ImageInput` into a :class:`PreparedImage`.

Sources: raw bytes, ``data:`` URLs and http(s) URLs. For http(s):

* :func:`~waste_pipeline.imaging.check_url` (scheme, userinfo, port, IP literals, metadata
  names), then DNS through ``compat.getaddrinfo`` and
  :func:`~waste_pipeline.imaging.check_address` on EVERY resolved address (unless the host is in
  ``settings.image_allowed_hosts``);
* the request goes to the checked IP (``http://<ip>:<port>/path`` with the original ``Host``
  header; for https also ``extensions={"sni_hostname": host}``, which httpx2/httpcore2 use as
  the TLS ``server_hostname``, so SNI and certificate verification are against the name), so a
  second DNS answer cannot swap in another address (DNS rebinding);
* redirects are followed by hand, at most ``settings.image_max_redirects``, every hop checked
  again the same way;
* the body is streamed and abandoned as soon as it exceeds ``settings.image_max_bytes``
  (``Content-Length`` is checked first); the whole fetch runs under ``settings.image_timeout``.

Decoding and re-encoding (:func:`~waste_pipeline.imaging.prepare_image_with_size`) run via
``compat.run_blocking``: a worker thread under asyncio, gevent's real-thread pool under gevent.

When ``settings.image_inline`` is False, an http(s) image is still fetched and validated (a bad
URL fails the same way in both modes) but the result carries ``data_url=None`` and the URL to
pass through in ``source_url``. Bytes and ``data:`` images are always inlined.

Errors: refused URLs :class:`ImageSourceForbiddenError`; 4xx, empty bodies, too many redirects,
bad TLS certificates :class:`ImageFetchError`; timeouts, connection errors, 5xx, 408/425/429
:class:`ImageHostUnavailableError` (transient); size :class:`ImageTooLargeError`; content
:class:`ImageTypeError`.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx2

from .. import _sync_compat as compat
from ..errors import (
    ImageFetchError,
    ImageHostUnavailableError,
    ImageTooLargeError,
    InvalidInputError,
)
from ..imaging import (
    PreparedImage,
    check_address,
    check_url,
    host_is_allowed,
    prepare_image_with_size,
    split_url,
    to_data_url,
    warm_up,
)
from ..models import ImageInput, decode_data_url
from ..settings import Settings

__all__ = ["LOAD_CONCURRENCY", "ImageFetcher", "PreparedImage"]

LOAD_CONCURRENCY = 4
"""Images of one scan loaded at once by :meth:`AsyncImageFetcher.load_all`."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_REQUEST_HEADERS = {
    "Accept": "image/jpeg, image/png, image/webp, image/gif;q=0.9",
    "Accept-Encoding": "identity",
    "User-Agent": "waste-pipeline-image-fetcher",
}


@dataclass(frozen=True)
class _Hop:
    """One checked request: where to connect (in order of preference) and what to send."""

    host: str
    urls: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


class ImageFetcher:
    """Loads and prepares scan images. Create once per process (or per pipeline) and share.

    ``http_client`` is a shared ``httpx2.AsyncClient`` (not closed here; it must not carry
    credentials in its default headers, since image hosts are arbitrary). Without one, the
    fetcher creates its own client and closes it in :meth:`aclose` (``async with`` works too).
    """

    def __init__(
        self, settings: Settings | None = None, *, http_client: httpx2.Client | None = None
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self._own_client = http_client is None
        self._client = (
            http_client
            if http_client is not None
            else httpx2.Client(
                timeout=httpx2.Timeout(self.settings.image_timeout),
                follow_redirects=False,
                trust_env=False,
            )
        )
        self._timeout = httpx2.Timeout(self.settings.image_timeout)
        warm_up()  # Pillow's lazy imports here, not in a pool thread (see imaging.warm_up)

    def close(self) -> None:
        """Close the HTTP client if this fetcher created it."""
        if self._own_client:
            self._client.close()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- public -----------------------------------------------------------------------------

    def load_all(self, images: Sequence[ImageInput]) -> list[PreparedImage]:
        """Load every image, a few at once; raise the first failure in input order."""
        results = compat.map_bounded(self.load, images, limit=LOAD_CONCURRENCY)
        prepared: list[PreparedImage] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            prepared.append(result)
        return prepared

    def load(self, image: ImageInput) -> PreparedImage:
        """Fetch (if needed), check and prepare one image."""
        source_url: str | None = None
        if image.data is not None:
            raw = image.data
            self._check_size(len(raw))
        elif image.url is not None and image.url[:5].lower() == "data:":
            raw = self._decode_data_url(image.url)
        elif image.url is not None:
            source_url = image.url
            raw = self.fetch(image.url)
        else:  # pragma: no cover - ImageInput guarantees one of them
            raise InvalidInputError("image has neither a URL nor data")
        data, media_type, width, height = compat.run_blocking(
            prepare_image_with_size,
            raw,
            max_side=self.settings.image_max_side,
            max_pixels=self.settings.image_max_pixels,
        )
        inline = source_url is None or self.settings.image_inline
        return PreparedImage(
            media_type=media_type,
            data=data,
            data_url=to_data_url(data, media_type) if inline else None,
            source_url=source_url,
            original_bytes=len(raw),
            width=width,
            height=height,
        )

    def fetch(self, url: str) -> bytes:
        """The body of an http(s) image URL, fetched under the address policy and limits."""
        seconds = self.settings.image_timeout
        try:
            with compat.timeout(seconds):
                body = self._fetch(url)
        except TimeoutError as exc:
            raise ImageHostUnavailableError(
                f"the image host did not answer within {seconds:g} s", reason="timeout"
            ) from exc
        return body

    # --- internals --------------------------------------------------------------------------

    def _check_size(self, size: int) -> None:
        limit = self.settings.image_max_bytes
        if size > limit:
            raise ImageTooLargeError(
                f"the image is larger than {limit} bytes", size=size, max_bytes=limit
            )

    def _decode_data_url(self, url: str) -> bytes:
        header, _, payload = url.partition(",")
        if header.lower().endswith(";base64"):
            self._check_size(len(payload) * 3 // 4 - 2)  # refuse before decoding
        else:
            self._check_size(len(payload) // 3)  # at most 3 characters per byte (%XX)
        try:
            _media_type, raw = decode_data_url(url)
        except ValueError as exc:
            raise InvalidInputError(f"malformed data: URL ({exc})") from None
        self._check_size(len(raw))
        return raw

    def _fetch(self, url: str) -> bytes:
        current = url
        for _hop in range(self.settings.image_max_redirects + 1):
            hop = self._check_hop(current)
            location, body = self._request(hop)
            if location is None:
                return body
            current = urljoin(current, location)
        raise ImageFetchError(
            f"the image URL redirected more than {self.settings.image_max_redirects} times"
        )

    def _check_hop(self, url: str) -> _Hop:
        """Apply the address policy to one URL and pin the request to a checked address."""
        scheme, host, port = check_url(url, self.settings.image_allowed_hosts)
        parts = split_url(url)[0]
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        name = f"[{host}]" if ":" in host else host
        netloc = name if port == (443 if scheme == "https" else 80) else f"{name}:{port}"
        if host_is_allowed(host, port, self.settings.image_allowed_hosts) or _is_ip(host):
            # Exempt hosts are trusted as named; IP literals were checked by check_url.
            return _Hop(host=host, urls=[f"{scheme}://{netloc}{path}"])
        addresses = self._resolve(host, port)
        for address in addresses:
            check_address(address)
        headers = {"Host": netloc}
        extensions: dict[str, Any] = {}
        if scheme == "https":
            extensions["sni_hostname"] = host
            if self._own_client:
                # The pool keys connections by IP: never reuse a TLS connection verified for
                # one name for another name on the same address.
                headers["Connection"] = "close"
        urls = [f"{scheme}://{_bracket(ip)}:{port}{path}" for ip in addresses]
        return _Hop(host=host, urls=urls, headers=headers, extensions=extensions)

    def _resolve(self, host: str, port: int) -> list[str]:
        try:
            found = compat.getaddrinfo(host, port)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise ImageHostUnavailableError(
                    "the image host name could not be resolved right now", host=host
                ) from exc
            raise ImageFetchError("the image host name does not resolve", host=host) from exc
        except OSError as exc:
            raise ImageHostUnavailableError(
                "the image host name could not be resolved", host=host
            ) from exc
        addresses = list(dict.fromkeys(a.split("%", 1)[0] for a in found))
        if not addresses:
            raise ImageFetchError("the image host name does not resolve", host=host)
        return addresses

    def _request(self, hop: _Hop) -> tuple[str | None, bytes]:
        """GET one hop: (redirect location, b"") or (None, body). Tries each address in turn."""
        last_error: httpx2.ConnectError | None = None
        for url in hop.urls:
            try:
                return self._request_one(url, hop)
            except httpx2.ConnectError as exc:
                if _tls_verification_failed(exc):
                    raise ImageFetchError(
                        "the image host's TLS certificate is not valid", host=hop.host
                    ) from exc
                last_error = exc
            except httpx2.TimeoutException as exc:
                raise ImageHostUnavailableError(
                    "the image host did not answer in time", host=hop.host, reason="timeout"
                ) from exc
            except httpx2.TransportError as exc:
                raise ImageHostUnavailableError(
                    f"the connection to the image host failed ({type(exc).__name__})",
                    host=hop.host,
                ) from exc
            except httpx2.RequestError as exc:
                raise ImageFetchError(
                    f"the image host sent an unusable response ({type(exc).__name__})",
                    host=hop.host,
                ) from exc
            except httpx2.InvalidURL as exc:
                raise InvalidInputError("malformed image URL", host=hop.host) from exc
        raise ImageHostUnavailableError(
            "could not connect to the image host", host=hop.host
        ) from last_error

    def _request_one(self, url: str, hop: _Hop) -> tuple[str | None, bytes]:
        limit = self.settings.image_max_bytes
        chunks: list[bytes] = []
        with self._client.stream(
            "GET",
            url,
            headers={**_REQUEST_HEADERS, **hop.headers},
            extensions=hop.extensions,
            follow_redirects=False,
            timeout=self._timeout,
        ) as response:
            status = response.status_code
            if status in _REDIRECT_STATUSES:
                location = response.headers.get("location")
                if not location:
                    raise ImageFetchError(
                        "the image host redirected without a Location", host=hop.host
                    )
                return location, b""
            _check_status(status, hop.host, response.headers.get("retry-after"))
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise ImageTooLargeError(
                    f"the image is larger than {limit} bytes",
                    size=int(declared),
                    max_bytes=limit,
                )
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > limit:
                    raise ImageTooLargeError(
                        f"the image is larger than {limit} bytes", max_bytes=limit
                    )
                chunks.append(chunk)
        if not total:
            raise ImageFetchError("the image host sent an empty body", host=hop.host)
        return None, b"".join(chunks)


def _check_status(status: int, host: str, retry_after: str | None) -> None:
    if 200 <= status < 300:
        return
    if status >= 500 or status in _TRANSIENT_STATUSES:
        wait = float(retry_after) if retry_after and retry_after.isdigit() else None
        raise ImageHostUnavailableError(
            f"the image host answered HTTP {status}", host=host, status=status, retry_after=wait
        )
    raise ImageFetchError(f"the image host answered HTTP {status}", host=host, status=status)


def _bracket(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _tls_verification_failed(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False
