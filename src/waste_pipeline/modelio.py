"""Driver-neutral pieces of the model call: the reply type and the SDK error translation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import openai

from .errors import (
    ConfigurationError,
    ModelRateLimitedError,
    ModelTimeoutError,
    ModelUnavailableError,
    PermanentError,
    WastePipelineError,
)
from .models import TokenUsage

__all__ = ["STANDIN_KEY", "ModelReply", "find_refusal", "translate_error", "usage_of"]

STANDIN_KEY = "sk-stand-in-no-key"
"""The key sent when no ``OPENAI_API_KEY`` is set (only ever accepted by the stand-in)."""


@dataclass(frozen=True)
class ModelReply:
    """What one structured call returned: the JSON text, the usage and the model's name."""

    text: str
    usage: TokenUsage
    model: str


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def translate_error(exc: Exception) -> WastePipelineError:
    """Map an SDK exception to our error hierarchy (never echoing keys or headers)."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeoutError("the model endpoint did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailableError("could not reach the model endpoint (connection failed)")
    if isinstance(exc, openai.RateLimitError):
        return ModelRateLimitedError(
            "the model endpoint is rate limiting us (429)", retry_after=_retry_after(exc)
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status >= 500 or status in (408, 409):
            return ModelUnavailableError(
                f"the model endpoint failed with HTTP {status}", status=status
            )
        if status in (401, 403):
            return ConfigurationError(
                f"the model endpoint refused our credentials (HTTP {status}); check OPENAI_API_KEY"
            )
        if status == 404:
            return ConfigurationError("the model endpoint does not know this model (HTTP 404)")
        return PermanentError(f"the model endpoint rejected the request (HTTP {status})")
    return ModelUnavailableError(f"unexpected model client failure ({type(exc).__name__})")


def find_refusal(response: Any) -> str | None:
    """The refusal text of a Responses API reply, or None."""
    for item in getattr(response, "output", None) or []:
        for part in getattr(item, "content", None) or []:
            if getattr(part, "type", None) == "refusal":
                return str(getattr(part, "refusal", "") or "refused")
    return None


def usage_of(response: Any) -> TokenUsage:
    """The token usage of a Responses API reply (zeros when it has none)."""
    usage = getattr(response, "usage", None)
    if usage is None:
        return TokenUsage()
    return TokenUsage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
    )
