"""gunicorn settings for the API: `gunicorn --config api/gunicorn_conf.py "api:create_app()"`.

gthread workers: most requests wait on Redis (wait=, /v1/moderations), so threads, not processes,
carry the concurrency. graceful_timeout covers the longest wait, so SIGTERM drains in-flight requests.
"""

import os
import shutil
import tempfile

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
graceful_timeout = 35
timeout = 60
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"

# Multiprocess metrics: each worker writes samples here; must be set before prometheus_client loads.
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"moderation-api-metrics-{os.getpid()}"))


def on_starting(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)
