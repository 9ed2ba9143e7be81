"""LongBench (the 16 English datasets) from local JSONL files, scored with the official metrics.

Each example's prompt is its dataset's official template (`longbench_spec.TASKS`), truncated from the middle to
`max_length` tokens, then put in the model's chat template (by the engine) on the datasets that use it. Answers
stop at the model's EOS / end-of-turn tokens (and at a newline for samsum). A dataset's score is 100 x the mean
over its examples of the best score over the example's ground truths; the average is over datasets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..default_model import DEFAULT_MODEL
from .generation import Runner
from .grid import Request, run_grid, wanted_keys
from .longbench_spec import TASKS, Task
from .metrics import score_example
from .prompting import truncate_middle
from .report import EvalResult, format_table, group, mean
from .store import ResultStore
from .validation import check_grid, known_methods

KEY_FIELDS = ("method", "kv_size", "dataset", "index")
PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Example:
    """One LongBench example, identified by dataset and line number."""

    dataset: str
    index: int


def load_examples(data_dir: str | Path, dataset: str, limit: int | None = None) -> list[dict]:
    """The examples of `<data_dir>/<dataset>.jsonl` (the first `limit`, if given).

    Raises:
        ValueError: unknown dataset, or a missing file (LongBench is never downloaded).
    """
    if dataset not in TASKS:
        raise ValueError(f"datasets holds {dataset!r}, not a LongBench English dataset; choose from {list(TASKS)}")
    path = Path(data_dir) / f"{dataset}.jsonl"
    if not path.is_file():
        raise ValueError(f"data_dir={str(data_dir)!r} has no {path.name}: put LongBench's {dataset}.jsonl there")
    with path.open(encoding="utf-8") as lines:
        examples = [json.loads(line) for line in lines if line.strip()]
    return examples[:limit] if limit is not None else examples


def build_prompt(tokenizer, task: Task, example: Mapping, max_length: int) -> str:
    """The official prompt of `example`, middle-truncated to `max_length` tokens (the engine adds the chat
    template afterwards, where the dataset uses it)."""
    prompt = task.template.format(context=example["context"], input=example["input"])
    return truncate_middle(tokenizer, prompt, max_length)


def default_max_length(context_length: int, task: Task, template_tokens: int) -> int:
    """The longest truncated prompt that, with `template_tokens` of chat template around it, still leaves room
    for the dataset's answer."""
    return context_length - task.max_new_tokens - template_tokens


def score_prediction(task: Task, prediction: str, example: Mapping) -> float:
    """The official score of one prediction: first line only on the few-shot datasets, best over ground truths."""
    if task.first_line:
        prediction = prediction.lstrip("\n").split("\n")[0]
    return score_example(task.metric, prediction, example["answers"], example.get("all_classes") or ())


def longbench_summary(records: Sequence[dict], datasets: Sequence[str]) -> tuple[list[str], list[list]]:
    """One row per (method, kv_size): each dataset's score, their average and the KV cache kept (%)."""
    columns = ["method", "kv_size", *datasets, "average", "kv_kept_%"]
    rows = []
    for (method, kv_size), items in group(records, ("method", "kv_size")).items():
        by_dataset = group(items, ("dataset",))
        scores = [round(100 * mean(r["score"] for r in by_dataset.get((d,), [])), 2) for d in datasets]
        kept = 100 * mean(r["kept_fraction"] for r in items)
        rows.append([method, kv_size, *scores, round(mean(scores), 2), kept])
    return columns, rows


def run_longbench(
    data_dir: str | Path,
    datasets: Sequence[str] | None = None,
    model: str = DEFAULT_MODEL,
    methods: Sequence[str] | None = None,
    kv_sizes: Sequence[int] = (128,),
    out: str | Path | None = None,
    limit: int | None = None,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
    backend: str = "auto",
    chat: bool = True,
    head_scores: Mapping[str, str] | None = None,
    progress: bool = True,
    merge: bool = False,
    question_window: bool = True,
) -> EvalResult:
    """LongBench scores of each method at each KV budget.

    Args:
        data_dir: folder with LongBench's `<dataset>.jsonl` files (fields `input`, `context`, `answers`,
            `all_classes`, ...).
        datasets: dataset names (default: the 16 English ones).
        model, methods, kv_sizes, out, backend, head_scores, progress, merge, question_window: as `run_niah`.
        limit: use only the first `limit` examples of each dataset.
        max_length: truncate prompts to this many tokens (default: the model's context minus the dataset's answer
            length and the chat template's tokens).
        max_new_tokens: cap every dataset's answer length (quick checks only: the protocol's lengths are the
            official ones; the cap is recorded in the results' settings).
        chat: put prompts in the model's chat template (when it has one) on the datasets whose protocol does.

    Returns:
        The records, the summary (one row per method and kv_size, a column per dataset and the average) and the
        files written.
    """
    datasets = list(datasets) if datasets is not None else list(TASKS)
    methods = list(methods) if methods is not None else known_methods()
    check_grid(methods=methods, kv_sizes=kv_sizes, max_new_tokens=1)
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit} must be a positive integer")
    if max_length is not None and max_length < 2:
        raise ValueError(f"max_length={max_length} must be an integer >= 2")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be a positive integer")
    examples = {dataset: load_examples(data_dir, dataset, limit) for dataset in datasets}
    from ..methods.defaults import packaged_data_digest

    settings = {
        "model": model, "backend": backend, "protocol_version": PROTOCOL_VERSION, "max_length": max_length,
        "max_new_tokens": max_new_tokens,
        "chat": chat, "head_scores": dict(head_scores or {}), "question_window": question_window,
        "packaged_data": packaged_data_digest(model),
    }
    runner = Runner(model, backend=backend, head_scores=head_scores, question_window=question_window)

    def request(probe: Example) -> Request:  # the model loads on the first prompt built, only if work is left
        task = TASKS[probe.dataset]
        wrapped = chat and task.chat
        template_tokens = len(runner.encode("", chat=True)) if wrapped else 0
        limit_tokens = max_length or default_max_length(runner.context_length, task, template_tokens)
        prompt = build_prompt(runner.tokenizer, task, examples[probe.dataset][probe.index], limit_tokens)
        answer_tokens = min(task.max_new_tokens, max_new_tokens or task.max_new_tokens)
        return Request(prompt, wrapped, answer_tokens, newline_stops=task.stop_at_newline)

    def judge(probe: Example, answer: str) -> dict:
        example = examples[probe.dataset][probe.index]
        return {"score": score_prediction(TASKS[probe.dataset], answer, example), "id": example.get("_id")}

    probes = [Example(dataset, index) for dataset in datasets for index in range(len(examples[dataset]))]
    wanted = wanted_keys(methods, kv_sizes, probes, asdict)
    with ResultStore(out, "longbench", settings, KEY_FIELDS, wanted, merge) as store:
        records = run_grid(store, runner, methods, kv_sizes, probes, asdict, request, judge, progress)
        columns, rows = longbench_summary(records, list(dict.fromkeys([*datasets, *store.grid["dataset"]])))
        store.summary = {"columns": columns, "rows": rows}
    shown = len({(record["dataset"], record["index"]) for record in records})
    title = f"longbench: {model}, {shown} examples" + (f" (first {limit} per dataset)" if limit else "")
    return EvalResult(records, columns, rows, format_table(columns, rows, title), [Path(out)] if out else [])
