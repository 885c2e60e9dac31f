"""flash_attn_rocm._inputs, the input rules that every entry point shares, without a GPU: the head
dims come from the build, and one broken rule gives the same answer at every call site -- an
error naming the argument from flash_attn_func, flash_attn_varlen_func and
flash_attn_with_kvcache, a fallback with that message as the reason from the SDPA drop-in and the
transformers integration. Fake CUDA tensors (FakeTensorMode) stand in for the GPU."""

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import COMPILED_HEAD_DIMS, HEAD_DIMS, ROUNDED_HEAD_DIMS

from flash_attn_rocm import (_inputs, compiled_head_dims, flash_attn_func, flash_attn_varlen_func,
                             flash_attn_with_kvcache, sdpa)

LARGEST = compiled_head_dims()[-1]
B, S, H, H_K, D = 2, 8, 4, 2, 64


# ---------------------------------------------------------------- head dims


def test_head_dims_are_the_builds():
    dims = compiled_head_dims()
    assert _inputs.COMPILED_HEAD_DIMS == tuple(dims) == COMPILED_HEAD_DIMS
    assert dims == sorted(dims) and all(d > 0 and d % 8 == 0 for d in dims)


def test_every_multiple_of_8_up_to_the_largest_runs_on_the_next_compiled_one():
    for head_dim in range(8, LARGEST + 1, 8):
        _inputs.check_head_dim(head_dim)
        assert _inputs.kernel_head_dim(head_dim) == min(d for d in compiled_head_dims() if d >= head_dim)
    assert _inputs.kernel_head_dim(LARGEST + 8) is None


@pytest.mark.parametrize("head_dim", [0, -8, LARGEST + 1, LARGEST + 8, 4096])
def test_head_dims_the_build_cannot_run(head_dim):
    with pytest.raises(ValueError, match=rf"head dim of q must be positive and at most {LARGEST} "
                                         rf"\(the largest of this build's \[.*\]\), got {head_dim}$"):
        _inputs.check_head_dim(head_dim)


