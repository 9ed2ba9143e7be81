"""The evaluation loop: every (method, kv_size) cell answers every probe, skipping what the results file already
holds, with a progress bar.

A probe is one prompt of a benchmark (a NIAH length/depth/needle, a LongBench example); its identifying fields,
prefixed by method and kv_size, key its record in the results file. `full` keeps the whole cache whatever the
budget, so it runs once, with `kv_size` None (the engine keeps every prompt token).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
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
    """(method, kv_size) pairs to run, `full` once with kv_size None."""
    return [(m, None) if m == "full" else (m, k) for m in methods for k in ([None] if m == "full" else kv_sizes)]


def _batches(probes: Sequence[P], requests: Callable[[P], Request], size: int) -> Iterator[list[P]]:
    """Consecutive probes in batches of at most `size` that share chat wrapping, answer length and stops."""
    batch: list[P] = []
    for probe in probes:
        if batch and (len(batch) == size or _shape(requests(batch[0])) != _shape(requests(probe))):
            yield batch
            batch = []
        batch.append(probe)
    if batch:
        yield batch


def _shape(request: Request) -> tuple[bool, int, bool]:
    return request.chat, request.max_new_tokens, request.newline_stops


def run_grid(
    store: ResultStore,
    runner: Runner,
    methods: Sequence[str],
    kv_sizes: Sequence[int],
    probes: Sequence[P],
    fields: Callable[[P], dict],
    request: Callable[[P], Request],
    judge: Callable[[P, str], dict],
    batch_size: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Answer and judge every probe in every cell not yet in `store`; return the records of the requested grid.

    Args:
        fields: a probe's identifying fields (the store's key fields after method and kv_size).
        request: a probe's prompt and answer settings (built once per probe, on first need, then cached).
        judge: fields to record for a probe's answer text.
        batch_size: prompts per `generate` call.
    """
    from tqdm.auto import tqdm

    cells = budget_cells(methods, kv_sizes)
    key = {probe: tuple(fields(probe).values()) for probe in probes}
    cached: dict[P, Request] = {}

    def cached_request(probe: P) -> Request:
        if probe not in cached:
            cached[probe] = request(probe)
        return cached[probe]

    pending = {cell: [p for p in probes if not store.done((*cell, *key[p]))] for cell in cells}
    for method in dict.fromkeys(method for (method, _), todo in pending.items() if todo):
        runner.engine(method)  # build every method with work left now, so a bad one fails before hours of work
    with tqdm(total=sum(map(len, pending.values())), desc=store.task, unit="prompt", disable=not progress) as bar:
        for (method, kv_size), todo in pending.items():
            bar.set_postfix_str(f"{method} kv_size={kv_size or 'full'}")
            for batch in _batches(todo, cached_request, batch_size):
                first = cached_request(batch[0])
                prompts = [cached_request(p).prompt for p in batch]
                answers = runner.answer(method, prompts, kv_size, first.max_new_tokens, first.chat, first.newline_stops)
                store.add(
                    {
                        "method": method, "kv_size": kv_size, **fields(p), "prompt_tokens": a.prompt_tokens,
                        "kept_fraction": a.kept_fraction, "seconds": round(a.seconds, 3), "answer": a.text,
                        **judge(p, a.text),
                    }
                    for p, a in zip(batch, answers)
                )
                bar.update(len(batch))
    wanted = {(*cell, *key[p]) for cell in cells for p in probes}
    return [record for record in store.records if store.key(record) in wanted]
