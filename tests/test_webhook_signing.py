"""Webhooks signed the Standard Webhooks way, a secret per API key, and no callback URL secrets in logs.

Against a live stack (gunicorn API with four API keys, a tiny-model worker with its webhook worker, a
private Redis) and receivers on 127.0.0.1 run by the test; every delivery is checked with the
`standardwebhooks` package, the spec's reference verifier, as a receiver would check it.
"""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import requests
import standardwebhooks.webhooks
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import api
from api.auth import key_fingerprint
from shared.celery_app import make_celery
from shared.config import ConfigError, load_settings
from shared.jobs import JobRecord, JobStore
from shared.webhook_signing import SECRET_KEY_PREFIX, global_keys, secret_key, sign, signed_headers
from shared.webhooks import WEBHOOK_QUEUE, WEBHOOK_TASK, redacted, scrubbed
from tests.support import base_env, free_port, start_api, start_worker, wait_until
from tests.webhook_receiver import Receiver

GLOBAL_SECRET = "whsec_" + base64.b64encode(b"the service's fallback secret").decode()
KEYS = ("alice-key", "bob-key", "carol-key", "dave-key")
ALICE, BOB, CAROL, DAVE = ({"Authorization": f"Bearer {key}"} for key in KEYS)
TOLERANCE = timedelta(minutes=5)  # standardwebhooks' own


@pytest.fixture(scope="module")
def stack(redis_server, tiny_multilabel_model, tmp_path_factory):
    redis_server.client().flushall()
    logs = tmp_path_factory.mktemp("webhook-signing-logs")
    env = base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", API_KEYS=",".join(KEYS),
                   WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WEBHOOK_SECRET=GLOBAL_SECRET, WEBHOOK_TIMEOUT="2",
                   WEBHOOK_MAX_RETRIES="2")
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    # The API logs as much as it can: every request line and DEBUG from every library.
    api_server = start_api({**env, "LOG_LEVEL": "DEBUG", "GUNICORN_ACCESS_LOG": "-"}, logs / "api.log")
    yield {"api": api_server, "env": env, "worker": worker, "redis": redis_server}
    api_server.stop()
    worker.stop()


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as server:
        yield server


def submit(stack, headers, callback_url: str, text: str = "you are an idiot") -> str:
    response = requests.post(stack["api"].url + "/generate", headers=headers, timeout=30,
                             json={"input_text": text, "callback_url": callback_url, "wait": 10})
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    return response.json()["job_id"]


def delivery(receiver: Receiver, path: str) -> dict:
    [call] = wait_until(lambda: receiver.calls_to(path), timeout=30, what=f"the delivery to {path}")
    return call


