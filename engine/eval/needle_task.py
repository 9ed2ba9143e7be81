"""What NIAH and the reasoning evaluation share: a task definition and the run that turns it into results.

A run builds each probe's prompt (the task's template around the haystack, with the task's sentences inserted at
the probe's depth, fitted to the probe's length in tokens as the model sees them, in the model's chat template by
default), answers it in every (method, kv_size) cell, judges the answers, and reports a fixed-width table, the
JSON results file (resumable) and a heatmap PNG per method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .generation import Runner
from .grid import Request, run_grid, wanted_keys
from .haystack import HAYSTACK_VERSION, fit_haystack
from .budget_plot import plot_accuracy_vs_budget
from .heatmap import plot_heatmaps
from .report import EvalResult, format_table, retained_vs_full, summary_rows
from .store import ResultStore
from .validation import check_grid, known_methods

PROBE_FIELDS = ("length", "depth", "needle")
KEY_FIELDS = ("method", "kv_size", *PROBE_FIELDS)


@dataclass(frozen=True, slots=True)
class Probe:
    """One prompt of a needle grid: its target length in tokens, the needle's depth in percent, the needle's id."""

    length: int
    depth: int
    needle: str


@dataclass(frozen=True)
class NeedleTask:
    """One needle evaluation.

    name: task name (results files record it).
    version: bump when the template, needles or judging change.
    template: prompt text with `{context}` and `{question}`.
    items: the needles by id; each has a `question`.
    insertions: (needle, depth) -> [(depth percent, sentence)] to insert into the haystack.
    judge: (needle, answer text) -> fields to record, at least `correct`.
    metrics: summary columns computed from a (method, kv_size) group of records.
    """

    name: str
    version: int
    template: str
    items: Mapping[str, object]
    insertions: Callable[[object, int], list[tuple[float, str]]]
    judge: Callable[[object, str], dict]
    metrics: Mapping[str, Callable[[list[dict]], float]]


def _prompt(task: NeedleTask, runner: Runner, probe: Probe, chat: bool) -> str:
    """The probe's prompt text, fitted so that the model sees at most `probe.length` tokens."""
    item = task.items[probe.needle]
    prompt, _ = fit_haystack(
        lambda context: task.template.format(context=context, question=item.question),
        lambda text: len(runner.encode(text, chat)),
        probe.length,
        task.insertions(item, probe.depth),
    )
    return prompt


def _with_retained(metrics: Mapping[str, Callable], records: list[dict]) -> dict[str, Callable]:
    """`metrics` with `retained_%` (accuracy on the probes the full cache gets right) after `accuracy_%`, when the
    records include `full`."""
    retained = retained_vs_full(records, PROBE_FIELDS)
    out = {}
    for name, metric in metrics.items():
        out[name] = metric
        if name == "accuracy_%" and retained is not None:
            out["retained_%"] = retained
    return out


def run_needle_task(
    task: NeedleTask,
    *,
    model: str,
    methods: Sequence[str] | None,
    kv_sizes: Sequence[int],
    lengths: Sequence[int],
    depths: Sequence[int],
    needles: int,
    out: str | Path | None = None,
    backend: str = "auto",
    max_new_tokens: int = 32,
    chat: bool = True,
    head_scores: Mapping[str, str] | None = None,
    progress: bool = True,
    merge: bool = False,
    question_window: bool = True,
) -> EvalResult:
    """Run `task` over methods x kv_sizes x lengths x depths x the first `needles` needles (see `run_niah`)."""
    methods = list(methods) if methods is not None else known_methods()
    check_grid(methods=methods, kv_sizes=kv_sizes, lengths=lengths, depths=depths,
               max_new_tokens=max_new_tokens)
    if not 1 <= needles <= len(task.items):
        raise ValueError(f"needles={needles} must be between 1 and {len(task.items)}")
    from ..methods.defaults import packaged_data_digest

    settings = {
        "model": model, "backend": backend, "task_version": task.version, "haystack_version": HAYSTACK_VERSION,
        "max_new_tokens": max_new_tokens, "chat": chat, "head_scores": dict(head_scores or {}),
        "question_window": question_window, "packaged_data": packaged_data_digest(model),
    }
    runner = Runner(model, backend=backend, head_scores=head_scores, question_window=question_window)
    probes = [Probe(n, d, needle) for n in lengths for d in depths for needle in list(task.items)[:needles]]
    wanted = wanted_keys(methods, kv_sizes, probes, asdict)
    with ResultStore(out, task.name, settings, KEY_FIELDS, wanted, merge) as store:

        def request(probe: Probe) -> Request:  # the model loads on the first prompt built, only if work is left
            return Request(_prompt(task, runner, probe, chat), chat, max_new_tokens)

        def judge(probe: Probe, answer: str) -> dict:
            return task.judge(task.items[probe.needle], answer)

        records = run_grid(store, runner, methods, kv_sizes, probes, asdict, request, judge, progress)
        columns, rows = summary_rows(records, _with_retained(task.metrics, records))
        store.summary = {"columns": columns, "rows": rows}
        grid = store.grid
    title = (f"{task.name}: {model}, lengths {grid['length']}, depths {grid['depth']}, "
             f"{len(grid['needle'])} needle(s) per cell")
    result = EvalResult(records, columns, rows, format_table(columns, rows, title))
    if out is not None:
        result.files.append(Path(out))
        stem = Path(out).with_suffix("")
        for method in dict.fromkeys(r["method"] for r in records):
            result.files.append(plot_heatmaps(records, method, f"{stem}-{method}.png"))
        result.files.append(plot_accuracy_vs_budget(records, f"{stem}-accuracy.png", title))
    return result
