"""Request and response schemas. The API validates with these and /openapi.json is generated from them.

Limits come from Settings, so the models are built per app by `build_schemas(settings)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.schemas import Job, ModerationResult

__all__ = ["Job", "ModerationResult"]  # re-exported: the API's schemas in one place


def _blank_class() -> str:
    """A regex class of every whitespace character (str.isspace; none lies above U+3000), spelled with
    \\uXXXX escapes so Python and ECMA-262 (the OpenAPI pattern dialect) read it the same way; `\\s`
    differs between the two (U+001C..U+001F, U+0085)."""
    return "".join(f"\\u{code:04x}" for code in range(0x3001) if chr(code).isspace())


# A text must hold at least one non-whitespace character: checked here and published as the pattern.
NOT_BLANK = f"[^{_blank_class()}]"
_NOT_BLANK_RE = re.compile(NOT_BLANK)


def _valid_text(text: str) -> str:
    if not _NOT_BLANK_RE.search(text):
        raise ValueError("text must not be empty or only whitespace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text is not valid Unicode (it contains a lone surrogate)") from exc
    return text


class JobAccepted(BaseModel):
    job_id: str
    status: Literal["queued"]
    model: str
    status_url: str


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


class ErrorDetail(BaseModel):
    code: str
    message: str
    job_id: str | None = None
    status_url: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    default_model: str
    workers: int


class ModelInfo(BaseModel):
    name: str
    queue: str
    labels: list[str]
    thresholds: dict[str, float]
    safe_labels: list[str]
    multi_label: bool
    live_workers: int | None


class Models(BaseModel):
    default_model: str
    models: list[ModelInfo]


class QueueModelStats(BaseModel):
    model: str
    queue: str
    depth: int
    oldest_job_age_seconds: float
    live_workers: int
    texts_per_second: float


class QueueStats(BaseModel):
    """GET /queue: what the web page's queue panel shows. texts_per_second is over the last minute."""
    window_seconds: int
    models: list[QueueModelStats]


# OpenAI's moderation model names: code written for OpenAI's SDK sends one of these.
OPENAI_MODEL_NAMES = ("omni-moderation-latest", "text-moderation-latest", "text-moderation-stable")


@dataclass(frozen=True)
class RequestSchemas:
    generate: type[BaseModel]
    moderations: type[BaseModel]
    max_wait: float


def _callback_url_schema(allowed_hosts: frozenset[str]):
    """What the document promises about callback_url: with no allowlist only null is valid (the API
    refuses any URL); otherwise http(s) URLs on an allowed host (the API also checks the port)."""
    def shape(schema: dict) -> None:
        schema.clear()
        if not allowed_hosts:
            schema["not"] = {}
            return
        # Escaped by hand: re.escape's "\\-" is an error in ECMA-262's unicode mode.
        hosts = "|".join("".join("\\" + c if c in ".^$*+?()[]{}|\\/" else c for c in host)
                         for host in sorted(allowed_hosts))
        schema.update({"type": "string", "format": "uri", "maxLength": 2048,
                       "pattern": f"^https?://({hosts})(:[0-9]{{1,5}})?([/?#].*)?$"})
    return shape


def build_schemas(max_items: int, max_chars: int, max_wait: float,
                  model_names: tuple[str, ...] = (), callback_hosts: frozenset[str] = frozenset()) -> RequestSchemas:
    Text = Annotated[str, Field(min_length=1, max_length=max_chars, json_schema_extra={"pattern": NOT_BLANK}),
                     AfterValidator(_valid_text)]
    Texts = Annotated[list[Text], Field(min_length=1, max_length=max_items)]
    # Unknown names are refused by api.submission.resolve_model (listing the configured ones); the enum
    # only tells clients and fuzzers which names exist.
    def model_field(names: tuple[str, ...]):
        return Annotated[str, Field(min_length=1, max_length=200,
                                    json_schema_extra={"enum": list(names)} if names else None)]
    Model = model_field(model_names)
    # /v1/moderations also answers to OpenAI's names, meaning the default model.
    OpenAIModel = model_field(tuple(dict.fromkeys(model_names + OPENAI_MODEL_NAMES)) if model_names else ())
    CallbackURL = Annotated[str, Field(min_length=1, max_length=2048,
                                       json_schema_extra=_callback_url_schema(callback_hosts))]
    strict = ConfigDict(extra="forbid", strict=True)
    # "Exactly one of input_text or inputs", as JSON Schema: exactly one branch holds a non-null value.
    one_form = {"oneOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                          for name in ("input_text", "inputs")]}

    class GenerateRequest(BaseModel):
        """Exactly one of input_text (one text) or inputs (several)."""
        model_config = ConfigDict(**strict, json_schema_extra=one_form)
        input_text: Text | None = None
        inputs: Texts | None = None
        model: Model | None = None
        wait: Annotated[float, Field(ge=0, le=max_wait)] | None = None
        # POSTed the job (as GET /jobs/<id> returns it) when it finishes; only WEBHOOK_ALLOWED_HOSTS.
        callback_url: CallbackURL | None = None

        @model_validator(mode="after")
        def _one_form(self):
            if (self.input_text is None) == (self.inputs is None):
                raise ValueError("give exactly one of input_text (a string) or inputs (a list of strings)")
            return self

        def texts(self) -> list[str]:
            return [self.input_text] if self.input_text is not None else list(self.inputs or [])

    class ModerationsRequest(BaseModel):
        """OpenAI-compatible: input is one text or a list of texts."""
        model_config = strict
        input: Text | Texts
        model: OpenAIModel | None = None

        def texts(self) -> list[str]:
            return [self.input] if isinstance(self.input, str) else list(self.input)

    return RequestSchemas(GenerateRequest, ModerationsRequest, max_wait)
