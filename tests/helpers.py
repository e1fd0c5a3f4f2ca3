"""Small helpers shared by tests (importable as ``tests.helpers``)."""

from __future__ import annotations

import base64
import io

TEST_API_KEY = "sk-test-3f9a7c1e5b2d4a6f8e0c"
"""A fake key every test uses, so a test can prove it never leaks."""


def make_jpeg(
    width: int = 640, height: int = 480, color: tuple[int, int, int] = (30, 120, 200)
) -> bytes:
    """A real JPEG image of the given size."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def jpeg_data_url(width: int = 640, height: int = 480) -> str:
    """A real JPEG as a ``data:`` URL."""
    return "data:image/jpeg;base64," + base64.b64encode(make_jpeg(width, height)).decode()
