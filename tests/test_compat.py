"""What flash-attn 2.8.3's own tests rely on beyond the signatures (issue 23): window_size as a
tensor, head dims that are not a multiple of 8, S_dmask in flash-attn's blockwise convention,
PyTorch's top-left is_causal on the kernels, opt-in metadata checks, and flash-attn's eager
apply_rotary_emb. The rules run on CPU or meta tensors; the GPU tests check the numbers."""

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import assert_within_eager_error, attention_ref, cu_seqlens, make_qkv, requires_gpu

import flash_attn_rocm
from flash_attn_rocm import (_dropout, _inputs, compiled_head_dims, flash_attn_func, flash_attn_kvpacked_func,
                             flash_attn_qkvpacked_func, flash_attn_varlen_func, flash_attn_varlen_kvpacked_func,
                             flash_attn_varlen_qkvpacked_func, flash_attn_with_kvcache, interface, kvcache,
                             metadata_checks, scaled_dot_product_attention, sdpa)
from flash_attn_rocm._masks import window_visible
from flash_attn_rocm.rotary import apply_rotary_emb


def assert_grads_within_eager_error(out, ref, eager, inputs):
    """dq, dk, dv of out against the fp32 reference's, within twice eager's error; returns them."""
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, dout)
    refs = torch.autograd.grad(ref, inputs, dout.float())
    eagers = torch.autograd.grad(eager, inputs, dout)
    for name, g, r, e in zip(("dq", "dk", "dv"), grads, refs, eagers):
        assert_within_eager_error(g, r, e, name, floor_magnitude=max(1.0, r.abs().max().item()))
    return grads


LARGEST = compiled_head_dims()[-1]
B, S, H, H_K = 2, 8, 4, 2


class OpSpy:
    """Stands in for torch.ops.flash_attn_rocm in a module: records each call's arguments and
    runs the real op (on meta tensors: its fake implementation)."""

    def __init__(self, ops):
        self.ops, self.calls = ops, []

    def __getattr__(self, name):
        op = getattr(self.ops, name)

        def call(*args):
            self.calls.append((name, args))
            return op(*args)

        return call


@pytest.fixture
def spy(monkeypatch):
    spy = OpSpy(interface.ops)
    monkeypatch.setattr(interface, "ops", spy)
    monkeypatch.setattr(kvcache, "ops", spy)
    return spy


def meta(*shape, dtype=torch.float16):
    return torch.zeros(*shape, dtype=dtype, device="meta")


def dense(head_dim=64):
    return meta(B, S, H, head_dim), meta(B, S, H_K, head_dim), meta(B, S, H_K, head_dim)


def tokens(head_dim=64):
    return meta(B * S, H, head_dim), meta(B * S, H_K, head_dim), meta(B * S, H_K, head_dim)


def meta_cu():
    return torch.zeros(B + 1, dtype=torch.int32, device="meta")


def every_entry_point(head_dim=64):
    """(name, call(**kwargs)) of each public function taking window_size, on meta tensors."""
    q, k, v = dense(head_dim)
    qt, kt, vt = tokens(head_dim)
    qkv, kv = meta(B, S, 3, H, head_dim), meta(B, S, 2, H, head_dim)
    qkv_t, kv_t = meta(B * S, 3, H, head_dim), meta(B * S, 2, H_K, head_dim)
    cu = meta_cu()
    return {
        "flash_attn_func": lambda **kw: flash_attn_func(q, k, v, **kw),
        "flash_attn_qkvpacked_func": lambda **kw: flash_attn_qkvpacked_func(qkv, **kw),
        "flash_attn_kvpacked_func": lambda **kw: flash_attn_kvpacked_func(q, meta(B, S, 2, H_K, head_dim), **kw),
        "flash_attn_varlen_func": lambda **kw: flash_attn_varlen_func(qt, kt, vt, cu, cu, S, S, **kw),
        "flash_attn_varlen_qkvpacked_func": lambda **kw: flash_attn_varlen_qkvpacked_func(qkv_t, cu, S, **kw),
        "flash_attn_varlen_kvpacked_func": lambda **kw: flash_attn_varlen_kvpacked_func(qt, kv_t, cu, cu, S, S, **kw),
        "flash_attn_with_kvcache": lambda **kw: flash_attn_with_kvcache(q, k, v, **kw),
    }


