"""Image intake helpers: type sniffing, the SSRF address policy, and the Pillow pipeline.

Pure, synchronous, hand-written (not generated): both twins' ``images`` modules call these.
The CPU-heavy :func:`prepare_image` is meant to run through ``compat.run_blocking`` so that it
never blocks an event loop (or, under gevent, the hub).

Address policy (:func:`check_url`, :func:`check_address`): an image URL may only point at a
public (globally routable) unicast address over http/https. Loopback, private, link-local (incl.
the cloud metadata address 169.254.169.254), CGNAT, documentation, benchmarking, reserved,
multicast and unspecified ranges are refused, as are IPv6 forms that embed such an IPv4 address
(IPv4-mapped, IPv4-compatible, 6to4, NAT64) and every IPv6 address outside 2000::/3. Hosts
listed in ``allowed_hosts`` (``host`` or ``host:port``, case-insensitive) bypass the policy.
"""

from __future__ import annotations

import base64
import functools
import io
import ipaddress
import re
import string
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import (
    ImageSourceForbiddenError,
    ImageTooLargeError,
    ImageTypeError,
    InvalidInputError,
)

__all__ = [
    "JPEG_QUALITY",
    "PreparedImage",
    "check_address",
    "check_url",
    "host_is_allowed",
    "prepare_image",
    "prepare_image_with_size",
    "sniff_image_type",
    "split_url",
    "to_data_url",
    "warm_up",
]

JPEG_QUALITY = 85
"""Quality of the JPEG every image is re-encoded to."""

_FORMATS: dict[str, str] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/gif": "GIF",
}


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """One image, checked, decoded, oriented, downscaled and re-encoded.

    ``data_url`` is the inline form (``data:image/jpeg;base64,...``); it is ``None`` only when
    ``settings.image_inline`` is False and the image came from an http(s) URL: then the model
    should be given ``source_url`` (the image was still fetched and validated, so a bad URL
    fails the same way in both modes). :attr:`model_url` picks the right one.
    """

    media_type: str
    data: bytes = field(repr=False)
    data_url: str | None = field(repr=False)
    source_url: str | None
    original_bytes: int
    width: int
    height: int

    @property
    def model_url(self) -> str:
        """What to send to the model: the inline data URL, else the pass-through URL."""
        url = self.data_url if self.data_url is not None else self.source_url
        if url is None:  # pragma: no cover - the constructor never builds this
            raise ValueError("prepared image has neither a data URL nor a source URL")
        return url


# --- type sniffing -----------------------------------------------------------------------------


def sniff_image_type(data: bytes) -> str | None:
    """The media type of ``data`` judged by its magic bytes, or None if not JPEG/PNG/WebP/GIF."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def to_data_url(data: bytes, media_type: str) -> str:
    """``data:<media_type>;base64,<data>``."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


# --- address policy ----------------------------------------------------------------------------

_V4_REFUSED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", incl. 0.0.0.0
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, incl. 169.254.169.254 (cloud metadata)
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast (deprecated)
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. 255.255.255.255
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_REFUSED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "2001::/32",  # Teredo (embeds an obfuscated IPv4 address)
        "2001:db8::/32",  # documentation
        "2001:10::/28",  # ORCHID (deprecated)
        "3fff::/20",  # documentation (RFC 9637)
    )
)
_V6_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_V6_6TO4 = ipaddress.IPv6Network("2002::/16")

_METADATA_NAMES = frozenset(
    {
        "localhost",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "kubernetes.default",
        "kubernetes.default.svc",
        "ip6-localhost",
        "ip6-loopback",
    }
)
"""Names refused before any DNS lookup (cloud metadata services, loopback aliases)."""

_REFUSED_SUFFIXES = (".localhost", ".internal", ".local", ".localdomain", ".svc", ".cluster.local")


def _forbidden(reason: str, ip: str) -> ImageSourceForbiddenError:
    return ImageSourceForbiddenError(
        f"image URL points at a non-public address ({reason}); only public http(s) hosts are "
        "allowed",
        address=ip,
    )


def check_address(ip: str) -> None:
    """Raise :class:`ImageSourceForbiddenError` unless ``ip`` is a public unicast address.

    ``ip`` is an IP address as text (an IPv6 zone id ``%eth0`` is allowed and ignored); anything
    else raises :class:`InvalidInputError`.
    """
    if not isinstance(ip, str):
        raise InvalidInputError("not an IP address")
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidInputError("not an IP address", address=ip[:100]) from None
    _check_ip(addr, ip)


