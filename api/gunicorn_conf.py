"""gunicorn settings for the API: `gunicorn --config api/gunicorn_conf.py "api:create_app()"`.

gthread workers: most requests wait on Redis (wait=, /v1/moderations), so threads, not processes,
carry the concurrency. graceful_timeout covers the longest wait, so SIGTERM drains in-flight requests.
"""

import os
import shutil
import tempfile

# Read here, not by shared/config.py (gunicorn loads this file before the app exists); docs/configuration.md
# lists them with the rest. Empty counts as unset, as it does for every setting (compose passes empties).
bind = f"{os.environ.get('HOST') or '0.0.0.0'}:{os.environ.get('PORT') or '5000'}"
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS") or "2")
threads = int(os.environ.get("GUNICORN_THREADS") or "32")
graceful_timeout = 35
timeout = 60
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None  # a file, or "-" for stdout; unset: none
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
