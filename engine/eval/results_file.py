"""The results file on disk: where one may be written, reading one back with every problem named.

Each check fails with a ValueError that names the file (as `out=...`, the argument that chose it) and says what is
wrong and what to do; a file that is refused is left exactly as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

SCHEMA = "raggedkv-eval/1"
_KEY_TYPES = (str, int, float, bool, type(None))


def _named(path: Path) -> str:
    return f"out={str(path)!r}"


def check_out(path: Path) -> None:
    """Make sure results can be written at `path` before any work starts: not a directory, its folder exists (it is
    created if missing) and accepts new files, and an existing file is writable.

    Raises:
        ValueError: naming `out`, the path and the reason.
    """
    if path.is_dir():
        example = str(path / "results.json")
        raise ValueError(f"{_named(path)} is a directory; give --out a file path such as {example!r}")
    folder = path.parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"{_named(path)} cannot be created: {str(blocker)!r} is a file, not a folder; "
                         "choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{_named(path)}: its folder {str(folder)!r} cannot be created ({err.strerror or err}); "
                         "choose another --out") from None
    try:
        probe, probe_path = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
    except OSError as err:
        raise ValueError(f"{_named(path)} is not writable: its folder {str(folder)!r} refuses new files "
                         f"({err.strerror or err}); choose another --out") from None
    os.close(probe)
    os.unlink(probe_path)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{_named(path)} is read-only; make it writable or choose another --out")


def _refuse(path: Path, reason: str) -> ValueError:
    return ValueError(f"{_named(path)} is not a usable results file: {reason}. It is left untouched; "
                      "move it away or choose another --out")


def read_results(path: Path, task: str, key_fields: Sequence[str]) -> dict:
    """The content of the results file at `path`, checked against the schema: an object with `schema`, `task`,
    `settings` (an object), `records` (objects holding every key field, with a scalar value), an optional `grid`
    (an object of lists), and no two records with the same key.

    Raises:
        ValueError: naming `out`, the path and the first problem found (unparsable JSON with its line and column, a
            missing or mistyped field, a record without a key field, a duplicated key).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise _refuse(path, f"invalid JSON at line {err.lineno} column {err.colno} ({err.msg}), "
                            "as a truncated or hand-edited file has") from None
    except UnicodeDecodeError as err:
        raise _refuse(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise _refuse(path, f"it cannot be read ({err.strerror or err})") from None
    if not isinstance(data, dict):
        raise _refuse(path, f"it holds a JSON {type(data).__name__}, not an object")
    if data.get("schema") != SCHEMA:
        raise _refuse(path, f"schema is {data.get('schema')!r}, not {SCHEMA!r}")
    if data.get("task") != task:
        raise ValueError(f"{_named(path)} holds {data.get('task')!r} results, not {task!r} ones; choose another --out")
    if not isinstance(data.get("settings"), dict):
        raise _refuse(path, "'settings' is missing or not an object")
    if not isinstance(data.get("records"), list):
        raise _refuse(path, "'records' is missing or not a list")
    grid = data.get("grid")
    if grid is not None and not (isinstance(grid, dict) and all(
        isinstance(values, list) and all(isinstance(value, _KEY_TYPES) for value in values) for values in grid.values()
    )):
        raise _refuse(path, "'grid' is not an object of lists of numbers, strings or nulls")
    _check_records(path, data["records"], key_fields)
    return data


def _check_records(path: Path, records: list, key_fields: Sequence[str]) -> None:
    first_with_key: dict[tuple, int] = {}
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise _refuse(path, f"record {number} is {type(record).__name__}, not an object")
        missing = [field for field in key_fields if field not in record]
        if missing:
            raise _refuse(path, f"record {number} has no {missing[0]!r} (every record needs {list(key_fields)})")
        key = tuple(record[field] for field in key_fields)
        for field, value in zip(key_fields, key):
            if not isinstance(value, _KEY_TYPES):
                raise _refuse(path, f"record {number} has {field}={value!r}, not a number, string or null")
        if key in first_with_key:
            named = ", ".join(f"{field}={value!r}" for field, value in zip(key_fields, key))
            raise _refuse(path, f"record {number} repeats the key ({named}) of record {first_with_key[key]}; "
                                "keep one of them")
        first_with_key[key] = number
