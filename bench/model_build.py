"""`python -m bench.model_build`: how long `python -m model.build` takes from a clean folder (a fresh
process, as `make model` and the worker image build run it), and a no-op rebuild of the same folder.

Prints figures; the speed goal (a few seconds; docs/model.md: "in a few seconds") is judged here, not asserted
in tests/test_model_build.py.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.config import PROJECT_ROOT


def timed_build(output: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "model.build", "--output", str(output)], cwd=PROJECT_ROOT,
                   check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "moderation-minilm"
        fresh = timed_build(output)
        again = timed_build(output)
    print(f"model.build from a clean folder: {fresh:.1f} s; rebuild of an up-to-date folder: {again:.1f} s "
          "(wall clock, including the Python start-up)")


if __name__ == "__main__":
    main()
