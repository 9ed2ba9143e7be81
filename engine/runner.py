"""`ModelRunner`: the model-facing half of generation, prefill, the decode step and the decode loop.

Shape of a run (gpt-fast style): `prefill` runs each prompt alone with full attention and compresses it, layer by
layer, into one `RaggedKVCache` for the batch (several variants of one prompt share its single prefill); then
`decode` advances all sequences together, one token per step, with `decode_step` (one `append_kv` and one
`ragged_decode_attention` per layer, whatever the batch and head counts; explicit positions; sizes fixed before the
first step, so a step allocates nothing that depends on the data and, on the Triton backend, reads nothing back
from the device). The step has no host-side state: it reads static token/position buffers (`StepInputs`) that the
loop writes in place, and the loop, not the cache's `append`, counts steps (`RaggedKVCache.decode_steps`, which
`get_seq_length` reads) and checks the decode headroom on the host before each step. That is what a CUDA-graph
capture of the step needs: on CUDA with the Triton backend the step is captured once per generation and replayed
for every token (`cuda_graph.DecodeGraph`; `cuda_graph=False` or any other device/backend runs it eagerly), and
`teacher_force` feeds its tokens through the same step. Argument checks and turning tokens into results belong to
the `Engine` API (`generate.py`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from .backend import Backend
from .cache import KVMemory, RaggedKVCache
from .compress import SequenceCompressor, plan_budgets, with_header
from .cuda_graph import GRAPH, DecodeGraph, decode_mode
from .hf import ATTENTION_NAME, RaggedHFCache
from .methods import Method
from .models import attention_implementation, eos_token_ids, model_shape
from .parallel import TensorParallel
from .sampling import sample

EOS_CHECK_EVERY_CUDA = 16  # on CUDA, read "all sequences finished?" back every this many steps, not every step
LONG_PROMPT = 8192  # prefill of prompts this long prints a progress message


@dataclass(frozen=True)
class SamplingParams:
    """How a run picks tokens: at most `max_new_tokens` (>= 1) per sequence; `temperature` 0 = greedy, otherwise
    sampling with `top_p` nucleus filtering; `seed` (or None) seeds the sampling generator. Checked by the caller."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Variant:
    """One sequence of a prefilled batch: which prompt it holds, and how that prompt was compressed.

    prompt: index of the prompt in the batch's prompt list (several variants may share one prompt).
    header: the prompt's trailing chat-template assistant-header tokens, kept by every head and left out of scoring
        (the question-aware window, `compress.with_header`); 0 scores with the last window tokens.
    """

    prompt: int
    method: Method
    kv_size: int | None
    header: int = 0


@dataclass
class Prefilled:
    """The state after a prefill: the batch's cache and each sequence's last-position logits.

    One sequence per variant. logits: `[batch, vocab]`. kept: int64 `[batch, num_layers, num_kv_heads]` tokens
    kept per head. memory: bytes right after prefill. prompt_lens, prefill_seconds: per sequence (a prompt shared
    by several variants was prefilled once: they report the same seconds). inputs, graph: the decode step's static
    buffers and, in graph mode, its capture, made by the first decode or teacher-forced step and reused by later
    ones on this state.
    """

    cache: RaggedKVCache
    hf_cache: RaggedHFCache
    variants: list[Variant]
    prompt_lens: list[int]
    logits: torch.Tensor
    kept: torch.Tensor
    memory: KVMemory
    prefill_seconds: list[float]
    inputs: StepInputs | None = None
    graph: DecodeGraph | None = None


@dataclass(frozen=True)
class StepInputs:
    """The decode step's static input buffers, allocated once per generation and written in place between steps,
    so every step reads the same addresses: `tokens` (the last sampled token) and `positions` int64 `[batch, 1]`."""

    tokens: torch.Tensor
    positions: torch.Tensor


