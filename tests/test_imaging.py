"""The pure image helpers: magic bytes, the address/URL policy, the Pillow pipeline."""

from __future__ import annotations

import io
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.imageserver import make_image, patch_png_size
from waste_pipeline.errors import (
    ImageSourceForbiddenError,
    ImageTooLargeError,
    ImageTypeError,
    InvalidInputError,
)
from waste_pipeline.imaging import (
    check_address,
    check_url,
    host_is_allowed,
    prepare_image,
    prepare_image_with_size,
    sniff_image_type,
    to_data_url,
)

# --- magic bytes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp"), ("GIF", "image/gif")],
)
def test_sniff_real_images(fmt: str, media_type: str) -> None:
    assert sniff_image_type(make_image(fmt, (8, 8))) == media_type


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",  # too short for JPEG
        b"<!doctype html><html></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        b"<svg xmlns='http://www.w3.org/2000/svg'></svg>",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",  # RIFF but not WebP
        b"GIF88a",
        b"%PDF-1.7",
    ],
)
def test_sniff_refuses_non_images(data: bytes) -> None:
    assert sniff_image_type(data) is None


def test_gif87a_and_data_url() -> None:
    assert sniff_image_type(b"GIF87a" + bytes(10)) == "image/gif"
    assert to_data_url(b"\x00\x01", "image/png") == "data:image/png;base64,AAE="


# --- check_address -----------------------------------------------------------------------------

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.8",
    "192.0.2.1",  # documentation
    "198.51.100.7",
    "203.0.113.9",
    "198.18.0.1",  # benchmarking
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "3fff::1",
    "2001::1",  # Teredo
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:7f00:1",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "100::1",  # discard-only
    "5f00::1",  # outside 2000::/3
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.1",  # just above CGNAT
    "172.32.0.1",
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("ip", REFUSED)
def test_check_address_refuses(ip: str) -> None:
    with pytest.raises(ImageSourceForbiddenError):
        check_address(ip)


@pytest.mark.parametrize("ip", ALLOWED)
def test_check_address_allows_public(ip: str) -> None:
    check_address(ip)


@pytest.mark.parametrize("text", ["", "localhost", "1.2.3", "999.1.1.1", "::g", "8.8.8.8/32"])
def test_check_address_rejects_non_addresses(text: str) -> None:
    with pytest.raises(InvalidInputError):
        check_address(text)


# --- check_url ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://example.com/a.jpg", ("http", "example.com", 80)),
        ("HTTPS://Example.COM./a.jpg", ("https", "example.com", 443)),
        ("https://example.com:8443/a.jpg?x=1#f", ("https", "example.com", 8443)),
        ("http://8.8.8.8/x", ("http", "8.8.8.8", 80)),
        ("http://134744072/x", ("http", "8.8.8.8", 80)),  # decimal form of a public address
        ("http://[2606:4700:4700::1111]:8080/x", ("http", "2606:4700:4700::1111", 8080)),
        ("https://bücher.example/x.png", ("https", "xn--bcher-kva.example", 443)),
    ],
)
def test_check_url_accepts(url: str, expected: tuple[str, str, int]) -> None:
    assert check_url(url, ()) == expected


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://example.com/",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "//example.com/a.jpg",
        "http://user:pass@example.com/a.jpg",
        "http://user@example.com/a.jpg",
        "http://example.com@127.0.0.1/a.jpg",
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",  # decimal 127.0.0.1
        "http://0x7f000001/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://017700000001/",
        "http://0x7f.0.0.1/",
        "http://0/",
        "http://0.0.0.0:8080/",
        "http://10.1.1.1/",
        "http://167772161/",  # decimal 10.0.0.1
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",  # decimal 169.254.169.254
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fe80::1%25eth0]/",
        "http://localhost/",
        "http://LOCALHOST./",
        "http://foo.localhost/",
        "http://metadata/computeMetadata/v1/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://metadata.goog/",
        "http://instance-data/latest/",
        "http://printer.local/",
        "http://1.2.3.4.5/",  # ends in a number but is no IPv4 address
        "http://256.1.1.1/",
    ],
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(ImageSourceForbiddenError):
        check_url(url, ())


