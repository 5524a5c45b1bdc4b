"""Docs that state facts about the code, checked against the code so they cannot drift apart:

- docs/configuration.md's settings tables: every environment variable the code reads (api/, worker/,
  shared/, client/, scripts/: found by parsing the sources) has a row, in the table of shared/config.py
  when that module reads it, else in the table of variables read elsewhere; every row names a variable
  the code reads; each default written there is the code's.
- docs/clients.md's exit-status table: client/cli.py's EXIT_STATUSES, word for word, and the codes the
  command returns.
- docs/operations.md's metrics table: what `python -m scripts.metrics_doc` generates from the metric
  definitions, which the prometheus-client registry confirms.
- `make <target>` in README.md and docs/*.md: a target of the Makefile.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

from shared.config import PROJECT_ROOT, load_settings

ROOT = PROJECT_ROOT
CONFIG_MODULE = ROOT / "shared" / "config.py"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
CLIENTS_DOC = ROOT / "docs" / "clients.md"
SCANNED = ("api", "worker", "shared", "client", "scripts")
# The headings docs/configuration.md puts its two tables under.
CONFIG_TABLE_HEADING = "## Configuration"
ELSEWHERE_TABLE_HEADING = "### Read outside shared/config.py"
VARIABLE = re.compile(r"[A-Z][A-Z0-9_]*\Z")
# Names a dict of environment variables goes by in the scanned code (os.environ copies, a child's env).
ENV_NAMES = frozenset({"env", "environ"})
# Defaults the table states in words, because no one value is the default; each is checked by hand here.
DEFAULTS_IN_WORDS = {
    "DEFAULT_MODEL": "the first of MODELS",
    "WORKER_MODELS": "all of MODELS",
    "BATCH_MAX_TOKENS": "by device (worker/inference.py)",
    "DEVICE": "cuda if torch sees one",
    "RATE_LIMIT_STORAGE_URL": "the job store, in limits' cluster form on a cluster (shared/redis_client.py)",
    "TORCH_THREADS": "from the CPU quota (worker/runtime.py)",
    "PROMETHEUS_MULTIPROC_DIR": "a new folder per gunicorn start (api/gunicorn_conf.py)",
}


# --------------------------------------------------------------------------------------------
# environment variables read by the code


@dataclass(frozen=True)
class EnvRead:
    name: str
    where: str  # path:line
    in_config: bool  # read by shared/config.py
    default: object  # the literal default at that read; NO_DEFAULT when there is none to compare
    module: str


NO_DEFAULT = object()


def _is_environ(node: ast.AST) -> bool:
    """os.environ, or a name that holds a dict of environment variables (env = dict(os.environ), ...)."""
    if isinstance(node, ast.Attribute) and node.attr == "environ":
        return isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id in ENV_NAMES


def _variable(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE.match(node.value):
        return node.value
    return None


def _read_at(node: ast.AST) -> tuple[str, ast.AST | None] | None:
    """(variable, default expression or None) when `node` reads an environment variable."""
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault", "pop") and _is_environ(func.value):
            name = _variable(node.args[0]) if node.args else None
            return (name, node.args[1] if len(node.args) > 1 else None) if name else None
        if (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
                isinstance(func, ast.Name) and func.id == "getenv"):
            name = _variable(node.args[0]) if node.args else None
            return (name, node.args[1] if len(node.args) > 1 else None) if name else None
        # shared/config.py's parsers: _int(env, "NAME", default, ...), _flag(env, "NAME", default), ...
        if len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in ENV_NAMES:
            name = _variable(node.args[1])
            return (name, node.args[2] if len(node.args) > 2 else None) if name else None
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
        name = _variable(node.slice)
        return (name, None) if name else None
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], (ast.In, ast.NotIn)) \
            and _is_environ(node.comparators[0]):
        name = _variable(node.left)
        return (name, None) if name else None
    return None


def _resolve(expr: ast.AST | None, tree: ast.Module, module: str) -> object:
    """The value of a default: a literal, or a constant the module defines or imports (Settings.redis_url);
    NO_DEFAULT for anything computed, and for None or "" (no default stated: the caller decides)."""
    if expr is None:
        return NO_DEFAULT
    if isinstance(expr, ast.Constant):
        return NO_DEFAULT if expr.value in (None, "") else expr.value
    chain = []
    while isinstance(expr, ast.Attribute):
        chain.insert(0, expr.attr)
        expr = expr.value
    if not isinstance(expr, ast.Name):
        return NO_DEFAULT
    value = NO_DEFAULT
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module and statement.level == 0:
            for alias in statement.names:
                if (alias.asname or alias.name) == expr.id:
                    value = getattr(importlib.import_module(statement.module), alias.name)
        elif isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant) and any(
                isinstance(target, ast.Name) and target.id == expr.id for target in statement.targets):
            value = statement.value.value
    if value is NO_DEFAULT:
        return NO_DEFAULT
    for attr in chain:
        value = getattr(value, attr)
    return value


def env_reads() -> list[EnvRead]:
    reads = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(tree):
                found = _read_at(node)
                if not found:
                    continue
                name, default = found
                parent = parents.get(node)
                # `os.environ.get("X") or "5000"`: the default is what follows the `or`.
                if default is None and isinstance(parent, ast.BoolOp) and isinstance(parent.op, ast.Or) \
                        and parent.values[0] is node:
                    default = parent.values[-1]
                reads.append(EnvRead(name, f"{path.relative_to(ROOT)}:{node.lineno}", path == CONFIG_MODULE,
                                     _resolve(default, tree, module), module))
    return reads


# --------------------------------------------------------------------------------------------
# the tables of docs/configuration.md


@dataclass(frozen=True)
class Row:
    names: tuple[str, ...]
    defaults: dict  # name -> ("literal", text) | ("unset", None) | ("words", cell)
    line: str


def markdown_table(text: str, heading: str) -> list[list[str]]:
    """The cells of the first table after `heading` (a line of its own), header and rule dropped."""
    lines = text.splitlines()
    assert heading in lines, f"no heading {heading!r}"
    rows, start = [], lines.index(heading) + 1
    for line in lines[start:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {heading!r}"
    return rows[2:]


def _default(cell: str) -> tuple[str, str | None]:
    cell = re.sub(r"\s*\([^()]*\)$", "", cell.strip())  # "`0` (auto)": the parenthesis explains
    if cell.lower().startswith("unset"):
        return "unset", None
    literal = re.fullmatch(r"`([^`]*)`", cell)
    return ("literal", literal.group(1)) if literal else ("words", cell)


def config_rows(heading: str) -> list[Row]:
    rows = []
    for cells in markdown_table(CONFIG_DOC.read_text(), heading):
        names = tuple(re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]))
        assert names, f"no variable in {cells}"
        parts = cells[1].split(", ") if len(names) > 1 and len(cells[1].split(", ")) == len(names) else \
            [cells[1]] * len(names)
        rows.append(Row(names, {name: _default(part) for name, part in zip(names, parts)}, " | ".join(cells)))
    return rows


def documented(rows: list[Row]) -> dict[str, tuple[str, str | None]]:
    return {name: row.defaults[name] for row in rows for name in row.names}


def test_every_variable_the_code_reads_has_a_row_in_the_right_table():
    reads = env_reads()
    in_config = {read.name for read in reads if read.in_config}
    elsewhere = {read.name for read in reads} - in_config
    assert {"REDIS_URL", "MAX_QUEUE_DEPTH", "WORKER_METRICS_PORT"} <= in_config, "the scanner lost config.py"
    assert {"PORT", "GUNICORN_ACCESS_LOG", "LOG_LEVEL", "WORKERS", "MODERATION_URL"} <= elsewhere
    rows = config_rows(CONFIG_TABLE_HEADING) + config_rows(ELSEWHERE_TABLE_HEADING)
    named = [name for row in rows for name in row.names]
    assert len(named) == len(set(named)), f"variables with two rows: {sorted({n for n in named if named.count(n) > 1})}"
    config_table = set(documented(config_rows(CONFIG_TABLE_HEADING)))
    elsewhere_table = set(documented(config_rows(ELSEWHERE_TABLE_HEADING)))
    where = {}
    for read in reads:
        where.setdefault(read.name, read.where)
    assert not in_config - config_table, "read by shared/config.py, no row in docs/configuration.md's " \
        f"first table: {sorted((name, where[name]) for name in in_config - config_table)}"
    assert not elsewhere - elsewhere_table, "read outside shared/config.py, no row in docs/configuration.md's " \
        f"'{ELSEWHERE_TABLE_HEADING}' table: {sorted((name, where[name]) for name in elsewhere - elsewhere_table)}"
    assert not config_table - in_config, f"rows of settings shared/config.py does not read: {config_table - in_config}"
    assert not elsewhere_table - elsewhere, f"rows of variables the code does not read (or that shared/config.py " \
        f"reads, whose rows belong in the first table): {elsewhere_table - elsewhere}"


def _as_setting(name: str, literal: str, table: set[str]) -> dict[str, str]:
    """The environment that sets `name` to its documented default."""
    if literal in table:  # "`REDIS_URL`": the default is that other variable's value
        return {literal: "redis://drift-check.invalid:6390/5", name: "redis://drift-check.invalid:6390/5"}
    if re.fullmatch(r"[a-z][\w.-]*(/[\w.-]+)+", literal):
        literal = str(ROOT / literal)  # relative paths (build/moderation-minilm) are the project folder's
    return {name: literal}


def test_the_settings_tables_defaults_are_the_codes():
    config = documented(config_rows(CONFIG_TABLE_HEADING))
    elsewhere = documented(config_rows(ELSEWHERE_TABLE_HEADING))
    table = set(config) | set(elsewhere)
    in_words = {name for name, (kind, _) in {**config, **elsewhere}.items() if kind == "words"}
    assert in_words == set(DEFAULTS_IN_WORDS), "a default written in words must be a literal (`...`) or " \
        f"'unset' where the code has one; else list it in DEFAULTS_IN_WORDS: {in_words ^ set(DEFAULTS_IN_WORDS)}"
    unchanged = load_settings({})
    wrong = []
    # shared/config.py: setting a variable to its documented default must change nothing.
    for name, (kind, literal) in config.items():
        if kind == "literal":
            env = _as_setting(name, literal, table)
            base = {k: v for k, v in env.items() if k != name}
            if load_settings(env) != load_settings(base):
                wrong.append(f"{name}: documented `{literal}`")
        elif kind == "unset" and load_settings({name: ""}) != unchanged:
            wrong.append(f"{name}: documented unset")
    # Elsewhere (and config variables read elsewhere too): each literal default in the code is the table's.
    for read in env_reads():
        if read.in_config or read.default is NO_DEFAULT:
            continue
        # (Where the table says unset, a read may still fall back to something when it parses: not compared.)
        kind, literal = {**config, **elsewhere}[read.name]
        if kind == "literal" and str(read.default) != literal:
            wrong.append(f"{read.name}: documented `{literal}`, {read.where} defaults to {read.default!r}")
    assert not wrong, "docs/configuration.md's defaults are not the code's:\n" + "\n".join(wrong)


def test_the_scanner_finds_every_kind_of_read():
    """The scanner is what the two tests above stand on: each form of read it must see, in a real module."""
    source = '''
import os
from shared.config import Settings
A = os.environ.get("A_VAR", "1")
B = os.environ.get("B_VAR") or "two"
C = os.getenv("C_VAR")
D = os.environ["D_VAR"]
E = "E_VAR" in os.environ
os.environ.setdefault("F_VAR", "PASSIVE")
def run(env):
    return env.get("G_VAR") or Settings.redis_url, _int(env, "H_VAR", 3)
'''
    tree = ast.parse(source)
    found = {}
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        if read := _read_at(node):
            name, default = read
            parent = parents.get(node)
            if default is None and isinstance(parent, ast.BoolOp) and parent.values[0] is node:
                default = parent.values[-1]
            found[name] = _resolve(default, tree, "example")
    assert found == {"A_VAR": "1", "B_VAR": "two", "C_VAR": NO_DEFAULT, "D_VAR": NO_DEFAULT, "E_VAR": NO_DEFAULT,
                     "F_VAR": "PASSIVE", "G_VAR": "redis://127.0.0.1:6379/0", "H_VAR": 3}


# --------------------------------------------------------------------------------------------
# exit statuses of the `moderation` command


def test_the_exit_status_table_is_the_commands():
    from client import cli
    rows = markdown_table(CLIENTS_DOC.read_text(), "### Exit status")
    table = {int(code): meaning for code, meaning in rows}
    assert table == cli.EXIT_STATUSES, "docs/clients.md's exit-status table and client/cli.py's EXIT_STATUSES differ"
    constants = {name: value for name, value in vars(cli).items()
                 if name.startswith("EXIT_") and isinstance(value, int)}
    assert set(constants.values()) == set(cli.EXIT_STATUSES), constants
    assert len(set(constants.values())) == len(constants), f"two EXIT_ constants share a code: {constants}"
    # What the command really returns: argparse's usage error is EXIT_USAGE; nothing listening is EXIT_UNAVAILABLE.
    bad_usage = subprocess.run([sys.executable, "-m", "client", "frobnicate"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
    assert bad_usage.returncode == cli.EXIT_USAGE == 2, bad_usage.stderr
    unreachable = subprocess.run([sys.executable, "-m", "client", "--url", "http://127.0.0.1:9", "--max-retries",
                                  "0", "status"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == cli.EXIT_UNAVAILABLE, unreachable.stderr
    # `moderation --help` prints the same table.
    help_text = subprocess.run([sys.executable, "-m", "client", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60).stdout
    assert "exit status:" in help_text and all(f"  {code:<5}" in help_text for code in cli.EXIT_STATUSES)


# --------------------------------------------------------------------------------------------
# the metrics reference of docs/operations.md


def test_the_metrics_table_is_what_the_code_defines():
    from scripts import metrics_doc
    rows = metrics_doc.metric_rows()
    assert metrics_doc.documented(metrics_doc.DOC.read_text()) == metrics_doc.render(rows), \
        "docs/operations.md's metrics table is stale: run `python -m scripts.metrics_doc`"
    from shared import metrics as names
    assert [row.name for row in rows] == list(names.ALL_METRICS)
    # The registry agrees: each metric object's family, as prometheus-client exposes it.
    from prometheus_client import REGISTRY
    families = {family.name: family for family in REGISTRY.collect()}
    for row in rows:
        if row.name.startswith("moderation_queue_"):  # read at scrape time by the API's own collector
            continue
        family = families[row.name.removesuffix("_total") if row.type == "counter" else row.name]
        assert (family.type, family.documentation) == (row.type, row.help), row
    check = subprocess.run([sys.executable, "-m", "scripts.metrics_doc", "--check"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stderr


def test_the_metrics_check_fails_on_a_stale_table(tmp_path, monkeypatch):
    from scripts import metrics_doc
    stale = tmp_path / "operations.md"
    text = metrics_doc.DOC.read_text()
    stale.write_text(text.replace("| `moderation_batch_size` | histogram | `model` |", "| `moderation_batch_size` | "
                                  "histogram | `model`, `device` |"))
    monkeypatch.setattr(metrics_doc, "DOC", stale)
    assert metrics_doc.main(["--check"]) == 1
    assert metrics_doc.main([]) == 0 and stale.read_text() == text  # rewritten to what the code says


# --------------------------------------------------------------------------------------------
# make targets named in the docs


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    targets = set()
    for match in re.finditer(r"^([A-Za-z0-9_.\- ]+?)\s*:(?!=)", text, re.M):
        targets.update(match.group(1).split())
    return targets - {".PHONY"}


def documented_make_targets() -> dict[str, str]:
    """`make <target>` in code spans and fenced blocks of README.md and docs/*.md -> where first seen."""
    found = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        fenced = re.findall(r"```.*?```", text, re.S)
        code = fenced + re.findall(r"`[^`\n]+`", re.sub(r"```.*?```", "", text, flags=re.S))
        for chunk in code:
            for target in re.findall(r"(?:^|[\s`;&(])make\s+(?:[A-Z_]+=\S+\s+)*([a-z][\w-]*)", chunk, re.M):
                found.setdefault(target, str(path.relative_to(ROOT)))
    return found


def test_every_make_target_the_docs_name_exists():
    documented_targets = documented_make_targets()
    assert {"run", "test", "model"} <= set(documented_targets), documented_targets
    missing = {target: where for target, where in documented_targets.items() if target not in make_targets()}
    assert not missing, f"`make <target>` in the docs with no such Makefile target: {missing}"
    # and Make agrees that each one is a target (a dry run of each, nothing executed)
    for target in documented_targets:
        dry = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60)
        assert "No rule to make target" not in dry.stderr, (target, dry.stderr)


@pytest.mark.parametrize("text, expected", [
    ("```sh\nmake run    # everything\nWORKERS=3 make run\n```", {"run"}),
    ("run `make test-faults` or `make run WORKERS=3`", {"test-faults", "run"}),
    ("the scripts make harmless", set()),
])
def test_make_mentions_are_found_in_code_only(tmp_path, monkeypatch, text, expected):
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "README.md").write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert set(documented_make_targets()) == expected
