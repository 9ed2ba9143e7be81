"""`Engine`: compressed generation for Hugging Face Llama and Mistral models on the ragged cache.

Shape of a call (gpt-fast style): `prefill` runs each prompt alone with full attention and compresses it, layer by
layer, into one `RaggedKVCache` for the batch; then `generate_ids` decodes all sequences together, one token per
step, with `_decode_one_token` (one `append_kv` and one `ragged_decode_attention` per layer, whatever the batch and
head counts; explicit positions; sizes fixed before the first step, so a step allocates nothing that depends on the
data and, on the Triton backend, reads nothing back from the device). `sweep` puts several compressions of one
prompt into one batch: the prompt is prefilled once and each layer is compressed once per (method, kv_size).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .backend import Backend, get_backend
from .cache import KVMemory, RaggedKVCache
from .checks import check_kv_size, check_prompt_ids, check_sampling, check_text_prompts
from .compress import SequenceCompressor, plan_budgets
from .default_model import DEFAULT_MODEL, resolve_model
from .hf import RaggedHFCache, check_model_type, model_shape, ragged_attention_enabled
from .methods import Method, get_method
from .outputs import GenerationResult, GenerationStats
from .sampling import sample

EOS_CHECK_EVERY_CUDA = 16  # on CUDA, read "all sequences finished?" back every this many steps, not every step
LONG_PROMPT = 8192  # prefill of prompts this long prints a progress message


@dataclass(frozen=True)
class Variant:
    """One sequence of a prefilled batch: which prompt it holds, and how that prompt was compressed.

    prompt: index of the prompt in the batch's prompt list (several variants may share one prompt).
    """

    prompt: int
    method: Method
    kv_size: int | None


@dataclass
class Prefilled:
    """The state after `Engine.prefill`: the batch's cache and each sequence's last-position logits.

    One sequence per variant. logits: `[batch, vocab]`. kept: int64 `[batch, num_layers, num_kv_heads]` tokens
    kept per head. memory: bytes right after prefill. prompt_lens, prefill_seconds: per sequence (a prompt shared
    by several variants was prefilled once: they report the same seconds).
    """

    cache: RaggedKVCache
    hf_cache: RaggedHFCache
    variants: list[Variant]
    prompt_lens: list[int]
    logits: torch.Tensor
    kept: torch.Tensor
    memory: KVMemory
    prefill_seconds: list[float]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _eos_ids(model: PreTrainedModel) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


class Engine:
    """Generation with a head-level compressed KV cache. Build it with `from_pretrained` or `from_model`."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, method: Method, backend: Backend
    ) -> None:
        self.model, self.tokenizer, self.method, self.backend = model, tokenizer, method, backend
        self.shape = model_shape(model.config)
        self.device = next(model.parameters()).device
        self.eos_ids = _eos_ids(model)

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        method: str | Method = "snapkv",
        head_scores: object = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        backend: str | Backend = "auto",
        **method_params,
    ) -> Engine:
        """Load `model` (``"smollm2-135m-instruct"``, converted on first use, or a local HF folder) and its tokenizer.

        Args:
            method: a method name (see `raggedkv.engine.methods.METHODS`) or a `Method` instance.
            head_scores: head-importance scores for the methods that take them (passed through when not None).
            device: default CUDA when available, else CPU. dtype: default bfloat16 on CUDA, float32 on CPU.
            backend: ``"auto"``, ``"torch"``, ``"triton"`` or a `Backend`.
            method_params: the method's own parameters (e.g. ``window=8``).

        Raises:
            FileNotFoundError: an unknown model name or folder. ValueError: an unsupported model type, unknown
            method or backend, or a bad dtype.
        """
        path = resolve_model(model)
        check_model_type(AutoConfig.from_pretrained(path))
        device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16 (a torch.dtype or its name), got {dtype!r}")
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls.from_model(hf_model, tokenizer, method, head_scores=head_scores, backend=backend, **method_params)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        method: str | Method = "snapkv",
        head_scores: object = None,
        backend: str | Backend = "auto",
        **method_params,
    ) -> Engine:
        """Wrap an instantiated transformers causal LM (and its tokenizer; without one, use `generate_ids`).

        The model is put in eval mode; its attention implementation is switched to ``"raggedkv"`` only inside engine
        calls, so it stays usable elsewhere. `model.name_or_path` names the model for the methods that read packaged
        head-score files. Arguments as in `from_pretrained`.
        """
        check_model_type(model.config)
        if not isinstance(method, str) and (head_scores is not None or method_params):
            raise ValueError("head_scores and method parameters go with a method name, not a Method instance")
        if isinstance(method, str):
            extra = {"head_scores": head_scores} if head_scores is not None else {}
            method = get_method(method, model_name=model.name_or_path or None, **extra, **method_params)
        device = next(model.parameters()).device
        backend = backend if isinstance(backend, Backend) else get_backend(backend, device)
        return cls(model.eval(), tokenizer, method, backend)

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        kv_size: int | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat_template: bool = True,
    ) -> GenerationResult | list[GenerationResult]:
        """Generate a reply to `prompt` (one string, or a list decoded together as a batch).

        Args:
            kv_size: tokens kept per KV head per layer on average, window included (as in the papers); None or a
                value >= a prompt's length keeps that whole prompt.
            max_new_tokens: upper bound on generated tokens; generation stops earlier on the model's end tokens.
            temperature: 0 = greedy; otherwise sampling, with `top_p` nucleus filtering and `seed` for repeatability.
            chat_template: wrap each prompt as a user turn with the tokenizer's chat template, when it has one.

        Returns:
            One `GenerationResult` for a string prompt, a list for a list of prompts.
        """
        prompts = check_text_prompts(prompt)
        if self.tokenizer is None:
            raise ValueError("this Engine has no tokenizer: pass token ids to generate_ids instead")
        results = self.generate_ids(
            [self.encode(p, chat_template=chat_template) for p in prompts],
            kv_size=kv_size, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
        )
        return results[0] if isinstance(prompt, str) else results

    def encode(self, prompt: str, *, chat_template: bool = True) -> list[int]:
        """Token ids of `prompt`, as a user turn of the chat template when asked for and available."""
        tokenizer = self.tokenizer
        if chat_template and getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer(prompt)["input_ids"]

    @torch.inference_mode()
    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        kv_size: int | None = None,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[GenerationResult]:
        """`generate` for token ids: `prompt_ids` is a list of prompts, each a list of ints (or a 1-D tensor)."""
        check_sampling(max_new_tokens, temperature, top_p, seed)
        check_kv_size(kv_size, self.method.scoring.window)
        prompts = check_prompt_ids(prompt_ids, self.model.config, max_new_tokens)
        variants = [Variant(i, self.method, kv_size) for i in range(len(prompts))]
        return self._generate(prompts, variants, max_new_tokens, temperature, top_p, seed)

    @torch.inference_mode()
    def sweep(
        self,
        prompt: str | Sequence[int],
        variants: Sequence[tuple[str | Method, int | None]],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat_template: bool = True,
    ) -> list[GenerationResult]:
        """Answer one prompt under several `(method, kv_size)` variants with a single prefill.

        The prompt runs through the model once. Prefill attention is full attention whatever the method (a method
        only decides what each layer keeps afterwards), so after each layer every variant compresses that layer
        into its own sequence of one ragged cache; then all variants decode together as one batch. Greedy answers
        are those of `generate` called once per variant (up to the rounding differences any batching may bring in
        half precision), for the price of one prefill: what method comparisons and budget sweeps need.

        Args:
            prompt: text (encoded like `generate` does, `chat_template` as there) or token ids.
            variants: `(method, kv_size)` pairs; a method is a name (built with this model's default head scores
                and parameters) or a `Method` instance; kv_size as in `generate`.
            max_new_tokens, temperature, top_p, seed: as in `generate`; sampling draws for the whole batch, so
                sampled answers differ from separate calls.

        Returns:
            One `GenerationResult` per variant, in order; each one's stats name its method and kv_size.
        """
        if not isinstance(variants, Sequence) or isinstance(variants, str) or not variants:
            raise ValueError(f"variants must be a non-empty list of (method, kv_size) pairs, got {variants!r:.80}")
        check_sampling(max_new_tokens, temperature, top_p, seed)
        rows = []
        for i, variant in enumerate(variants):
            if not isinstance(variant, Sequence) or isinstance(variant, str) or len(variant) != 2:
                raise ValueError(f"variants[{i}] must be a (method, kv_size) pair, got {variant!r}")
            method, kv_size = variant
            if isinstance(method, str):
                method = get_method(method, model_name=self.model.name_or_path or None)
            check_kv_size(kv_size, method.scoring.window)
            rows.append(Variant(0, method, kv_size))
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this Engine has no tokenizer: pass token ids as the prompt instead")
            (prompt,) = check_text_prompts(prompt)
            prompt = self.encode(prompt, chat_template=chat_template)
        prompts = check_prompt_ids([prompt], self.model.config, max_new_tokens)
        return self._generate(prompts, rows, max_new_tokens, temperature, top_p, seed)

    def _generate(
        self,
        prompts: list[list[int]],
        variants: list[Variant],
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
    ) -> list[GenerationResult]:
        """Prefill `variants` of checked `prompts`, decode them together, and return one result per variant."""
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        with ragged_attention_enabled(self.model):
            state = self._prefill(prompts, variants, max_new_tokens)
            first = sample(state.logits, temperature, top_p, generator)
            start = time.perf_counter()
            tokens, steps = self._decode_loop(state, first, max_new_tokens, temperature, top_p, generator)
            _synchronize(self.device)
            decode_seconds = time.perf_counter() - start
        return self._results(state, tokens.tolist(), steps, decode_seconds)

    @torch.inference_mode()
    def prefill(
        self, prompt_ids: Sequence[Sequence[int]], *, kv_size: int | None, max_new_tokens: int
    ) -> Prefilled:
        """Run every prompt alone with full attention and compress it into one ragged cache for the batch.

        The cache reserves `max_new_tokens - 1` rows of decode headroom per segment (the last token is never fed).
        """
        check_kv_size(kv_size, self.method.scoring.window)
        prompts = check_prompt_ids(prompt_ids, self.model.config, max_new_tokens)
        return self._prefill(prompts, [Variant(i, self.method, kv_size) for i in range(len(prompts))], max_new_tokens)

    def _prefill(self, prompts: list[list[int]], variants: list[Variant], max_new_tokens: int) -> Prefilled:
        """Run each prompt once with full attention; after every layer, each variant of that prompt compresses the
        layer into its own sequence of the batch's cache (arguments already checked)."""
        lens = [len(prompts[v.prompt]) for v in variants]
        plans = [plan_budgets(v.method, self.shape, n, v.kv_size) for v, n in zip(variants, lens)]
        cache = RaggedKVCache(
            torch.stack([plan.sum(dim=1) for plan in plans], dim=1),
            lens,
            num_kv_heads=self.shape.num_kv_heads,
            head_dim=self.shape.head_dim,
            headroom=max_new_tokens - 1,
            dtype=self.model.dtype,
            device=self.device,
            backend=self.backend,
        )
        hf_cache = RaggedHFCache(cache)
        compressors = [SequenceCompressor(v.method, plan, cache, seq)
                       for seq, (v, plan) in enumerate(zip(variants, plans))]
        logits, seconds = [None] * len(variants), [0.0] * len(variants)
        with ragged_attention_enabled(self.model):
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
                        ragged_cache=hf_cache,
                        logits_to_keep=1,
                    )
                _synchronize(self.device)
                for seq in rows:
                    logits[seq], seconds[seq] = out.logits[0, -1], time.perf_counter() - start
        hf_cache.plan_decode()
        kept = torch.stack([compressor.kept for compressor in compressors])
        return Prefilled(cache, hf_cache, variants, lens, torch.stack(logits), kept, cache.memory(), seconds)

    def _decode_one_token(self, hf_cache: RaggedHFCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One decode step for the whole batch: `tokens`, `positions` int64 `[batch, 1]` -> logits `[batch, vocab]`."""
        out = self.model(
            input_ids=tokens, position_ids=positions, past_key_values=hf_cache, use_cache=True, ragged_cache=hf_cache
        )
        return out.logits[:, -1]

    def _decode_loop(
        self,
        state: Prefilled,
        first: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, int]:
        """Decode until every sequence has produced an end token or `max_new_tokens` tokens.

        Returns:
            int64 `[batch, 1 + steps]` tokens (including those sampled after a sequence ended), and `steps`.
        """
        batch = first.shape[0]
        tokens = torch.empty(batch, max_new_tokens, dtype=torch.int64, device=self.device)
        tokens[:, 0] = first
        eos = torch.tensor(self.eos_ids, dtype=torch.int64, device=self.device)
        finished = torch.isin(first, eos)
        positions = torch.tensor(state.prompt_lens, dtype=torch.int64, device=self.device)[:, None]
        check_every = EOS_CHECK_EVERY_CUDA if self.device.type == "cuda" else 1
        steps = 0
        for step in range(1, max_new_tokens):
            if (step - 1) % check_every == 0 and bool(finished.all()):
                break
            logits = self._decode_one_token(state.hf_cache, tokens[:, step - 1 : step], positions)
            tokens[:, step] = sample(logits, temperature, top_p, generator)
            finished |= torch.isin(tokens[:, step], eos)
            positions += 1
            steps = step
        return tokens[:, : steps + 1], steps

    def _results(
        self, state: Prefilled, tokens: list[list[int]], steps: int, decode_seconds: float
    ) -> list[GenerationResult]:
        batch = len(tokens)
        memory = state.memory
        results = []
        for seq, row in enumerate(tokens):
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            ids = row if stop is None else row[: stop + 1]
            kept = state.kept[seq]
            variant = state.variants[seq]
            stats = GenerationStats(
                prompt_tokens=state.prompt_lens[seq],
                new_tokens=len(ids),
                method=variant.method.name,
                kv_size=variant.kv_size,
                compressed=bool((kept < state.prompt_lens[seq]).any()),
                kept_tokens=kept.tolist(),
                kv_bytes_kept=int(memory.valid[:, seq].sum()),
                kv_bytes_full=int(memory.full[:, seq].sum()),
                kv_bytes_allocated=int(memory.allocated[:, seq].sum()),
                backend=self.backend.name,
                device=str(self.device),
                batch_size=batch,
                prefill_seconds=state.prefill_seconds[seq],
                decode_seconds=decode_seconds,
                decode_steps=steps,
                decode_tokens_per_s=batch * steps / decode_seconds if steps else 0.0,
            )
            text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""
            results.append(GenerationResult(text, ids, "eos" if stop is not None else "length", stats))
        return results


def _fan_out(compressors: list[SequenceCompressor]):
    """One prefill hook that hands each layer's query/key/value to every compressor of the prompt."""

    def hook(layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sm_scale: float) -> None:
        for compressor in compressors:
            compressor(layer, query, key, value, sm_scale)

    return hook
