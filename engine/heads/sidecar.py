"""The sidecar of a score file: how it was made (model, grid, command, versions, date, run time) and what came out
(acceptance counts, the accepted trials in file order, zero-score heads, the top heads, the split-by-needle
agreement)."""

from __future__ import annotations

import datetime
import os
import platform
from collections import Counter
from importlib.metadata import PackageNotFoundError, version

import torch

from .acceptance import THRESHOLD
from .prompt import BUFFER_TOKENS, QUESTION_TEMPLATE
from .run import RunSettings

METRICS = {"retrieval": "ROUGE-1 recall of the answer in the response (eval.metrics.rouge1) x 100",
           "reasoning": "QA F1 of the response against the answer (eval.metrics.qa_f1_score) x 100",
           "semantic": "ROUGE-1 recall of the answer in the response (eval.metrics.rouge1) x 100"}


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _counts(records: list[dict], key: str) -> dict[str, list[int]]:
    trials = Counter(str(r[key]) for r in records)
    accepted = Counter(str(r[key]) for r in records if r["accepted"])
    return {value: [accepted[value], total] for value, total in trials.items()}


def build_sidecar(settings: RunSettings, records: list[dict], summary: dict, command: str, model_info: dict,
                  wall_seconds: float) -> dict:
    """The sidecar's content; acceptance counts are `[accepted, trials]`."""
    header = settings.header()
    return {
        "model": settings.model,
        "kind": settings.kind,
        "format": "HeadKV head scores: {'layer-head': [score per accepted trial]}, query heads, layer-major",
        "command": command,
        "grid": {
            "lengths": header["lengths"], "depths": header["depths"], "needles_version": header["needles_version"],
            "needles": header["needles"],
            "chat_template": settings.chat, "max_new_tokens": settings.max_new_tokens,
            "buffer_tokens": BUFFER_TOKENS, "question_template": QUESTION_TEMPLATE,
            "haystack": {"seed": header["haystack_seed"], "version": header["haystack_version"]},
        },
        "acceptance": {
            "metric": METRICS[settings.kind], "threshold": f"> {THRESHOLD:g}",
            "accepted": sum(r["accepted"] for r in records), "trials": len(records),
            "by_needle": _counts(records, "needle"), "by_length": _counts(records, "length"),
            "by_depth": _counts(records, "depth"),
        },
        "accepted_trials": [r["id"] for r in records if r["accepted"]],
        "prompt_tokens": {"min": min(r["prompt_tokens"] for r in records),
                          "max": max(r["prompt_tokens"] for r in records)},
        "summary": summary,
        "run": {
            "trial_seconds": round(sum(r["seconds"] for r in records), 1),
            "wall_seconds_last_invocation": round(wall_seconds, 1),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), **model_info,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": _version("transformers"), "raggedkv": _version("raggedkv")},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
