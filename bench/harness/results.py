"""The JSON document of a bench run (schema `ragged-kv-bench/1`) and the file it is written to."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

SCHEMA = "ragged-kv-bench/1"
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def build_doc(bench: str, env: dict[str, Any], timing: dict[str, Any], rows: list[dict[str, Any]],
              **extra: Any) -> dict[str, Any]:
    """`{"schema", "bench", "env", "timing", **extra, "rows"}`."""
    return {"schema": SCHEMA, "bench": bench, "env": env, "timing": timing, **extra, "rows": rows}


def write_json(doc: dict[str, Any], out_dir: Path) -> Path:
    """Write `doc` to `<out_dir>/<bench>-<gpu-slug>-<YYYYmmdd-HHMMSS>[-graph].json` (the timestamp is the doc's)."""
    stamp = dt.datetime.strptime(doc["env"]["timestamp"], "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%d-%H%M%S")
    suffix = "-graph" if doc.get("timing", {}).get("cuda_graph") else ""
    path = Path(out_dir) / f"{doc['bench']}-{doc['env']['gpu_slug'] or 'cpu'}-{stamp}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path
