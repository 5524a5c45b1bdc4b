"""Redis connections with short timeouts, so an outage answers fast instead of hanging a request.

Where a command is sent again after a connection error or a socket timeout is a choice made here, not left
to redis-py (whose `from_url` clients retry nothing). The worker's client retries (WORKER_RETRIES, short
backoff): a store that stalls for a second or two (a fork for a snapshot, a VM pause) is ridden out
inside the call instead of failing the batch. That is safe because every command the worker sends may
run twice without harm, the first having run on a server that stalled after reading it: the job scripts
are idempotent (shared/job_scripts.py: a second create writes nothing, a second finish or requeue by the
same claim answers as the first), and the other writes set values (SET, HSET, ZADD, EXPIRE) rather than
add to them. The API's client does not retry: with the store hung, a request answers 503 + Retry-After
within REDIS_SOCKET_TIMEOUT and the client retries it (tests/test_redis_outage.py), which an
Idempotency-Key makes safe too (api/idempotency.py).

REDIS_CLUSTER=true: the same, with redis-py's RedisCluster on the seed nodes REDIS_URL names (any node is
enough; it reads the slot map from them when it is built, so the cluster must answer at start). Everything
that reads or writes the job store, the result cache, heartbeats and completions gets this client, and
shared/jobs.py lays its keys out for it (KeySpace). The rate limiter's storage gets the cluster URL form
of `limits` (limiter_storage_url). The broker cannot live in the cluster (kombu's Redis transport has no
cluster mode): shared/config.py refuses a broker URL unset or naming a seed node, and
check_broker_outside_cluster() asks a redis:// broker itself at start whether it is a cluster node.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry

from shared.config import ConfigError, Settings, redis_seed_nodes

# What an unreachable job store raises: redis-py's errors and, on a cluster, RedisClusterException, which is not a
# RedisError (raised when no node answers while the client learns the slots again, e.g. as a master dies).
STORE_ERRORS = (redis.RedisError, RedisClusterException)

log = logging.getLogger(__name__)

WORKER_RETRIES = 2


def make_redis(settings: Settings, retries: int = 0) -> redis.Redis:
    """A client on REDIS_URL; `retries`: times a command is sent again after a connection error or timeout.
    With REDIS_CLUSTER, a RedisCluster (the same commands; see is_cluster)."""
    return store_client(settings.redis_url, settings.redis_cluster, settings.redis_socket_timeout, retries)


def store_client(url: str, cluster: bool, socket_timeout: float = 1.0, retries: int = 0) -> redis.Redis:
    """make_redis's client from its parts (tests and tools that have a URL, not Settings)."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries)
    options = dict(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                   health_check_interval=30, decode_responses=True)
    if not cluster:
        return redis.Redis.from_url(url, retry=retry, **options)
    first = urlsplit(url.split(",", 1)[0].strip())
    auth = {key: value for key, value in (("username", first.username), ("password", first.password)) if value}
    return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in redis_seed_nodes(url)],
                        retry=retry, **auth, **options)


def is_cluster(client) -> bool:
    """A RedisCluster client (or one of its pipelines)."""
    return isinstance(client, RedisCluster)


def limiter_storage_url(settings: Settings) -> str:
    """Where flask-limiter and the token budget keep their counters: RATE_LIMIT_STORAGE_URL, else the job
    store, in `limits`' cluster form (`redis+cluster://[:password@]host:port,host:port`) on a cluster."""
    if settings.rate_limit_storage_url or not settings.redis_cluster:
        return settings.rate_limit_storage_url or settings.redis_url
    first = urlsplit(settings.redis_url.split(",", 1)[0].strip())
    auth = ""
    if first.password:
        auth = f"{quote(first.username or '', safe='')}:{quote(first.password, safe='')}@"
    return "redis+cluster://" + auth + ",".join(f"{host}:{port}" for host, port in redis_seed_nodes(settings.redis_url))


def check_broker_outside_cluster(settings: Settings) -> None:
    """With REDIS_CLUSTER and a redis:// broker: raise ConfigError if the broker Redis says it is a cluster node
    (shared/config.py already refused one that is a seed node; this catches the cluster's other nodes). A broker
    that does not answer now is not refused here (Celery reconnects to it as to any broker)."""
    if not settings.redis_cluster or settings.broker_url.split("://", 1)[0] not in ("redis", "rediss"):
        return
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=settings.redis_socket_timeout,
                                  socket_connect_timeout=settings.redis_socket_timeout, decode_responses=True)
    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except STORE_ERRORS as exc:
        log.warning("could not ask the broker Redis whether it is a cluster node: %s", exc)
        return
    finally:
        client.close()
    if enabled:
        raise ConfigError("REDIS_CLUSTER=true: CELERY_BROKER_URL names a Redis Cluster node, and Celery's Redis "
                          "transport (kombu) has no cluster mode; use RabbitMQ (amqp://...) or a separate, "
                          "non-cluster Redis as the broker")


def call_script(pipe, script, keys: list, args: list) -> None:
    """Queue a registered script's call on a pipeline (redis-py refuses `evalsha` on a cluster pipeline by name,
    but sends the command as such; see run_pipelined for NOSCRIPT)."""
    if is_cluster(pipe):
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    else:
        script(keys=keys, args=args, client=pipe)


def run_pipelined(client, build, raise_on_error: bool = True) -> list:
    """Run the commands `build(pipe)` queues on a non-transactional pipeline of `client`, in one round trip per
    server. Scripts called on a cluster pipeline are sent as EVALSHA without redis-py loading them first (it
    does for a plain pipeline): a server that lacks one (a replica just promoted: scripts are not replicated)
    answers NOSCRIPT, and then every script `build` used is loaded on every master and the whole pipeline is
    sent again, which is safe because every store script is idempotent (shared/job_scripts.py)."""
    for attempt in (1, 2):
        pipe = client.pipeline(transaction=False)
        scripts = build(pipe) or ()
        try:
            return pipe.execute(raise_on_error=raise_on_error)
        except AttributeError as exc:
            # redis-py's cluster pipeline, connecting to a node as it dies, can find the connection's hiredis
            # reader already torn down ("'NoneType' object has no attribute 'feed'"; seen in make test-cluster):
            # the node is unreachable, which callers handle as any store outage (503 + Retry-After in the API).
            if not is_cluster(client):
                raise
            raise redis.ConnectionError(f"a Redis Cluster node went away while connecting: {exc}") from exc
        except NoScriptError:
            if attempt == 2 or not scripts:
                raise
            for script in scripts:
                client.script_load(script.script)
    raise AssertionError("unreachable")
