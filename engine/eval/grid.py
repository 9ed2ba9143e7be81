"""The evaluation loop: every (method, kv_size) cell answers every probe, skipping what the results file already
holds, with a progress bar. A probe's prompt is prefilled once for all its cells (`Runner.sweep`).

A probe is one prompt of a benchmark (a NIAH length/depth/needle, a LongBench example); its identifying fields,
prefixed by method and kv_size, key its record in the results file. `full` keeps the whole cache whatever the
budget, so it runs once, with `kv_size` None (the engine keeps every prompt token).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .generation import Runner
from .store import ResultStore

P = TypeVar("P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Request:
    """What to generate for a probe: the prompt, whether it goes in the chat template, the answer length and
    whether a newline ends the answer."""

    prompt: str
    chat: bool
    max_new_tokens: int
    newline_stops: bool = False


def budget_cells(methods: Sequence[str], kv_sizes: Sequence[int]) -> list[tuple[str, int | None]]:
    """Distinct (method, kv_size) pairs to run, `full` once with kv_size None."""
    return list(dict.fromkeys((m, None) if m == "full" else (m, k) for m in methods for k in kv_sizes))


def wanted_keys(
    methods: Sequence[str], kv_sizes: Sequence[int], probes: Sequence[P], fields: Callable[[P], dict]
) -> list[tuple]:
    """The store keys of every (cell, probe) of the grid: method, kv_size, then the probe's fields."""
    return [(*cell, *fields(probe).values()) for cell in budget_cells(methods, kv_sizes) for probe in probes]


def run_grid(
    store: ResultStore,
    runner: Runner,
    methods: Sequence[str],
    kv_sizes: Sequence[int],
    probes: Sequence[P],
    fields: Callable[[P], dict],
    request: Callable[[P], Request],
    judge: Callable[[P, str], dict],
    progress: bool = True,
) -> list[dict]:
    """Answer and judge every probe in every cell not yet in `store`; return every record of the store (the
    requested grid, and with `merge` the cells of the file's earlier runs as well).

    Each probe with work left is prefilled once and answered in all its missing cells together; its records are
    stored (and written) as soon as they are judged.

    Args:
        fields: a probe's identifying fields (the store's key fields after method and kv_size).
        request: a probe's prompt and answer settings (built only for probes with work left).
        judge: fields to record for a probe's answer text.
    """
    from tqdm.auto import tqdm

    cells = budget_cells(methods, kv_sizes)
    key = {probe: tuple(fields(probe).values()) for probe in dict.fromkeys(probes)}
    pending = {probe: [cell for cell in cells if not store.done((*cell, *key[probe]))] for probe in key}
    for method in dict.fromkeys(method for todo in pending.values() for method, _ in todo):
        runner.engine(method)  # build every method with work left now, so a bad one fails before hours of work
    with tqdm(total=sum(map(len, pending.values())), desc=store.task, unit="answer", disable=not progress) as bar:
        for probe, todo in pending.items():
            if not todo:
                continue
            bar.set_postfix_str(" ".join(f"{name}={value}" for name, value in fields(probe).items()))
            ask = request(probe)
            answers = runner.sweep(ask.prompt, todo, ask.max_new_tokens, ask.chat, ask.newline_stops)
            store.add(
                {
                    "method": method, "kv_size": kv_size, **fields(probe), "prompt_tokens": a.prompt_tokens,
                    "kept_fraction": a.kept_fraction, "seconds": round(a.seconds, 3), "answer": a.text,
                    **judge(probe, a.text),
                }
                for (method, kv_size), a in zip(todo, answers, strict=True)
            )
            bar.update(len(todo))
    return list(store.records)
