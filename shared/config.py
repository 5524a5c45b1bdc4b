"""The service's settings, read once from the environment (12-factor style).

Every variable, its default and its meaning is listed in docs/configuration.md; keep the two in step
(tests/test_docs_drift.py fails when they differ). A few variables are read outside this module, where a
process starts: gunicorn's (api/gunicorn_conf.py), LOG_LEVEL, `make run`'s (scripts/), the CLI's; the
doc's second table lists those.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from shared.webhook_signing import global_keys

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Where `make model` assembles the bundled model (git-ignored).
BUNDLED_MODEL_PATH = PROJECT_ROOT / "build" / "moderation-minilm"
# Where the worker keeps models it exported to ONNX (git-ignored; ENGINE_CACHE_DIR overrides).
DEFAULT_ENGINE_CACHE_DIR = str(PROJECT_ROOT / "var" / "engine-cache")
# Tokens one text may hold (the served model's tokenizer, counted by the API; a longer text is refused
# with 413, and the worker never reads past it): more than the default MAX_TEXT_CHARS of English holds
# (~5,000); a text of one token per character is refused instead of read for ~2.5 s. docs/api.md "Limits".
DEFAULT_MAX_TEXT_TOKENS = 8192
# Tokens one request may hold, all texts together: ~5 s of a 2-core CPU worker (about 3,000 tokens/s
# per core for long texts, each read ~3 times in overlapping windows), as much as OpenAI's moderation
# takes in one input. Past it: 413. docs/api.md "Limits" has the reasoning.
DEFAULT_MAX_REQUEST_TOKENS = 32768
# Tokens per minute per key (flask-limiter syntax), counted as MAX_REQUEST_TOKENS is: about a third of
# what one 2-core CPU worker reads in a minute, so one key alone cannot queue more than a worker serves.
DEFAULT_TOKEN_RATE_LIMITER = "150000/minute"
# Tokens the model reads (windows, special tokens included) in one slice of a batch: ~0.3 s on one core.
# A job needing more is scored a slice per turn and goes to the back of its queue in between
# (worker/slices.py), so a one-text job never waits behind a whole large one.
DEFAULT_SLICE_TOKENS = 2048
# Seconds a job may take from acceptance to its result before it is failed (JOB_TIMEOUT, per model).
DEFAULT_JOB_TIMEOUT = 600.0
ENGINES = ("auto", "torch", "onnx")
QUANTIZE_MODES = ("", "int8", "none")  # "": int8 on CPU, fp16 on CUDA
# Per API key (or client IP) over all limited endpoints; RATE_LIMITER=off disables it. See docs/api.md.
DEFAULT_RATE_LIMITER = "3000/minute"
# Reads (GET: polling jobs, /models, /queue) have their own budget, so polling never eats submissions.
DEFAULT_READ_RATE_LIMITER = "12000/minute"
DEFAULT_SAFE_LABELS = "ok,safe,neutral,non-toxic,non_toxic,not_toxic,nontoxic,neither,normal,clean,none"


class ConfigError(ValueError):
    """A malformed environment variable; raised at start-up, never per request."""


def redis_seed_nodes(url: str) -> list[tuple[str, int]]:
    """(host, port) of each node REDIS_URL names: `redis://[user:pass@]host:port[/0]`, or with REDIS_CLUSTER
    several seeds, comma-separated: `redis://a:7000,b:7001` or `redis://a:7000,redis://b:7001`."""
    nodes = []
    for part in _csv(url):
        parsed = urlsplit(part if "://" in part else "redis://" + part)
        try:
            nodes.append((parsed.hostname or "127.0.0.1", parsed.port or 6379))
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL: {part!r} is not host:port ({exc})") from None
    return nodes


def _cluster_broker_refusal(broker_url: str, seeds: list[tuple[str, int]]) -> str | None:
    """Why CELERY_BROKER_URL cannot serve beside a Redis Cluster store, or None: kombu's Redis transport has no
    cluster mode, so the broker is RabbitMQ or a separate, plain Redis (shared/redis_client.py checks at start
    that a redis:// broker is no cluster node at all)."""
    why = ("REDIS_CLUSTER=true: the job store is a Redis Cluster, and Celery's Redis transport (kombu) has no "
           "cluster mode; set CELERY_BROKER_URL to RabbitMQ (amqp://...) or to a separate, non-cluster Redis")
    if not broker_url:
        return f"{why} (CELERY_BROKER_URL is unset, so the broker would be REDIS_URL)"
    if broker_url.split("://", 1)[0] in ("redis", "rediss") and set(redis_seed_nodes(broker_url)) & set(seeds):
        return f"{why} (CELERY_BROKER_URL {broker_url!r} names a node of REDIS_URL's cluster)"
    return None


def _number(env: dict, name: str, default, minimum, kind: type, kind_name: str):
    raw = env.get(name, "")
    try:
        value = kind(raw) if raw.strip() else default
    except ValueError as exc:
        raise ConfigError(f"{name} must be {kind_name}, got {raw!r}") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _int(env: dict, name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, minimum, int, "an integer")


def _float(env: dict, name: str, default: float, minimum: float = 0.0) -> float:
    return _number(env, name, default, minimum, float, "a number")


def _optional_float(env: dict, name: str, minimum: float = 0.0) -> float | None:
    """A number, or None when unset or empty: the caller's own default applies (e.g. a model folder's)."""
    return _float(env, name, minimum, minimum) if env.get(name, "").strip() else None


def _flag(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _csv(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _parse_models(env: dict) -> dict[str, str]:
    """MODELS="name=/path,other=/path" (or a JSON object); MODEL_PATH alone is the single default model."""
    raw = env.get("MODELS", "").strip()
    if not raw:
        return {env.get("DEFAULT_MODEL", "").strip() or "default": env.get("MODEL_PATH", "").strip()
                or str(BUNDLED_MODEL_PATH)}
    if raw.startswith("{"):
        try:
            models = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"MODELS is not valid JSON: {exc}") from exc
    else:
        models = {}
        for item in _csv(raw):
            name, sep, path = item.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ConfigError(f"MODELS entries must look like name=/path, got {item!r}")
            models[name.strip()] = path.strip()
    if not isinstance(models, dict) or not models:
        raise ConfigError("MODELS must name at least one model")
    return {str(name): str(path) for name, path in models.items()}


def _parse_thresholds(env: dict) -> dict[str, dict[str, float]]:
    """MODEL_THRESHOLDS='{"default": {"hate": 0.4}}' overrides the thresholds stored with a model."""
    raw = env.get("MODEL_THRESHOLDS", "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {str(m): {str(label): float(t) for label, t in per.items()} for m, per in data.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"MODEL_THRESHOLDS must be a JSON object of objects of numbers: {exc}") from exc


def _parse_job_timeouts(env: dict, models: dict[str, str]) -> dict[str, float]:
    """JOB_TIMEOUT="600" (every model) or "600,big=1800" / "default=300,big=1800" (per model; a bare
    number is the default for the others); 0 turns the deadline off."""
    default, per_model = DEFAULT_JOB_TIMEOUT, {}
    for item in _csv(env.get("JOB_TIMEOUT", "")):
        name, sep, raw = item.rpartition("=")
        try:
            seconds = float(raw)
        except ValueError:
            raise ConfigError(f"JOB_TIMEOUT entries must be seconds or model=seconds, got {item!r}") from None
        if seconds < 0:
            raise ConfigError(f"JOB_TIMEOUT must be >= 0, got {item!r}")
        if not sep:
            default = seconds
        elif name.strip() not in models:
            raise ConfigError(f"JOB_TIMEOUT names unknown model {name.strip()!r}")
        else:
            per_model[name.strip()] = seconds
    return {name: per_model.get(name, default) for name in models}


def _read_api_keys(env: dict) -> tuple[str, ...]:
    keys = _csv(env.get("API_KEYS", ""))
    keys_file = env.get("API_KEYS_FILE", "").strip()
    if keys_file:
        try:
            lines = Path(keys_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"API_KEYS_FILE {keys_file!r} cannot be read: {exc}") from exc
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return tuple(keys)


def _port_range(env: dict, name: str, default: int) -> tuple[int, int]:
    """"9101" or "9101-9103": the worker takes the first free port of the range (several workers on
    one host network, e.g. scaled containers with host networking); 0 turns the endpoint off."""
    raw = env.get(name, "").strip()
    first, sep, last = raw.partition("-")
    if not sep:
        port = _int(env, name, default)
        return port, port
    try:
        low, high = int(first), int(last)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a port or a range like 9101-9103, got {raw!r}") from exc
    if not 0 < low <= high < 65536:
        raise ConfigError(f"{name} must be a range of ports low-high, got {raw!r}")
    return low, high


def _rate_limiter(env: dict, name: str, default: str) -> str:
    """Unset or empty: the default (compose passes an empty value through); "off": no limit."""
    raw = env.get(name, "").strip()
    if raw.lower() == "off":
        return ""
    return raw or default


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout: float = 1.0
    # The job store on Redis Cluster (REDIS_URL: any node, or comma-separated seeds): shared/redis_client.py,
    # shared/jobs.py's KeySpace; docs/reliability.md "Redis Cluster".
    redis_cluster: bool = False
    # "Accepted" means on the master and this many replicas: WAIT after a job's record is written (else 503)
    # and after its result is stored (before the broker's ack; a shortfall is logged). 0: off.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = 100
    models: dict[str, str] = field(default_factory=dict)
    default_model: str = "default"
    model_thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    safe_labels: frozenset[str] = frozenset()
    worker_models: tuple[str, ...] = ()
    # A cascade model's band (logit units, shared/cascade.py) for every cascade served; None: each folder's own.
    cascade_band: float | None = None
    # API limits
    max_batch_items: int = 256
    max_text_chars: int = 20_000
    max_content_length: int = 1024 * 1024
    max_wait_seconds: float = 30.0
    moderations_timeout: float = 30.0
    # Long polls (`wait`, /v1/moderations) each hold a gunicorn thread while they wait (api/long_polls.py).
    # Per API process: 24 of GUNICORN_THREADS' default 32, so 8 threads always stay free for submissions,
    # reads, /healthz and /readyz (probes time out otherwise) and /metrics; keep it below GUNICORN_THREADS.
    max_long_polls: int = 24
    # Per caller (API key, else client IP) in each process: a third of the above, so one client cannot
    # take every waiting thread and at least three can wait at once.
    max_long_polls_per_key: int = 8
    max_queue_depth: int = 10_000
    result_ttl: int = 24 * 3600
    rate_limiter: str = DEFAULT_RATE_LIMITER  # submissions; "" when RATE_LIMITER=off
    read_rate_limiter: str = DEFAULT_READ_RATE_LIMITER  # reads; "" when READ_RATE_LIMITER=off
    token_rate_limiter: str = DEFAULT_TOKEN_RATE_LIMITER  # tokens per key; "" when TOKEN_RATE_LIMITER=off
    rate_limit_storage_url: str = ""
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS
    api_keys: tuple[str, ...] = ()
    trusted_proxies: int = 0
    # Webhooks (callback_url): only these hosts are ever called; none set means the field is refused.
    webhook_allowed_hosts: frozenset[str] = frozenset()
    # The fallback signing secret (shared/webhook_signing.py): `whsec_<base64>` (several, space-separated,
    # all sign), or a plain string whose UTF-8 bytes are the key. API keys may set their own.
    webhook_secret: str = ""
    webhook_timeout: float = 5.0
    webhook_max_retries: int = 8
    webhook_concurrency: int = 4
    webhook_sweep_grace: float = 120.0  # seconds a pending callback may sit untouched before it is re-sent
    # Worker
    batch_max_texts: int = 32
    batch_max_tokens: int = 0  # 0: the worker picks by device (worker/inference.py)
    batch_max_wait_ms: float = 5.0
    max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS
    slice_tokens: int = DEFAULT_SLICE_TOKENS
    job_timeouts: dict[str, float] = field(default_factory=dict)  # per model; 0: no deadline
    cache_ttl: int = 3600
    device: str = ""
    engine: str = "auto"
    engine_cache_dir: str = DEFAULT_ENGINE_CACHE_DIR
    quantize: str = ""  # "", "int8" or "none"; "" is int8 on CPU (worker/inference.py)
    torch_threads: int = 0
    worker_processes: int = 1
    worker_concurrency: int = 0  # 0: auto, resolved by the worker (worker/runtime.py: batch_concurrency)
    worker_metrics_port: int = 9101
    worker_metrics_port_last: int = 9101  # the end of a WORKER_METRICS_PORT range
    visibility_timeout: int = 300
    max_deliveries: int = 3
    # RabbitMQ: each model queue's quorum (x-quorum-initial-group-size; RabbitMQ caps it at the cluster's size).
    # 0: not declared, the broker's default (quorum_cluster_size), as queues declared before it.
    rabbitmq_quorum_size: int = 3
    worker_send_task_events: bool = True  # Celery's task events per job (worker/task_events.py)
    # Test-only: a worker whose job contains this text kills its own process (tests/test_poison.py).

    @property
    def model_names(self) -> list[str]:
        return list(self.models)


def load_settings(environ: dict | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    models = _parse_models(env)
    default_model = env.get("DEFAULT_MODEL", "").strip() or next(iter(models))
    if default_model not in models:
        raise ConfigError(f"DEFAULT_MODEL {default_model!r} is not one of MODELS ({', '.join(models)})")
    worker_models = tuple(_csv(env.get("WORKER_MODELS", ""))) or tuple(models)
    unknown = [m for m in worker_models if m not in models]
    if unknown:
        raise ConfigError(f"WORKER_MODELS names unknown model(s): {', '.join(unknown)}")
    quantize = env.get("QUANTIZE", "").strip().lower()
    if quantize not in QUANTIZE_MODES:
        raise ConfigError(f"QUANTIZE must be int8 or none, got {quantize!r}")
    engine = env.get("ENGINE", "").strip().lower() or "auto"
    if engine not in ENGINES:
        raise ConfigError(f"ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}")
    webhook_allowed_hosts = frozenset(host.lower() for host in _csv(env.get("WEBHOOK_ALLOWED_HOSTS", "")))
    if webhook_allowed_hosts and not env.get("WEBHOOK_SECRET", "").strip():
        raise ConfigError("WEBHOOK_SECRET must be set when WEBHOOK_ALLOWED_HOSTS is (deliveries are signed with it)")
    try:
        global_keys(env.get("WEBHOOK_SECRET", ""))
    except ValueError as exc:
        raise ConfigError(f"WEBHOOK_SECRET: {exc}") from None
    redis_url = env.get("REDIS_URL", "").strip() or Settings.redis_url
    redis_cluster = _flag(env, "REDIS_CLUSTER", False)
    broker_given = env.get("CELERY_BROKER_URL", "").strip()
    if redis_cluster:
        refusal = _cluster_broker_refusal(broker_given, redis_seed_nodes(redis_url))
        if refusal:
            raise ConfigError(refusal)
    elif "," in redis_url:
        raise ConfigError("REDIS_URL names several nodes: set REDIS_CLUSTER=true for a Redis Cluster")
    socket_timeout = _float(env, "REDIS_SOCKET_TIMEOUT", 1.0, 0.05)
    wait_replicas, wait_timeout_ms = _int(env, "REDIS_WAIT_REPLICAS", 0), _int(env, "REDIS_WAIT_TIMEOUT_MS", 100, 1)
    if wait_replicas and wait_timeout_ms >= socket_timeout * 1000:
        raise ConfigError(f"REDIS_WAIT_TIMEOUT_MS ({wait_timeout_ms}) must be below REDIS_SOCKET_TIMEOUT "
                          f"({socket_timeout:g} s), or the socket gives up before WAIT answers")
    metrics_port, metrics_port_last = _port_range(env, "WORKER_METRICS_PORT", 9101)
    return Settings(
        redis_url=redis_url,
        broker_url=env.get("CELERY_BROKER_URL", "").strip() or redis_url,
        redis_socket_timeout=socket_timeout,
        redis_cluster=redis_cluster,
        redis_wait_replicas=wait_replicas,
        redis_wait_timeout_ms=wait_timeout_ms,
        models=models,
        default_model=default_model,
        model_thresholds=_parse_thresholds(env),
        # Empty counts as unset: compose passes every setting through, empty when not given.
        safe_labels=frozenset(label.lower() for label in
                              _csv(env.get("SAFE_LABELS", "").strip() or DEFAULT_SAFE_LABELS)),
        worker_models=worker_models,
        cascade_band=_optional_float(env, "CASCADE_BAND"),
        max_batch_items=_int(env, "MAX_BATCH_ITEMS", 256, 1),
        max_text_chars=_int(env, "MAX_TEXT_CHARS", 20_000, 1),
        max_content_length=_int(env, "MAX_CONTENT_LENGTH", 1024 * 1024, 1024),
        max_wait_seconds=_float(env, "MAX_WAIT_SECONDS", 30.0),
        moderations_timeout=_float(env, "MODERATIONS_TIMEOUT", 30.0, 0.1),
        max_long_polls=_int(env, "MAX_LONG_POLLS", 24, 1),
        max_long_polls_per_key=_int(env, "MAX_LONG_POLLS_PER_KEY", 8, 1),
        max_queue_depth=_int(env, "MAX_QUEUE_DEPTH", 10_000, 1),
        result_ttl=_int(env, "RESULT_TTL", 24 * 3600, 1),
        rate_limiter=_rate_limiter(env, "RATE_LIMITER", DEFAULT_RATE_LIMITER),
        read_rate_limiter=_rate_limiter(env, "READ_RATE_LIMITER", DEFAULT_READ_RATE_LIMITER),
        token_rate_limiter=_rate_limiter(env, "TOKEN_RATE_LIMITER", DEFAULT_TOKEN_RATE_LIMITER),
        rate_limit_storage_url=env.get("RATE_LIMIT_STORAGE_URL", "").strip(),
        max_request_tokens=_int(env, "MAX_REQUEST_TOKENS", DEFAULT_MAX_REQUEST_TOKENS, 1),
        api_keys=_read_api_keys(env),
        trusted_proxies=_int(env, "TRUSTED_PROXIES", 0),
        webhook_allowed_hosts=webhook_allowed_hosts,
        webhook_secret=env.get("WEBHOOK_SECRET", ""),
        webhook_timeout=_float(env, "WEBHOOK_TIMEOUT", 5.0, 0.1),
        webhook_max_retries=_int(env, "WEBHOOK_MAX_RETRIES", 8),
        webhook_concurrency=_int(env, "WEBHOOK_CONCURRENCY", 4, 1),
        webhook_sweep_grace=_float(env, "WEBHOOK_SWEEP_GRACE", 120.0, 0.5),
        batch_max_texts=_int(env, "BATCH_MAX_TEXTS", 32, 1),
        batch_max_tokens=_int(env, "BATCH_MAX_TOKENS", 0),
        batch_max_wait_ms=_float(env, "BATCH_MAX_WAIT_MS", 5.0),
        max_text_tokens=_int(env, "MAX_TEXT_TOKENS", DEFAULT_MAX_TEXT_TOKENS, 1),
        slice_tokens=_int(env, "SLICE_TOKENS", DEFAULT_SLICE_TOKENS, 1),
        job_timeouts=_parse_job_timeouts(env, models),
        cache_ttl=_int(env, "CACHE_TTL", 3600),
        device=env.get("DEVICE", "").strip().lower(),
        engine=engine,
        engine_cache_dir=env.get("ENGINE_CACHE_DIR", "").strip() or DEFAULT_ENGINE_CACHE_DIR,
        quantize=quantize,
        torch_threads=_int(env, "TORCH_THREADS", 0),
        worker_processes=_int(env, "WORKER_PROCESSES", 1, 1),
        worker_concurrency=_int(env, "WORKER_CONCURRENCY", 0),
        worker_metrics_port=metrics_port,
        worker_metrics_port_last=metrics_port_last,
        visibility_timeout=_int(env, "VISIBILITY_TIMEOUT", 300, 1),
        max_deliveries=_int(env, "MAX_DELIVERIES", 3, 1),
        rabbitmq_quorum_size=_int(env, "RABBITMQ_QUORUM_SIZE", 3),
        worker_send_task_events=_flag(env, "WORKER_SEND_TASK_EVENTS", True),
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call get_settings.cache_clear() after changing the environment."""
    return load_settings()
