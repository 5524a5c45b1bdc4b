"""The HTTP API (Flask app factory). Never imports torch: it only talks to Redis and Celery.

Follow one job: api/jobs.py (route) -> api/validation.py + api/schemas.py (body) ->
api/submission.py (record + Celery message) -> worker/ -> shared/jobs.py (record read back).
"""

from __future__ import annotations

import logging
import os

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from api import health, jobs, moderations, openapi, queue, web, webhook_secrets
from api.contract import undocumented_routes
from api.errors import error_response, register_error_handlers
from api.extensions import Services
from api.limits import init_limiter
from api.long_polls import init_long_polls
from api.metrics import count_rejection, init_metrics
from api.schemas import build_schemas
from api.tokens import token_counters
from shared import metrics as names
from shared.broker import BROKER_ERRORS, broker_queues
from shared.celery_app import is_redis_url, make_celery
from shared.completions import CompletionListener
from shared.config import Settings, get_settings
from shared.jobs import JobStore
from shared.model_registry import load_specs
from shared.queues import capture_producer
from shared.redis_client import check_broker_outside_cluster, make_redis

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    # Library warnings (e.g. flask-limiter falling back to memory) reach stderr under gunicorn too;
    # a no-op when logging is already configured (tests, embedding apps).
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    settings = settings or get_settings()
    app = Flask(__name__, static_folder=None)  # api/web.py serves the page's files
    app.config["MAX_CONTENT_LENGTH"] = settings.max_content_length
    app.json.sort_keys = False
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies)

    check_broker_outside_cluster(settings)  # REDIS_CLUSTER: a Redis broker must not be a cluster node
    client = make_redis(settings)
    celery = make_celery(settings)
    if is_redis_url(settings.broker_url):
        # The worker's 5 s floor covers its blocking BRPOP; the API never blocks on the broker, so a hung
        # one fails its requests as fast as a hung record Redis (503 within REDIS_SOCKET_TIMEOUT).
        celery.conf.broker_transport_options = {**celery.conf.broker_transport_options,
                                                "socket_timeout": settings.redis_socket_timeout}
    queues = broker_queues(settings, celery, client)
    specs = load_specs(settings)
    app.extensions["moderation"] = Services(
        settings=settings,
        redis=client,
        store=JobStore.from_settings(client, settings),
        celery=celery,
        queues=queues,
        completions=CompletionListener(client),
        models=specs,
        schemas=build_schemas(settings.max_batch_items, settings.max_text_chars, settings.max_wait_seconds,
                              tuple(specs), settings.webhook_allowed_hosts,
                              tuple(spec.model_id for spec in specs.values())),
        capture_producer=capture_producer(celery),
        token_counters=token_counters(specs),
    )
    register_error_handlers(app)
    _register_outage_handler(app)
    init_limiter(app, settings)
    init_long_polls(app, settings)
    app.register_blueprint(init_metrics(app, queues, {name: spec.queue for name, spec in specs.items()}))
    for blueprint in (jobs.bp, moderations.bp, webhook_secrets.bp, health.bp, queue.bp, web.bp, openapi.bp):
        app.register_blueprint(blueprint)
    missing = undocumented_routes(app)
    if missing:
        raise RuntimeError(f"routes without an @operation (api/contract.py): {', '.join(missing)}")
    return app


def _register_outage_handler(app: Flask) -> None:
    def redis_unavailable(exc: Exception):
        # Redis or the broker is down: nothing was accepted, so the client may simply retry.
        log.warning("Redis or broker unavailable: %s", exc)
        count_rejection(names.REJECT_UNAVAILABLE)
        return error_response(503, "unavailable", "the job queue is unavailable; retry shortly",
                              headers={"Retry-After": "1"})
    for error in BROKER_ERRORS:  # the store's errors (STORE_ERRORS) and kombu's
        app.register_error_handler(error, redis_unavailable)
