"""Code both the API and the worker import: config, the Celery app, job records, queue and metric names.

Nothing here imports torch, transformers, Flask or the worker.
"""

__version__ = "0.1.0"