ENTRY_POINTS = list(every_entry_point())


# ---------------------------------------------------------------- 1. window_size as a tensor


@pytest.mark.parametrize("window_size", [torch.tensor([3, 5]), torch.tensor([3, 5], dtype=torch.int32),
                                         (torch.tensor(3), torch.tensor(5)), [3, 5], (3, 5)],
                         ids=["int64-tensor", "int32-tensor", "0d-tensors", "list", "tuple"])
def test_window_size_takes_what_flash_attn_takes(window_size):
    assert _inputs.resolve_window(window_size) == (3, 5)
    assert all(type(x) is int for x in _inputs.resolve_window(window_size))


@pytest.mark.parametrize("window_size, error", [
    (torch.tensor([3.0, 5.0]), TypeError), (torch.tensor([3, 5, 7]), TypeError), (torch.tensor([[3, 5]]), TypeError),
    (torch.tensor([True, False]), TypeError), (torch.tensor([-2, 0]), ValueError), ((torch.tensor(1.5), 0), TypeError),
])
def test_window_size_tensors_the_rules_refuse(window_size, error):
    with pytest.raises(error, match="window_size"):
        _inputs.resolve_window(window_size)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_every_entry_point_takes_a_window_tensor(name, spy):
    torch.manual_seed(0)
    window = torch.randint(0, S, (2,))
    every_entry_point()[name](window_size=window)
    (op, args), = spy.calls
    left, right = window.tolist()
    # The ops take (..., softmax_scale, is_causal, window_size_left, window_size_right, ...): find the pair.
    ints = [a for a in args if type(a) is int]
    assert [left, right] == (ints[-3:-1] if op == "fwd_kvcache" else ints[-2:]), (op, args)


# ---------------------------------------------------------------- 3. head dims not a multiple of 8


@pytest.mark.parametrize("head_dim", [4, 59, 111])
@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_odd_head_dims_reach_the_ops_padded_with_the_original_scale(name, head_dim, spy):
    if head_dim > LARGEST:
        pytest.skip("above this build's largest head dim")
    out = every_entry_point(head_dim)[name]()
    assert out.shape[-1] == head_dim
    (op, args), = spy.calls
    padded = -(-head_dim // 8) * 8
    assert args[0].shape[-1] == padded and args[1].shape[-1] == padded
    scales = [a for a in args if type(a) is float]
    assert scales[0] == pytest.approx(head_dim ** -0.5)


def test_odd_head_dim_gradients_come_back_at_the_original_size():
    q, k, v = (t.requires_grad_() for t in dense(59))
    out = flash_attn_func(q, k, v, causal=True)
    out.sum().backward()
    assert out.shape == q.shape and all(t.grad.shape == t.shape for t in (q, k, v))


def test_head_dims_above_the_build_are_still_refused():
    q, k, v = dense(LARGEST + 1)
    with pytest.raises(ValueError, match=rf"head dim of q must be positive and at most {LARGEST}"):
        flash_attn_func(q, k, v)


@requires_gpu
@pytest.mark.parametrize("head_dim", [59, 111])
@pytest.mark.parametrize("causal", [False, True])
def test_odd_head_dims_forward_and_backward(head_dim, causal):
    q, k, v = (t.requires_grad_() for t in make_qkv(batch=2, seqlen_q=97, seqlen_k=203, nheads=6, nheads_k=2,
                                                        head_dim=head_dim))
    out = flash_attn_func(q, k, v, causal=causal)
    ref, _ = attention_ref(q, k, v, causal)
    eager, _ = attention_ref(q, k, v, causal, upcast=False)
    assert out.shape == q.shape
    assert_within_eager_error(out, ref, eager)
    grads = assert_grads_within_eager_error(out, ref, eager, (q, k, v))
    assert all(g.shape[-1] == head_dim for g in grads)


@requires_gpu
def test_odd_head_dim_varlen_matches_dense():
    lengths = [5, 0, 77]
    q, k, v = (t[0] for t in make_qkv(batch=1, seqlen_q=sum(lengths), nheads=4, nheads_k=2, head_dim=59))
    cu = cu_seqlens(lengths)
    out = flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=True)
    assert out.shape == q.shape
    for b, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        if end > start:
            dense_out = flash_attn_func(q[None, start:end], k[None, start:end], v[None, start:end], causal=True)
            torch.testing.assert_close(out[start:end], dense_out[0], atol=2e-3, rtol=0)