def _check_ip(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, shown: str) -> None:
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            _check_ip(embedded, shown)
            return
        if addr not in _V6_GLOBAL_UNICAST:
            raise _forbidden("IPv6 outside the global unicast range", shown)
        for net in _V6_REFUSED:
            if addr in net:
                raise _forbidden(f"reserved range {net}", shown)
    else:
        for v4net in _V4_REFUSED:
            if addr in v4net:
                raise _forbidden(f"reserved range {v4net}", shown)
    if (
        addr.is_loopback
        or addr.is_private
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or not addr.is_global
    ):
        raise _forbidden("not a public address", shown)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    packed = addr.packed
    if packed[:12] == bytes(12) and int(addr) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed[12:])
    if addr in _V6_6TO4:
        return addr.sixtofour
    if addr in _V6_NAT64[0]:
        return ipaddress.IPv4Address(packed[12:])
    return None


def _parse_ipv4_number(label: str) -> int | None:
    if label[:2] in ("0x", "0X"):
        digits, base = label[2:], 16
        if not digits:
            return 0
    elif len(label) > 1 and label[0] == "0":
        digits, base = label[1:], 8
    else:
        digits, base = label, 10
    allowed = {16: string.hexdigits, 8: string.octdigits, 10: string.digits}[base]
    if not digits or any(c not in allowed for c in digits):
        return None
    return int(digits, base)


def _ends_in_number(host: str) -> bool:
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    return bool(last) and (
        (last.isascii() and last.isdigit()) or re.fullmatch(r"0[xX][0-9a-fA-F]*", last) is not None
    )


def _loose_ipv4(host: str) -> str:
    """Parse a numeric host the way browsers and ``inet_aton`` do (``2130706433``, ``0x7f.1``,
    ``0177.0.0.1``) and return the dotted-quad form; refuse what cannot be parsed."""
    labels = host.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    numbers = [_parse_ipv4_number(label) for label in labels] if len(labels) <= 4 else [None]
    valid = [n for n in numbers if n is not None]
    if len(valid) != len(numbers) or any(n > 255 for n in valid[:-1]):
        raise ImageSourceForbiddenError("image URL host is an ambiguous numeric address")
    if valid[-1] >= 256 ** (5 - len(valid)):
        raise ImageSourceForbiddenError("image URL host is an ambiguous numeric address")
    value = valid[-1] + sum(n * 256 ** (3 - i) for i, n in enumerate(valid[:-1]))
    return str(ipaddress.IPv4Address(value))


_HOST_CHARS = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")


def split_url(url: str) -> tuple[SplitResult, str, str, int]:
    """Parse and normalise an http(s) URL: (parts, scheme, host, port). No address policy.

    ``host`` is lower-case ASCII (IDNA), without brackets or a trailing dot; numeric IPv4 forms
    are normalised to dotted quads. Raises :class:`ImageSourceForbiddenError` for another scheme
    or for userinfo, :class:`InvalidInputError` when malformed.
    """
    if not isinstance(url, str):
        raise InvalidInputError("image URL must be a string")
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageSourceForbiddenError(
                "image URL must use http or https", scheme=scheme[:20] or None
            )
        netloc = parts.netloc
        if "@" in netloc or parts.username is not None or parts.password is not None:
            raise ImageSourceForbiddenError("image URL must not contain user:password@")
        if "\\" in netloc:
            raise InvalidInputError("image URL host contains a backslash")
        raw_host = parts.hostname
        port = parts.port
    except ValueError:
        # The parser's message may quote parts of the URL (user:password@): do not echo it.
        raise InvalidInputError("malformed image URL (bad host or port)") from None
    if not raw_host:
        raise InvalidInputError("image URL has no host")
    if port is None:
        port = 443 if scheme == "https" else 80
    if not 1 <= port <= 65535:
        raise InvalidInputError("image URL port is out of range")
    host = _normalise_host(raw_host, bracketed=netloc.split("@")[-1].startswith("["))
    return parts, scheme, host, port


def _normalise_host(raw: str, *, bracketed: bool) -> str:
    if bracketed:
        try:
            return str(ipaddress.IPv6Address(raw.split("%", 1)[0]))
        except ValueError:
            raise InvalidInputError("image URL has a malformed IPv6 host") from None
    host = raw.rstrip(".") if raw not in (".", "") else ""
    if not host:
        raise InvalidInputError("image URL has no host")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        raise InvalidInputError("image URL host is not a valid host name") from None
    if not _HOST_CHARS.fullmatch(host):
        raise InvalidInputError("image URL host is not a valid host name")
    if _ends_in_number(host):
        host = _loose_ipv4(host)
    return host


