"""A resumable head-scoring run over the grid needles x lengths x depths.

The trial log is JSONL (first line: the run's settings, then one finished trial a line). It is rewritten atomically
after every finished trial (`raggedkv.engine.atomic_io`), so a run stopped by SIGINT, SIGTERM or a crash keeps every
finished trial and the file always parses. A run whose settings match an existing log's skips the trials already
there; a log written with other settings, or one that does not parse, is refused with its path and the reason and
left untouched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from ..atomic_io import write_atomically
from ..methods.head_scores import HEAD_SCORE_KINDS
from .haystack import HAYSTACK_SEED, HAYSTACK_VERSION
from .needles import needles_for, needles_version
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
        """The log's first line: the settings, the haystack's identity and the needles' version and text."""
        settings = asdict(self)
        settings.update(lengths=list(self.lengths), depths=list(self.depths), haystack_seed=HAYSTACK_SEED,
                        haystack_version=HAYSTACK_VERSION, needles_version=needles_version(self.kind),
                        needles=[asdict(n) for n in needles_for(self.kind)])
        return settings


def _refuse(path: Path, reason: str) -> ValueError:
    return ValueError(f"trial log {str(path)!r} {reason}. It is left untouched; move it away or choose another --out")


def read_trial_log(path: Path, header: dict) -> dict[str, dict]:
    """The finished trials of the trial log at `path`, by trial id, after checking it was written with `header`.

    Raises:
        ValueError: naming the path and the reason: a line that is not JSON (with its number), no settings line,
            other settings (naming the ones that differ), or a trial line without an `"id"`.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = []
    for number, line in enumerate(lines, start=1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise _refuse(path, f"does not parse: line {number} is not JSON ({err.msg} at column {err.colno})") \
                from None
    if not parsed or not isinstance(parsed[0], dict):
        raise _refuse(path, "has no settings line")
    found = parsed[0]
    changed = sorted(key for key in header.keys() | found.keys() if header.get(key) != found.get(key))
    if changed:
        raise _refuse(path, f"was written with other settings ({', '.join(changed)})")
    records: dict[str, dict] = {}
    for number, record in enumerate(parsed[1:], start=2):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise _refuse(path, f"line {number} is not a trial (an object with a string \"id\")")
        records[record["id"]] = record
    return records


def _write_log(path: Path, header: dict, records: list[dict]) -> None:
    write_atomically(path, "".join(json.dumps(item) + "\n" for item in (header, *records)))


def run_grid(model, tokenizer, settings: RunSettings, log_path: Path, progress: bool = True) -> list[dict]:
    """Run every trial of `settings` not yet in the trial log at `log_path`, rewriting the log atomically after
    each, and return all records in grid order.

    Raises:
        ValueError: the log exists but was written with other settings or does not parse (see `read_trial_log`).
    """
    header = settings.header()
    done = read_trial_log(log_path, header) if log_path.exists() else {}
    specs = settings.trials()
    done = {spec.id: done[spec.id] for spec in specs if spec.id in done}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _write_log(log_path, header, list(done.values()))
    needles = needles_for(settings.kind)
    pending = [spec for spec in specs if spec.id not in done]
    with tqdm(total=len(specs), initial=len(done), disable=not progress, unit="trial",
              desc=f"score-heads {settings.kind}") as bar:
        for spec in pending:
            done[spec.id] = run_trial(model, tokenizer, settings.kind, needles[spec.needle], spec, settings.chat,
                                      settings.max_new_tokens)
            _write_log(log_path, header, list(done.values()))
            bar.update()
            bar.set_postfix(accepted=sum(r["accepted"] for r in done.values()))
    return [done[spec.id] for spec in specs]
