"""Reading a worker's /metrics in tests: counters and histogram samples by name and labels."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families


def worker_samples(metrics_url: str) -> dict[tuple[str, tuple], float]:
    """The page as {(sample name, sorted labels): value}."""
    text = requests.get(metrics_url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict, name: str, model: str, **labels) -> float:
    """One sample's value (0 when absent, as for a counter not yet incremented)."""
    return samples.get((name, tuple(sorted({"model": model, **labels}.items()))), 0.0)
