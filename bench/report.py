"""The benchmark's table and machine description, as Markdown (printed and written to bench/results/)."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass


@dataclass
class Row:
    name: str
    what: str
    rate: float | None = None  # texts (or jobs) per second
    p50: float | None = None  # seconds
    p95: float | None = None
    p99: float | None = None
    note: str = ""


def ms_list(per_process: dict[str, float]) -> str:
    """"API 1.20, worker 3.40": CPU milliseconds by process."""
    return ", ".join(f"{name} {ms:.2f}" for name, ms in per_process.items())


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f}"


def table(rows: list[Row]) -> str:
    lines = ["| row | what | texts/s | p50 ms | p95 ms | p99 ms | note |", "|---|---|---:|---:|---:|---:|---|"]
    for row in rows:
        rate = "" if row.rate is None else f"{row.rate:,.0f}"
        lines.append(f"| {row.name} | {row.what} | {rate} | {_ms(row.p50)} | {_ms(row.p95)} | {_ms(row.p99)} "
                     f"| {row.note} |")
    return "\n".join(lines)


def checks_table(checks: list[tuple[str, str, str, bool]]) -> str:
    lines = ["| check | measured | target | met |", "|---|---:|---|---|"]
    lines += [f"| {name} | {value} | {target} | {'yes' if ok else '**no**'} |" for name, value, target, ok in checks]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device: str) -> str:
    """A file name for this machine's results, e.g. cpu-amd-epyc-2c or gpu-nvidia-h200."""
    if device.startswith("cuda"):
        import torch
        label = "gpu-" + torch.cuda.get_device_name(0)
    else:
        label = f"cpu-{cpu_model()}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def machine_description(device: str, extra: dict[str, str]) -> str:
    import torch
    import transformers

    from worker.inference import cpu_quota
    facts = {
        "CPU": f"{cpu_model()}, {os.cpu_count()} cores ({cpu_quota()} usable by quota/affinity)",
        "GPU": torch.cuda.get_device_name(0) if device.startswith("cuda") else "none used",
        "Python / torch / transformers": f"{platform.python_version()} / {torch.__version__} / "
                                         f"{transformers.__version__}",
        "load average before the run": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **extra,
    }
    return "\n".join(f"- {key}: {value}" for key, value in facts.items())
