"""A results file that is written as answers come in, so an interrupted run resumes where it stopped.

The file is JSON: the task, the settings every record depends on (model, backend, prompt and haystack versions,
...), the grid its records cover (the values of each key field), the environment and command line of the latest
run, the summary, and one record per generated answer. A record's key (its identifying fields, e.g. method,
kv_size, length, depth, needle) says which cell of the grid it fills; cells already in the file are skipped.

The file is rewritten after every `add` (atomically: a temporary file renamed over it, `results_file.py`), so a
run stopped at any moment keeps every answer it stored. A run may resume a file of the same task, settings and
grid; a file over another grid is joined only when asked (`merge`), its grid then becomes the union; a file of
other settings never is (its records would be mixed with records they do not describe).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Self

from ..atomic_io import write_atomically
from .results_file import SCHEMA, check_out, read_results


def environment() -> dict[str, str]:
    """Versions and machine of this run (recorded next to the results)."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _ordered(values: Iterable) -> list:
    """Distinct values, None first, then numbers and strings in order."""
    return sorted(set(values), key=lambda v: (v is not None, isinstance(v, str), 0 if v is None else v))


def grid_of(keys: Iterable[tuple], key_fields: Sequence[str]) -> dict[str, list]:
    """The grid that `keys` cover: for each key field, its distinct values."""
    columns = list(zip(*keys)) or [()] * len(key_fields)
    return {field: _ordered(column) for field, column in zip(key_fields, columns)}


def _shown(values: Iterable) -> str:
    values = _ordered(values)
    more = f" and {len(values) - 6} more" if len(values) > 6 else ""
    return ", ".join(map(repr, values[:6])) + more


def _grid_difference(old: dict[str, list], new: dict[str, list]) -> str:
    """'field: ... only in the file; ... only in this run' for each field whose values differ ('' if none)."""
    parts = []
    for field in dict.fromkeys([*old, *new]):
        before, after = set(old.get(field, [])), set(new.get(field, []))
        sides = [f"{_shown(before - after)} only in the file" if before - after else "",
                 f"{_shown(after - before)} only in this run" if after - before else ""]
        if any(sides):
            parts.append(f"{field}: " + "; ".join(filter(None, sides)))
    return ". ".join(parts)


class ResultStore:
    """Records of one task, keyed by `key_fields`, persisted to `path` (None: kept in memory only).

    Args:
        path: the results file; checked before anything else is done (it may be written, and if it exists it is a
            results file of this task, settings and grid), and never modified when refused.
        task, settings: the task's name and the settings every record depends on.
        key_fields: the fields that identify a record.
        wanted: the keys this run asks for; their grid must be the file's grid unless `merge`.
        merge: join this run to a file over another grid (the same settings); the file's grid becomes the union.

    Use as a context manager (or call `close`) so the file is written however the run ends. `summary` (set by the
    task) is saved next to the records.

    Raises:
        ValueError: a bad path, a file that does not parse or match the schema (with the reason), a file of another
            task or other settings (naming those that differ), or over another grid without `merge` (naming the
            values only in the file and only in this run).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        task: str,
        settings: dict,
        key_fields: Sequence[str],
        wanted: Collection[tuple] = (),
        merge: bool = False,
    ):
        self.path = Path(path) if path is not None else None
        self.task, self.settings, self.key_fields = task, settings, tuple(key_fields)
        self.grid = grid_of(wanted, self.key_fields)
        self.records: list[dict] = []
        self.summary: object = None
        self._environment: dict[str, str] | None = None
        if self.path is not None:
            check_out(self.path)
            if self.path.exists():
                self._load(merge)
        self._done = {self.key(record) for record in self.records}

    def _load(self, merge: bool) -> None:
        data = read_results(self.path, self.task, self.key_fields)
        named = f"out={str(self.path)!r}"
        if data["settings"] != self.settings:
            old = data["settings"]
            changed = sorted(k for k in {*old, *self.settings} if old.get(k) != self.settings.get(k))
            details = "; ".join(f"{k}: {old.get(k)!r} in the file, {self.settings.get(k)!r} in this run"
                                for k in changed)
            raise ValueError(f"{named} holds {self.task} results for other settings ({details}); records of different "
                             "settings never share a file: choose another --out, or rerun with the file's settings")
        self.records = data["records"]
        recorded = data.get("grid")
        file_grid = recorded if recorded is not None else grid_of(map(self.key, self.records), self.key_fields)
        if recorded is not None:
            fits = all(set(file_grid.get(f, [])) == set(self.grid.get(f, [])) for f in {*file_grid, *self.grid})
        else:  # a file from before grids were recorded: resumable by any run whose grid covers its records
            fits = all(set(file_grid[f]) <= set(self.grid[f]) for f in self.key_fields)
        if fits:
            return
        if not merge:
            raise ValueError(
                f"{named} holds {self.task} results over another grid ({_grid_difference(file_grid, self.grid)}): "
                "rerun with the file's values to resume it, add --merge (merge=True) to add this run's cells to it "
                "(its table and plots then cover both), or choose another --out"
            )
        self.grid = {f: _ordered([*file_grid.get(f, []), *self.grid.get(f, [])]) for f in self.key_fields}

    def key(self, record: dict) -> tuple:
        """The identifying fields of a record."""
        return tuple(record[field] for field in self.key_fields)

    def done(self, key: tuple) -> bool:
        """Whether the cell `key` is already in the file."""
        return key in self._done

    def add(self, records: Iterable[dict]) -> None:
        """Append records and write the file.

        Raises:
            ValueError: a record whose key is already stored (nothing of this call is added).
        """
        records = list(records)
        keys = [self.key(record) for record in records]
        for key in keys:
            if key in self._done or keys.count(key) > 1:
                raise ValueError(f"a {self.task} record with key {dict(zip(self.key_fields, key))} is already stored")
        self.records.extend(records)
        self._done.update(keys)
        self.save()

    def save(self) -> None:
        """Write the file atomically, one record per line (no-op without a path)."""
        if self.path is None:
            return
        if self._environment is None:
            self._environment = environment()
        head = {"schema": SCHEMA, "task": self.task, "settings": self.settings, "grid": self.grid,
                "env": self._environment, "command": sys.argv, "summary": self.summary}
        lines = [json.dumps(record, ensure_ascii=False) for record in self.records]
        body = json.dumps(head, indent=1, ensure_ascii=False)[:-2]  # reopen the object to append the records
        write_atomically(self.path, body + ',\n "records": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n")

    def close(self) -> None:
        """Write the file (with the summary, if the task has set it)."""
        self.save()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
