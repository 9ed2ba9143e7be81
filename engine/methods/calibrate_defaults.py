"""`calibrate_defaults`: choose HeadKV's beta per kv_size on calibration data, and write the defaults sidecar.

Calibration data: the head-scoring needles and haystack (`engine/heads`: the data the score files were made
from), never an evaluation's facts or filler. Every prompt (a needle at a length and a depth, built exactly as
`raggedkv score-heads` builds its trials) is prefilled once for all variants, and the needle's answer is
teacher-forced through every (method, beta, kv_size) variant, SnapKV at each kv_size (beta -> infinity, for
reference) and the full cache (`eval.fidelity_measure`). The measure is the mean answer log-probability (nats,
summed over the answer's tokens), with standard errors clustered by needle; for each method and kv_size the beta
with the highest mean is chosen (the smallest on ties). Records go to a resumable log (the eval results-file
conventions); the sidecar (`defaults.py` reads it) holds, per method, the choice, every measured mean and SE, and
the run it came from (grid, data, command, date). Calibrating some methods into an existing sidecar replaces their
rows and keeps the others' (so the methods may be calibrated by separate commands, side by side).
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic_io import write_atomically
from .defaults import defaults_path, file_digest, read_sidecar
from .head_scores import packaged_score_file

KEY_FIELDS = ("method", "kv_size", "length", "depth", "needle")
BETAS = (1.01, 1.25, 1.5, 1.75, 2.0, 3.0, 5.0, 10.0)  # finer near 1.5, where the optimum sat
CALIBRATED_METHODS = ("headkv-r", "headkv-r2")


@dataclass(frozen=True, slots=True)
class CalibrationProbe:
    """One calibration prompt: its length and depth (as `score-heads` takes them) and the needle's id."""

    length: int
    depth: int
    needle: str


def calibration_needles() -> dict:
    """The head-scoring needles by id (`retrieval-<i>`, `reasoning-<i>`): the calibration data."""
    from ..heads.needles import REASONING_NEEDLES, RETRIEVAL_NEEDLES

    return {**{f"retrieval-{i}": n for i, n in enumerate(RETRIEVAL_NEEDLES)},
            **{f"reasoning-{i}": n for i, n in enumerate(REASONING_NEEDLES)}}


def variant(method: str, beta: float) -> str:
    """The variant spelling of `method` at `beta` (its label, `headkv-r2:beta=2`)."""
    from .registry import variant_label

    return variant_label(method, {"beta": beta})


def choose(records: Sequence[dict], methods: Sequence[str], betas: Sequence[float], kv_sizes: Sequence[int]) -> dict:
    """Per method: `{"beta": {"<kv_size>": chosen}, "measured": {"<kv_size>": {"<beta>": [mean, se, n]}}}`; the
    chosen beta has the highest mean answer log-probability (the smallest beta on ties)."""
    from ..eval.fidelity_stats import clustered_mean

    out = {}
    for method in methods:
        chosen, measured = {}, {}
        for kv_size in kv_sizes:
            cells = {}
            for beta in betas:
                items = [r for r in records if r["method"] == variant(method, beta) and r["kv_size"] == kv_size]
                if items:
                    mean, se = clustered_mean([r["answer_logprob"] for r in items], [r["needle"] for r in items])
                    cells[f"{beta:g}"] = [round(mean, 4), round(se, 4), len(items)]
            if cells:
                best = max(cells, key=lambda b: (cells[b][0], -float(b)))
                chosen[str(kv_size)], measured[str(kv_size)] = float(best), cells
        out[method] = {"beta": chosen, "measured": measured}
    return out


