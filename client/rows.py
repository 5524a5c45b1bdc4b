"""Reading bulk input (CSV, JSONL, plain text; `-` is stdin) into rows, and the JSONL results file.

Every input row becomes exactly one output record carrying the row's id (an id column/field, else its
row number) and either a result or an error, so nothing is dropped silently and a re-run can skip what
the results file already holds.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FORMATS = ("csv", "jsonl", "txt")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "txt"}

# Field sizes: a CSV cell may hold a long text (the server allows MAX_TEXT_CHARS and we report longer ones).
csv.field_size_limit(sys.maxsize)


class InputError(ValueError):
    """The input as a whole cannot be read (unknown format, missing column, duplicate ids)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: its position, its 1-based row number, its id, and its text or why there is none."""

    position: int
    number: int
    id: Any
    text: str | None
    error: tuple[str, str] | None = None  # (code, message) found while reading

    @property
    def key(self) -> str:
        return record_key(self.id, self.number)


def record_key(row_id: Any, number: int) -> str:
    """What identifies a row across runs: its id, else its row number."""
    return json.dumps(["id", row_id] if row_id is not None else ["row", number])


def detect_format(path: str, explicit: str | None, column: str | None, field: str | None) -> str:
    if explicit:
        return explicit
    suffix = Path(path).suffix.lower() if path != "-" else ""
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if column:
        return "csv"
    if field:
        return "jsonl"
    if path == "-":
        return "txt"
    raise InputError(f"cannot tell the format of {path!r} from its extension: give --format {'/'.join(FORMATS)}")


def _open_text(path: str) -> IO[str]:
    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def _csv_rows(stream: IO[str], column: str, id_column: str | None) -> Iterator[tuple[int, Any, Any, Any]]:
    reader = csv.DictReader(stream)
    header = reader.fieldnames or []
    for name in (column, id_column):
        if name and name not in header:
            raise InputError(f"column {name!r} is not in the CSV header ({', '.join(header) or 'empty'})")
    for number, record in enumerate(reader, start=1):
        # A short row leaves missing cells None; a missing id cell is no id.
        row_id = (record.get(id_column) or None) if id_column else number
        yield number, row_id, record.get(column), None


def _jsonl_rows(stream: IO[str], field: str, id_field: str | None) -> Iterator[tuple[int, Any, Any, Any]]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            yield number, None if id_field else number, None, ("empty_row", "empty line")
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            yield number, None if id_field else number, None, ("invalid_json", f"line {number} is not JSON: {exc}")
            continue
        if not isinstance(record, dict):
            yield number, None if id_field else number, None, ("invalid_json", "line is not a JSON object")
            continue
        row_id = record.get(id_field) if id_field else number
        if isinstance(row_id, (dict, list)):
            row_id = json.dumps(row_id)
        yield number, row_id, record.get(field), None


def _text_rows(stream: IO[str]) -> Iterator[tuple[int, Any, Any, Any]]:
    for number, line in enumerate(stream, start=1):
        yield number, number, line.rstrip("\r\n"), None


def read_rows(path: str, fmt: str, *, column: str = "text", field: str = "text",
              id_column: str | None = None) -> list[Row]:
    """All rows of the input, in order. Raises InputError when ids repeat (resuming would be ambiguous)."""
    with _open_text(path) as stream:
        if fmt == "csv":
            raw = _csv_rows(stream, column, id_column)
        elif fmt == "jsonl":
            raw = _jsonl_rows(stream, field, id_column)
        elif fmt == "txt":
            raw = _text_rows(stream)
        else:
            raise InputError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
        rows = []
        seen: dict[str, int] = {}
        for position, (number, row_id, text, error) in enumerate(raw):
            if error is None and id_column and row_id is None:
                error = ("missing_id", f"row {number} has no {id_column!r}")
            row = Row(position, number, row_id, text, error)
            if row_id is not None and id_column:
                first = seen.setdefault(row.key, number)
                if first != number:
                    raise InputError(f"id {row_id!r} appears on rows {first} and {number}: ids must be unique")
            rows.append(row)
    return rows


def check_text(row: Row, max_chars: int) -> tuple[str, str] | None:
    """Why the server would refuse this row's text, checked here so one bad row never fails a whole job."""
    if row.error:
        return row.error
    text = row.text
    if text is None:
        return "missing_text", f"row {row.number} has no text"
    if not isinstance(text, str):
        return "not_a_string", f"row {row.number}: the text is a {type(text).__name__}, not a string"
    if not text.strip():
        return "empty_text", f"row {row.number}: the text is empty or only whitespace"
    if len(text) > max_chars:
        return "text_too_long", f"row {row.number}: {len(text)} characters, more than MAX_TEXT_CHARS={max_chars}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_text", f"row {row.number}: the text is not valid Unicode (a lone surrogate)"
    return None


def result_record(row: Row, result: dict[str, Any] | None, error: tuple[str, str] | None,
                  include_text: bool = False) -> dict[str, Any]:
    """One output line: id and row number first, then the verdict or the error."""
    record: dict[str, Any] = {"id": row.id, "row": row.number}
    if include_text:
        record["text"] = row.text
    if result is not None:
        record.update(flagged=result["flagged"], categories=result["categories"],
                      category_scores=result["category_scores"], error=None)
    else:
        code, message = error or ("error", "unknown error")
        record.update(flagged=None, categories=None, category_scores=None, error={"code": code, "message": message})
    return record


def load_results(path: Path) -> list[dict[str, Any]]:
    """The records a previous run wrote. A last line cut off mid-write (the run was killed) is removed
    from the file, so the row is simply done again."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    records = []
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise InputError(f"{path} line {number} is not JSON: is it a results file of this tool?") from None
        if not isinstance(record, dict) or "row" not in record:
            raise InputError(f"{path} line {number} has no 'row': is it a results file of this tool?")
        records.append(record)
    return records
