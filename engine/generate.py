"""`Engine`: compressed generation for Hugging Face decoder models on the ragged cache (`hf.check_model_support`).

The API half of generation: loading, argument checks, prompts to token ids and token ids to `GenerationResult`s.
The model-facing half (prefill, the decode step and the decode loop) is `runner.ModelRunner`. `sweep` puts several
compressions of one prompt into one batch: the prompt is prefilled once and each layer is compressed once per
(method, kv_size).

The question-aware window: a prompt encoded with the chat template ends with the template's assistant header, and
by default (`question_window=True`) every head keeps those header tokens while the window just before them (the
end of the user's text) scores the rest (`compress.with_header`). `kv_size` counts every kept token, header
included. Token-id prompts pass the header's length explicitly (`header_tokens`, default 0: the plain window).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from .arguments import DEFAULT_MAX_NEW_TOKENS
from .backend import Backend, get_backend
from .chat_header import encode_user_turn
from .checks import check_header_tokens, check_kv_size, check_prompt_ids, check_sampling, check_text_prompts
from .default_model import DEFAULT_MODEL, resolve_model
from .hf import check_model_support
from .methods import Method, get_method
from .models import load_model
from .outputs import GenerationResult, GenerationStats
from .parallel import rank_stats
from .questions import generate_answers
from .runner import Decoded, ModelRunner, Prefilled, SamplingParams, Variant


class Engine:
    """Generation with a head-level compressed KV cache. Build it with `from_pretrained` or `from_model`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None,
        method: Method,
        backend: Backend,
        cuda_graph: bool = True,
        rank_balance: float | None = None,
    ) -> None:
        self.model, self.tokenizer, self.method, self.backend = model, tokenizer, method, backend
        self.runner = ModelRunner(model, backend, cuda_graph, rank_balance)
        self.shape, self.device, self.eos_ids = self.runner.shape, self.runner.device, self.runner.eos_ids
        if self.runner.parallel:  # the whole model's shape (the runner plans with this rank's heads)
            self.shape = self.runner.parallel.shape

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike = DEFAULT_MODEL,
        method: str | Method = "snapkv",
        head_scores: object = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        backend: str | Backend = "auto",
        cuda_graph: bool = True,
        tp_plan: str | None = None,
        rank_balance: float | None = None,
        **method_params,
    ) -> Engine:
        """Load `model` (``"smollm2-135m-instruct"``, converted on first use, a local HF folder, or a Hub id already in
        the local Hugging Face cache) and its tokenizer.

        Args:
            method: a method name (see `raggedkv.engine.methods.METHODS`) or a `Method` instance.
            head_scores: head-importance scores for the methods that take them (passed through when not None).
            device, dtype: as `raggedkv.engine.models.load_model` takes them (default CUDA when available, else
                CPU; bfloat16 on CUDA, float32 elsewhere).
            backend: ``"auto"``, ``"torch"``, ``"triton"`` or a `Backend`.
            cuda_graph: on CUDA with the Triton backend, capture the decode step once per generation and replay it
                for every token (`raggedkv.engine.cuda_graph`); False decodes eagerly. Elsewhere steps run eagerly.
            tp_plan: ``"auto"`` to load with transformers' tensor parallelism (run under ``torchrun``; each rank's
                cache holds its own KV heads, `raggedkv.engine.parallel`); None loads on one device.
            rank_balance: with `tp_plan`, cap each rank's KV per layer at `(1 + rank_balance)` x the mean
                (`parallel_budgets.balance_ranks`); None keeps the method's budgets.
            method_params: the method's own parameters (e.g. ``window=8``).

        Raises:
            FileNotFoundError: an unknown model name, folder or Hub id. ValueError: an unsupported model, unknown
            method or backend, a bad dtype, or heads that do not split over the tensor-parallel ranks.
        """
        path = resolve_model(model)
        check_model_support(AutoConfig.from_pretrained(path))
        hf_model, tokenizer = load_model(path, device, dtype, tp_plan=tp_plan)
        return cls.from_model(hf_model, tokenizer, method, head_scores=head_scores, backend=backend,
                              cuda_graph=cuda_graph, rank_balance=rank_balance, **method_params)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        method: str | Method = "snapkv",
        head_scores: object = None,
        backend: str | Backend = "auto",
        cuda_graph: bool = True,
        rank_balance: float | None = None,
        **method_params,
    ) -> Engine:
        """Wrap an instantiated transformers causal LM (and its tokenizer; without one, use `generate_ids`).

        The model is put in eval mode; its attention implementation is switched to ``"raggedkv"`` only inside engine
        calls, so it stays usable elsewhere. `model.name_or_path` names the model for the methods that read packaged
        head-score files. A model loaded with a tensor-parallel plan runs tensor-parallel (`rank_balance` applies
        only then). Arguments as in `from_pretrained`.
        """
        check_model_support(model.config, type(model))
        if isinstance(method, Method) and (head_scores is not None or method_params):
            raise ValueError("head_scores and method parameters go with a method name, not a Method instance")
        if not isinstance(method, Method):  # a name; get_method refuses anything else by name
            extra = {"head_scores": head_scores} if head_scores is not None else {}
            method = get_method(method, model_name=model.name_or_path or None, **extra, **method_params)
        device = next(model.parameters()).device
        backend = backend if isinstance(backend, Backend) else get_backend(backend, device)
        return cls(model.eval(), tokenizer, method, backend, cuda_graph, rank_balance)

    def generate(
        self,
        prompt: str | Sequence[str],
        *,
        kv_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat_template: bool = True,
        question_window: bool = True,
        question: str | None = None,
        questions: Sequence[str] | None = None,
    ) -> GenerationResult | list[GenerationResult]:
        """Generate a reply to `prompt` (one string, or a list decoded together as a batch), or, with `question` or
        `questions`, answer questions about `prompt`, one context string compressed once.

        Args:
            kv_size: tokens kept per KV head per layer on average, window included (as in the papers); None or a
                value >= a prompt's length keeps that whole prompt.
            max_new_tokens: upper bound on generated tokens; generation stops earlier on the model's end tokens.
            temperature: 0 = greedy; otherwise sampling, with `top_p` nucleus filtering and `seed` for repeatability.
            chat_template: wrap each prompt as a user turn with the tokenizer's chat template, when it has one.
            question_window: with the chat template, score with the window just before the template's assistant
                header and keep the header in every head (counted in `kv_size`); False scores with the last
                window tokens, header included.
            question, questions: one question, or a list of them, about the context `prompt`: the context is
                compressed once without them (the kvpress convention) and each question is answered from its own
                copy of the compressed cache (`questions.py` documents which token ids are compressed and which are
                fed after; `question_window` does not apply: the compressed part ends with the context).

        Returns:
            One `GenerationResult` for a string prompt or a `question`, a list for a list of prompts or `questions`.
        """
        if question is not None or questions is not None:
            if question is not None and questions is not None:
                raise ValueError("give question= (one) or questions= (a list), not both")
            results = generate_answers(
                self, prompt, [question] if questions is None else questions, kv_size=kv_size,
                chat_template=chat_template, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                seed=seed,
            )
            return results[0] if questions is None else results
        prompts = check_text_prompts(prompt)
        if self.tokenizer is None:
            raise ValueError("this Engine has no tokenizer: pass token ids to generate_ids instead")
        encoded = [self.encode_with_header(p, chat_template=chat_template) for p in prompts]
        results = self.generate_ids(
            [ids for ids, _ in encoded],
            kv_size=kv_size, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            header_tokens=[header if question_window else 0 for _, header in encoded],
        )
        return results[0] if isinstance(prompt, str) else results

    def encode(self, prompt: str, *, chat_template: bool = True) -> list[int]:
        """Token ids of `prompt`, as a user turn of the chat template when asked for and available."""
        return self.encode_with_header(prompt, chat_template=chat_template)[0]

    def encode_with_header(self, prompt: str, *, chat_template: bool = True) -> tuple[list[int], int]:
        """`encode`'s token ids and how many of them, at the end, are the chat template's assistant header (the
        `header_tokens` of `generate_ids`/`sweep`; `chat_header.encode_user_turn`); 0 without a template."""
        tokenizer = self.tokenizer
        if chat_template and getattr(tokenizer, "chat_template", None):
            return encode_user_turn(tokenizer, prompt)
        return tokenizer(prompt)["input_ids"], 0

    @torch.inference_mode()
    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        kv_size: int | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        header_tokens: int | Sequence[int] = 0,
    ) -> list[GenerationResult]:
        """`generate` for token ids: `prompt_ids` is a list of prompts, each a list of ints (or a 1-D tensor).

        `header_tokens`: how many tokens at the end of each prompt are a chat template's assistant header (one int
        for all prompts or one per prompt, from `encode_with_header`); 0 (default) scores with the last window
        tokens, as for a prompt without a header.
        """
        check_sampling(max_new_tokens, temperature, top_p, seed)
        check_kv_size(kv_size, self.method)
        prompts = check_prompt_ids(prompt_ids, self.model.config, max_new_tokens)
        headers = check_header_tokens(header_tokens, prompts)
        check_kv_size(kv_size, self.method, max(headers))
        variants = [Variant(i, self.method, kv_size, headers[i]) for i in range(len(prompts))]
        return self._generate(prompts, variants, SamplingParams(max_new_tokens, temperature, top_p, seed))

    @torch.inference_mode()
    def sweep(
        self,
        prompt: str | Sequence[int],
        variants: Sequence[tuple[str | Method, int | None]],
        *,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        chat_template: bool = True,
        question_window: bool = True,
        header_tokens: int = 0,
    ) -> list[GenerationResult]:
        """Answer one prompt under several `(method, kv_size)` variants with a single prefill.

        The prompt runs through the model once. Prefill attention is full attention whatever the method (a method
        only decides what each layer keeps afterwards), so after each layer every variant compresses that layer
        into its own sequence of one ragged cache; then all variants decode together as one batch. Greedy answers
        are those of `generate` called once per variant (up to the rounding differences any batching may bring in
        half precision), for the price of one prefill: what method comparisons and budget sweeps need.

        Args:
            prompt: text (encoded like `generate` does, `chat_template` and `question_window` as there) or token ids
                (`header_tokens` as in `generate_ids`; only for token ids).
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
        pairs = []
        for i, variant in enumerate(variants):
            if not isinstance(variant, Sequence) or isinstance(variant, str) or len(variant) != 2:
                raise ValueError(f"variants[{i}] must be a (method, kv_size) pair, got {variant!r}")
            method, kv_size = variant
            if isinstance(method, str):
                method = get_method(method, model_name=self.model.name_or_path or None)
            check_kv_size(kv_size, method)
            pairs.append((method, kv_size))
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this Engine has no tokenizer: pass token ids as the prompt instead")
            if header_tokens:
                raise ValueError(f"header_tokens={header_tokens!r} goes with token ids; a text prompt's header comes "
                                 "from the chat template (question_window)")
            (prompt,) = check_text_prompts(prompt)
            prompt, header = self.encode_with_header(prompt, chat_template=chat_template)
            header_tokens = header if question_window else 0
        prompts = check_prompt_ids([prompt], self.model.config, max_new_tokens)
        (header,) = check_header_tokens(header_tokens, prompts)
        for method, kv_size in pairs:
            check_kv_size(kv_size, method, header)
        rows = [Variant(0, method, kv_size, header) for method, kv_size in pairs]
        return self._generate(prompts, rows, SamplingParams(max_new_tokens, temperature, top_p, seed))

    def _generate(
        self, prompts: list[list[int]], variants: list[Variant], sampling: SamplingParams
    ) -> list[GenerationResult]:
        """Prefill `variants` of checked `prompts`, decode them together, and return one result per variant."""
        state, decoded = self.runner.run(prompts, variants, sampling)
        return self._results(state, decoded)

    @torch.inference_mode()
    def prefill(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        kv_size: int | None,
        max_new_tokens: int,
        header_tokens: int | Sequence[int] = 0,
    ) -> Prefilled:
        """Run every prompt alone with full attention and compress it into one ragged cache for the batch.

        The cache reserves `max_new_tokens - 1` rows of decode headroom per segment (the last token is never fed).
        `header_tokens` as in `generate_ids`.
        """
        check_kv_size(kv_size, self.method)
        prompts = check_prompt_ids(prompt_ids, self.model.config, max_new_tokens)
        headers = check_header_tokens(header_tokens, prompts)
        check_kv_size(kv_size, self.method, max(headers))
        variants = [Variant(i, self.method, kv_size, headers[i]) for i in range(len(prompts))]
        return self.runner.prefill(prompts, variants, max_new_tokens)

    def _results(self, state: Prefilled, decoded: Decoded) -> list[GenerationResult]:
        """One `GenerationResult` per sequence: its tokens up to the first end token, decoded, and its stats."""
        tokens, steps, decode_seconds = decoded.tokens.tolist(), decoded.steps, decoded.seconds
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
                method=variant.method.label,
                kv_size=variant.kv_size,
                header_tokens=variant.header,
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
                decode_mode=decoded.mode,
                graph_capture_seconds=decoded.capture_seconds,
                **rank_stats(kept, self.runner.parallel),
            )
            text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""
            results.append(GenerationResult(text, ids, "eos" if stop is not None else "length", stats))
        return results
