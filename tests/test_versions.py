"""The installed libraries are the ones the code was written and locked against.

- kombu, celery and celery-batches: shared/pinned_internals.py names the versions whose private parts
  shared/kombu_redis.py and worker/tasks.py use; the requirements pins, the lock and what is installed
  must all be those.
- requirements/lock.txt (`make lock`) agrees with every pin in requirements/*.txt, locks every package
  they name, holds no CUDA packages (the CPU torch build), and matches what is installed.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from shared.pinned_internals import WRITTEN_AGAINST

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements"
LOCK = REQUIREMENTS / "lock.txt"
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(==\s*([^\s;#]+))?", re.M)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins() -> dict[str, dict[str, str | None]]:
    """{file name: {package: its == version or None}} for every requirements/*.txt but the lock."""
    pins = {}
    for path in sorted(REQUIREMENTS.glob("*.txt")):
        if path == LOCK:
            continue
        pins[path.name] = {_canonical(m.group(1)): m.group(3) for m in _REQUIREMENT.finditer(path.read_text())}
    return pins


def locked() -> dict[str, str]:
    return {_canonical(name): version for name, version in
            re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", LOCK.read_text(), re.M)}


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("package", sorted(WRITTEN_AGAINST))
def test_private_api_libraries_are_the_versions_the_code_was_written_against(package):
    expected = WRITTEN_AGAINST[package]
    pinned = {file: pins[package] for file, pins in requirement_pins().items() if package in pins}
    assert pinned and set(pinned.values()) == {expected}, \
        f"{package} must be pinned =={expected} in requirements/*.txt (shared/pinned_internals.py); found {pinned}"
    assert locked().get(package) == expected, f"requirements/lock.txt must lock {package}=={expected}; run `make lock`"
    assert installed(package) == expected, (
        f"{package} {installed(package)} is installed, but shared/kombu_redis.py and worker/tasks.py use private "
        f"parts of {package} {expected} (shared/pinned_internals.py): install from requirements/lock.txt, or read "
        f"that code against the new version and update the pins, the lock and WRITTEN_AGAINST together")


def test_the_lock_agrees_with_every_requirements_file():
    lock = locked()
    for file, pins in requirement_pins().items():
        missing = sorted(name for name in pins if name not in lock)
        assert not missing, f"requirements/{file} names {missing}, which requirements/lock.txt lacks: run `make lock`"
        # A local build label (torch 2.13.0+cpu) satisfies the plain pin, as pip itself decides.
        stale = {name: (version, lock[name]) for name, version in pins.items()
                 if version and lock[name].split("+")[0] != version}
        assert not stale, f"requirements/{file} pins differ from requirements/lock.txt (pin, lock): {stale}; " \
                          "run `make lock`"


def test_the_lock_has_the_cpu_torch_and_no_cuda_packages():
    lock = locked()
    assert lock["torch"].endswith("+cpu"), lock["torch"]
    cuda = sorted(name for name in lock if name.startswith("nvidia-") or name == "triton")
    assert not cuda, f"requirements/lock.txt pulls CUDA packages: {cuda}"


def test_what_is_installed_is_what_is_locked():
    differ = {name: (version, installed(name)) for name, version in locked().items()
              if installed(name) not in (None, version)}
    assert not differ, f"installed versions differ from requirements/lock.txt (locked, installed): {differ}"