def rotate(stack, headers, **body) -> dict:
    response = requests.post(stack["api"].url + "/v1/webhooks/secret", headers=headers, json=body or None,
                             timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def verifies(secret: str | bytes, call: dict) -> bool:
    try:
        Webhook(secret).verify(call["body"], call["headers"])
    except WebhookVerificationError:
        return False
    return True


def signatures(call: dict) -> list[str]:
    return call["headers"]["webhook-signature"].split(" ")


# --- the signature itself ----------------------------------------------------------------------------

def test_our_signature_is_the_reference_packages():
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    body, msg_id, now = b'{"job_id": "x", "text": "caf\xc3\xa9"}', str(uuid.uuid4()), int(time.time())
    reference = Webhook(secret).sign(msg_id, datetime.fromtimestamp(now, UTC), body)
    assert sign(msg_id, now, body, secret_key(secret)) == reference
    headers = signed_headers(msg_id, body, (secret_key(secret), b"plain"), now=now)
    assert headers["webhook-signature"].split(" ")[0] == reference
    assert Webhook(secret).verify(body, headers) and Webhook(b"plain").verify(body, headers)
    # WEBHOOK_SECRET: whsec_ secrets (several rotate it) or any other string, taken as its UTF-8 bytes.
    assert global_keys("hunter2 é") == ("hunter2 é".encode(),)
    assert global_keys(f"{secret} {GLOBAL_SECRET}") == (secret_key(secret), secret_key(GLOBAL_SECRET))
    assert global_keys(secret.rstrip("=")) == (secret_key(secret),)  # padding is optional, as in the spec
    for bad in ("whsec_!!!", "whsec_", f"{secret} plain"):
        with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
            load_settings({"WEBHOOK_SECRET": bad})


def test_redacted_urls_keep_scheme_host_port_and_path_only():
    assert redacted("https://user:pw@Hooks.example.com:8443/a/b?token=s3cret#frag") == "https://hooks.example.com:8443/a/b"
    assert redacted("http://[::1]/x?y") == "http://[::1]/x"
    assert redacted("http://h:99999/") == "<malformed URL>"
    message = "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /hook?token=a%20b (Caused by x)"
    assert scrubbed(message, "http://h:1/hook?token=a b", "http://h:1/hook?token=a%20b") == \
        "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /hook (Caused by x)"


# --- deliveries against the live stack ---------------------------------------------------------------

def test_a_delivery_verifies_with_the_reference_package_and_a_late_replay_is_refused(stack, receiver, monkeypatch):
    job_id = submit(stack, ALICE, receiver.url("/signed"))
    call = delivery(receiver, "/signed")
    headers = call["headers"]
    # Alice set no secret of her own: the service's WEBHOOK_SECRET signs, once.
    body = Webhook(GLOBAL_SECRET).verify(call["body"], headers)
    assert body == requests.get(f"{stack['api'].url}/jobs/{job_id}", headers=ALICE, timeout=10).json()
    assert headers["webhook-id"] == job_id and len(signatures(call)) == 1
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 30
    assert "X-Moderation-Signature" not in headers

    # Replays: an attacker re-sends the captured delivery to the receiver.
    def replay(path: str, **changed) -> dict:
        requests.post(receiver.url(path), data=call["body"], headers={**headers, **changed}, timeout=10)
        return delivery(receiver, path)
    # ... later than the tolerance: its timestamp is refused as too old;
    stale = str(int(headers["webhook-timestamp"]) - int(TOLERANCE.total_seconds()) - 1)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(GLOBAL_SECRET).verify(call["body"], replay("/replay-stale", **{"webhook-timestamp": stale})["headers"])
    # ... with a fresh timestamp (any other second): the signature covers the timestamp, so none matches;
    fresh = str(max(int(time.time()), int(headers["webhook-timestamp"]) + 1))
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(GLOBAL_SECRET).verify(call["body"], replay("/replay-fresh", **{"webhook-timestamp": fresh})["headers"])
    # ... unchanged, but arriving after the tolerance (the receiver's clock 5 min 1 s on): too old.
    unchanged = replay("/replay-late")
    assert verifies(GLOBAL_SECRET, unchanged)

    class FiveMinutesLater(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + TOLERANCE + timedelta(seconds=1)
    monkeypatch.setattr(standardwebhooks.webhooks, "datetime", FiveMinutesLater)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(GLOBAL_SECRET).verify(unchanged["body"], unchanged["headers"])


def test_each_api_key_signs_with_its_own_secret(stack):
    alice, bob = rotate(stack, ALICE, keep_previous_seconds=0), rotate(stack, BOB, keep_previous_seconds=0)
    for made in (alice, bob):
        assert made["secret"].startswith("whsec_") and len(secret_key(made["secret"])) == 24
        assert made["source"] == "key" and made["previous"] is None and made["created_at"]
    assert alice["secret"] != bob["secret"]
    # Stored in the job-store Redis under each key's fingerprint (a job's owner); GET never shows it.
    stored = stack["redis"].client().hget(SECRET_KEY_PREFIX + key_fingerprint("alice-key"), "secret")
    assert stored == alice["secret"]
    shown = requests.get(stack["api"].url + "/v1/webhooks/secret", headers=ALICE, timeout=10)
    assert shown.json() == {"source": "key", "created_at": alice["created_at"], "previous": None,
                            "previous_valid_until": None}
    assert alice["secret"] not in shown.text

    with Receiver() as alice_receiver, Receiver() as bob_receiver:
        submit(stack, ALICE, alice_receiver.url("/alice"))
        submit(stack, BOB, bob_receiver.url("/bob"))
        to_alice, to_bob = delivery(alice_receiver, "/alice"), delivery(bob_receiver, "/bob")
    assert verifies(alice["secret"], to_alice) and verifies(bob["secret"], to_bob)
    # Neither tenant's secret (nor the service's) verifies the other's deliveries: no forging across keys.
    assert not verifies(bob["secret"], to_alice) and not verifies(alice["secret"], to_bob)
    assert not verifies(GLOBAL_SECRET, to_alice) and not verifies(GLOBAL_SECRET, to_bob)
    assert len(signatures(to_alice)) == len(signatures(to_bob)) == 1


def test_after_a_rotation_both_secrets_verify_until_the_previous_expires(stack, receiver):
    keep = 15
    first = rotate(stack, CAROL, keep_previous_seconds=0)
    second = rotate(stack, CAROL, keep_previous_seconds=keep)
    assert second["previous"] == "key" and second["previous_valid_until"]
    submit(stack, CAROL, receiver.url("/rotating"))
    call = delivery(receiver, "/rotating")
    until = datetime.fromisoformat(second["previous_valid_until"]).timestamp()
    assert int(call["headers"]["webhook-timestamp"]) < until, "the delivery came after the overlap; raise keep"
    assert len(signatures(call)) == 2
    assert verifies(first["secret"], call) and verifies(second["secret"], call)

    wait_until(lambda: time.time() > until + 1, timeout=keep + 5, interval=0.5, what="the previous secret to expire")
    shown = requests.get(stack["api"].url + "/v1/webhooks/secret", headers=CAROL, timeout=10).json()
    assert shown["previous"] is None and shown["previous_valid_until"] is None
    submit(stack, CAROL, receiver.url("/rotated"))
    after = delivery(receiver, "/rotated")
    assert verifies(second["secret"], after) and not verifies(first["secret"], after)
    assert len(signatures(after)) == 1


def test_a_first_secret_keeps_the_service_secret_signing_for_the_overlap(stack, receiver):
    made = rotate(stack, DAVE)  # no body: the default overlap of 24 h
    assert made["previous"] == "global"
    assert 23.9 * 3600 < datetime.fromisoformat(made["previous_valid_until"]).timestamp() - time.time() <= 24 * 3600
    submit(stack, DAVE, receiver.url("/dave"))
    call = delivery(receiver, "/dave")
    assert verifies(made["secret"], call) and verifies(GLOBAL_SECRET, call)
    # An emergency rotation (keep_previous_seconds=0) stops every earlier secret at once.
    again = rotate(stack, DAVE, keep_previous_seconds=0)
    submit(stack, DAVE, receiver.url("/dave-again"))
    call = delivery(receiver, "/dave-again")
    assert verifies(again["secret"], call)
    assert not verifies(made["secret"], call) and not verifies(GLOBAL_SECRET, call)


def test_callback_urls_are_logged_without_their_query_string(stack, receiver):
    token = secrets.token_hex(16)
    # Delivered: the receiver gets the whole URL, query string and all.
    submit(stack, ALICE, receiver.url(f"/with-token?token={token}&x=1"))
    delivery(receiver, f"/with-token?token={token}&x=1")
    # Refused by the API: its answer names the host, not the token.
    refused = requests.post(stack["api"].url + "/generate", headers=ALICE, timeout=10,
                            json={"input_text": "hi", "callback_url": f"http://10.0.0.1/hook?token={token}"})
    assert refused.status_code == 400 and token not in refused.text
    # Failing: nothing listens there, so every try fails (with a message naming the URL) until given up.
    dead = submit(stack, ALICE, f"http://127.0.0.1:{free_port()}/gone?token={token}")
    wait_until(lambda: f"job {dead}: webhook not delivered after 3 tries" in stack["worker"].log_tail(2_000_000),
               timeout=60, what="the dead receiver's delivery to be given up")
    # Refused by the webhook worker (a host no longer allowed when it is delivered): logged as refused.
    client = stack["redis"].client()
    outlawed = str(uuid.uuid4())
    store = JobStore(client, 3600)
    store.create(JobRecord(job_id=outlawed, model="tiny", queue="x", texts=["a"],
                           callback_url=f"http://10.0.0.1/hook?token={token}"))
    store.finish_many([(outlawed, [{"flagged": False, "categories": {}, "category_scores": {}}], None)])
    make_celery(load_settings(stack["env"])).send_task(WEBHOOK_TASK, args=[outlawed], queue=WEBHOOK_QUEUE)
    refused_line = f"job {outlawed}: not calling http://10.0.0.1/hook: host '10.0.0.1' is not in WEBHOOK_ALLOWED_HOSTS"
    wait_until(lambda: refused_line in stack["worker"].log_tail(2_000_000), timeout=30,
               what="the webhook worker to refuse the outlawed callback")

    worker_log, api_log = stack["worker"].log_tail(5_000_000), stack["api"].log_tail(5_000_000)
    assert f"job {dead}: webhook delivery failed (ConnectionError: " in worker_log  # the failures were logged
    assert "/gone" in worker_log and "POST /generate" in api_log  # the logs were there to look at
    for name, text in (("worker", worker_log), ("API", api_log)):
        assert token not in text, f"the callback URL's token is in the {name} log"
        assert "token=" not in text, f"a callback URL's query string is in the {name} log"


def test_per_key_secrets_need_api_keys(redis_server, tiny_multilabel_model):
    app = api.create_app(load_settings({"REDIS_URL": redis_server.url, "MODELS": f"tiny={tiny_multilabel_model}",
                                        "RATE_LIMITER": "off", "READ_RATE_LIMITER": "off"}))
    client = app.test_client()
    refused = client.post("/v1/webhooks/secret", json={})
    assert refused.status_code == 403 and refused.json["error"]["code"] == "api_keys_off"
    assert client.get("/v1/webhooks/secret").json["source"] == "global"
    assert not redis_server.client().exists(SECRET_KEY_PREFIX)  # nothing stored for the owner "" of keys off
