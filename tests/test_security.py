"""Rate limits and API keys against live gunicorn APIs (2 processes each), private Redis, a real worker.

Each API has the same limit for both budgets (RATE_LIMITER for submissions, READ_RATE_LIMITER for reads).

Three APIs share the session's job Redis and one private limiter Redis (a DB each):
- `ip_api`: RATE_LIMITER per client IP, no trusted proxy; also the limiter-storage outage test (last).
- `proxied_api`: the same behind TRUSTED_PROXIES=1, where X-Forwarded-For names the client.
- `keyed_api`: API_KEYS + API_KEYS_FILE with a tiny-model worker; limits per key.
Every test starts with empty rate-limit counters.
"""

from __future__ import annotations

import hmac
import re
import time
import uuid
from collections import Counter
from urllib.parse import urlsplit

import pytest
import requests

from api import auth
from tests.support import RedisServer, base_env, start_api, start_worker, wait_until

LIMIT = 5  # ip_api and proxied_api
KEYED_LIMIT = 30  # keyed_api: room for the 401 matrix below within one IP budget
EXEMPT = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/static/app.js")
# gunicorn access-log lines that name the worker process answering each request.
ACCESS_FORMAT = "ACCESS %(p)s %(m)s %(U)s %(s)s"
ACCESS_LINE = re.compile(r"^ACCESS <(\d+)> (\S+) (\S+) (\d+)$", re.M)
ENV_KEYS = ("alice-key", "bob-key")
FILE_KEYS = ("carol-key", "limit-a", "limit-b")


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def post_job(api_url: str, headers: dict | None = None, **body) -> requests.Response:
    return requests.post(api_url + "/generate", json={"input_text": "hello", **body}, headers=headers, timeout=10)


def get_unknown_job(api_url: str, headers: dict | None = None) -> requests.Response:
    return requests.get(f"{api_url}/jobs/{uuid.uuid4()}", headers=headers, timeout=10)


def assert_rate_limited(response: requests.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and f"{limit} per 1 minute" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < float(response.headers["X-RateLimit-Reset"]) - time.time() <= 61


@pytest.fixture(scope="module")
def limits_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("limits-redis")).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def empty_counters(limits_redis):
    limits_redis.client().flushall()


@pytest.fixture(scope="module")
def api_env(redis_server, limits_redis, tiny_multilabel_model):
    redis_server.client().flushall()

    def env(db: int, rate: str, **overrides) -> dict:
        return base_env(redis_server.url, MODELS=f"tiny={tiny_multilabel_model}", RATE_LIMITER=rate,
                        READ_RATE_LIMITER=rate,
                        RATE_LIMIT_STORAGE_URL=limits_redis.url.rsplit("/", 1)[0] + f"/{db}",
                        GUNICORN_ACCESS_LOG="-", GUNICORN_CMD_ARGS=f"--access-logformat '{ACCESS_FORMAT}'",
                        **overrides)
    return env


@pytest.fixture(scope="module")
def ip_api(api_env, tmp_path_factory):
    api = start_api(api_env(1, f"{LIMIT}/minute"), tmp_path_factory.mktemp("ip-api") / "api.log", workers=2)
    yield api
    api.stop()


@pytest.fixture(scope="module")
def proxied_api(api_env, tmp_path_factory):
    api = start_api(api_env(2, f"{LIMIT}/minute", TRUSTED_PROXIES="1"),
                    tmp_path_factory.mktemp("proxied-api") / "api.log", workers=2)
    yield api
    api.stop()


