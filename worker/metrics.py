"""The worker's Prometheus metrics (names from shared/metrics.py), served on WORKER_METRICS_PORT.

One worker process per container, so the default registry suffices (no multiprocess mode).
"""

from prometheus_client import Counter, Gauge, Histogram

from shared import metrics as names

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)

QUEUE_WAIT = Histogram(names.QUEUE_WAIT_SECONDS, "Time from enqueue to the start of inference.",
                       ["model"], buckets=_LATENCY_BUCKETS)
INFERENCE = Histogram(names.INFERENCE_DURATION_SECONDS, "Duration of one forward pass.",
                      ["model"], buckets=_LATENCY_BUCKETS)
BATCH_SIZE = Histogram(names.BATCH_SIZE, "Texts per forward pass.", ["model"], buckets=_SIZE_BUCKETS)
BATCH_TOKENS = Histogram(names.BATCH_TOKENS, "Padded tokens per forward pass.", ["model"],
                         buckets=_TOKEN_BUCKETS)
JOBS_COMPLETED = Counter(names.JOBS_COMPLETED_TOTAL, "Jobs finished.",
                         ["model", "status"])
TEXTS_PROCESSED = Counter(names.TEXTS_PROCESSED_TOTAL,
                          "Texts given a result (inference or cache).", ["model"])
CACHE_HITS = Counter(names.CACHE_HITS_TOTAL,
                     "Texts answered from the result cache.", ["model"])
MODEL_LOAD = Gauge(names.MODEL_LOAD_SECONDS, "Seconds the model took to load.", ["model"])
WORKER_INFO = Gauge(names.WORKER_INFO,
                    "Always 1: which model this worker serves, on what device, with which engine.",
                    ["model", "device", "version", "engine"])
JOB_SLICES = Histogram(names.JOB_SLICES, "Slices a job took (1: it ran whole).", ["model"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
JOB_LATENCY = Histogram(names.JOB_LATENCY_SECONDS,
                        "Seconds from acceptance to result, by size (light: one slice, bulk: several).",
                        ["model", "size"], buckets=_LATENCY_BUCKETS)
CASCADE_WINDOWS = Counter(names.CASCADE_WINDOWS_TOTAL,
                          "Windows a cascade model's stages scored (fast: every window; accurate: those within "
                          "the band of a threshold, scored again).", ["model", "stage"])
