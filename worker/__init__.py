"""The inference worker: a Celery worker that batches queued jobs into forward passes.

Start it with `python -m worker` (see worker/__main__.py). Follow one job through:
worker/tasks.py (the batch task) -> worker/batching.py (which texts share a forward pass)
-> worker/inference.py (the model) -> worker/policy.py (scores -> flagged) -> shared/jobs.py.
"""
