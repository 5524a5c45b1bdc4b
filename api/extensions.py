"""The app's long-lived collaborators, built once in create_app and reached through `services()`."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app

from api.schemas import RequestSchemas
from shared.completions import CompletionListener
from shared.config import Settings
from shared.jobs import JobStore
from shared.model_registry import ModelSpec


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    completions: CompletionListener
    celery: Celery
    queues: object  # shared.broker: depth and oldest-job age, read from the broker
    models: dict[str, ModelSpec]
    schemas: RequestSchemas
    token_counters: dict = None  # model name -> api.tokens.TokenCounter
    capture_producer: object = None  # shared.queues.capture_producer: builds the messages api/submission.py captures


def services() -> Services:
    return current_app.extensions["moderation"]


def wait_for_job(job_id: str, timeout: float):
    """The job's record once it finishes, or after `timeout` seconds (shared.jobs.JobStore)."""
    svc = services()
    return svc.store.wait_until_finished(job_id, timeout, svc.completions)