@pytest.fixture(scope="module")
def keyed_api(api_env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("keyed-api")
    keys_file = logs / "api-keys.txt"
    keys_file.write_text("# one key a line\n" + "\n".join(FILE_KEYS) + "\n\n")
    env = api_env(3, f"{KEYED_LIMIT}/minute", API_KEYS=",".join(ENV_KEYS), API_KEYS_FILE=str(keys_file))
    worker = start_worker(env, logs / "worker.log", models=["tiny"])
    api = start_api(env, logs / "api.log", workers=2)
    yield api
    api.stop()
    worker.stop()


# --- rate limits per client IP -------------------------------------------------------------------

def test_over_the_limit_is_429_json_with_retry_after_and_ratelimit_headers(ip_api):
    accepted = [post_job(ip_api.url) for _ in range(LIMIT)]
    assert [r.status_code for r in accepted] == [202] * LIMIT
    assert [r.headers["X-RateLimit-Remaining"] for r in accepted] == [str(n) for n in range(LIMIT - 1, -1, -1)]
    assert all(r.headers["X-RateLimit-Limit"] == str(LIMIT) for r in accepted)
    assert_rate_limited(post_job(ip_api.url), LIMIT)
    # One submission budget per client across the submitting endpoints.
    assert_rate_limited(requests.post(ip_api.url + "/v1/moderations", json={"input": "x"}, timeout=10), LIMIT)
    assert_rate_limited(requests.delete(f"{ip_api.url}/jobs/{uuid.uuid4()}", timeout=10), LIMIT)


def test_exhausting_submissions_does_not_throttle_reads(ip_api):
    job_id = post_job(ip_api.url).json()["job_id"]
    for _ in range(LIMIT - 1):
        post_job(ip_api.url)
    assert_rate_limited(post_job(ip_api.url), LIMIT)
    # Polling has its own budget: a client that just spent its submissions can still read its jobs.
    polled = [requests.get(f"{ip_api.url}/jobs/{job_id}", timeout=10) for _ in range(LIMIT - 2)]
    assert [r.status_code for r in polled] == [200] * (LIMIT - 2)
    assert polled[0].headers["X-RateLimit-Remaining"] == str(LIMIT - 1)
    assert requests.get(ip_api.url + "/models", timeout=10).status_code == 200
    assert requests.get(ip_api.url + "/queue", timeout=10).status_code == 200
    assert_rate_limited(requests.get(f"{ip_api.url}/jobs/{job_id}", timeout=10), LIMIT)


def test_exhausting_reads_does_not_throttle_submissions(ip_api):
    assert [get_unknown_job(ip_api.url).status_code for _ in range(LIMIT)] == [404] * LIMIT
    assert_rate_limited(get_unknown_job(ip_api.url), LIMIT)
    assert_rate_limited(requests.get(ip_api.url + "/models", timeout=10), LIMIT)
    accepted = post_job(ip_api.url)
    assert accepted.status_code == 202 and accepted.headers["X-RateLimit-Remaining"] == str(LIMIT - 1)


def test_health_metrics_and_openapi_are_exempt(ip_api):
    for _ in range(LIMIT + 1):
        get_unknown_job(ip_api.url)
    for path in EXEMPT:
        for _ in range(LIMIT + 2):
            response = requests.get(ip_api.url + path, timeout=10)
            assert response.status_code in (200, 503), (path, response.text)  # /readyz: no worker here
            assert "X-RateLimit-Limit" not in response.headers, path


def _access_lines(api) -> list[tuple[int, str, str, int]]:
    return [(int(pid), method, path, int(status)) for pid, method, path, status in ACCESS_LINE.findall(
        api.log_path.read_text(errors="replace"))]


def test_the_count_is_shared_by_all_gunicorn_worker_processes(ip_api):
    """Requests reach both gunicorn processes, yet only LIMIT pass in total: a process refuses
    although it accepted fewer than LIMIT itself, so the count lives in Redis, not in a process."""
    answered: list[tuple[int, int]] = []  # (gunicorn worker pid, status), in request order
    for sent in range(1, 61):
        response = get_unknown_job(ip_api.url)
        path = urlsplit(response.url).path  # unique per request: its own access-log line
        # Processes write their access lines independently, so find this request's line by its path.
        line = wait_until(lambda path=path: next((e for e in _access_lines(ip_api) if e[2] == path), None),
                          timeout=10, interval=0.02, what=f"the access-log line of {path}")
        pid, _, _, logged = line
        assert logged == response.status_code
        answered.append((pid, response.status_code))
        if sent >= 3 * LIMIT and len({p for p, _ in answered}) >= 2:
            break
    pids = {pid for pid, _ in answered}
    assert len(pids) == 2, f"requests never reached a second gunicorn process: {answered}"
    passed = Counter(pid for pid, status in answered if status == 404)
    assert sum(passed.values()) == LIMIT, answered
    assert {status for _, status in answered} == {404, 429}
    assert any(passed[pid] < LIMIT for pid, status in answered if status == 429), answered


def test_without_trusted_proxies_x_forwarded_for_is_ignored(ip_api):
    statuses = [get_unknown_job(ip_api.url, {"X-Forwarded-For": f"198.51.100.{n}"}).status_code
                for n in range(LIMIT + 3)]
    assert statuses == [404] * LIMIT + [429] * 3


# --- behind one trusted proxy --------------------------------------------------------------------

def test_with_one_trusted_proxy_each_forwarded_client_has_its_own_budget(proxied_api):
    client_a = {"X-Forwarded-For": "203.0.113.7"}
    assert [get_unknown_job(proxied_api.url, client_a).status_code for _ in range(LIMIT)] == [404] * LIMIT
    assert_rate_limited(get_unknown_job(proxied_api.url, client_a), LIMIT)
    # A client prepending its own X-Forwarded-For does not escape: the proxy's (last) entry counts.
    assert_rate_limited(get_unknown_job(proxied_api.url, {"X-Forwarded-For": "192.0.2.1, 203.0.113.7"}), LIMIT)
    # Another forwarded client, and the proxy's own address, still have their budgets.
    assert get_unknown_job(proxied_api.url, {"X-Forwarded-For": "203.0.113.8"}).status_code == 404
    assert get_unknown_job(proxied_api.url).status_code == 404


# --- API keys ------------------------------------------------------------------------------------

def test_job_endpoints_refuse_missing_or_wrong_keys_with_401_json(keyed_api):
    job_id = post_job(keyed_api.url, bearer("alice-key")).json()["job_id"]
    calls = [("post", "/generate", {"input_text": "hi"}), ("get", f"/jobs/{job_id}", None),
             ("post", "/v1/moderations", {"input": "hi"}), ("delete", f"/jobs/{job_id}", None)]
    wrong = [{}, bearer("wrong-key"), bearer("alice-key-x"), bearer("alice"), bearer("ALICE-KEY"),
             {"Authorization": "alice-key"}, {"Authorization": "Basic YWxpY2Uta2V5Og=="}, {"Authorization": "Bearer "}]
    for method, path, body in calls:
        for headers in wrong:
            response = requests.request(method, keyed_api.url + path, json=body, headers=headers, timeout=10)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"] == "Bearer"


def test_keys_are_compared_as_equal_length_digests(monkeypatch):
    """hmac.compare_digest returns early when its inputs differ in length: every comparison must be of two
    digests of one size, whatever the lengths of the presented and configured keys."""
    compared, compare_digest = [], hmac.compare_digest

    def recording_compare_digest(a, b):
        compared.append((len(a), len(b)))
        return compare_digest(a, b)
    monkeypatch.setattr(auth.hmac, "compare_digest", recording_compare_digest)
    keys = ("k", "alice-key", "x" * 200)
    for presented, valid in (("k", True), ("alice-key", True), ("x" * 200, True), ("", False), ("alice", False),
                             ("alice-key-x", False), ("x" * 199, False), ("x" * 5000, False), ("ALICE-KEY", False),
                             ("caf\u00e9-key", False), ("\udc80", False)):
        compared.clear()
        assert auth._is_configured_key(presented, keys) is valid, presented
        assert len(compared) == len(keys), "every configured key is compared, matched or not"
        assert set(compared) == {(32, 32)}, f"compared inputs of lengths {compared} for a key of {len(presented)}"


def test_keys_from_api_keys_and_api_keys_file_both_work(keyed_api):
    response = post_job(keyed_api.url, bearer("alice-key"), wait=20)
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    moderated = requests.post(keyed_api.url + "/v1/moderations", json={"input": ["hi", "you idiot"]},
                              headers=bearer("carol-key"), timeout=40)
    assert moderated.status_code == 200 and len(moderated.json()["results"]) == 2, moderated.text


def test_a_job_is_404_for_every_other_key(keyed_api):
    created = post_job(keyed_api.url, bearer("alice-key"))
    assert created.status_code == 202
    job_url = f"{keyed_api.url}/jobs/{created.json()['job_id']}"
    assert requests.get(job_url, params={"wait": 20}, headers=bearer("alice-key"), timeout=30).json()["status"] \
        == "succeeded"
    unknown = get_unknown_job(keyed_api.url, bearer("bob-key"))
    for other in ("bob-key", "carol-key"):
        response = requests.get(job_url, params={"wait": 5}, headers=bearer(other), timeout=10)
        assert response.status_code == 404
        # Indistinguishable from an id that does not exist (only the id in the message differs).
        assert response.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
    assert requests.get(job_url, timeout=10).status_code == 401


def test_health_readiness_metrics_and_openapi_need_no_key(keyed_api):
    for path in EXEMPT:
        assert requests.get(keyed_api.url + path, timeout=10).status_code == 200, path
    doc = requests.get(keyed_api.url + "/openapi.json", timeout=10).json()
    assert doc["paths"]["/jobs/{job_id}"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/healthz"]["get"]


def test_with_keys_each_key_has_its_own_budget(keyed_api):
    statuses = [get_unknown_job(keyed_api.url, bearer("limit-a")).status_code for _ in range(KEYED_LIMIT)]
    assert statuses == [404] * KEYED_LIMIT
    assert_rate_limited(get_unknown_job(keyed_api.url, bearer("limit-a")), KEYED_LIMIT)
    assert get_unknown_job(keyed_api.url, bearer("limit-b")).status_code == 404
    # The client IP's budget (for unauthenticated requests) was not spent by limit-a either.
    assert get_unknown_job(keyed_api.url).status_code == 401


def test_made_up_keys_share_their_ip_budget(keyed_api):
    statuses = [get_unknown_job(keyed_api.url, bearer(f"guess-{n}")).status_code for n in range(KEYED_LIMIT)]
    assert statuses == [401] * KEYED_LIMIT
    assert_rate_limited(get_unknown_job(keyed_api.url, bearer("guess-next")), KEYED_LIMIT)
    assert get_unknown_job(keyed_api.url, bearer("alice-key")).status_code == 404


# --- limiter storage down (last: it stops the limiter's Redis) -------------------------------------

def test_limiter_storage_down_falls_back_to_per_process_memory(ip_api, limits_redis):
    """Decision: availability over exactness. Requests are still answered (never 500, no hang) and
    limits still apply, counted in each gunicorn process's memory (so up to LIMIT per process)."""
    assert get_unknown_job(ip_api.url).status_code == 404
    limits_redis.stop()
    try:
        statuses = []
        for _ in range(4 * LIMIT):
            started = time.monotonic()
            response = get_unknown_job(ip_api.url)
            # Not a speed goal: the promise is that no request fails or hangs on the dead limiter storage.
            # Generous: a refused connection costs ~0 s, REDIS_SOCKET_TIMEOUT at most 1 s per attempt.
            assert time.monotonic() - started < 5
            assert response.status_code in (404, 429), response.text
            if response.status_code == 429:
                assert_rate_limited(response, LIMIT)
            statuses.append(response.status_code)
        assert LIMIT <= statuses.count(404) <= 2 * LIMIT, statuses
        assert "falling back to in-memory storage" in ip_api.log_tail(200_000)
        assert requests.get(ip_api.url + "/healthz", timeout=5).status_code == 200
    finally:
        limits_redis.start()