def calibrate_defaults(
    model: str,
    methods: Sequence[str] = CALIBRATED_METHODS,
    betas: Sequence[float] = BETAS,
    kv_sizes: Sequence[int] = (32, 64, 128, 256),
    lengths: Sequence[int] = (1500,),
    depths: Sequence[int] = (30, 50, 70),
    needles: Sequence[str] | None = None,
    references: bool = True,
    chat: bool = True,
    question_window: bool = True,
    backend: str = "auto",
    log: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Measure every (method, beta, kv_size) on the calibration prompts and write the defaults sidecar.

    Args:
        model: model name or local folder (its packaged score files are the ones calibrated).
        methods: HeadKV methods to calibrate; betas: candidate betas (each >= 1); kv_sizes: where to calibrate.
        lengths, depths: the calibration prompts' lengths (tokens) and needle depths (percent), as `score-heads`.
        needles: ids of the calibration needles to use (`calibration_needles`; default all).
        references: also measure SnapKV at each kv_size and the full cache, for the sidecar's reference rows.
        chat: build prompts in the chat template (as `score-heads --chat` does and the engine runs by default).
        question_window: score chat prompts with the window before the template's assistant header and keep the
            header in every head, as the engine does by default (`compress.with_header`).
        log: the resumable results file of the measurements (None: in memory).
        out: the sidecar (default `engine/data/<model-slug>-defaults.json`); the rows of methods this run does not
            calibrate are kept (`kept_methods`).

    Returns:
        The sidecar's content (also written to `out`).
    """
    import torch

    from ..eval.fidelity_stats import clustered_mean
    from ..eval.store import ResultStore
    from ..eval.validation import check_grid

    check_grid(methods=list(methods), kv_sizes=kv_sizes, lengths=lengths, depths=depths, max_new_tokens=1)
    unknown = sorted(set(methods) - set(CALIBRATED_METHODS))
    if unknown:
        raise ValueError(f"methods holds {unknown[0]!r}; calibrate-defaults calibrates {list(CALIBRATED_METHODS)}")
    if not betas or any(isinstance(b, bool) or not isinstance(b, int | float) or not b >= 1 for b in betas):
        raise ValueError(f"betas={list(betas)!r} must be a non-empty list of numbers >= 1")
    known = calibration_needles()
    unknown = sorted(set(needles or ()) - set(known))
    if unknown or (needles is not None and not needles):
        raise ValueError(f"needles={needles!r}: {unknown[:1] or 'empty'}; choose from {list(known)}")
    needles = {key: known[key] for key in (needles or known)}
    probes = [CalibrationProbe(n, d, needle) for n in lengths for d in depths for needle in needles]
    cells = [(variant(m, b), k) for m in methods for b in betas for k in kv_sizes]
    if references:
        cells = [("full", None), *(("snapkv", k) for k in kv_sizes), *cells]
    from .registry import METHODS

    kinds = sorted({kind for method in methods for kind in METHODS[method].score_files.values()})
    scores = {kind: packaged_score_file(model, kind) for kind in kinds}  # the files these methods read
    score_hashes = {kind: None if path is None else file_digest(path) for kind, path in scores.items()}
    settings = {"model": model, "backend": backend, "chat": chat, "question_window": question_window,
                "score_files": score_hashes}
    wanted = [(*cell, *asdict(p).values()) for cell in cells for p in probes]
    with ResultStore(log, "calibrate-defaults", settings, KEY_FIELDS, wanted) as store:
        pending = {p: [c for c in cells if not store.done((*c, *asdict(p).values()))] for p in probes}
        pending = {p: todo for p, todo in pending.items() if todo}
        if pending:
            with torch.inference_mode():
                _measure(model, backend, chat, question_window, store, pending, needles, progress)
        records = list(store.records)

    def reference(method: str, kv_size: int | None) -> list[float]:
        items = [r for r in records if r["method"] == method and r["kv_size"] == kv_size]
        return [round(v, 4) for v in clustered_mean([r["answer_logprob"] for r in items], [r["needle"] for r in items])]

    chosen = choose(records, methods, betas, kv_sizes)
    run = {
        "grid": {"betas": list(betas), "kv_sizes": list(kv_sizes)},
        "data": {"needles": "engine/heads/needles.py: " + ", ".join(needles), "haystack": "engine/heads/haystack.py",
                 "lengths": list(lengths), "depths": list(depths), "chat_template": chat,
                 "question_window": question_window,
                 "prompts": len(probes), "score_files_sha256_16": settings["score_files"]},
        "snapkv_reference": {str(k): reference("snapkv", k) for k in kv_sizes} if references else None,
        "full_reference": reference("full", None) if references else None,
        "command": " ".join(["raggedkv", *sys.argv[1:]]) if Path(sys.argv[0]).name == "raggedkv" else " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    out = Path(out) if out is not None else defaults_path(model)
    kept = kept_methods(out, model, methods)
    sidecar = {
        "model": model,
        "format": "calibrated defaults: defaults.<method>.<param> = {'<kv_size>': value}; read by the methods "
                  "(engine/methods/defaults.py) when the user passes no value; runs.<method>: the grid, data, "
                  "command and date it was calibrated with",
        "rule": "a kv_size uses the value calibrated at the largest calibrated kv_size at or below it; below the "
                "smallest calibrated kv_size, the smallest's value; without a sidecar, the published default",
        "measure": "mean over prompts of the teacher-forced answer log-probability (nats, summed over the answer's "
                   "tokens); [mean, SE clustered by needle, prompts]; chosen: the highest mean (smallest beta on ties)",
        "defaults": {**kept["defaults"], **{method: {"beta": chosen[method]["beta"]} for method in methods}},
        "measured": {**kept["measured"], **{method: chosen[method]["measured"] for method in methods}},
        "runs": {**kept["runs"], **{method: run for method in methods}},
    }
    write_atomically(out, json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def kept_methods(out: Path, model: str, methods: Sequence[str]) -> dict:
    """The rows of an existing sidecar `out` for the methods this run does not calibrate (`defaults`, `measured`
    and `runs`, each by method), so that calibrating one method keeps the others' values and provenance; empty when
    `out` does not exist. Only methods with a `runs` entry are kept (a row without its provenance is dropped).

    Raises:
        ValueError: `out` is not a sidecar of `model` (not JSON, or another model's).
    """
    empty = {"defaults": {}, "measured": {}, "runs": {}}
    old = read_sidecar(out)
    if old is None:
        return empty
    if not isinstance(old, dict) or old.get("model") != model:
        found = old.get("model") if isinstance(old, dict) else None
        raise ValueError(f"out={str(out)!r} is the sidecar of model {found!r}, not {model!r}")
    others = [m for m in old.get("runs", {}) if m not in methods and m in old.get("defaults", {})]
    return {key: {m: old[key][m] for m in others if m in old.get(key, {})} for key in empty}


def _measure(model: str, backend: str, chat: bool, question_window: bool, store, pending: dict, needles: dict,
             progress: bool) -> None:
    """Teacher-force each pending probe's answer through its pending cells; store each probe's records."""
    import torch
    from tqdm.auto import tqdm

    from ..eval.fidelity_measure import KeptPositions, measure_prompt
    from ..eval.generation import Runner
    from ..heads.prompt import build_trial_prompt
    from ..runner import ModelRunner

    runner = Runner(model, backend=backend)
    built = {m: runner.engine(m).method for m in dict.fromkeys(c for todo in pending.values() for c, _ in todo)}
    engine = runner.engine("full")
    recorder = KeptPositions(engine.backend, engine.shape.num_kv_heads)
    model_runner = ModelRunner(engine.model, recorder.backend)
    everywhere = torch.ones(engine.shape.num_layers, engine.shape.num_kv_heads, dtype=torch.bool)
    with tqdm(total=sum(map(len, pending.values())), desc="calibrate", unit="cell", disable=not progress) as bar:
        for probe, todo in pending.items():
            needle = needles[probe.needle]
            trial = build_trial_prompt(engine.tokenizer, needle, probe.length, probe.depth, chat)
            answer = engine.tokenizer(needle.answer, add_special_tokens=False)["input_ids"]
            run = list(todo)  # the first is the reference of `kl`, which calibration does not record
            measured = measure_prompt(model_runner, recorder, trial.ids, answer, trial.span,
                                      [(built[m], k) for m, k in run], everywhere,
                                      trial.header if question_window else 0)
            by_cell = dict(zip(run, measured))
            store.add({"method": m, "kv_size": k, **asdict(probe), "answer_logprob": by_cell[m, k]["answer_logprob"],
                       "needle_kept": by_cell[m, k]["needle_kept"],
                       "prompt_tokens": by_cell[m, k]["prompt_tokens"]} for m, k in todo)
            bar.update(len(todo))
