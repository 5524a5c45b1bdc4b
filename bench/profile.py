"""Optional sampling profiles of the service during row S (`--profile DIR`, needs py-spy on PATH).

py-spy writes collapsed stacks ("frame;frame;frame count"); summarize() turns them into the share of
samples each function is on the stack (inclusive) or on top of it (self): where the time goes.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def profiling(folder: Path | None, procs: dict):
    if folder is None:
        yield
        return
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    folder.mkdir(parents=True, exist_ok=True)
    recorders = {name: subprocess.Popen([spy, "record", "--pid", str(proc.process.pid), "--subprocesses",
                                         "--nonblocking", "--rate", "200", "--nolineno", "--format", "raw", "--output",
                                         str(folder / f"{name}.collapsed")], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                 for name, proc in procs.items()}
    try:
        yield
    finally:
        for recorder in recorders.values():
            recorder.send_signal(signal.SIGINT)
        for name, recorder in recorders.items():
            recorder.wait(60)
            summary = summarize(folder / f"{name}.collapsed")
            (folder / f"{name}-top.txt").write_text(summary)


def summarize(collapsed: Path, top: int = 25) -> str:
    inclusive, self_time, total = Counter(), Counter(), 0
    if not collapsed.exists():
        return f"no samples ({collapsed} missing)\n"
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        self_time[frames[-1]] += n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", self_time)):
        lines.append(f"\n== {title} ==")
        lines += [f"{100 * n / total:5.1f}%  {frame}" for frame, n in counter.most_common(top)]
    return "\n".join(lines) + "\n"
