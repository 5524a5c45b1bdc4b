"""Every test module runs in exactly one of `make test` and `make test-recovery`, and CI runs both.

The split is a marker: tests/conftest.py marks the modules of RECOVERY_MODULES `recovery`, and the two
targets select with `-m`. Read from the Makefile's recipes, not restated here, so a target that names
paths, drops its `-m` or selects an overlapping set fails this test.
"""

from __future__ import annotations

import re
import shlex

from _pytest.mark.expression import Expression

from tests.conftest import RECOVERY_MODULES, TESTS_DIR
from tests.support import ROOT

SPLIT_TARGETS = ("test", "test-recovery")


def recipe(target: str) -> list[str]:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert match, f"the Makefile has no `{target}` target"
    return [line.strip() for line in match.group(1).splitlines()]


def pytest_selection(target: str) -> tuple[list[str], str | None]:
    """The paths (none: pytest's testpaths, the whole tests/ folder) and the `-m` expression of the target's
    one pytest run."""
    runs = [line for line in recipe(target) if " -m pytest" in line]
    assert len(runs) == 1, f"`make {target}` should run pytest once: {runs}"
    args = shlex.split(runs[0].split(" -m pytest", 1)[1])
    paths, marker = [], None
    while args:
        arg = args.pop(0)
        if arg == "-m":
            marker = args.pop(0)
        elif not arg.startswith(("-", "$(")):
            paths.append(arg)
    return paths, marker


def selected(module: str, paths: list[str], marker: str | None) -> bool:
    if paths and not any(module == path or module.startswith(path.rstrip("/") + "/") for path in paths):
        return False
    markers = {"recovery"} if module.removeprefix("tests/") in RECOVERY_MODULES else set()
    return marker is None or Expression.compile(marker).evaluate(lambda name: name in markers)


def test_every_recovery_module_exists():
    missing = sorted(name for name in RECOVERY_MODULES if not (TESTS_DIR / name).is_file())
    assert not missing, f"tests/conftest.py RECOVERY_MODULES names modules that do not exist: {missing}"


def test_every_test_module_is_in_exactly_one_of_make_test_and_make_test_recovery():
    selections = {target: pytest_selection(target) for target in SPLIT_TARGETS}
    modules = sorted(f"tests/{path.name}" for path in TESTS_DIR.glob("test_*.py"))
    placed = {module: [target for target, (paths, marker) in selections.items() if selected(module, paths, marker)]
              for module in modules}
    wrong = {module: targets for module, targets in placed.items() if len(targets) != 1}
    assert not wrong, f"test modules in no target or in both: {wrong}"
    assert any(targets == ["test-recovery"] for targets in placed.values())


def test_ci_runs_both_targets():
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip().startswith("make ")]
    for target in SPLIT_TARGETS:
        assert f"make {target}" in commands, f".ci/run does not run `make {target}`"
