"""flash_attn_rocm.scaled_dot_product_attention: PyTorch's SDPA signature and layout, the
kernels where they apply, PyTorch's SDPA (with a warning saying why) where they do not."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import assert_within_eager_error, requires_gpu, skip_unless_served

import flash_attn_rocm
from flash_attn_rocm import patch_sdpa, scaled_dot_product_attention, sdpa_patched, unpatch_sdpa

TORCH_SDPA = F.scaled_dot_product_attention


def bhsd(batch=2, heads=4, seqlen=64, head_dim=64, dtype=torch.float16, device="cuda", grad=False):
    skip_unless_served(head_dim)
    return torch.randn(batch, heads, seqlen, head_dim, dtype=dtype, device=device, requires_grad=grad)


def math_sdpa(*args, upcast, **kwargs):
    """PyTorch's math backend: in float32 (the reference) or the input dtype (the yardstick)."""
    if upcast:
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    with sdpa_kernel(SDPBackend.MATH):
        return TORCH_SDPA(*args, **kwargs)


def check_against_math(query, key, value, **kwargs):
    out = scaled_dot_product_attention(query, key, value, **kwargs)
    assert out.shape == query.shape[:-1] + value.shape[-1:] and out.dtype == query.dtype
    ref, eager = math_sdpa(query, key, value, upcast=True, **kwargs), math_sdpa(query, key, value, upcast=False, **kwargs)
    assert_within_eager_error(out, ref, eager)
    return out


def test_falls_back_on_cpu_with_a_warning():
    q, k, v = (bhsd(device="cpu", dtype=torch.float32) for _ in range(3))
    flash_attn_rocm.sdpa._warned.clear()
    with pytest.warns(UserWarning, match="falling back.*CUDA"):
        out = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, TORCH_SDPA(q, k, v, is_causal=True))


def test_patch_and_unpatch_restore_torch():
    patch_sdpa()
    try:
        assert F.scaled_dot_product_attention is scaled_dot_product_attention
    finally:
        unpatch_sdpa()
    assert F.scaled_dot_product_attention is TORCH_SDPA
    with sdpa_patched():
        assert F.scaled_dot_product_attention is scaled_dot_product_attention
    assert F.scaled_dot_product_attention is TORCH_SDPA


@requires_gpu
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matches_torch_sdpa(dtype, is_causal):
    q, k, v = (bhsd(seqlen=333, dtype=dtype) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the kernels serve this: no fallback
        check_against_math(q, k, v, is_causal=is_causal, scale=0.1)


@requires_gpu
def test_gqa_and_cross_attention_lengths():
    q, k, v = bhsd(heads=8, seqlen=100), bhsd(heads=2, seqlen=257), bhsd(heads=2, seqlen=257)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_against_math(q, k, v, enable_gqa=True)


@requires_gpu
@pytest.mark.parametrize("shape", ["b11k", "bk"])
def test_key_padding_mask_runs_varlen(shape):
    q, k, v = bhsd(seqlen=90), bhsd(seqlen=130), bhsd(seqlen=130)
    keep = torch.rand(2, 130, device="cuda") > 0.3
    keep[:, 0] = True  # every query sees at least one key (PyTorch gives NaN rows otherwise)
    mask = keep[:, None, None, :] if shape == "b11k" else keep
    torch_mask = keep[:, None, None, :]
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref = math_sdpa(q, k, v, upcast=True, attn_mask=torch_mask)
    eager = math_sdpa(q, k, v, upcast=False, attn_mask=torch_mask)
    assert_within_eager_error(out, ref, eager)


@requires_gpu
def test_gradients_flow_like_torch():
    q, k, v = (bhsd(seqlen=200, grad=True) for _ in range(3))
    dout = torch.randn_like(q)
    grads = torch.autograd.grad(scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), dout)
    refs = torch.autograd.grad(math_sdpa(q, k, v, upcast=True, is_causal=True), (q, k, v), dout.float())
    eagers = torch.autograd.grad(math_sdpa(q, k, v, upcast=False, is_causal=True), (q, k, v), dout)
    for name, g, r, e in zip("qkv", grads, refs, eagers):
        assert_within_eager_error(g, r, e, f"d{name}", floor_magnitude=max(1.0, r.abs().max().item()))


@requires_gpu
@pytest.mark.parametrize("case, kwargs, reason", [
    ("float-mask", {"attn_mask": "float"}, "key-padding"),
    ("fp32", {"dtype": torch.float32}, "dtype"),
    ("negative-scale", {"scale": -0.125}, "scale"),
])
def test_falls_back_with_reason(case, kwargs, reason):
    dtype = kwargs.pop("dtype", torch.float16)
    q = bhsd(seqlen=64, dtype=dtype)
    k = v = bhsd(seqlen=kwargs.pop("seqlen_k", 64), dtype=dtype)
    if kwargs.get("attn_mask") == "float":
        kwargs["attn_mask"] = torch.randn(2, 4, 64, 64, device="cuda", dtype=dtype)
    flash_attn_rocm.sdpa._warned.clear()
    with pytest.warns(UserWarning, match=reason):
        out = scaled_dot_product_attention(q, k, v, **kwargs)
    assert out.shape == q.shape


@requires_gpu
def test_patched_module_runs_on_flash_attn_rocm():
    q, k, v = (bhsd(seqlen=128) for _ in range(3))
    expected = scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_patched():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(out, expected)
