"""A resumable head-scoring run over the grid needles x lengths x depths.

Every finished trial is appended to a JSONL trial log (first line: the run's settings), flushed at once. With
`resume=True` a run whose settings match the log's skips the trials already there (a half-written last line, from
an interrupted run, is dropped and its trial redone); without it the log starts afresh.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..methods.head_scores import HEAD_SCORE_KINDS
from .haystack import HAYSTACK_SEED, HAYSTACK_VERSION
from .needles import needles_for
from .trial import TrialSpec, run_trial

KINDS = HEAD_SCORE_KINDS  # the one home of the kind names: `raggedkv.engine.methods.head_scores`


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What a run computes; two runs with equal settings give the same trials and scores."""

    model: str
    kind: str
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    chat: bool
    max_new_tokens: int = 50

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is unknown; choose one of {KINDS}")
        if not self.lengths or any(length < 0 for length in self.lengths):
            raise ValueError(f"lengths={self.lengths} must be one or more token counts >= 0")
        if not self.depths or any(not 0 <= depth <= 100 for depth in self.depths):
            raise ValueError(f"depths={self.depths} must be one or more percentages in [0, 100]")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")

    def trials(self) -> list[TrialSpec]:
        """The grid in run order: needle, then length, then depth."""
        return [TrialSpec(needle, length, depth) for needle in range(len(needles_for(self.kind)))
                for length in self.lengths for depth in self.depths]

    def header(self) -> dict:
        """The log's first line: the settings, the haystack's identity and the needles' text."""
        settings = asdict(self)
        settings.update(lengths=list(self.lengths), depths=list(self.depths), haystack_seed=HAYSTACK_SEED,
                        haystack_version=HAYSTACK_VERSION, needles=[asdict(n) for n in needles_for(self.kind)])
        return settings


def read_trial_log(path: Path, header: dict) -> dict[str, dict]:
    """The complete records of a trial log, by trial id, after checking it was written with `header`.

    Raises:
        ValueError: the log is empty or was written with other settings.
    """
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        found = json.loads(lines[0])
        changed = sorted(key for key in header.keys() | found.keys() if header.get(key) != found.get(key))
    except (json.JSONDecodeError, AttributeError):  # not JSON, or not an object
        raise ValueError(f"trial log {str(path)!r} has no settings line; run without --resume to start afresh") \
            from None
    if changed:
        raise ValueError(f"trial log {str(path)!r} was written with other settings ({', '.join(changed)}); "
                         "run without --resume to start afresh, or use another --out")
    records: dict[str, dict] = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # an interrupted write: only ever the last line
            break
        records[record["id"]] = record
    return records


def _write_log(path: Path, header: dict, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as log:
        for item in (header, *records):
            log.write(json.dumps(item) + "\n")


def run_grid(model, tokenizer, settings: RunSettings, log_path: Path, resume: bool = False,
             progress: bool = True) -> list[dict]:
    """Run every trial of `settings` not yet in the log and return all records in grid order."""
    header = settings.header()
    done = read_trial_log(log_path, header) if resume and log_path.is_file() else {}
    specs = settings.trials()
    done = {spec.id: done[spec.id] for spec in specs if spec.id in done}
    _write_log(log_path, header, list(done.values()))  # also drops a half-written line
    needles = needles_for(settings.kind)
    pending = [spec for spec in specs if spec.id not in done]
    bar = tqdm(total=len(specs), initial=len(done), disable=not progress, unit="trial",
               desc=f"score-heads {settings.kind}")
    with log_path.open("a", encoding="utf-8") as log, bar:
        for spec in pending:
            record = run_trial(model, tokenizer, settings.kind, needles[spec.needle], spec, settings.chat,
                               settings.max_new_tokens)
            log.write(json.dumps(record) + "\n")
            log.flush()
            done[spec.id] = record
            bar.update()
            bar.set_postfix(accepted=sum(r["accepted"] for r in done.values()))
    return [done[spec.id] for spec in specs]
