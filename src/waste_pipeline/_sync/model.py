# GENERATED from src/waste_pipeline/_async/model.py by `nox -s generate`; do not edit.
"""One OpenAI client per process, and the one call the pipeline makes through it.

:meth:`AsyncModelClient.structured` sends instructions, user content and a strict JSON schema
to the Responses API and returns the output text with its token usage. SDK exceptions become
our typed errors: 429/5xx/timeouts/broken connections are transient, the rest permanent.
"""

from __future__ import annotations

from typing import Any

import httpx2
import openai
from openai import OpenAI

from ..errors import ContentRefusedError, ModelOutputError
from ..modelio import STANDIN_KEY, ModelReply, find_refusal, translate_error, usage_of
from ..settings import Settings

__all__ = ["ModelClient"]


class ModelClient:
    """Wraps one ``AsyncOpenAI`` client; create once per process and share."""

    def __init__(self, settings: Settings, *, http_client: httpx2.Client | None = None):
        self.settings = settings
        self._own_http = http_client is None
        self._http = http_client or httpx2.Client(
            timeout=httpx2.Timeout(settings.model_timeout, connect=10.0),
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200),
        )
        self.client = OpenAI(
            api_key=settings.api_key() or STANDIN_KEY,
            base_url=settings.openai_base_url,
            timeout=settings.model_timeout,
            max_retries=settings.model_max_retries,
            http_client=self._http,
        )

    def structured(
        self,
        *,
        model: str,
        instructions: str,
        content: list[dict[str, Any]],
        schema_name: str,
        schema: dict[str, Any],
    ) -> ModelReply:
        """One Responses API call with a strict JSON-schema output; returns the JSON text."""
        try:
            response = self.client.responses.create(  # type: ignore[call-overload]
                model=model,
                instructions=instructions,
                input=[{"role": "user", "content": content}],
                text={
                    "format": {
                        "type": "json_schema",
                        "name": schema_name,
                        "schema": schema,
                        "strict": True,
                    }
                },
            )
        except openai.OpenAIError as exc:
            raise translate_error(exc) from None
        refusal = find_refusal(response)
        if refusal is not None:
            raise ContentRefusedError(
                "the model refused to handle this image or text", reason=refusal[:200]
            )
        text = response.output_text
        if not text:
            raise ModelOutputError("the model returned no output")
        return ModelReply(text=text, usage=usage_of(response), model=response.model or model)

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._own_http:
            self.client.close()  # closes the http client it was given

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
