"""torch.library registration: opcheck on every op, torch.compile(fullgraph=True) through them, registration on
`import raggedkv.kernels`, and the same argument rules (int64 metadata included) on the Triton and the CPU path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from raggedkv.kernels import append_kv, ops, reference, select_and_pack
from tests.utils import TOLERANCE, assert_close, random_lengths_plan, sentinel_cache

HEAD_DIM = 16
NUM_KV_HEADS = 2
GROUP = 2


def _decode_case(device: torch.device):
    lens = [5, 0, 17, 3]  # batch 2 x 2 KV heads
    plan = random_lengths_plan(lens, headroom=2, device=device)
    k_cache = torch.randn(plan.total_slots, HEAD_DIM, device=device)
    v_cache = torch.randn(plan.total_slots, HEAD_DIM, device=device)
    q = torch.randn(2, NUM_KV_HEADS * GROUP, HEAD_DIM, device=device)
    return q, k_cache, v_cache, plan


def _pack_case(device: torch.device):
    n, w = 12, 3
    q_win = torch.randn(NUM_KV_HEADS * GROUP, w, HEAD_DIM, device=device)
    k = torch.randn(NUM_KV_HEADS, n, HEAD_DIM, device=device)
    v = torch.randn(NUM_KV_HEADS, n, HEAD_DIM, device=device)
    budgets = torch.tensor([4, 1], dtype=torch.int32, device=device)
    plan = random_lengths_plan([0, 0], headroom=n, device=device)
    k_cache = sentinel_cache(plan.total_slots, HEAD_DIM, torch.float32, device)
    v_cache = sentinel_cache(plan.total_slots, HEAD_DIM, torch.float32, device)
    return q_win, k, v, budgets, k_cache, v_cache, plan


def test_window_scores_opcheck(device):
    q_win, k, *_ = _pack_case(device)
    torch.library.opcheck(ops.window_scores_op, (q_win, k, "sum", "max", "avg", 3, None, None))


def test_select_and_pack_opcheck(device):
    q_win, k, v, budgets, k_cache, v_cache, plan = _pack_case(device)
    scores = torch.randn(NUM_KV_HEADS, k.shape[1] - q_win.shape[1], device=device)
    torch.library.opcheck(
        ops.select_and_pack_op, (scores, budgets, k, v, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, 0)
    )


def test_append_kv_opcheck(device):
    q, k_cache, v_cache, plan = _decode_case(device)
    k_new = torch.randn(plan.kv_lens.numel(), HEAD_DIM, device=device)
    v_new = torch.randn_like(k_new)
    torch.library.opcheck(ops.append_kv_op, (k_new, v_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens))


def test_ragged_decode_attention_opcheck(device):
    q, k_cache, v_cache, plan = _decode_case(device)
    torch.library.opcheck(
        ops.ragged_decode_attention_op, (q, k_cache, v_cache, plan.kv_indptr, plan.kv_lens, None, None, None)
    )


OP_NAMES = ("window_scores", "select_and_pack", "append_kv", "ragged_decode_attention")


def test_ops_are_registered_under_raggedkv_namespace():
    for name in OP_NAMES:
        assert hasattr(torch.ops.raggedkv, name), name


def test_importing_kernels_registers_the_ops():
    """A fresh interpreter that imports only `raggedkv.kernels` (not `raggedkv.kernels.ops`) sees every op."""
    code = (
        "import torch, raggedkv.kernels\n"
        f"missing = [n for n in {OP_NAMES!r} if not hasattr(torch.ops.raggedkv, n)]\n"
        "print('missing:', missing)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "missing: []", result.stdout


@pytest.fixture
def cpu_path(monkeypatch):
    """Makes the ops take their pure-torch path (as on a CPU without the Triton interpreter)."""
    monkeypatch.setattr(ops, "_use_triton", lambda t: False)


def _append_args(device, index_dtype=torch.int32):
    q, k_cache, v_cache, plan = _decode_case(device)
    k_new = torch.randn(plan.kv_lens.numel(), HEAD_DIM, device=device)
    return dict(k_new=k_new, v_new=torch.randn_like(k_new), k_cache=k_cache, v_cache=v_cache,
                kv_indptr=plan.kv_indptr.to(index_dtype), kv_lens=plan.kv_lens.to(index_dtype))


def _pack_args(device, index_dtype=torch.int32):
    q_win, k, v, budgets, k_cache, v_cache, plan = _pack_case(device)
    scores = torch.randn(NUM_KV_HEADS, k.shape[1] - q_win.shape[1], device=device)
    return dict(scores=scores, budgets=budgets, k_src=k, v_src=v, k_cache=k_cache, v_cache=v_cache,
                kv_indptr=plan.kv_indptr.to(index_dtype), kv_lens=plan.kv_lens.to(index_dtype), first_segment=0)


BAD_APPEND = [
    ("k_new", lambda a: a.update(k_new=a["k_new"][:-1])),
    ("k_new", lambda a: a.update(k_new=a["k_new"].to(torch.int32))),
    ("v_new", lambda a: a.update(v_new=a["v_new"][:, :8])),
    ("v_cache", lambda a: a.update(v_cache=a["v_cache"].double())),
    ("kv_indptr", lambda a: a.update(kv_indptr=a["kv_indptr"][1:])),
    ("kv_lens", lambda a: a.update(kv_lens=a["kv_lens"].to(torch.int16))),
]
BAD_PACK = [
    ("scores", lambda a: a.update(scores=a["scores"].to(torch.int32))),
    ("budgets", lambda a: a.update(budgets=a["budgets"] + 100)),
    ("k_src", lambda a: a.update(k_src=a["k_src"][:, :4])),
    ("kv_indptr", lambda a: a.update(kv_indptr=a["kv_indptr"][:-1])),
    ("kv_lens", lambda a: a.update(kv_lens=a["kv_lens"].float())),
    ("first_segment", lambda a: a.update(first_segment=1)),
]


@pytest.mark.parametrize(
    "launcher,op,make_args,name,mutate",
    [(append_kv, "append_kv", _append_args, *bad) for bad in BAD_APPEND]
    + [(select_and_pack, "select_and_pack", _pack_args, *bad) for bad in BAD_PACK],
    ids=[f"append_kv-{name}-{i}" for i, (name, _) in enumerate(BAD_APPEND)]
    + [f"select_and_pack-{name}-{i}" for i, (name, _) in enumerate(BAD_PACK)],
)
def test_cpu_path_refuses_what_the_launcher_refuses(device, cpu_path, launcher, op, make_args, name, mutate):
    args = make_args(device)
    mutate(args)
    with pytest.raises((TypeError, ValueError), match=name) as by_launcher:
        launcher(**args)
    with pytest.raises(by_launcher.type) as by_op:
        getattr(torch.ops.raggedkv, op)(**args)
    assert str(by_op.value) == str(by_launcher.value)


def test_int64_metadata_gives_the_same_cache_on_both_paths(device, monkeypatch):
    """Pack then append with int64 `kv_indptr`/`kv_lens` through the ops, once on the Triton path and once on the
    CPU path: identical caches and lengths, equal to the int32 run."""
    runs = {}
    for path, index_dtype in (("triton", torch.int64), ("cpu", torch.int64), ("triton", torch.int32)):
        monkeypatch.setattr(ops, "_use_triton", lambda t, path=path: path == "triton")
        torch.manual_seed(0)
        pack = _pack_args(device, index_dtype)
        torch.ops.raggedkv.select_and_pack(**pack)
        append = dict(pack, k_new=torch.randn(NUM_KV_HEADS, HEAD_DIM, device=device))
        append["v_new"] = -append["k_new"]
        torch.ops.raggedkv.append_kv(**{n: append[n] for n in ("k_new", "v_new", "k_cache", "v_cache", "kv_indptr",
                                                                  "kv_lens")})
        assert pack["kv_lens"].dtype == index_dtype
        runs[path, index_dtype] = (pack["k_cache"], pack["v_cache"], pack["kv_lens"].to(torch.int64))
    expected = runs["triton", torch.int32]
    for key, got in runs.items():
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b), key


def test_compiled_decode_step_matches_reference(device):
    """Append + decode through the ops under torch.compile(fullgraph=True) equals the reference step."""
    q, k_cache, v_cache, plan = _decode_case(device)
    k_new = torch.randn(plan.kv_lens.numel(), HEAD_DIM, device=device)
    v_new = torch.randn_like(k_new)
    expected_k, expected_v, expected_lens = k_cache.clone(), v_cache.clone(), plan.kv_lens.clone()
    reference.append_kv_ref(k_new, v_new, expected_k, expected_v, plan.kv_indptr, expected_lens)
    expected = reference.ragged_decode_attention_ref(q, expected_k, expected_v, plan.kv_indptr, expected_lens)

    def step(q, k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens):
        torch.ops.raggedkv.append_kv(k_new, v_new, k_cache, v_cache, kv_indptr, kv_lens)
        return torch.ops.raggedkv.ragged_decode_attention(q, k_cache, v_cache, kv_indptr, kv_lens)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(q, k_new, v_new, k_cache, v_cache, plan.kv_indptr, plan.kv_lens)
    assert torch.equal(plan.kv_lens, expected_lens)
    assert_close(k_cache, expected_k, 0.0, "k_cache")
    assert_close(out, expected, TOLERANCE[torch.float32])


@pytest.mark.parametrize("window_reduce", ["sum", "mean"])
def test_compiled_window_scores_matches_reference(device, window_reduce):
    q_win, k, *_ = _pack_case(device)
    compiled = torch.compile(
        lambda q, k: torch.ops.raggedkv.window_scores(q, k, window_reduce, "mean", "max", 3), fullgraph=True,
        backend="aot_eager",
    )
    expected = reference.window_scores_ref(q_win.double(), k.double(), window_reduce=window_reduce, pool_size=3)
    assert_close(compiled(q_win, k), expected, TOLERANCE[torch.float32])