@dataclass
class Decoded:
    """The decode loop's output: int64 `[batch, 1 + steps]` tokens (the first sampled from the prefill logits,
    including those sampled after a sequence ended), the number of decode `steps` and their wall-clock `seconds`;
    `mode` (`cuda_graph.GRAPH` or `cuda_graph.EAGER`) and the `capture_seconds` (warm-up + capture, not in
    `seconds`) this generation's graph took."""

    tokens: torch.Tensor
    steps: int
    seconds: float
    mode: str
    capture_seconds: float


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only), so host timers measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ModelRunner:
    """Runs one transformers model on the ragged cache with one kernel `backend` (arguments already checked).

    cuda_graph: decode by replaying one captured step per generation where that is possible (CUDA and the Triton
    backend); False always runs steps eagerly. `mode` says which applies.
    """

    def __init__(
        self, model: PreTrainedModel, backend: Backend, cuda_graph: bool = True, rank_balance: float | None = None
    ) -> None:
        self.model, self.backend = model, backend
        # tensor parallelism (`parallel.py`): this rank's heads only, budgets planned for the whole model
        self.parallel = TensorParallel.of(model, rank_balance)
        self.shape = self.parallel.local_shape if self.parallel else model_shape(model.config)
        self.device = next(model.parameters()).device
        self.eos_ids = eos_token_ids(model)
        self.mode = decode_mode(cuda_graph, self.device, backend.name)

    def run(
        self, prompts: list[list[int]], variants: list[Variant], sampling: SamplingParams
    ) -> tuple[Prefilled, Decoded]:
        """Prefill `variants` of `prompts`, then decode them together."""
        generator, seed = None, sampling.seed
        if seed is None and self.parallel and sampling.temperature > 0:
            seed = self.parallel.shared_seed()  # every rank must draw the same tokens
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        with attention_implementation(self.model, ATTENTION_NAME):
            state = self.prefill(prompts, variants, sampling.max_new_tokens)
            first = sample(state.logits, sampling.temperature, sampling.top_p, generator)
            return state, self.decode(state, first, sampling, generator)

    def prefill(self, prompts: list[list[int]], variants: list[Variant], max_new_tokens: int) -> Prefilled:
        """Run each prompt once with full attention; after every layer, each variant of that prompt compresses the
        layer into its own sequence of the batch's cache.

        The cache reserves `max_new_tokens - 1` rows of decode headroom per segment (the last token is never fed).
        """
        lens = [len(prompts[v.prompt]) for v in variants]
        hf_cache, compressors = self.allocate(lens, variants, max_new_tokens - 1)
        cache = hf_cache.ragged
        logits, seconds = [None] * len(variants), [0.0] * len(variants)
        with attention_implementation(self.model, ATTENTION_NAME):
            for index, ids in enumerate(prompts):
                rows = [seq for seq, v in enumerate(variants) if v.prompt == index]
                if len(ids) >= LONG_PROMPT:
                    print(f"raggedkv: prefilling prompt {index} ({len(ids)} tokens)...", file=sys.stderr, flush=True)
                start = time.perf_counter()
                with hf_cache.prefilling(_fan_out([compressors[seq] for seq in rows])):
                    out = self.model(
                        input_ids=torch.tensor([ids], device=self.device),
                        position_ids=torch.arange(len(ids), device=self.device)[None],
                        past_key_values=hf_cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                synchronize(self.device)
                for seq in rows:
                    logits[seq], seconds[seq] = out.logits[0, -1], time.perf_counter() - start
        hf_cache.plan_decode()
        kept, memory = torch.stack([compressor.kept for compressor in compressors]), cache.memory()
        if self.parallel:  # report the whole model on every rank
            kept, memory = self.parallel.gather_prefill_stats(kept, memory)
        return Prefilled(cache, hf_cache, variants, lens, torch.stack(logits), kept, memory, seconds)

    def allocate(
        self, lens: list[int], variants: list[Variant], headroom: int
    ) -> tuple[RaggedHFCache, list[SequenceCompressor]]:
        """The batch's empty cache, one sequence per variant (`lens`: its prompt's tokens), with `headroom` decode rows
        in every segment, and each sequence's compressor (the prefill hook of its prompt; under tensor parallelism,
        for this rank's heads of budgets planned for the whole model). `prefill` and `raggedkv.compressed` use it."""
        methods = [self.parallel.split(v.method) if self.parallel else v.method for v in variants]
        plans = [plan_budgets(m, self.shape, n, v.kv_size, v.header) for m, v, n in zip(methods, variants, lens)]
        totals = torch.stack([plan.sum(dim=1) for plan in plans], dim=1)
        reserves = [with_header(m, v.header).reserve(n, v.kv_size) if self.parallel else None
                    for m, v, n in zip(methods, variants, lens)]  # room for a layer-wide adapt (`parallel.py`)
        reserve = None
        if any(r is not None for r in reserves):
            reserve = torch.stack([t if r is None else r for t, r in zip(totals.unbind(dim=1), reserves)], dim=1)
        cache = RaggedKVCache(
            totals,
            lens,
            num_kv_heads=self.shape.num_kv_heads,
            head_dim=self.shape.head_dim,
            headroom=headroom,
            dtype=self.model.dtype,
            device=self.device,
            backend=self.backend,
            reserve=reserve,
        )
        compressors = [SequenceCompressor(m, plan, cache, seq, v.header)
                       for seq, (m, v, plan) in enumerate(zip(methods, variants, plans))]
        return RaggedHFCache(cache), compressors

    def decode_step(self, hf_cache: RaggedHFCache, inputs: StepInputs) -> torch.Tensor:
        """One decode step for the whole batch, reading the static `inputs` -> logits `[batch, vocab]`.

        Device work only: it reads nothing back and changes no host-side state (the loop checks the headroom and
        counts the step around it), so the same call could be captured once and replayed.
        """
        out = self.model(
            input_ids=inputs.tokens,
            position_ids=inputs.positions,
            past_key_values=hf_cache,
            use_cache=True,
        )
        return out.logits[:, -1]

    def step_inputs(self, state: Prefilled, first: torch.Tensor) -> StepInputs:
        """The static inputs of `state`'s decode steps, now holding the int64 `[batch]` `first` tokens at each
        sequence's next decode position (its prompt length plus the steps already taken). The first call on a state
        allocates them; later calls write into the same buffers, so a captured step keeps reading them."""
        positions = (torch.tensor(state.prompt_lens, dtype=torch.int64) + state.cache.decode_steps)[:, None]
        if state.inputs is None:
            state.inputs = StepInputs(tokens=first[:, None].clone(), positions=positions.to(self.device))
        else:
            state.inputs.tokens.copy_(first[:, None])
            state.inputs.positions.copy_(positions)
        return state.inputs

    def prepare(self, state: Prefilled, inputs: StepInputs) -> float:
        """Graph mode: capture the decode step on `inputs` unless `state` already holds that capture -> the seconds
        the warm-up and capture took (0.0 when nothing was captured; always in eager mode). The cache is left as it
        was. `advance` calls it; the decode loop calls it first so that its timer counts steps only.

        Raises:
            RuntimeError: the capture failed (the message says how to decode eagerly instead).
        """
        if self.mode != GRAPH or (state.graph is not None and state.graph.inputs is inputs):
            return 0.0
        state.graph = None  # the previous capture's memory pool goes back before the new capture allocates
        try:
            state.graph = DecodeGraph.capture(
                lambda: self.decode_step(state.hf_cache, inputs), inputs, state.cache.kv_lens
            )
        except RuntimeError as exc:
            raise RuntimeError(
                f"capturing the decode step as a CUDA graph failed ({exc}); pass cuda_graph=False to the Engine "
                "(raggedkv generate --no-cuda-graph) to decode eagerly"
            ) from exc
        return state.graph.capture_seconds

    def advance(self, state: Prefilled, inputs: StepInputs) -> torch.Tensor:
        """Run one decode step on `inputs` (a replay of the captured step in graph mode) and count it -> logits
        `[batch, vocab]` (inputs still hold the fed tokens). In graph mode the logits are the graph's static output,
        overwritten by the next step: sample from them or copy them first.

        Raises:
            RuntimeError: the step would need more rows than the cache's decode headroom (checked on the host from
                the step counter, before the step), or the capture failed.
        """
        cache = state.cache
        if cache.decode_steps >= cache.headroom:
            raise RuntimeError(
                f"decode step {cache.decode_steps + 1}: all {cache.headroom} rows of decode headroom are used "
                f"(the cache was sized for max_new_tokens={cache.headroom + 1})"
            )
        self.prepare(state, inputs)
        logits = state.graph.replay() if self.mode == GRAPH else self.decode_step(state.hf_cache, inputs)
        cache.decode_steps += 1
        return logits

    def decode(
        self, state: Prefilled, first: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
    ) -> Decoded:
        """Decode from the int64 `[batch]` `first` tokens until every sequence has produced an end token or
        `sampling.max_new_tokens` tokens (the ragged attention implementation must be selected). In graph mode the
        step is captured before the timed loop.

        Raises:
            RuntimeError: a step would need more rows than the cache's decode headroom, or the capture failed.
        """
        batch, max_new_tokens = first.shape[0], sampling.max_new_tokens
        tokens = torch.empty(batch, max_new_tokens, dtype=torch.int64, device=self.device)
        tokens[:, 0] = first
        eos = torch.tensor(self.eos_ids, dtype=torch.int64, device=self.device)
        finished = torch.isin(first, eos)
        inputs = self.step_inputs(state, first)
        capture_seconds = 0.0
        if max_new_tokens > 1 and state.cache.decode_steps < state.cache.headroom:
            capture_seconds = self.prepare(state, inputs)
        start = time.perf_counter()
        check_every = EOS_CHECK_EVERY_CUDA if self.device.type == "cuda" else 1
        steps = 0
        for step in range(1, max_new_tokens):
            if (step - 1) % check_every == 0 and bool(finished.all()):
                break
            logits = self.advance(state, inputs)
            tokens[:, step] = sample(logits, sampling.temperature, sampling.top_p, generator)
            finished |= torch.isin(tokens[:, step], eos)
            inputs.tokens.copy_(tokens[:, step : step + 1])
            inputs.positions.add_(1)
            steps = step
        synchronize(self.device)
        seconds = time.perf_counter() - start
        return Decoded(tokens[:, : steps + 1], steps, seconds, self.mode, capture_seconds)

    def teacher_force(self, state: Prefilled, tokens: torch.Tensor) -> torch.Tensor:
        """Feed the int64 `[batch, T]` `tokens` through `T` decode steps (the same step as `decode`, replayed in
        graph mode), whatever the model would have sampled (the ragged attention implementation must be selected;
        the cache needs `T` rows of headroom left).

        Returns:
            fp32 logits `[batch, T, vocab]`: row `t` is the distribution after `tokens[:, t]`, i.e. over token `t + 1`.
        """
        inputs = self.step_inputs(state, tokens[:, 0])
        logits = []
        for t in range(tokens.shape[1]):
            if t:
                inputs.tokens.copy_(tokens[:, t : t + 1])
                inputs.positions.add_(1)
            logits.append(self.advance(state, inputs).to(torch.float32, copy=True))
        return torch.stack(logits, dim=1)


def _fan_out(compressors: list[SequenceCompressor]):
    """One prefill hook that hands each layer's query/key/value to every compressor of the prompt."""

    def hook(layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sm_scale: float) -> None:
        for compressor in compressors:
            compressor(layer, query, key, value, sm_scale)

    return hook
