"""Calibrated defaults: method parameters chosen per kv_size on calibration data, read from a sidecar.

The sidecar `engine/data/<model-slug>-defaults.json` sits next to the model's score files and is written by
`raggedkv calibrate-defaults` (`calibrate_defaults.py`), which measures every candidate value on the head-scoring
haystack's needles only (never on an evaluation's). Its `"defaults"` object maps a method name to its calibrated
parameters, each a table `{"<kv_size>": value}`.

The rule over kv_size (`value_at`): the value calibrated at the largest calibrated kv_size at or below the
requested one; below the smallest calibrated kv_size, the smallest's value. A method reads the sidecar only when
the user passes no value for the parameter and the method uses the model's packaged score files (the values were
chosen with those); otherwise, or without a sidecar, it uses its published default (HeadKV's `beta`: 1.01).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from .head_scores import DATA_DIR, model_slug, packaged_score_file
from .score_kinds import SCORE_KINDS


def defaults_path(model_name: str) -> Path:
    """Where the calibrated-defaults sidecar of `model_name` lives: `engine/data/<model-slug>-defaults.json`."""
    return DATA_DIR / f"{model_slug(model_name)}-defaults.json"


def packaged_sidecars() -> dict[str, Path]:
    """The shipped sidecars by model slug: every `engine/data/<model-slug>-defaults.json`."""
    return {path.name.removesuffix("-defaults.json"): path for path in sorted(DATA_DIR.glob("*-defaults.json"))}


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of the file at `path`: how sidecars and results files name the data
    they were made with."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def packaged_data_digest(model_name: str) -> dict[str, str]:
    """What a method reads by default for `model_name`: the file name -> the first 16 hex digits of its SHA-256,
    for each packaged score file and the defaults sidecar that exist (`{}` for a model without packaged data).

    Results files record it in their settings, so that a file measured with other shipped scores or calibrated
    values is never resumed as if it were the same run.
    """
    paths = [packaged_score_file(model_name, kind) for kind in SCORE_KINDS] + [defaults_path(model_name)]
    return {path.name: file_digest(path) for path in paths if path is not None and path.is_file()}


def value_at(table: dict[int, float], kv_size: int) -> float:
    """The calibrated value for `kv_size`: the entry of the largest calibrated kv_size <= `kv_size`, or the
    smallest calibrated kv_size's entry below all of them.

    Raises:
        ValueError: an empty table.
    """
    if not table:
        raise ValueError("the calibrated table is empty: it needs at least one kv_size")
    at_or_below = [size for size in table if size <= kv_size]
    return table[max(at_or_below) if at_or_below else min(table)]


def read_sidecar(path: str | Path) -> object:
    """The parsed sidecar at `path` (None when the file does not exist).

    Raises:
        ValueError: a file that is not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"calibrated-defaults sidecar {str(path)!r} is not valid JSON ({err})") from None


def read_calibrated(path: str | Path, method: str, param: str) -> dict[int, float] | None:
    """`{kv_size: value}` calibrated for `method`'s `param` in the sidecar at `path` (None when the file does not
    exist or does not calibrate that parameter).

    Raises:
        ValueError: a sidecar that does not parse, or whose table is not `{"<positive int>": finite number}`.
    """
    data = read_sidecar(path)
    table = data.get("defaults", {}).get(method, {}).get(param) if isinstance(data, dict) else None
    if table is None:
        return None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{str(path)!r}: defaults.{method}.{param} must be an object {{'<kv_size>': value}}")
    out = {}
    for size, value in table.items():
        ok_value = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not str(size).isdigit() or int(size) < 1 or not ok_value:
            raise ValueError(f"{str(path)!r}: defaults.{method}.{param} has {size!r}: {value!r}; keys must be "
                             "positive kv_sizes and values finite numbers")
        out[int(size)] = float(value)
    return out


def calibrated_table(model_name: str | None, method: str, param: str) -> dict[int, float] | None:
    """The packaged sidecar's table for `method`'s `param` for `model_name` (None without a model or a sidecar)."""
    return None if model_name is None else read_calibrated(defaults_path(model_name), method, param)
