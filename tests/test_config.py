"""Settings from the environment: defaults, model maps, and clear errors for bad values."""

import subprocess
import sys

import pytest

from shared.config import BUNDLED_MODEL_PATH, ConfigError, load_settings
from shared.queues import broker_lists, queue_for_model
from tests.support import ROOT, base_env


def test_defaults_serve_the_bundled_model():
    settings = load_settings({})
    assert settings.models == {"default": str(BUNDLED_MODEL_PATH)}
    assert settings.default_model == "default" and settings.worker_models == ("default",)
    assert (settings.max_batch_items, settings.max_text_chars, settings.max_content_length) == (256, 20_000, 1 << 20)
    assert settings.result_ttl == 24 * 3600


def test_model_path_alone_configures_the_default_model():
    assert load_settings({"MODEL_PATH": "/m"}).models == {"default": "/m"}


def test_models_map_in_both_syntaxes():
    for raw in ("a=/x, b=/y", '{"a": "/x", "b": "/y"}'):
        settings = load_settings({"MODELS": raw, "DEFAULT_MODEL": "b", "WORKER_MODELS": "a"})
        assert settings.models == {"a": "/x", "b": "/y"}
        assert settings.default_model == "b" and settings.worker_models == ("a",)


@pytest.mark.parametrize("env, fragment", [
    ({"MAX_BATCH_ITEMS": "many"}, "MAX_BATCH_ITEMS must be an integer"),
    ({"MAX_BATCH_ITEMS": "0"}, "MAX_BATCH_ITEMS must be >= 1"),
    ({"MODELS": "a"}, "name=/path"),
    ({"MODELS": "a=/x", "DEFAULT_MODEL": "b"}, "DEFAULT_MODEL 'b'"),
    ({"MODELS": "a=/x", "WORKER_MODELS": "z"}, "unknown model"),
    ({"QUANTIZE": "int4"}, "QUANTIZE"),
    ({"MODEL_THRESHOLDS": "[1]"}, "MODEL_THRESHOLDS"),
    ({"API_KEYS_FILE": "/nonexistent/keys"}, "API_KEYS_FILE"),
    ({"MAX_LONG_POLLS": "0"}, "MAX_LONG_POLLS must be >= 1"),
    ({"MAX_LONG_POLLS_PER_KEY": "some"}, "MAX_LONG_POLLS_PER_KEY must be an integer"),
])
def test_bad_values_raise_config_errors(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_settings(env)


def test_long_poll_caps_leave_threads_of_the_default_32_free():
    defaults = load_settings({})
    assert (defaults.max_long_polls, defaults.max_long_polls_per_key) == (24, 8)
    assert defaults.max_long_polls < 32  # GUNICORN_THREADS' default (api/gunicorn_conf.py)
    settings = load_settings({"MAX_LONG_POLLS": "10", "MAX_LONG_POLLS_PER_KEY": "3"})
    assert (settings.max_long_polls, settings.max_long_polls_per_key) == (10, 3)
    assert load_settings({"MAX_LONG_POLLS": ""}).max_long_polls == 24  # empty (compose) means the default


def test_api_keys_from_env_and_file(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\nfile-key\n\n")
    assert load_settings({"API_KEYS": "a, b", "API_KEYS_FILE": str(keys)}).api_keys == ("a", "b", "file-key")


def test_each_model_has_its_own_queue_and_priority_lists():
    assert queue_for_model("a") != queue_for_model("b")
    assert broker_lists("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]


@pytest.mark.parametrize("name, value, message", [
    ("BATCH_MAX_TEXTS", "lots", "configuration error: BATCH_MAX_TEXTS must be an integer, got 'lots'"),
    ("MAX_DELIVERIES", "0", "configuration error: MAX_DELIVERIES must be >= 1, got 0"),
])
def test_a_bad_variable_makes_the_worker_exit_2_with_one_line(name, value, message):
    """Nothing reads settings at import (shared/celery_app.py, worker/tasks.py): `main` reports it."""
    env = {**base_env("redis://127.0.0.1:1/0"), name: value}
    result = subprocess.run([sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_service_reads_no_test_switch():
    """Faults for tests live in test-only code (tests/hooked_worker.py, tests/crash_model.py), never
    behind a setting any deployment could set: no module of the service reads a TEST_* variable."""
    import re

    switches = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
                for package in ("api", "client", "model", "scripts", "shared", "worker")
                for path in sorted((ROOT / package).rglob("*.py"))
                for number, line in enumerate(path.read_text().splitlines(), start=1)
                if re.search(r"""["']TEST_[A-Z0-9_]*""", line)]
    assert not switches, switches


def test_a_plain_worker_cannot_load_the_test_crash_model(tmp_path):
    """The poison tests' crash model loads only in a worker started through tests/hooked_worker.py."""
    from tests.conftest import MULTI_LABELS
    from tests.crash_model import build_crash_model

    model = build_crash_model(tmp_path / "crash", MULTI_LABELS, "eradicate")
    env = base_env("redis://127.0.0.1:1/0", MODELS=f"tiny={model}")
    result = subprocess.run([sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 3 and "crash-bert" in result.stderr, result.stderr[-2000:]
