"""Shared fixtures: a private Redis for the session, tiny models built with save_pretrained."""

from __future__ import annotations

import pytest

from tests.support import RedisServer, stop_all
from tests.tiny_models import build_tiny_model

MULTI_LABELS = ["hate", "harassment", "violence"]
SINGLE_LABELS = ["OK", "toxic", "insult"]


BROKERS = ["redis", "rabbitmq"]


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_session():
    """Whatever a failed fixture set-up or teardown left running (scripts/launch.py registers every child)."""
    yield
    stop_all()


@pytest.fixture(scope="module", params=BROKERS)
def broker_kind(request) -> str:
    """Parametrises a module's stack over both brokers (tests/support.py: broker_for)."""
    return request.param


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")).start() as server:
        yield server


@pytest.fixture
def redis_client(redis_server):
    client = redis_server.client()
    client.flushall()
    return client


@pytest.fixture(scope="session")
def tiny_multilabel_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-ml"), MULTI_LABELS, multi_label=True,
                            thresholds={"hate": 0.4})


@pytest.fixture(scope="session")
def tiny_singlelabel_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-sl"), SINGLE_LABELS, multi_label=False, seed=1)
