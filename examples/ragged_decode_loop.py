"""Drive `torch.ops.raggedkv.*` from a plain PyTorch decode loop, captured in a CUDA graph where CUDA is present.

A toy single-layer attention LM with random weights (embedding, Q/K/V/O projections, output head; no RoPE, no
MLP) generates greedily:

1. Prefill: full attention over the prompt gives the first token. `window_scores` scores each KV head's prefix
   tokens from the last `--window` queries, and `select_and_pack` keeps a random per-segment budget of them plus
   the window in a packed ragged cache (`plan_segments` lays the segments out with `--steps` rows of headroom).
2. Decode, one step = `append_kv` (the new token's K/V into every segment) + `ragged_decode_attention` + the
   output head. All buffers are static and the decode plan (`plan_decode`) is fixed once, so the step reads no
   device value: on CUDA it is captured once in a `torch.cuda.graph` and replayed; on the CPU it runs eagerly
   (the ops run the pure-torch references there, the Triton interpreter under `TRITON_INTERPRET=1`).

What it prints: the set-up, the generated tokens per sequence, the largest difference between the ops' attention
and `ragged_decode_attention_ref` on the same cache at every step, and `OK` when that is within tolerance. With
`--keep-all` (no compression) it also checks the logits against a dense full-attention decode of the same model
on the same tokens.

    python3 examples/ragged_decode_loop.py --batch 2 --prompt-len 64 --steps 16        # add --keep-all, --eager
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

import raggedkv.kernels  # noqa: F401  registers torch.ops.raggedkv.*
from raggedkv.kernels import plan_decode, plan_segments, ragged_decode_attention_ref


class ToyAttentionLM:
    """One attention layer with random weights: `logits = (x + attn(x) @ wo) @ head`, `x = embed[token]`."""

    def __init__(self, vocab: int, num_qo_heads: int, num_kv_heads: int, head_dim: int, device: torch.device):
        d_model = num_qo_heads * head_dim
        self.shape = (num_qo_heads, num_kv_heads, head_dim)
        self.embed = torch.randn(vocab, d_model, device=device)
        self.wq = torch.randn(d_model, num_qo_heads * head_dim, device=device) / math.sqrt(d_model)
        self.wk = torch.randn(d_model, num_kv_heads * head_dim, device=device) / math.sqrt(d_model)
        self.wv = torch.randn(d_model, num_kv_heads * head_dim, device=device) / math.sqrt(d_model)
        self.wo = torch.randn(num_qo_heads * head_dim, d_model, device=device) / math.sqrt(d_model)
        self.head = torch.randn(d_model, vocab, device=device) / math.sqrt(d_model)

    def qkv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`[...]` token ids -> q `[..., Hq, D]`, k and v `[..., Hkv, D]`."""
        num_qo_heads, num_kv_heads, head_dim = self.shape
        x = self.embed[tokens]
        return ((x @ self.wq).unflatten(-1, (num_qo_heads, head_dim)),
                (x @ self.wk).unflatten(-1, (num_kv_heads, head_dim)),
                (x @ self.wv).unflatten(-1, (num_kv_heads, head_dim)))

    def logits(self, tokens: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """`[...]` token ids and their attention output `[..., Hq, D]` -> `[..., vocab]`."""
        return (self.embed[tokens] + attn.flatten(-2) @ self.wo) @ self.head

    def dense_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Full causal attention over `[batch, n]` tokens -> `[batch, n, vocab]` (the uncompressed reference)."""
        q, k, v = self.qkv(tokens)
        group = self.shape[0] // self.shape[1]
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        attn = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)
        return self.logits(tokens, attn)


def prefill(model, prompt, window, max_budget, steps):
    """Score, select and pack the prompt into a ragged cache; return the cache, its metadata and the first logits.

    Each segment keeps a random budget in `[0, min(max_budget, n - window)]` (all `n - window` prefix tokens when
    `max_budget >= n`) plus the window, with `steps` rows of headroom."""
    batch, n = prompt.shape
    _, num_kv_heads, head_dim = model.shape
    q, k, v = model.qkv(prompt)  # [batch, n, H, D]
    k_src = k.transpose(1, 2).reshape(batch * num_kv_heads, n, head_dim)  # segment s = b * num_kv_heads + h
    v_src = v.transpose(1, 2).reshape(batch * num_kv_heads, n, head_dim)
    scores = torch.cat([torch.ops.raggedkv.window_scores(q[b, n - window:].transpose(0, 1), k_src.unflatten(0, (
        batch, num_kv_heads))[b]) for b in range(batch)])  # [segments, n - window]
    m = n - window
    budgets = torch.randint(0, min(max_budget, m) + 1, (batch * num_kv_heads,), device=prompt.device)
    if max_budget >= n:
        budgets.fill_(m)
    plan = plan_segments(budgets + window, headroom=steps)
    k_cache = torch.zeros(plan.total_slots, head_dim, device=prompt.device)
    v_cache = torch.zeros_like(k_cache)
    torch.ops.raggedkv.select_and_pack(scores, budgets, k_src, v_src, k_cache, v_cache, plan.kv_indptr,
                                       plan.kv_lens)
    return k_cache, v_cache, plan, model.dense_logits(prompt)[:, -1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--max-budget", type=int, default=24, help="prefix tokens a segment keeps, at most")
    parser.add_argument("--keep-all", action="store_true", help="no compression; check against a dense decode")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--num-qo-heads", type=int, default=8)
    parser.add_argument("--num-kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--eager", action="store_true", help="do not capture a CUDA graph")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    use_graph = device.type == "cuda" and not args.eager
    backend = "triton" if device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") \
        else "reference"
    model = ToyAttentionLM(args.vocab, args.num_qo_heads, args.num_kv_heads, args.head_dim, device)
    prompt = torch.randint(args.vocab, (args.batch, args.prompt_len), device=device)
    max_budget = args.prompt_len if args.keep_all else args.max_budget
    k_cache, v_cache, plan, first_logits = prefill(model, prompt, args.window, max_budget, args.steps)
    print(f"device={device.type} backend={backend} mode={'cuda-graph' if use_graph else 'eager'} "
          f"batch={args.batch} prompt={args.prompt_len} window={args.window} qo_heads={args.num_qo_heads} "
          f"kv_heads={args.num_kv_heads} head_dim={args.head_dim} steps={args.steps}")
    print(f"kept rows per segment after prefill: {plan.kv_lens.tolist()} (cache rows: {plan.total_slots})")

    chunk_size, max_chunks = plan_decode(plan.capacities)  # once: the step itself never reads a device value
    token = first_logits.argmax(-1)  # static buffers the step reads and writes in place
    q_step = torch.zeros(args.batch, args.num_qo_heads, args.head_dim, device=device)
    attn_step, logits_step = torch.zeros_like(q_step), torch.zeros_like(first_logits)

    def decode_step() -> None:
        q, k, v = model.qkv(token)
        torch.ops.raggedkv.append_kv(k.flatten(0, 1), v.flatten(0, 1), k_cache, v_cache, plan.kv_indptr,
                                     plan.kv_lens)
        attn = torch.ops.raggedkv.ragged_decode_attention(q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, None,
                                                          max_chunks, chunk_size)
        logits = model.logits(token, attn)
        q_step.copy_(q)
        attn_step.copy_(attn)
        logits_step.copy_(logits)
        token.copy_(logits.argmax(-1))

    step = decode_step
    if use_graph:
        step = _capture(decode_step, [plan.kv_lens, token])
    generated, logits_seen, max_diff = [token.clone()], [first_logits], 0.0
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
        expected = ragged_decode_attention_ref(q_step, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
        max_diff = max(max_diff, (attn_step - expected).abs().max().item())
        generated.append(token.clone())
        logits_seen.append(logits_step.clone())
    seconds = time.perf_counter() - start
    tokens = torch.stack(generated, dim=1)
    for b in range(args.batch):
        print(f"generated[{b}]: {tokens[b].tolist()}")
    tolerance = 1e-3 if device.type == "cuda" else 1e-5
    print(f"ops vs ragged_decode_attention_ref: max abs diff {max_diff:.2e} over {args.steps} steps "
          f"(tolerance {tolerance:.0e}); {args.steps * args.batch / seconds:.0f} tokens/s including the checks")
    ok = max_diff <= tolerance
    if args.keep_all:
        dense = model.dense_logits(torch.cat([prompt, tokens[:, :-1]], dim=1))[:, args.prompt_len - 1:]
        dense_diff = (torch.stack(logits_seen, dim=1) - dense).abs().max().item()
        print(f"dense check: max |decode logits - dense logits| {dense_diff:.2e} (tolerance {tolerance * 10:.0e})")
        ok &= dense_diff <= tolerance * 10
    print("OK" if ok else "MISMATCH")
    raise SystemExit(0 if ok else 1)


def _capture(step, mutated: list[torch.Tensor]):
    """Warm `step` up on a side stream (compiles the Triton kernels), undo its writes to `mutated`, capture it."""
    saved = [t.clone() for t in mutated]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    for t, value in zip(mutated, saved, strict=True):
        t.copy_(value)  # the warm-up's appended row lies past the restored length: overwritten by the first replay
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


if __name__ == "__main__":
    main()
