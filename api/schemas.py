"""Request and response schemas. The API validates with these and /openapi.json is generated from them.

Limits come from Settings, so the models are built per app by `build_schemas(settings)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator

from shared.schemas import Job, ModerationResult
from shared.webhook_signing import DEFAULT_KEEP_PREVIOUS_SECONDS, MAX_KEEP_PREVIOUS_SECONDS

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


# OpenAI's moderation categories (omni models). /v1/moderations answers every one of them, so code
# written for OpenAI's SDK finds each field; those the model lacks are false, 0.0 and applied to no
# input type ([]). docs/api.md "OpenAI compatibility" maps the bundled model's labels onto them.
OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
_EVERY_OPENAI_CATEGORY = {"required": list(OPENAI_CATEGORIES)}


class OpenAIModeration(BaseModel):
    """One result in OpenAI's shape: OpenAI's categories plus the model's other labels under their own names."""
    flagged: bool
    categories: Annotated[dict[str, bool], Field(json_schema_extra=_EVERY_OPENAI_CATEGORY)]
    category_scores: Annotated[dict[str, float], Field(json_schema_extra=_EVERY_OPENAI_CATEGORY)]
    category_applied_input_types: Annotated[dict[str, list[Literal["text"]]],
                                            Field(json_schema_extra=_EVERY_OPENAI_CATEGORY)]


class ModerationResponse(BaseModel):
    id: Annotated[str, Field(pattern="^modr-", description="modr-<job id>; GET /jobs/<job id> has the job")]
    model: Annotated[str, Field(description="the served model's id: its folder's name and version (GET /models)")]
    results: list[OpenAIModeration]


# OpenAI's error types (the SDK reads them as `exc.type`); api/errors.py picks one from the status.
ErrorType = Literal["invalid_request_error", "authentication_error", "rate_limit_error", "server_error"]


class ErrorDetail(BaseModel):
    code: str
    message: str
    type: ErrorType
    param: Annotated[str | None, Field(description="the request field at fault, e.g. input[1]; null if none")]
    job_id: str | None = None
    status_url: str | None = None
    tokens: Annotated[int | None, Field(description="on a token-budget refusal: the tokens counted")] = None
    limit: Annotated[int | None, Field(description="on a token-budget refusal: the limit they passed")] = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    default_model: str
    workers: int


class CascadeInfo(BaseModel):
    """A cascade model's stages (shared/cascade.py): windows the fast model is unsure of go to the accurate one."""
    fast: Annotated[str, Field(description="the fast stage's model id")]
    accurate: Annotated[str, Field(description="the accurate stage's model id")]
    band: Annotated[Annotated[float, Field(ge=0)] | dict[str, Annotated[float, Field(ge=0)]],
                    Field(description="logit units around each fast threshold sent on to the accurate stage, "
                                            "for every label or per label (CASCADE_BAND, else the folder's)")]
    blended: Annotated[bool, Field(description="the accurate stage answers with both models' scores stacked, "
                                               "not the accurate model's alone")] = False


class ModelInfo(BaseModel):
    name: str
    id: Annotated[str, Field(description="the served model's id, as /v1/moderations answers it")]
    queue: str
    labels: list[str]
    thresholds: dict[str, float]
    safe_labels: list[str]
    multi_label: bool
    cascade: Annotated[CascadeInfo | None, Field(description="null unless the model is a two-stage cascade")]
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


def _input_form(value) -> str:
    """Which form of /v1/moderations' input a value is (a list's first item decides), so a wrong item is
    reported in that form only. The tags start like the union members pydantic names, so
    api.validation leaves them out of field paths."""
    if not isinstance(value, list):
        return "str"
    return "list[content-part]" if value and isinstance(value[0], dict) else "list[text]"


def _text_part_only(part):
    """OpenAI's image_url parts are valid OpenAI input this service cannot moderate: a clear 400."""
    if isinstance(part, dict) and part.get("type") == "image_url":
        raise ValueError("this model moderates text only: image_url parts are not supported, "
                         "send {\"type\": \"text\", \"text\": ...} parts or strings")
    return part