@requires_gpu
def test_odd_head_dim_kvcache_appends_into_the_callers_cache():
    q, k_cache, v_cache = make_qkv(batch=2, seqlen_q=3, seqlen_k=64, nheads=4, nheads_k=2, head_dim=59)
    _, k_new, v_new = make_qkv(batch=2, seqlen_q=3, nheads=4, nheads_k=2, head_dim=59)
    seqlens = torch.tensor([10, 40], dtype=torch.int32, device="cuda")
    k_before, v_before = k_cache.clone(), v_cache.clone()
    out = flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens, causal=True)
    assert out.shape == q.shape
    for b, n in enumerate(seqlens.tolist()):
        assert torch.equal(k_cache[b, n:n + 3], k_new[b]) and torch.equal(v_cache[b, n:n + 3], v_new[b])
        assert torch.equal(k_cache[b, :n], k_before[b, :n]) and torch.equal(v_cache[b, n + 3:], v_before[b, n + 3:])
        keys = slice(0, n + 3)
        ref, _ = attention_ref(q[b:b + 1], k_cache[b:b + 1, keys], v_cache[b:b + 1, keys], causal=True)
        eager, _ = attention_ref(q[b:b + 1], k_cache[b:b + 1, keys], v_cache[b:b + 1, keys], causal=True,
                                 upcast=False)
        assert_within_eager_error(out[b:b + 1], ref, eager)


# ---------------------------------------------------------------- 2. S_dmask, flash-attn's convention

# flash-attn 2.8.3's key-block widths (flash_attn_interface._get_block_size_n), written out:
# (head_dim, is_dropout, is_causal) -> width on sm80/sm90 (and CPU), and on sm86/sm89 where it differs.
BLOCK_N = {(32, True, False): 128, (40, False, False): 128, (64, True, True): 64, (64, False, True): 128,
           (80, True, False): 64, (96, False, False): 64, (111, True, True): 32, (128, False, True): 64,
           (128, False, False): 64, (160, True, False): 64, (224, False, True): 64, (256, True, True): 64}


@pytest.mark.parametrize("key", BLOCK_N, ids=str)
def test_block_size_n_is_flash_attns(key):
    assert interface._get_block_size_n("cpu", *key) == BLOCK_N[key]


def test_block_size_n_narrows_sm86_blocks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    assert interface._get_block_size_n("cuda", 128, False, False) == 32
    assert interface._get_block_size_n("cuda", 128, False, True) == 64
    assert interface._get_block_size_n("cuda", 128, True, True) == 32


def normalize_blockwise(s_dmask, scores, block_n):
    """What flash-attn's test helper normalize_flash_attn_S does, written from its description:
    block j of |S_dmask| times exp(m_j - lse), m_j the max of the scores over blocks j and later."""
    blocks = scores.split(block_n, dim=-1)
    maxima = torch.stack([b.amax(-1) for b in blocks], -1).flip(-1).cummax(-1).values.flip(-1)
    lse = torch.logsumexp(scores, -1)
    lse = lse.masked_fill(lse.isneginf(), float("inf"))
    parts = s_dmask.abs().float().split(block_n, dim=-1)
    return torch.cat([p * torch.exp(maxima[..., j:j + 1] - lse[..., None]) for j, p in enumerate(parts)], -1)