@pytest.mark.parametrize("head_dim", [1, 4, 36, 59, 111, LARGEST - 1])
def test_head_dims_not_a_multiple_of_8_are_padded_to_one(head_dim):
    _inputs.check_head_dim(head_dim)
    q = torch.randn(2, 3, 4, head_dim)
    (padded,) = _inputs.pad_head_dim(q)
    assert padded.shape[-1] == _inputs.padded_head_dim(head_dim) == -(-head_dim // 8) * 8
    assert torch.equal(padded[..., :head_dim], q) and not padded[..., head_dim:].any()
    assert _inputs.pad_head_dim(padded)[0] is padded  # a multiple of 8: no copy


def test_the_suite_runs_every_compiled_head_dim_and_some_that_round_up():
    """conftest.HEAD_DIMS, the head dims of the accuracy tests, follows the build: every compiled
    head dim runs, and so do the rounding probes (not compiled) that a larger head dim serves."""
    running = {p.values[0] for p in HEAD_DIMS if not p.marks}
    assert set(compiled_head_dims()) <= running
    assert not set(ROUNDED_HEAD_DIMS) & set(compiled_head_dims())
    assert {d for d in ROUNDED_HEAD_DIMS if d <= LARGEST} <= running


# ---------------------------------------------------------------- one rule, every call site


def fallback_reason_of(caller, q, k, v, scale):
    """The reason the drop-in `caller` gives for running PyTorch on q, k, v [b, s, h, d], or None."""
    if caller == "sdpa":
        query, key, value = (t.transpose(1, 2) for t in (q, k, v))  # SDPA's [b, h, s, d]
        return sdpa._fallback_reason(query, key, value, None, 0.0, False, scale, enable_gqa=True)
    pytest.importorskip("transformers")
    import flash_attn_rocm.integrations.transformers as hf

    opts = hf._Options(scale=q.shape[-1] ** -0.5 if scale is None else scale, causal=True, window=(-1, -1),
                       softcap=0.0, dropout=0.0, deterministic=False)
    return hf._fallback_reason(q, k, v, None, opts)


def qkv(q_heads=H, kv_heads=H_K, head_dim=D, v_head_dim=None, dtype=torch.float16, kv_dtype=None, device="cuda"):
    """q [b, s, h, d], k, v [b, s, h_k, d]."""
    kv_dtype = dtype if kv_dtype is None else kv_dtype
    return (torch.zeros(B, S, q_heads, head_dim, dtype=dtype, device=device),
            torch.zeros(B, S, kv_heads, head_dim, dtype=kv_dtype, device=device),
            torch.zeros(B, S, kv_heads, v_head_dim or head_dim, dtype=kv_dtype, device=device))


def strided_q():
    q, k, v = qkv(head_dim=2 * D)
    return q[..., ::2], k[..., :D], v[..., :D]


# name: (q, k, v and scale; the message, {q}, {k}, {v} and {scale} standing for the caller's names)
BROKEN_RULES = {
    "fp32": (lambda: (*qkv(dtype=torch.float32), None), r"{q} must have dtype float16 or bfloat16"),
    "kv-bf16-q-fp16": (lambda: (*qkv(kv_dtype=torch.bfloat16), None),
                       r"{k} has dtype torch.bfloat16 but {q} has torch.float16"),
    "head-dim-just-above-the-build": (lambda: (*qkv(head_dim=LARGEST + 1), None),
                                      rf"head dim of {{q}} must be positive and at most {LARGEST}"),
    "head-dim-above-the-build": (lambda: (*qkv(head_dim=LARGEST + 8), None), rf"head dim of {{q}} .* at most {LARGEST}"),
    "v-head-dim-differs": (lambda: (*qkv(v_head_dim=32), None), r"{v} has head dim 32 but {q} has 64"),
    "nheads-not-divisible": (lambda: (*qkv(q_heads=3), None),
                             r"nheads of {q} \(3\) must be divisible by nheads of {k} and {v} \(2\)"),
    "no-kv-heads": (lambda: (*qkv(kv_heads=0), None), r"nheads of {q} \(4\) must be divisible"),
    "q-last-dim-strided": (lambda: (*strided_q(), None), r"{q} must be contiguous in its last dimension"),
    "scale-negative": (lambda: (*qkv(), -0.5), r"{scale} must be finite and >= 0, got -0.5"),
    "scale-nan": (lambda: (*qkv(), float("nan")), r"{scale} must be finite and >= 0, got nan"),
    "scale-inf": (lambda: (*qkv(), float("inf")), r"{scale} must be finite and >= 0, got inf"),
}
API_NAMES = dict(q=r"\bq", k=r"\bk", v=r"\bv", scale="softmax_scale")
SDPA_NAMES = dict(q="query", k="key", v="value", scale=r"\bscale")
TRANSFORMERS_NAMES = dict(q="query", k="key", v="value", scale="scaling")


@pytest.mark.parametrize("case", BROKEN_RULES.values(), ids=BROKEN_RULES.keys())
def test_the_api_raises_where_the_sdpa_drop_in_falls_back(case):
    make, message = case
    with FakeTensorMode():
        q, k, v, scale = make()
        with pytest.raises((TypeError, ValueError), match=message.format(**API_NAMES)):
            flash_attn_func(q, k, v, softmax_scale=scale)
        reason = fallback_reason_of("sdpa", q, k, v, scale)
    assert reason is not None and re.search(message.format(**SDPA_NAMES), reason), reason


@pytest.mark.parametrize("case", BROKEN_RULES.values(), ids=BROKEN_RULES.keys())
def test_the_transformers_integration_falls_back_on_the_same_rules(case):
    make, message = case
    with FakeTensorMode():
        q, k, v, scale = make()
        reason = fallback_reason_of("transformers", q, k, v, scale)
    assert reason is not None and re.search(message.format(**TRANSFORMERS_NAMES), reason), reason


@pytest.mark.parametrize("head_dim", range(8, LARGEST + 1, 8))
def test_every_head_dim_the_build_runs_is_served_everywhere(head_dim):
    with FakeTensorMode():
        q, k, v = qkv(head_dim=head_dim)
        assert flash_attn_func(q, k, v, causal=True).shape == q.shape
        assert fallback_reason_of("sdpa", q, k, v, None) is None
        packed = (t.reshape(B * S, *t.shape[2:]) for t in (q, k, v))
        cu_seqlens = torch.arange(0, (B + 1) * S, S, dtype=torch.int32, device="cuda")
        assert flash_attn_varlen_func(*packed, cu_seqlens, cu_seqlens, S, S).shape == (B * S, H, head_dim)
        assert flash_attn_with_kvcache(q, k, v, causal=True).shape == q.shape


@pytest.mark.parametrize("head_dim", [LARGEST + 1, LARGEST + 8])
def test_the_kvcache_and_varlen_functions_refuse_the_same_head_dims(head_dim):
    q, k, v = qkv(head_dim=head_dim, device="cpu")
    message = rf"head dim of q must be positive and at most {LARGEST}"
    with pytest.raises(ValueError, match=message):
        flash_attn_with_kvcache(q, k, v)
    cu_seqlens = torch.arange(0, (B + 1) * S, S, dtype=torch.int32)
    with pytest.raises(ValueError, match=message):
        flash_attn_varlen_func(*(t.reshape(B * S, *t.shape[2:]) for t in (q, k, v)), cu_seqlens, cu_seqlens, S, S)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_the_drop_ins_leave_non_cuda_tensors_to_pytorch(device):
    """flash_attn_func takes meta tensors (shapes traced without a GPU); the drop-ins let PyTorch
    run them, and say so first, before any other broken rule."""
    q, k, v = qkv(dtype=torch.float32, device=device)
    assert sdpa._fallback_reason(*(t.transpose(1, 2) for t in (q, k, v)), None, 0.0, False, None, True) == \
        f"query must be a CUDA tensor, got device {device}"


def test_fallback_reason_turns_only_rule_errors_into_reasons():
    assert _inputs.fallback_reason(lambda: None) is None
    assert _inputs.fallback_reason(lambda: _inputs.check_head_dim(LARGEST + 1, "query")).startswith("head dim of query")

    def broken():
        raise RuntimeError("a bug, not a rule")

    with pytest.raises(RuntimeError):
        _inputs.fallback_reason(broken)
