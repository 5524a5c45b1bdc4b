"""The README's quick start, run as written: `make run`, then its `curl` commands against that service.

The commands are read from README.md's "Quick start" section, not copied here: each `curl` runs in bash
exactly as printed, with `localhost:5000` pointed at the service this test started and the example job
id (`3f0c…`) replaced by the id the first answer gave. Each answer must have the shape of the sample
printed under its command: the same keys (a sample object ending in `…` lists only some of them), the
same kinds of values, the same strings and verdicts (a string ending in `…` gives only its start), and
scores within 0.05 of the printed ones. So a README whose requests or answers drift from the API fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest
import requests

from scripts.launch import _OWN_PREFIXES
from tests.support import ROOT, Proc, free_port, wait_until

README = ROOT / "README.md"
SCORE_TOLERANCE = 0.05
ELLIPSIS = "…"


def section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"README.md has no '## {title}' section"
    return match.group(1)


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)


def commands_with_samples(block: str) -> list[tuple[str, str]]:
    """Each command of a shell block (backslash continuations joined) with the comment lines right below it."""
    found, lines, index = [], block.splitlines(), 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = line
        while command.endswith("\\"):
            command = command[:-1] + " " + lines[index].strip()
            index += 1
        sample = []
        while index < len(lines) and lines[index].startswith("#"):
            sample.append(lines[index][1:])
            index += 1
        found.append((command.strip(), "\n".join(sample).strip()))
    return found


def quick_start() -> tuple[str, list[tuple[str, str]]]:
    """The command that starts the service, and the requests with their sample answers."""
    blocks = shell_blocks(section(README.read_text(), "Quick start"))
    assert len(blocks) == 2, "the quick start is one block that starts the service, then one of requests"
    (start, _), = commands_with_samples(blocks[0])
    return start.split("#")[0].strip(), commands_with_samples(blocks[1])


def parse_sample(sample: str):
    """The printed answer as JSON: `…` closing an object stands for the keys left out."""
    return json.loads(re.sub(rf",\s*{ELLIPSIS}\s*}}", f', "{ELLIPSIS}": null}}', sample))


def assert_shape(sample, actual, where: str = "answer") -> None:
    if isinstance(sample, dict):
        assert isinstance(actual, dict), f"{where}: README shows an object, the service answered {actual!r}"
        keys = set(sample) - {ELLIPSIS}
        if ELLIPSIS in sample:
            assert keys <= set(actual), f"{where}: README shows keys the service lacks: {keys - set(actual)}"
        else:
            assert keys == set(actual), (f"{where}: README shows keys {sorted(keys)}, the service answered "
                                         f"{sorted(actual)}")
        for key in keys:
            assert_shape(sample[key], actual[key], f"{where}.{key}")
    elif isinstance(sample, list):
        assert isinstance(actual, list) and len(actual) == len(sample), f"{where}: {actual!r} against {sample!r}"
        for index, (expected, got) in enumerate(zip(sample, actual)):
            assert_shape(expected, got, f"{where}[{index}]")
    elif isinstance(sample, bool) or sample is None:
        assert actual is sample, f"{where}: README shows {sample!r}, the service answered {actual!r}"
    elif isinstance(sample, (int, float)):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r}"
        assert abs(actual - sample) <= SCORE_TOLERANCE, f"{where}: README shows {sample}, the service {actual}"
    else:
        assert isinstance(actual, str), f"{where}: README shows a string, the service answered {actual!r}"
        if sample.endswith(ELLIPSIS):
            assert actual.startswith(sample[:-1]), f"{where}: {actual!r} does not start like {sample!r}"
        else:
            assert actual == sample, f"{where}: README shows {sample!r}, the service answered {actual!r}"


def service_env(tmp_path) -> dict[str, str]:
    """The caller's environment less any service setting (README's defaults), on free ports, with a Redis
    URL nothing answers at: `make run` starts its private Redis there, as it does on a new machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    env.update(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", REDIS_DATA_DIR=str(tmp_path / "redis"),
               PORT=str(free_port()), HOST="127.0.0.1", WORKER_METRICS_PORT=str(free_port()),
               PYTHONUNBUFFERED="1")
    return env


def stop_group(proc: Proc) -> None:
    """SIGTERM to `make run`'s whole process group (as Ctrl-C is), then wait until every process of it is gone."""
    proc.stop(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    proc.signal_group(signal.SIGKILL)


@pytest.fixture(scope="module")
def readme_service(tmp_path_factory):
    start, _ = quick_start()
    assert start == "make run", f"the quick start starts the service with {start!r}; this test runs `make run`"
    tmp_path = tmp_path_factory.mktemp("readme")
    env = service_env(tmp_path)
    # --old-file: the tests run inside the venv `make test` just installed; `make run` must not reinstall
    # it in the middle of the suite (its recipe is what is under test: the model build and scripts/run.py).
    argv = ["make", "--no-print-directory", "--old-file=.venv/.installed-run", *shlex.split(start)[1:]]
    proc = Proc(argv, env, tmp_path / "make-run.log")
    url = f"http://127.0.0.1:{env['PORT']}"

    def ready():
        if not proc.alive():
            raise AssertionError(f"`make run` exited with {proc.process.returncode}:\n{proc.log_tail()}")
        try:
            return requests.get(url + "/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False
    try:
        wait_until(ready, timeout=240, interval=0.5, what=f"`make run` to be ready:\n{proc.log_tail()}")
        yield url, proc
    finally:
        stop_group(proc)


def test_every_curl_in_the_readme_is_run():
    """The quick start's requests are run below, "Choosing a model"'s by tests/cascade (`make test-cascade`):
    together they are every `curl` the README prints."""
    _, requests_shown = quick_start()
    cascade = commands_with_samples(shell_blocks(section(README.read_text(), "Choosing a model"))[-1])
    printed = [line for line in README.read_text().splitlines() if line.lstrip().startswith("curl ")]
    assert len(printed) == len(requests_shown) + len(cascade) == 4, printed
    assert all(command.startswith("curl ") and sample for command, sample in requests_shown), requests_shown


def test_the_quick_start_runs_as_written(readme_service):
    url, proc = readme_service
    _, requests_shown = quick_start()
    placeholder, job_id = None, None
    for command, sample in requests_shown:
        if placeholder and job_id:
            command, sample = command.replace(placeholder, job_id), sample.replace(placeholder, job_id)
        command = command.replace("localhost:5000", url.removeprefix("http://"))
        assert url.removeprefix("http://") in command, f"the README's request is not to localhost:5000: {command}"
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        try:
            answer = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(f"{command}\nanswered no JSON: {done.stdout!r}") from None
        expected = parse_sample(sample)
        if placeholder is None and "job_id" in expected:  # the first answer names the job the next ones follow
            placeholder, job_id = expected["job_id"], answer.get("job_id")
            assert isinstance(job_id, str) and job_id, answer
            expected = parse_sample(sample.replace(placeholder, job_id))
        assert_shape(expected, answer, command)
    assert job_id, "the quick start never showed a job id to follow"
    assert "[run] API on" in proc.log_tail(100_000)