@pytest.mark.parametrize("seqlen_q, seqlen_k", [(7, 300), (300, 7), (130, 129)])
@pytest.mark.parametrize("causal, window", [(False, (-1, -1)), (True, (-1, -1)), (False, (40, 3))])
@pytest.mark.parametrize("head_dim", [59, 64, 128])
def test_s_dmask_normalises_to_the_probabilities_with_the_dropout_sign(head_dim, causal, window, seqlen_q, seqlen_k):
    torch.manual_seed(1)
    q = torch.randn(2, seqlen_q, 4, head_dim) * 2
    k = torch.randn(2, seqlen_k, 2, head_dim) * 2
    rng_state = torch.tensor([1234, 8])
    slopes = torch.rand(4) * 0.3
    scale = head_dim ** -0.5
    dmask = _dropout.s_dmask(q, k, rng_state, 0.3, scale, causal, window, 0.0, slopes).float()
    scores = _dropout.masked_scores(q, k, scale, causal, window, 0.0, slopes)
    lse = torch.logsumexp(scores, -1)
    probs = _dropout.attention_probs(q, k, lse, scale, causal, window, 0.0, slopes)
    normalised = normalize_blockwise(dmask, scores, interface._get_block_size_n("cpu", head_dim, True, causal))
    torch.testing.assert_close(normalised, probs, atol=1e-6, rtol=1e-5)
    keep = _dropout.keep_mask(rng_state, 0.3, 2, 4, seqlen_q, seqlen_k)
    visible = probs > 0
    assert torch.equal((dmask > 0) & visible, keep & visible)
    assert (dmask.abs() <= 1).all()  # exp(s - running max) never exceeds 1
    assert not torch.allclose(dmask.abs(), probs)  # not the normalised probabilities any more


@requires_gpu
@pytest.mark.parametrize("head_dim", [59, 64, 128])
def test_s_dmask_of_the_kernels_call_normalises_to_its_probabilities(head_dim):
    q, k, v = make_qkv(batch=2, seqlen_q=177, seqlen_k=300, nheads=4, nheads_k=2, head_dim=head_dim)
    out, lse, dmask = flash_attn_func(q, k, v, 0.25, causal=True, return_attn_probs=True)
    scores = _dropout.masked_scores(q, k, head_dim ** -0.5, True, (-1, -1), 0.0, None)
    probs = normalize_blockwise(dmask, scores, interface._get_block_size_n(q.device, head_dim, True, True))
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=2e-2, rtol=0)
    v_rep = v.float().repeat_interleave(2, dim=2)
    expected = torch.einsum("bhqk,bkhd->bqhd", probs * (dmask >= 0) / 0.75, v_rep)
    torch.testing.assert_close(out.float(), expected, atol=5e-3, rtol=0)


# ---------------------------------------------------------------- 4. SDPA: top-left is_causal


@pytest.mark.parametrize("seqlen_q, seqlen_k", [(1, 1), (1, 9), (9, 1), (5, 12), (12, 5), (64, 64), (100, 257)])
def test_top_left_causal_as_the_kernels_masks(seqlen_q, seqlen_k):
    keys, causal, window = sdpa._top_left_causal(seqlen_q, seqlen_k)
    visible = window_visible(seqlen_q, keys, window, causal, "cpu")
    visible = torch.ones(seqlen_q, keys, dtype=torch.bool) if visible is None else visible
    expected = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool).tril()  # PyTorch's is_causal
    assert torch.equal(expected[:, keys:], torch.zeros_like(expected[:, keys:]))
    assert torch.equal(visible, expected[:, :keys])
    assert visible.any(-1).all()  # no empty row


def test_top_left_causal_no_longer_falls_back():
    q = torch.zeros(2, 4, 5, 64, dtype=torch.float16, device="meta")
    k = torch.zeros(2, 4, 12, 64, dtype=torch.float16, device="meta")
    # meta tensors fall back (the device rule); the lengths themselves are no reason any more
    assert sdpa._fallback_reason(q, k, k, None, 0.0, True, None, False) == "query must be a CUDA tensor, got device meta"


