"""Atomic file writes, shared by the long runs (eval's results file, score-heads' trial log and outputs): a file
is replaced in one step, so a reader, or a run killed at any moment, sees the old content or the new, never a part.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _file_mode(path: Path) -> int:
    """The permissions `path` has, or those a new file gets under the process's umask (mkstemp's are 0600)."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step: a temporary file in the same folder, flushed to disk, then renamed
    over `path`, so a reader (or a run killed at any moment) sees the old file or the new one, never a part."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, _file_mode(path))
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