class WebhookSecretInfo(BaseModel):
    """GET /v1/webhooks/secret: which secret signs this API key's webhooks; never a secret itself."""
    source: Annotated[Literal["key", "global"], Field(
        description="key: this API key's own secret; global: the service's WEBHOOK_SECRET (no secret set)")]
    created_at: Annotated[str | None, Field(description="when the key's current secret was made; null if none")]
    previous: Annotated[Literal["key", "global"] | None, Field(
        description="the secret the last rotation replaced, still signing beside the new one until "
                    "previous_valid_until; null when none does")]
    previous_valid_until: str | None


class WebhookSecretCreated(WebhookSecretInfo):
    """POST /v1/webhooks/secret: the new secret, shown this once (verify with it: standardwebhooks.com)."""
    secret: Annotated[str, Field(pattern="^whsec_", description="whsec_<base64 HMAC key>")]


def _whole_number(value):
    """JSON Schema's integer includes 3.0: take it as 3 (strict mode still refuses "3", true and 3.5)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class WebhookSecretRequest(BaseModel):
    """Optional body of POST /v1/webhooks/secret."""
    model_config = ConfigDict(extra="forbid", strict=True)
    keep_previous_seconds: Annotated[int, Field(
        ge=0, le=MAX_KEEP_PREVIOUS_SECONDS,
        description="how long the replaced secret keeps signing beside the new one (0: stop at once, "
                    "e.g. after a leak)"), BeforeValidator(_whole_number)] = DEFAULT_KEEP_PREVIOUS_SECONDS


@dataclass(frozen=True)
class RequestSchemas:
    generate: type[BaseModel]
    moderations: type[BaseModel]
    max_wait: float
    webhook_secret: type[BaseModel] = WebhookSecretRequest


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
                  model_names: tuple[str, ...] = (), callback_hosts: frozenset[str] = frozenset(),
                  model_ids: tuple[str, ...] = ()) -> RequestSchemas:
    Text = Annotated[str, Field(min_length=1, max_length=max_chars, json_schema_extra={"pattern": NOT_BLANK}),
                     AfterValidator(_valid_text)]
    Texts = Annotated[list[Text], Field(min_length=1, max_length=max_items)]
    # Unknown names are refused by api.submission.resolve_model (listing the configured ones); the enum
    # only tells clients and fuzzers which names exist.
    def model_field(names: tuple[str, ...]):
        return Annotated[str, Field(min_length=1, max_length=200,
                                    json_schema_extra={"enum": list(names)} if names else None)]
    Model = model_field(model_names)
    # /v1/moderations also answers to OpenAI's names, meaning the default model, and to the served
    # models' ids (what its answers name, so a client may send back the "model" it was given).
    OpenAIModel = model_field(tuple(dict.fromkeys(model_names + model_ids + OPENAI_MODEL_NAMES))
                              if model_names else ())
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

        def texts_field(self) -> str:
            """The field the texts came in (named by a 413 for one text past MAX_TEXT_TOKENS)."""
            return "input_text" if self.input_text is not None else "inputs"

    class TextPart(BaseModel):
        """OpenAI's text content part. (image_url parts are refused with a 400: text only.)"""
        model_config = strict
        type: Literal["text"]
        text: Text

    Parts = Annotated[list[Annotated[TextPart, BeforeValidator(_text_part_only)]],
                      Field(min_length=1, max_length=max_items)]

    class ModerationsRequest(BaseModel):
        """OpenAI-compatible: input is one text, a list of texts or a list of text content parts."""
        model_config = strict
        input: Annotated[Annotated[Text, Tag("str")] | Annotated[Texts, Tag("list[text]")]
                         | Annotated[Parts, Tag("list[content-part]")], Discriminator(_input_form)]
        model: OpenAIModel | None = None

        def texts(self) -> list[str]:
            if isinstance(self.input, str):
                return [self.input]
            return [item if isinstance(item, str) else item.text for item in self.input]

    return RequestSchemas(GenerateRequest, ModerationsRequest, max_wait)
