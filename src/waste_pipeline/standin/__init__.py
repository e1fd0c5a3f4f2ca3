"""The OpenAI stand-in: a local HTTP test double for the slice of the OpenAI API we use.

Its answers are NOT from a model. Structured outputs are deterministic, schema-valid fills
(every string starts with ``[stand-in]``), every response carries ``X-Stand-In: true``, and
faults (429, 500, 503, connection reset, timeout, malformed JSON, refusal, schema violation)
can be injected at random or with ``[[standin:...]]`` markers in the user's text; see
:mod:`waste_pipeline.standin.server`.

Run it with ``python -m waste_pipeline.standin``, in a thread with :class:`StandInServer`, or
in the current event loop with :func:`serve`.
"""

from waste_pipeline.standin.schema_fill import SchemaFillError, fill, violate
from waste_pipeline.standin.server import (
    FAULT_KINDS,
    StandInConfig,
    StandInServer,
    create_app,
    serve,
)

__all__ = [
    "FAULT_KINDS",
    "SchemaFillError",
    "StandInConfig",
    "StandInServer",
    "create_app",
    "fill",
    "serve",
    "violate",
]