@pytest.mark.parametrize(
    "url",
    [
        "http:///a.jpg",
        "http://",
        "http://example.com:0/",
        "http://example.com:99999/",
        "http://example.com:abc/",
        "http://[::1/",
        "http://exa mple.com/",
        "http://a..b/",
        "http://" + "a" * 64 + ".com/",
        "http://[127.0.0.1]/",
        "http://ex%61mple.com/",
        "http://example.com\\@127.0.0.1/",
    ],
)
def test_check_url_malformed(url: str) -> None:
    with pytest.raises((InvalidInputError, ImageSourceForbiddenError)):
        check_url(url, ())


def test_allowed_hosts_bypass_the_policy() -> None:
    assert check_url("http://127.0.0.1:8080/x", ["127.0.0.1:8080"]) == ("http", "127.0.0.1", 8080)
    assert check_url("http://LOCALHOST:9/x", ["localhost"]) == ("http", "localhost", 9)
    assert check_url("http://[::1]:9/x", ["[::1]:9"]) == ("http", "::1", 9)
    with pytest.raises(ImageSourceForbiddenError):  # another port
        check_url("http://127.0.0.1:8081/x", ["127.0.0.1:8080"])
    with pytest.raises(ImageSourceForbiddenError):  # the allowance is by name, not by address
        check_url("http://localhost:8080/x", ["127.0.0.1:8080"])
    # another spelling of the same address is normalised first, so it is the same host
    assert check_url("http://0x7f.1:8080/x", ["127.0.0.1:8080"]) == ("http", "127.0.0.1", 8080)
    assert host_is_allowed("example.com", 443, ["EXAMPLE.com"])
    assert not host_is_allowed("example.com", 443, [])


# --- property-based ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4, network="127.0.0.0/8") | st.ip_addresses(v=4, network="10.0.0.0/8"))
def test_loopback_and_private_v4_always_refused(ip: ipaddress.IPv4Address) -> None:
    with pytest.raises(ImageSourceForbiddenError):
        check_address(str(ip))
    with pytest.raises(ImageSourceForbiddenError):
        check_address(f"::ffff:{ip}")
    for host in (str(ip), str(int(ip)), hex(int(ip)), f"[::ffff:{ip}]"):
        with pytest.raises(ImageSourceForbiddenError):
            check_url(f"http://{host}:8080/x.jpg", ())


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses())
def test_any_address_is_allowed_or_forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
                                             ) -> None:
    try:
        check_address(str(ip))
    except ImageSourceForbiddenError:
        return
    assert ip.is_global
    assert not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_check_address_only_raises_our_errors(text: str) -> None:
    try:
        check_address(text)
    except (ImageSourceForbiddenError, InvalidInputError):
        pass


_url_chars = st.sampled_from(
    [*"abcxyz019.-_:@[]%/?#\\ \t", "０", "ß", "ü", "\u3002", "\x00", "0x", "::", "ffff"]
)


@settings(max_examples=800, deadline=None)
@given(
    st.sampled_from(["http", "https", "HTTP", "ftp", "file", ""]),
    st.lists(_url_chars, max_size=30).map("".join),
    st.text(max_size=20),
)
def test_check_url_only_raises_our_errors(scheme: str, host: str, path: str) -> None:
    for url in (f"{scheme}://{host}/{path}", f"{scheme}:{host}", host):
        try:
            got_scheme, got_host, port = check_url(url, ())
        except (ImageSourceForbiddenError, InvalidInputError):
            continue
        assert got_scheme in ("http", "https")
        assert 1 <= port <= 65535
        try:
            addr = ipaddress.ip_address(got_host)
        except ValueError:
            assert got_host.isascii() and got_host == got_host.lower()
        else:
            assert addr.is_global


