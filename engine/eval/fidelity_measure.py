"""Fidelity of compressed caches to the full cache on one prompt: a reference continuation teacher-forced through
every variant of one prefill.

`measure_prompt` prefills the prompt once for all its variants (`ModelRunner.prefill`), feeds the reference answer
through them together (`ModelRunner.teacher_force`), and returns per variant: the answer's log-probability (sum
over its tokens, nats), the mean KL divergence from the full cache's next-token distributions over the answer
tokens, the share of answer positions where the variant's top-1 token is the full cache's, and the share of the
needle's token positions each KV head kept (`KeptPositions`), averaged over all KV heads and over chosen heads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ..backend import Backend
from ..checks import check_kv_size, check_prompt_ids
from ..hf import ATTENTION_NAME
from ..methods import Method
from ..models import attention_implementation
from ..runner import ModelRunner, Variant


class KeptPositions:
    """A backend whose `select_and_pack` is the given backend's, which also records which prompt positions every
    (sequence, layer, KV head) kept.

    The positions come from the engine's own selection: after the real call, the same call is made once more on a
    float32 source whose rows hold their token positions, packed into a scratch cache laid out like the real one,
    so what is recorded is what the kernel packed (window, header and ties included). Layers are counted per
    sequence: a prefill packs every (layer, sequence) exactly once, in layer order.

    Attributes:
        backend: the recording backend, to build a `ModelRunner` with.
        kept: sequence -> list over layers of bool `[num_kv_heads, prompt_len]` masks (on the CPU).
    """

    def __init__(self, backend: Backend, num_kv_heads: int) -> None:
        self._select_and_pack, self.num_kv_heads = backend.select_and_pack, num_kv_heads
        self.backend = dataclasses.replace(backend, select_and_pack=self._record)
        self.kept: dict[int, list[torch.Tensor]] = {}

    def reset(self) -> None:
        """Forget what was recorded (before the next prefill)."""
        self.kept = {}

    def _record(self, scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens, first_segment=0) -> None:
        self._select_and_pack(scores, budgets, k_src, v_src, k_cache, v_cache, kv_indptr, kv_lens,
                              first_segment=first_segment)
        num_src, n = k_src.shape[:2]
        positions = torch.arange(n, dtype=torch.float32, device=k_src.device)[None, :, None].expand(num_src, n, 1)
        positions = positions.contiguous()
        scratch = torch.full((k_cache.shape[0], 1), -1.0, dtype=torch.float32, device=k_cache.device)
        scratch_lens = kv_lens.clone()
        self._select_and_pack(scores, budgets, positions, positions, scratch, scratch.clone(), kv_indptr,
                              scratch_lens, first_segment=first_segment)
        starts, lens = kv_indptr.cpu(), scratch_lens.cpu()
        rows = scratch[:, 0].cpu()
        mask = torch.zeros(num_src, n, dtype=torch.bool)
        for head in range(num_src):
            segment = first_segment + head
            start = int(starts[segment])
            mask[head, rows[start : start + int(lens[segment])].long()] = True
        self.kept.setdefault(first_segment // self.num_kv_heads, []).append(mask)


def needle_kept(masks: Sequence[torch.Tensor], span: tuple[int, int]) -> torch.Tensor:
    """fp64 `[num_layers, num_kv_heads]`: the share of the needle's positions `[start, end)` each head kept."""
    start, end = span
    return torch.stack([mask[:, start:end].double().mean(dim=1) for mask in masks])


def answer_scores(logits: torch.Tensor, answer: torch.Tensor, reference: int = 0) -> dict[str, torch.Tensor]:
    """Per-sequence fidelity of next-token distributions over a forced answer.

    Args:
        logits: fp32 `[batch, T, vocab]`, row `t` the distribution over answer token `t`.
        answer: int64 `[T]` answer tokens.
        reference: the sequence the others are compared with (the full cache).

    Returns:
        fp64 `[batch]` tensors: `answer_logprob` (sum over the T tokens of log p(answer token), nats), `kl` (mean
        over the T positions of KL(reference || sequence), nats) and `top1` (share of the T positions where the
        sequence's most likely token is the reference's).
    """
    logp = torch.log_softmax(logits.double(), dim=-1)
    chosen = logp.gather(2, answer.to(logp.device)[None, :, None].expand(logp.shape[0], -1, 1))[..., 0]
    ref = logp[reference : reference + 1]
    kl = (ref.exp() * (ref - logp)).sum(dim=-1).mean(dim=1)
    top1 = (logp.argmax(dim=-1) == ref.argmax(dim=-1)).double().mean(dim=1)
    return {"answer_logprob": chosen.sum(dim=1), "kl": kl.clamp(min=0.0), "top1": top1}


@torch.inference_mode()
def measure_prompt(
    runner: ModelRunner,
    recorder: KeptPositions,
    ids: Sequence[int],
    answer: Sequence[int],
    needle: tuple[int, int],
    variants: Sequence[tuple[Method, int | None]],
    top_heads: torch.Tensor,
    header: int = 0,
    suffix: Sequence[int] = (),
) -> list[dict]:
    """Teacher-force `answer` after `ids` (and `suffix`) through every variant of one prefill.

    Args:
        runner: a `ModelRunner` built with `recorder.backend`.
        ids: the prompt's token ids; answer: the reference continuation's ids (>= 1).
        needle: `[start, end)` positions of the needle's tokens in `ids`.
        variants: `(method, kv_size)` pairs; the first is the reference (the full cache: kv_size None).
        top_heads: bool `[num_layers, num_kv_heads]`, the heads `needle_kept_top` averages over.
        header: the prompt's trailing chat-template assistant-header tokens every head keeps and scoring leaves out
            (the question-aware window, `compress.with_header`); 0 scores with the last window tokens.
        suffix: token ids fed after compression and before the answer, not scored (the question-agnostic setting:
            `ids` is the context alone, `suffix` the question and the template's assistant header). The variants
            see the suffix through their compressed caches, as a question asked of a compressed context.

    Returns:
        One dict per variant: `answer_logprob`, `kl`, `top1` (see `answer_scores`), `needle_kept` (mean over all
        KV heads) and `needle_kept_top` (over `top_heads`), `prompt_tokens` and `kept_fraction` (tokens kept /
        prompt tokens, over all heads).
    """
    if not answer:
        raise ValueError("answer has no tokens; the reference continuation needs at least one")
    for method, kv_size in variants:
        check_kv_size(kv_size, method, header)
    fed = [*suffix, *answer]
    (prompt,) = check_prompt_ids([list(ids)], runner.model.config, len(fed))
    recorder.reset()
    forced = torch.tensor(fed, dtype=torch.int64, device=runner.device)
    with attention_implementation(runner.model, ATTENTION_NAME):
        state = runner.prefill([prompt], [Variant(0, m, k, header) for m, k in variants], len(fed))
        logits = state.logits[:, None].float()
        if len(fed) > 1:
            rest = runner.teacher_force(state, forced[None, :-1].expand(len(variants), -1).contiguous())
            logits = torch.cat([logits, rest], dim=1)
    scores = answer_scores(logits[:, len(suffix) :], forced[len(suffix) :])
    records = []
    for seq in range(len(variants)):
        kept = needle_kept(recorder.kept[seq], needle)
        records.append({
            **{name: float(values[seq]) for name, values in scores.items()},
            "needle_kept": float(kept.mean()),
            "needle_kept_top": float(kept[top_heads].mean()),
            "prompt_tokens": len(prompt),
            "kept_fraction": float(state.kept[seq].double().mean() / len(prompt)),
        })
    return records