def _host_for_netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def host_is_allowed(host: str, port: int, allowed_hosts: Collection[str]) -> bool:
    """True if ``host`` (normalised, as :func:`check_url` returns it) on ``port`` is exempt."""
    if not allowed_hosts:
        return False
    wanted = {a.strip().lower().rstrip(".") for a in allowed_hosts if a and a.strip()}
    shown = _host_for_netloc(host)
    return bool({host, shown, f"{shown}:{port}"} & wanted)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def check_url(url: str, allowed_hosts: Collection[str] = ()) -> tuple[str, str, int]:
    """Check an image URL before any network access; return (scheme, host, port).

    Only http/https, a host, no userinfo, a port in 1-65535. An IP-literal host (also in the
    odd numeric forms ``2130706433``, ``0x7f.1``, ``0177.0.0.1``) must be public; names of
    metadata services and loopback aliases (``localhost``, ``metadata.google.internal``,
    ``*.internal``, ...) are refused before DNS. Hosts in ``allowed_hosts`` (``host`` or
    ``host:port``, case-insensitive) bypass the address policy. A host name that passes must
    still have every resolved address checked with :func:`check_address`.
    """
    _parts, scheme, host, port = split_url(url)
    if host_is_allowed(host, port, allowed_hosts):
        return scheme, host, port
    if _is_ip_literal(host):
        check_address(host)
    elif host in _METADATA_NAMES or host.endswith(_REFUSED_SUFFIXES):
        raise ImageSourceForbiddenError(
            "image URL points at a local or metadata host name; only public http(s) hosts are "
            "allowed",
            host=host,
        )
    return scheme, host, port


# --- the Pillow pipeline -----------------------------------------------------------------------


def prepare_image(data: bytes, *, max_side: int, max_pixels: int) -> tuple[bytes, str]:
    """Validate, decode, orient, flatten, downscale and re-encode one image as JPEG.

    Returns (JPEG bytes, ``"image/jpeg"``). Raises :class:`ImageTypeError` for anything but a
    decodable JPEG/PNG/WebP/GIF (HTML, SVG, empty, truncated) and :class:`ImageTooLargeError`
    when the declared pixel count exceeds ``max_pixels`` (checked before decoding).
    """
    out, media_type, _w, _h = prepare_image_with_size(
        data, max_side=max_side, max_pixels=max_pixels
    )
    return out, media_type


def prepare_image_with_size(
    data: bytes, *, max_side: int, max_pixels: int
) -> tuple[bytes, str, int, int]:
    """:func:`prepare_image`, also returning the output's (width, height)."""
    if max_side < 1 or max_pixels < 1:
        raise ValueError("max_side and max_pixels must be >= 1")
    kind = sniff_image_type(data)
    if kind is None:
        raise ImageTypeError(
            "the file is not a JPEG, PNG, WebP or GIF image", size=len(data)
        )
    try:
        img = Image.open(io.BytesIO(data), formats=[_FORMATS[kind]])
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            "the image has too many pixels", max_pixels=max_pixels
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageTypeError(
            f"the {kind} image cannot be decoded", media_type=kind
        ) from exc
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageTypeError("the image has no pixels", media_type=kind)
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image has {width}x{height} pixels, more than the limit of {max_pixels}",
                width=width,
                height=height,
                max_pixels=max_pixels,
            )
        if kind == "image/jpeg":
            # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers max_side.
            img.draft("RGB", (max_side, max_side))
        try:
            img.load()
        except Image.DecompressionBombError:
            raise ImageTooLargeError(
                "the image has too many pixels", max_pixels=max_pixels
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            raise ImageTypeError(
                "image is truncated or corrupt", media_type=kind
            ) from exc
        out = _finish(img, max_side=max_side)
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue(), "image/jpeg", out.width, out.height


def _finish(img: Image.Image, *, max_side: int) -> Image.Image:
    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not fail the scan: keep the stored orientation
        oriented = img
    rgb = _to_rgb(oriented)
    if max(rgb.size) > max_side:
        scale = max_side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def _to_rgb(img: Image.Image) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float greyscale: scale to 8 bits instead of clipping to white.
        img = img.convert("I").point(lambda v: v / 256).convert("L")
    return img if img.mode == "RGB" else img.convert("RGB")


@functools.cache
def warm_up() -> None:
    """Run every code path of :func:`prepare_image_with_size` once, in the calling thread.

    Pillow imports plugins (WebP, TIFF for EXIF, the encoders) lazily, on first use. Under
    gevent that first use would happen in gevent's native thread pool (``run_blocking``), where
    the import machinery's locks are gevent locks created by monkey-patching: a native thread
    blocking on one while a greenlet holds it never wakes up (seen as a scan stuck before its
    first model call in a fresh ``-P gevent`` worker). Called when an image fetcher is created.
    """
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate, so exif_transpose does real work
    for fmt, extra in (("JPEG", {"exif": exif.tobytes()}), ("PNG", {}), ("WEBP", {}),
                       ("GIF", {})):
        buf = io.BytesIO()
        mode = "P" if fmt == "GIF" else "RGBA" if fmt in ("PNG", "WEBP") else "RGB"
        Image.new(mode, (4, 3)).save(buf, fmt, **extra)
        prepare_image_with_size(buf.getvalue(), max_side=2, max_pixels=100)