@requires_gpu
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(1, 50), (50, 1), (64, 100), (100, 64), (97, 333)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sdpa_top_left_causal_matches_pytorch_math(seqlen_q, seqlen_k, dtype):
    q = torch.randn(2, 4, seqlen_q, 64, dtype=dtype, device="cuda", requires_grad=True)
    k, v = (torch.randn(2, 4, seqlen_k, 64, dtype=dtype, device="cuda", requires_grad=True) for _ in range(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # served by the kernels: no fallback warning
        out = scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
        eager = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_within_eager_error(out, ref, eager)
    assert_grads_within_eager_error(out, ref, eager, (q, k, v))


# ---------------------------------------------------------------- 5. opt-in metadata checks


def cpu_int(*values):
    return torch.tensor(values, dtype=torch.int32)


BAD_METADATA = {
    "cu_seqlens-decreasing": (dict(cu_seqlens_q=cpu_int(0, 5, 3, 9), total_q=9, max_seqlen_q=9),
                              r"cu_seqlens_q must be non-decreasing, got cu_seqlens_q\[2\] = 3 < cu_seqlens_q\[1\] = 5"),
    "cu_seqlens-past-the-total": (dict(cu_seqlens_k=cpu_int(0, 5, 12), total_k=10, max_seqlen_k=9),
                                  r"cu_seqlens_k\[2\] = 12 is past the 10 rows"),
    "cu_seqlens-not-from-0": (dict(cu_seqlens_q=cpu_int(2, 5), total_q=9), r"cu_seqlens_q\[0\] must be 0, got 2"),
    "cu_seqlens-longer-than-max": (dict(cu_seqlens_q=cpu_int(0, 2, 9), total_q=9, max_seqlen_q=4),
                                   r"sequence 1 of cu_seqlens_q has 7 rows, more than its max_seqlen \(4\)"),
    "cache_seqlens-past-capacity": (dict(cache_seqlens=cpu_int(3, 60), seqlen_new=5, capacity=64),
                                    r"cache_seqlens\[1\] = 60 plus the 5 new rows is past the cache capacity of 64"),
    "cache_seqlens-negative": (dict(cache_seqlens=cpu_int(3, -1), capacity=64), r"cache_seqlens\[1\] = -1"),
    "cache_batch_idx-out-of-range": (dict(cache_batch_idx=cpu_int(0, 4), batch_cache=4),
                                     r"cache_batch_idx\[1\] = 4 is not a row of the cache: must be in \[0, 4\)"),
    "block_table-out-of-range": (dict(block_table=cpu_int(0, 1, 2, 3, 7, 9).reshape(2, 3), num_pages=8, page_size=16,
                                      cache_seqlens=cpu_int(40, 40), capacity=48),
                                 r"block_table\[1, 2\] = 9 is not a page of the cache: must be in \[0, 8\)"),
    "block_table-negative": (dict(block_table=cpu_int(0, -1).reshape(1, 2), num_pages=8),
                             r"block_table\[0, 1\] = -1"),
}


@pytest.mark.parametrize("kwargs, message", BAD_METADATA.values(), ids=BAD_METADATA.keys())
def test_metadata_checks_name_the_argument_and_the_first_bad_index(kwargs, message):
    _inputs.check_metadata(**kwargs)  # off by default: accepted without a look
    with metadata_checks():
        with pytest.raises(ValueError, match=message):
            _inputs.check_metadata(**kwargs)
    _inputs.check_metadata(**kwargs)  # off again after the block


def test_metadata_checks_accept_good_values_and_unused_pages():
    with metadata_checks():
        _inputs.check_metadata(cu_seqlens_q=cpu_int(0, 0, 5, 9), cu_seqlens_k=cpu_int(0, 3, 3, 3), total_q=9,
                               total_k=3, max_seqlen_q=5, max_seqlen_k=3)
        # vLLM-style tables pad unused entries with -1: sequence 0 uses 2 pages of 16 (17 + 3 rows)
        _inputs.check_metadata(block_table=cpu_int(0, 5, -1, 1, -1, -1).reshape(2, 3), num_pages=8, page_size=16,
                               cache_seqlens=cpu_int(17, 0), seqlen_new=3, capacity=48)
        _inputs.check_metadata(block_table=cpu_int(0, 5, -1, 1, -1, -1).reshape(2, 3), num_pages=8, page_size=16,
                               cu_seqlens_k=cpu_int(0, 20, 36))
        _inputs.check_metadata(cu_seqlens_q=meta_cu())  # meta tensors have no values: skipped


def test_set_metadata_checks_returns_the_previous_setting():
    previous = flash_attn_rocm.set_metadata_checks(True)
    try:
        assert flash_attn_rocm.metadata_checks_enabled()
        assert flash_attn_rocm.set_metadata_checks(False) is True
        assert not flash_attn_rocm.metadata_checks_enabled()
    finally:
        flash_attn_rocm.set_metadata_checks(previous)


@pytest.mark.parametrize("value, enabled", [("1", True), ("0", False), ("", False)])
def test_the_environment_variable_turns_the_checks_on(value, enabled):
    env = dict(os.environ, FLASH_ATTN_ROCM_CHECK_METADATA=value)
    result = subprocess.run([sys.executable, "-c", "import flash_attn_rocm as f; print(f.metadata_checks_enabled())"],
                            env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(enabled)


def varlen_cpu_call(cu_k):
    q, k, v = (torch.zeros(9, H, 64, dtype=torch.float16) for _ in range(3))
    return lambda: flash_attn_varlen_func(q, k, v, cpu_int(0, 4, 9), cu_k, 5, 9)


def kvcache_cpu_call(block_table=None, cache_seqlens=None, k_new=None):
    q = torch.zeros(2, 1, H, 64, dtype=torch.float16)
    pages = torch.zeros(8, 16, H_K, 64, dtype=torch.float16)
    new = None if k_new is None else torch.zeros(2, k_new, H_K, 64, dtype=torch.float16)
    return lambda: flash_attn_with_kvcache(q, pages, pages, new, new, cache_seqlens=cache_seqlens,
                                           block_table=block_table)


@pytest.mark.parametrize("call, message", [
    (varlen_cpu_call(cpu_int(0, 6, 5)), r"cu_seqlens_k must be non-decreasing.*cu_seqlens_k\[2\]"),
    (varlen_cpu_call(cpu_int(0, 4, 10)), r"cu_seqlens_k\[2\] = 10 is past the 9 rows"),
    (kvcache_cpu_call(block_table=cpu_int(0, 1, 2, 8).reshape(2, 2), cache_seqlens=cpu_int(30, 30)),
     r"block_table\[1, 1\] = 8 is not a page"),
    (kvcache_cpu_call(block_table=cpu_int(0, 1, 2, 3).reshape(2, 2), cache_seqlens=cpu_int(30, 31), k_new=2),
     r"cache_seqlens\[1\] = 31 plus the 2 new rows is past the cache capacity of 32"),
], ids=["varlen-decreasing", "varlen-past-total", "kvcache-block-table", "kvcache-capacity"])
def test_the_public_functions_run_the_checks_before_the_device_rule(call, message):
    """CPU tensors fail the CUDA rule; with the checks on, the bad value is named first."""
    with pytest.raises(ValueError, match="CUDA"):
        call()
    with metadata_checks(), pytest.raises(ValueError, match=message):
        call()


@requires_gpu
def test_metadata_checks_on_the_gpu_both_ways():
    q, k, v = (t[0] for t in make_qkv(batch=1, seqlen_q=9, nheads=H, head_dim=64))
    bad = torch.tensor([0, 6, 5], dtype=torch.int32, device="cuda")
    good = torch.tensor([0, 4, 9], dtype=torch.int32, device="cuda")
    flash_attn_varlen_func(q, k, v, good, bad, 5, 9)  # off: runs (wrong rows, no error, no sync)
    with metadata_checks():
        flash_attn_varlen_func(q, k, v, good, good, 5, 9)
        with pytest.raises(ValueError, match=r"cu_seqlens_k\[2\]"):
            flash_attn_varlen_func(q, k, v, good, bad, 5, 9)
    q1 = torch.randn(2, 1, H, 64, dtype=torch.float16, device="cuda")
    pages = torch.randn(8, 16, H_K, 64, dtype=torch.float16, device="cuda")
    table = torch.tensor([[0, 1], [2, 8]], dtype=torch.int32, device="cuda")
    seqlens = torch.tensor([30, 30], dtype=torch.int32, device="cuda")
    flash_attn_with_kvcache(q1, pages, pages, cache_seqlens=seqlens, block_table=table)
    with metadata_checks(), pytest.raises(ValueError, match=r"block_table\[1, 1\] = 8"):
        flash_attn_with_kvcache(q1, pages, pages, cache_seqlens=seqlens, block_table=table)


@requires_gpu
def test_metadata_checks_refuse_cuda_graph_capture_clearly():
    q, k, v = (t[0] for t in make_qkv(batch=1, seqlen_q=9, nheads=H, head_dim=64))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32, device="cuda")
    flash_attn_varlen_func(q, k, v, cu, cu, 5, 9)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with metadata_checks(), pytest.raises(RuntimeError, match="CUDA graph"):
        with torch.cuda.graph(graph):
            flash_attn_varlen_func(q, k, v, cu, cu, 5, 9)


# ---------------------------------------------------------------- 6. apply_rotary_emb (flash_attn.layers.rotary)


def rotary_reference(x, cos, sin, positions, interleaved):
    """The textbook rotation, pair by pair: positions [b, s] (int)."""
    out = x.double().clone()
    half = cos.shape[1]
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            p = positions[b][t]
            if p >= cos.shape[0]:
                continue
            for j in range(half):
                i0, i1 = (2 * j, 2 * j + 1) if interleaved else (j, j + half)
                c, s = cos[p, j].double(), sin[p, j].double()
                x0, x1 = x[b, t, :, i0].double(), x[b, t, :, i1].double()
                out[b, t, :, i0], out[b, t, :, i1] = x0 * c - x1 * s, x0 * s + x1 * c
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("offsets", [0, 3, "tensor"])
def test_apply_rotary_emb_rotates_pairs_at_their_positions(interleaved, offsets):
    x = torch.randn(2, 5, 3, 24)
    angle = torch.rand(9, 8) * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    seqlen_offsets = torch.tensor([0, 6]) if offsets == "tensor" else offsets
    starts = [0, 6] if offsets == "tensor" else [offsets] * 2
    positions = [[start + t for t in range(5)] for start in starts]  # 6 + 4 = 10 >= 9: unrotated
    out = apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=seqlen_offsets)
    torch.testing.assert_close(out.double(), rotary_reference(x, cos, sin, positions, interleaved))
    assert torch.equal(out[..., 16:], x[..., 16:])


def test_apply_rotary_emb_varlen_is_dense_per_sequence_and_inplace_and_differentiable():
    x = torch.randn(2, 6, 3, 32, requires_grad=True)
    angle = torch.rand(16, 16)
    cos, sin = angle.cos(), angle.sin()
    offsets = torch.tensor([2, 5])
    dense_out = apply_rotary_emb(x, cos, sin, seqlen_offsets=offsets)
    lengths = [4, 6]
    packed = torch.cat([x[0, :4], x[1, :6]])
    varlen_out = apply_rotary_emb(packed, cos, sin, seqlen_offsets=offsets, cu_seqlens=cu_seqlens(lengths, "cpu"),
                                  max_seqlen=6)
    torch.testing.assert_close(varlen_out, torch.cat([dense_out[0, :4], dense_out[1, :6]]))
    dense_out.square().sum().backward()  # a rotation keeps norms: d/dx |R x|^2 = 2x
    torch.testing.assert_close(x.grad, 2 * x.detach())
    y = x.detach().clone()
    assert apply_rotary_emb(y, cos, sin, inplace=True, seqlen_offsets=offsets) is y
    torch.testing.assert_close(y, dense_out.detach())
