"""Every Prometheus metric name the service exports, in one place.

Base units (seconds), counters end in `_total`. The API (api/metrics.py) and the worker
(worker/metrics.py) create the metric objects from these names; dashboards and alert rules
(grafana/, prometheus/) are checked against this module by tests/test_deploy_files.py.
"""

# API
HTTP_REQUESTS_TOTAL = "moderation_http_requests_total"
HTTP_REQUEST_DURATION_SECONDS = "moderation_http_request_duration_seconds"
JOBS_SUBMITTED_TOTAL = "moderation_jobs_submitted_total"
TEXTS_SUBMITTED_TOTAL = "moderation_texts_submitted_total"
REQUESTS_REJECTED_TOTAL = "moderation_requests_rejected_total"
JOBS_CANCELED_TOTAL = "moderation_jobs_canceled_total"
# Tokens counted at the door (api/tokens.py), by key class ("key": an API key, "anonymous": per client IP)
# and outcome (accepted, or the reason it was refused)
TOKENS_TOTAL = "moderation_tokens_total"
# Long polls (`wait`) in progress in this API process, and those cut short by the cap (api/long_polls.py)
LONG_POLLS_ACTIVE = "moderation_long_polls_active"
LONG_POLLS_REFUSED_TOTAL = "moderation_long_polls_refused_total"

# Queue, computed from the broker at scrape time
QUEUE_DEPTH = "moderation_queue_depth"
QUEUE_OLDEST_JOB_AGE_SECONDS = "moderation_queue_oldest_job_age_seconds"
# RabbitMQ: messages past the delivery limit, dead-lettered into the queue's parking queue (0 on Redis)
QUEUE_PARKED_MESSAGES = "moderation_queue_parked_messages"

# Worker
QUEUE_WAIT_SECONDS = "moderation_queue_wait_seconds"
INFERENCE_DURATION_SECONDS = "moderation_inference_duration_seconds"
BATCH_SIZE = "moderation_batch_size"
BATCH_TOKENS = "moderation_batch_tokens"
JOBS_COMPLETED_TOTAL = "moderation_jobs_completed_total"
TEXTS_PROCESSED_TOTAL = "moderation_texts_processed_total"
CACHE_HITS_TOTAL = "moderation_cache_hits_total"
MODEL_LOAD_SECONDS = "moderation_model_load_seconds"
WORKER_INFO = "moderation_worker_info"
# Fair service (worker/slices.py): slices a job took, and its latency from enqueue to finish by size
# ("light": finished in one slice, "bulk": several), the fairness panel's source
JOB_SLICES = "moderation_job_slices"
JOB_LATENCY_SECONDS = "moderation_job_latency_seconds"
# Cascade models (worker/cascade.py): windows each stage scored (stage: shared/cascade.py's FAST, every window;
# ACCURATE, those the fast model was unsure of), so accurate / fast is the share sent on to the slower model
CASCADE_WINDOWS_TOTAL = "moderation_cascade_windows_total"

# Reasons for moderation_requests_rejected_total{reason}
REJECT_RATE_LIMITED = "rate_limited"
REJECT_QUEUE_FULL = "queue_full"
REJECT_INVALID = "invalid"
REJECT_UNAUTHORIZED = "unauthorized"
REJECT_UNAVAILABLE = "unavailable"
REJECT_TOO_LARGE = "too_large"  # past MAX_REQUEST_TOKENS / MAX_TEXT_TOKENS (413)
REJECT_REASONS = (REJECT_RATE_LIMITED, REJECT_QUEUE_FULL, REJECT_INVALID, REJECT_UNAUTHORIZED, REJECT_UNAVAILABLE,
                  REJECT_TOO_LARGE)
# Outcomes for moderation_tokens_total{outcome}
TOKENS_ACCEPTED = "accepted"
TOKENS_TOO_LARGE = "too_large"
TOKENS_RATE_LIMITED = "rate_limited"

API_METRICS = (HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION_SECONDS, JOBS_SUBMITTED_TOTAL,
               TEXTS_SUBMITTED_TOTAL, REQUESTS_REJECTED_TOTAL, JOBS_CANCELED_TOTAL, TOKENS_TOTAL,
               LONG_POLLS_ACTIVE, LONG_POLLS_REFUSED_TOTAL, QUEUE_DEPTH,
               QUEUE_OLDEST_JOB_AGE_SECONDS, QUEUE_PARKED_MESSAGES)
WORKER_METRICS = (QUEUE_WAIT_SECONDS, INFERENCE_DURATION_SECONDS, BATCH_SIZE, BATCH_TOKENS,
                  JOBS_COMPLETED_TOTAL, TEXTS_PROCESSED_TOTAL, CACHE_HITS_TOTAL, MODEL_LOAD_SECONDS,
                  WORKER_INFO, JOB_SLICES, JOB_LATENCY_SECONDS, CASCADE_WINDOWS_TOTAL)
ALL_METRICS = API_METRICS + WORKER_METRICS