# --- prepare_image -----------------------------------------------------------------------------


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_prepare_downsizes_to_max_side() -> None:
    src = make_image("JPEG", (4000, 3000))
    out, media_type = prepare_image(src, max_side=1024, max_pixels=40_000_000)
    assert media_type == "image/jpeg"
    img = _open(out)
    assert img.format == "JPEG"
    assert img.size == (1024, 768)


def test_prepare_never_upscales_and_keeps_aspect() -> None:
    out, _ = prepare_image(make_image("PNG", (300, 1200)), max_side=600, max_pixels=10**8)
    assert _open(out).size == (150, 600)
    out, _ = prepare_image(make_image("PNG", (30, 20)), max_side=600, max_pixels=10**8)
    assert _open(out).size == (30, 20)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_prepare_every_type_becomes_rgb_jpeg(fmt: str) -> None:
    out, media_type, w, h = prepare_image_with_size(
        make_image(fmt, (50, 40)), max_side=1024, max_pixels=10**8
    )
    assert media_type == "image/jpeg"
    img = _open(out)
    assert (img.mode, img.size, (w, h)) == ("RGB", (50, 40), (50, 40))


def test_prepare_composites_alpha_on_white() -> None:
    transparent = make_image("PNG", (20, 20), mode="RGBA", color=(0, 0, 0, 0))
    out, _ = prepare_image(transparent, max_side=1024, max_pixels=10**8)
    r, g, b = _open(out).getpixel((10, 10))  # type: ignore[misc]
    assert min(r, g, b) >= 250
    palette = Image.new("P", (20, 20), 0)
    palette.info["transparency"] = 0
    buf = io.BytesIO()
    palette.save(buf, "GIF", transparency=0)
    out, _ = prepare_image(buf.getvalue(), max_side=1024, max_pixels=10**8)
    assert min(_open(out).getpixel((5, 5))) >= 250  # type: ignore[arg-type]


def test_prepare_applies_exif_orientation() -> None:
    rotated = make_image("JPEG", (200, 100), exif_orientation=6)  # stored landscape, shown portrait
    out, _ = prepare_image(rotated, max_side=1024, max_pixels=10**8)
    assert _open(out).size == (100, 200)


def test_prepare_16_bit_greyscale() -> None:
    img = Image.new("I;16", (10, 10), 40000)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out, _ = prepare_image(buf.getvalue(), max_side=1024, max_pixels=10**8)
    value = _open(out).getpixel((5, 5))
    assert isinstance(value, tuple)
    assert 140 <= value[0] <= 170  # 40000/65535 of white, not clipped to 255


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<!doctype html><html><body>hi</body></html>",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        b"\xff\xd8\xff" + b"garbage" * 10,  # JPEG magic, no image
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
    ],
)
def test_prepare_refuses_non_images(data: bytes) -> None:
    with pytest.raises(ImageTypeError):
        prepare_image(data, max_side=1024, max_pixels=10**8)


def test_prepare_truncated_jpeg() -> None:
    jpeg = make_image("JPEG", (640, 480))
    with pytest.raises(ImageTypeError, match="truncated or corrupt"):
        prepare_image(jpeg[: len(jpeg) // 2], max_side=1024, max_pixels=10**8)


def test_prepare_decompression_bomb_beyond_pillow_limit() -> None:
    bomb = patch_png_size(make_image("PNG", (10, 10)), 30_000, 30_000)  # 900 Mpx declared
    assert len(bomb) < 1000
    with pytest.raises(ImageTooLargeError):
        prepare_image(bomb, max_side=1024, max_pixels=40_000_000)


def test_prepare_pixel_limit_checked_before_decoding() -> None:
    declared = patch_png_size(make_image("PNG", (10, 10)), 8_000, 8_000)  # 64 Mpx: Pillow's OK
    with pytest.raises(ImageTooLargeError):
        prepare_image(declared, max_side=1024, max_pixels=40_000_000)
    with pytest.raises(ImageTooLargeError):
        prepare_image(make_image("JPEG", (400, 300)), max_side=1024, max_pixels=100_000)
