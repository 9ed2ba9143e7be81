"""A results file that is written as answers come in, so an interrupted run resumes where it stopped.

The file is JSON: the task, the settings every record depends on (model, backend, prompt and haystack versions,
...), the environment and command line of the latest run, and one record per generated answer. A record's key
(its identifying fields, e.g. method, kv_size, length, depth, needle) says which cell of the grid it fills;
cells already in the file are skipped. Writes go to a temporary file that replaces the old one, so a run killed
mid-write leaves the previous complete file behind. Saving is throttled to one write per `save_every` seconds
(and always on `close`), so a long grid does not spend its time rewriting the file.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

SCHEMA = "raggedkv-eval/1"


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


class ResultStore:
    """Records of one task, keyed by `key_fields`, persisted to `path` (None: kept in memory only).

    Use as a context manager (or call `close`) so the last records are written however the run ends.
    `summary` (set by the task) is saved next to the records.

    Raises:
        ValueError: `path` holds results of another task or of different settings (resuming would mix them).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        task: str,
        settings: dict,
        key_fields: Sequence[str],
        save_every: float = 10.0,
    ):
        self.path = Path(path) if path is not None else None
        self.task, self.settings, self.key_fields = task, settings, tuple(key_fields)
        self.save_every, self._saved_at = save_every, time.monotonic()
        self.records: list[dict] = []
        self.summary: object = None
        if self.path is not None and self.path.exists():
            self._load()
        self._done = {self.key(record) for record in self.records}

    def _load(self) -> None:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if data.get("schema") != SCHEMA or data.get("task") != self.task:
            raise ValueError(f"out={str(self.path)!r} is not a {self.task!r} results file; choose another --out")
        if data["settings"] != self.settings:
            old = data["settings"]
            changed = sorted(k for k in {*old, *self.settings} if old.get(k) != self.settings.get(k))
            raise ValueError(
                f"out={str(self.path)!r} holds results for other settings ({', '.join(changed)} differ): "
                "choose another --out or rerun with the same settings to resume"
            )
        self.records = data["records"]

    def key(self, record: dict) -> tuple:
        """The identifying fields of a record."""
        return tuple(record[field] for field in self.key_fields)

    def done(self, key: tuple) -> bool:
        """Whether the cell `key` is already in the file."""
        return key in self._done

    def add(self, records: Iterable[dict]) -> None:
        """Append records; save if the last save is more than `save_every` seconds old."""
        for record in records:
            self.records.append(record)
            self._done.add(self.key(record))
        if time.monotonic() - self._saved_at >= self.save_every:
            self.save()

    def save(self) -> None:
        """Write the file atomically, one record per line (no-op without a path)."""
        self._saved_at = time.monotonic()
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        head = {"schema": SCHEMA, "task": self.task, "settings": self.settings, "env": environment(),
                "command": sys.argv, "summary": self.summary}
        lines = [json.dumps(record, ensure_ascii=False) for record in self.records]
        body = json.dumps(head, indent=1, ensure_ascii=False)[:-2]  # reopen the object to append the records
        text = body + ',\n "records": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Save whatever is not saved yet."""
        self.save()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
