"""Fidelity: how close each compressed cache stays to the full cache on a known answer, a low-noise measure.

Every probe (a prompt length, a depth and one of the evaluation's own facts, `fidelity_prompts.py`) is prefilled
once for all its variants, and the fact's sentence, the gold answer, is teacher-forced through every (method,
kv_size) variant and the full cache together (`fidelity_measure.py`). Per variant and probe: the answer's
log-probability (sum over its tokens, nats), KL(full || variant) (mean over the answer tokens), top-1 agreement
with the full cache, and the share of the needle's token positions kept, over all KV heads and over the top heads
of the model's packaged Retrieval score file (method-independent). Summaries give standard errors clustered by
fact and paired differences against a baseline method (`fidelity_stats.py`); results go to a resumable JSON file
(the eval results-file conventions: atomic writes, resume, merge) with a plot next to it.

Two settings. Question-aware (the default): the whole prompt, question included, is compressed, and with the chat
template the observation window is the end of the user turn (the question). Question-agnostic
(`question_agnostic=True`, the kvpress convention of `Engine.generate(context, questions=...)`): only the context
(`CONTEXT_TEMPLATE`: the diary and what introduces it) is compressed, its window sees no question, and the question
(`QUESTION_TEMPLATE` and the template's assistant header) is fed through each compressed cache before the answer,
split as `questions.encode_context_and_questions` splits it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..default_model import DEFAULT_MODEL
from ..heads.prompt import locate_span
from ..methods.defaults import packaged_data_digest
from ..methods.head_scores import ScoreSource, packaged_score_file, read_head_scores
from .fidelity_measure import KeptPositions, measure_prompt
from .fidelity_plot import plot_fidelity
from .fidelity_prompts import FACTS, FIDELITY_VERSION, QUESTION_TEMPLATE, TEMPLATE, diary_sentences
from .fidelity_stats import summary, versus
from .generation import Runner
from .grid import budget_cells, wanted_keys
from .haystack import fit_haystack
from .report import EvalResult, format_table
from .store import ResultStore
from .validation import check_grid

KEY_FIELDS = ("method", "kv_size", "length", "depth", "fact")
DEFAULT_METHODS = ("full", "snapkv", "ada-snapkv", "pyramidkv", "streamingllm", "headkv-r", "headkv-r2")


@dataclass(frozen=True, slots=True)
class Probe:
    """One prompt: its length in tokens (at most), the fact's depth in percent and the fact's id."""

    length: int
    depth: int
    fact: str


def top_head_mask(scores: torch.Tensor, num_kv_heads: int, fraction: float) -> torch.Tensor:
    """bool `[num_layers, num_kv_heads]`: the `ceil(fraction * heads)` KV heads with the highest score, a KV head's
    score being the mean over its query heads of fp64 `scores` `[num_layers, num_qo_heads]` (ties: lower index)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"top_heads={fraction!r} must be a fraction in (0, 1]")
    layers, qo_heads = scores.shape
    kv = scores.view(layers, num_kv_heads, qo_heads // num_kv_heads).mean(dim=-1).flatten()
    order = torch.sort(kv, descending=True, stable=True).indices[: math.ceil(fraction * kv.numel())]
    mask = torch.zeros(kv.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view(layers, num_kv_heads)


def _beta(method, kv_size: int | None) -> float | None:
    """The beta a HeadKV variant ran with at this kv_size (None for other methods and the full cache): records
    say it, so rows of a bare `headkv-r2` measured under different calibrated defaults can be told apart."""
    return method.beta_at(kv_size) if kv_size is not None and hasattr(method, "beta_at") else None


def run_fidelity(
    model: str = DEFAULT_MODEL,
    methods: Sequence[str] | None = None,
    kv_sizes: Sequence[int] = (32, 64, 128, 256),
    lengths: Sequence[int] = (1000, 2000),
    depths: Sequence[int] = (10, 50, 90),
    facts: int = len(FACTS),
    baseline: str = "snapkv",
    top_heads: float = 0.1,
    out: str | Path | None = None,
    backend: str = "auto",
    chat: bool = True,
    head_scores: Mapping[str, str] | None = None,
    retrieval_scores: ScoreSource | None = None,
    progress: bool = True,
    merge: bool = False,
    question_window: bool = True,
    question_agnostic: bool = False,
    compare: str | None = None,
) -> EvalResult:
    """Fidelity of each method at each KV budget to the full cache, on the evaluation's own facts.

    Args:
        model: model name or local Hugging Face folder.
        methods: methods or variants (`"headkv-r2:beta=2"`); default `DEFAULT_METHODS`. `full` (the reference of
            every comparison) is measured in every prefill and added to the records when missing.
        kv_sizes: average tokens kept per head per layer.
        lengths: prompt lengths in tokens (chat template included; each prompt within a sentence of it).
        depths: fact depths in percent of the diary.
        facts: how many of the ten facts each (length, depth) probes (the clusters of the standard errors).
        baseline: the method (as spelled in `methods`) paired differences are taken against.
        top_heads: fraction of KV heads, by Retrieval score, that `needle_kept_top` averages over.
        out: results JSON, rewritten atomically after every prompt; resumed when it holds the same settings and
            grid, joined with `merge` when its grid differs; the plot goes next to it as `<out stem>.png`.
        backend: the engine's backend.
        chat: put each prompt in the model's chat template.
        head_scores: head-score file per method name, for the methods that take one.
        retrieval_scores: the head scores that pick the top heads (default: the model's packaged Retrieval file;
            without one, `needle_kept_top` is NaN).
        progress: show a progress bar.
        merge: add this run's cells to an `out` over another grid.
        question_window: chat prompts score with the window before the template's assistant header and keep the
            header in every head (`Engine.generate`'s default); False: the last prompt tokens score. Only
            matters when the question is compressed (not with `question_agnostic`).
        question_agnostic: compress the context alone and feed the question after compression (module docstring).
        compare: a method (as spelled in `methods`) to set against every other compressed method: a second table
            (`fidelity_stats.versus`), also in the JSON summary as `versus`; reporting only, so a finished file
            rerun with it prints the table without measuring anything.

    Returns:
        The records (with `merge`, of the whole file), the summary (one row per method and kv_size) and the files.
    """
    methods = list(dict.fromkeys(["full", *(methods if methods is not None else DEFAULT_METHODS)]))
    check_grid(methods=methods, kv_sizes=kv_sizes, lengths=lengths, depths=depths, max_new_tokens=1)
    for name, value in (("baseline", baseline), ("compare", compare)):
        if value is not None and value not in methods:
            raise ValueError(f"{name}={value!r} is not among the methods {methods}; add it to methods")
    if isinstance(facts, bool) or not isinstance(facts, int) or not 1 <= facts <= len(FACTS):
        raise ValueError(f"facts={facts!r} must be an int between 1 and {len(FACTS)}")
    if retrieval_scores is None:
        retrieval_scores = packaged_score_file(model, "retrieval")
    top = None if retrieval_scores is None else read_head_scores(retrieval_scores)
    settings = {
        "model": model, "backend": backend, "fidelity_version": FIDELITY_VERSION, "chat": chat,
        "head_scores": dict(head_scores or {}), "top_heads": top_heads, "question_window": question_window,
        "question_agnostic": question_agnostic,
        "packaged_data": packaged_data_digest(model),
        "retrieval_scores": None if retrieval_scores is None else (
            "(dict)" if isinstance(retrieval_scores, dict) else Path(retrieval_scores).name),
    }
    by_id = {fact.id: fact for fact in FACTS[:facts]}
    probes = [Probe(n, d, fact) for n in lengths for d in depths for fact in by_id]
    wanted = wanted_keys(methods, kv_sizes, probes, asdict)
    runner = Runner(model, backend=backend, head_scores=head_scores)
    with ResultStore(out, "fidelity", settings, KEY_FIELDS, wanted, merge) as store:
        cells = budget_cells(methods, kv_sizes)
        pending = {p: [c for c in cells if not store.done((*c, *asdict(p).values()))] for p in probes}
        pending = {p: todo for p, todo in pending.items() if todo}
        if pending:
            _measure(runner, store, pending, top, top_heads, chat, question_window, question_agnostic, progress)
        columns, rows = summary(store.records, baseline)
        store.summary = {"columns": columns, "rows": rows, "baseline": baseline}
        if compare is not None:
            versus_columns, versus_rows = versus(store.records, compare)
            store.summary["versus"] = {"method": compare, "columns": versus_columns, "rows": versus_rows}
        records, grid = list(store.records), store.grid
    setting = "question-agnostic" if question_agnostic else "question-aware"
    title = (f"fidelity ({setting}): {model}, lengths {grid['length']}, depths {grid['depth']}, "
             f"{len(grid['fact'])} facts; answer log-prob in nats, SEs clustered by fact, d = paired difference vs "
             f"{baseline}")
    table = format_table(columns, rows, title)
    if compare is not None:
        table += "\n\n" + format_table(versus_columns, versus_rows, f"{compare} minus each method: answer log-prob "
                                        "(nats), d ± SE clustered by fact (t = d / SE), same probes and kv_size")
    result = EvalResult(records, columns, rows, table)
    if out is not None:
        result.files += [Path(out), plot_fidelity(records, Path(out).with_suffix(".png"), title)]
    return result


def _measure(runner: Runner, store: ResultStore, pending: dict, top, top_fraction: float, chat: bool,
             question_window: bool, question_agnostic: bool, progress: bool) -> None:
    """Measure every pending (probe, cell) and store each probe's records as soon as it is done."""
    from tqdm.auto import tqdm

    from ..questions import encode_context_and_questions
    from ..runner import ModelRunner

    wanted = dict.fromkeys(["full", *(m for todo in pending.values() for m, _ in todo)])
    built = {method: runner.engine(method).method for method in wanted}  # a bad method fails before any work
    engine = runner.engine("full")
    shape = engine.shape
    recorder = KeptPositions(engine.backend, shape.num_kv_heads)
    model_runner = ModelRunner(engine.model, recorder.backend)
    if top is None:
        mask = torch.zeros(shape.num_layers, shape.num_kv_heads, dtype=torch.bool)
    else:
        mask = top_head_mask(top, shape.num_kv_heads, top_fraction)
    tokenizer = engine.tokenizer
    by_id = {fact.id: fact for fact in FACTS}
    with tqdm(total=sum(map(len, pending.values())), desc="fidelity", unit="cell", disable=not progress) as bar:
        for probe, todo in pending.items():
            fact = by_id[probe.fact]
            prompt, _ = fit_haystack(lambda context: TEMPLATE.format(context=context, question=fact.question),
                                     lambda text: len(runner.encode(text, chat)), probe.length,
                                     [(probe.depth, fact.sentence)], filler=diary_sentences)
            if question_agnostic:
                question = QUESTION_TEMPLATE.format(question=fact.question)
                ids, (suffix,) = encode_context_and_questions(tokenizer, prompt.removesuffix(question), [question],
                                                              chat_template=chat)
                header = 0
            else:
                (ids, header), suffix = engine.encode_with_header(prompt, chat_template=chat), []
                header = header if question_window else 0
            spans = [tokenizer(p + fact.sentence, add_special_tokens=False)["input_ids"] for p in (" ", "")]
            answer = tokenizer(fact.sentence, add_special_tokens=False)["input_ids"]
            variants = [(built["full"], None), *((built[m], k) for m, k in todo if m != "full")]
            measured = measure_prompt(model_runner, recorder, ids, answer, locate_span(ids, *spans), variants, mask,
                                      header, suffix)
            if top is None:
                for record in measured:
                    record["needle_kept_top"] = math.nan
            by_cell = dict(zip([("full", None), *((m, k) for m, k in todo if m != "full")], measured))
            store.add({"method": m, "kv_size": k, **asdict(probe), **by_cell[m, k], "answer_tokens": len(answer),
                       "beta": _beta(built[m], k)} for m, k in todo)
            bar.update(len(todo))
