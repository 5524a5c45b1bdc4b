# `helm test`: one job through the API, as a client submits it (templates/tests.yaml runs this with
# `python -c` in the API image). Standard library only. Environment: MODERATION_URL (the API's
# Service), API_KEYS (the first key is used; empty: no authentication), TIMEOUT_SECONDS.
import json
import os
import sys
import time
import urllib.error
import urllib.request

base = os.environ["MODERATION_URL"].rstrip("/")
keys = [key.strip() for key in os.environ.get("API_KEYS", "").split(",") if key.strip()]
deadline = time.monotonic() + float(os.environ.get("TIMEOUT_SECONDS", "600"))
headers = {"Content-Type": "application/json"}
if keys:
    headers["Authorization"] = "Bearer " + keys[0]


def call(method, path, body=None):
    """(status, JSON body); connection errors and 503 (no Redis yet, queue full) are retried."""
    while True:
        request = urllib.request.Request(base + path, method=method, headers=headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=40) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            if error.code != 503:
                return error.code, json.load(error)
            reason = f"503 {error.read()[:200]!r}"
        except (urllib.error.URLError, OSError) as error:
            reason = str(error)
        if time.monotonic() > deadline:
            sys.exit(f"{method} {base}{path}: {reason}")
        print(f"{method} {path}: {reason}; retrying", flush=True)
        time.sleep(2)


status, job = call("POST", "/generate", {"input_text": "helm test: is the moderation service up?"})
if status not in (200, 202):
    sys.exit(f"POST /generate answered {status}: {job}")
job_id = job["job_id"]
print(f"submitted job {job_id} ({job['status']})", flush=True)
while job["status"] in ("queued", "running"):
    if time.monotonic() > deadline:
        sys.exit(f"job {job_id} still {job['status']} after {os.environ.get('TIMEOUT_SECONDS', '600')} s")
    status, job = call("GET", f"/jobs/{job_id}?wait=10")
    if status != 200:
        sys.exit(f"GET /jobs/{job_id} answered {status}: {job}")
if job["status"] != "succeeded":
    sys.exit(f"job {job_id} {job['status']}: {job.get('error')}")
print(f"job {job_id} succeeded: flagged={job['results'][0]['flagged']}", flush=True)
