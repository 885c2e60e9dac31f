"""The Hopper (sm_90a, wgmma) backward against the float32 reference and against the portable
backward on the same inputs. The rest of the suite runs it too wherever it applies (head dims that
round to 64, 128 or 256, softcap, ALiBi and dropout included); here the two paths meet. Head dim
256 (and 200, which rounds to it) runs the column-halves variant: two blocks a key block, dQ
computed transposed."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import (CAUSAL, DTYPES, EXTRAS, assert_within_eager_error, attention_ref, both_paths, cu_seqlens,
                      extras_kwargs, hopper, make_qkv, poison_allocator_cache, requires_gpu, requires_hopper)

from flash_attn_rocm import flash_attn_func, flash_attn_varlen_func
from flash_attn_rocm._dropout import keep_mask
from flash_attn_rocm._ops import kernel_family, ops

pytestmark = [requires_gpu, requires_hopper]

SEQLENS = [(1, 1), (1, 17), (17, 1), (113, 203), (128, 128), (129, 257), (1000, 1000), (2048, 113), (300, 2100)]


def grads_of(attention, q, k, v, dout):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out = attention(q, k, v)
    poison_allocator_cache(*[(t.shape, dtype) for t in (q, k, v) for dtype in (t.dtype, torch.float32)])
    return torch.autograd.grad(out, (q, k, v), dout)


def reference_grads(q, k, v, dout, upcast=True, **kwargs):
    if upcast:
        q, k, v, dout = (t.float() for t in (q, k, v, dout))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, _ = attention_ref(q, k, v, upcast=upcast, **kwargs)
    return torch.autograd.grad(out, (q, k, v), dout)


def assert_grads_within_criterion(grads, q, k, v, dout, **ref_kwargs):
    """dq, dk, dv finite and within flash-attn's criterion of the float32 reference; returns the
    float32 and the eager (input dtype) reference gradients."""
    refs = reference_grads(q, k, v, dout, **ref_kwargs)
    eagers = reference_grads(q, k, v, dout, upcast=False, **ref_kwargs)
    for name, g, ref, eager in zip(("dq", "dk", "dv"), grads, refs, eagers):
        assert g.isfinite().all(), name
        assert_within_eager_error(g, ref, eager, name, floor_magnitude=max(1.0, ref.abs().max().item()))
    return refs, eagers


def check_both_paths(q, k, v, attention, **ref_kwargs):
    """Gradients of both paths within flash-attn's criterion of the float32 reference, and of
    each other."""
    dout = torch.randn_like(q)
    fast, portable = both_paths(lambda: grads_of(attention, q, k, v, dout))
    refs, eagers = assert_grads_within_criterion(fast, q, k, v, dout, **ref_kwargs)
    for name, g, g_portable, ref, eager in zip(("dq", "dk", "dv"), fast, portable, refs, eagers):
        assert_within_eager_error(g, g_portable.float(), eager, name + " vs portable",
                                  floor_magnitude=max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(113, 203), (1000, 1000), (300, 2100)])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hopper_backward_extras_match_reference_and_portable(dtype, head_dim, causal, seqlen_q, seqlen_k, extras):
    """Softcap, ALiBi and dropout in the Hopper backward: gradients against the reference with the
    forward's mask (rebuilt from its rng_state) and against the portable backward."""
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=2, head_dim=head_dim,
                       dtype=dtype)
    kwargs = extras_kwargs(extras, batch=2, nheads=4)
    assert kernel_family(head_dim, dtype, backward=True, **kwargs) == f"sm90:hdim{head_dim}"
    torch.manual_seed(5)
    state = torch.cuda.get_rng_state()
    _, _, rng_state = ops.fwd(q, k, v, head_dim ** -0.5, causal, -1, -1, kwargs["softcap"], kwargs.get("alibi_slopes"),
                              kwargs["dropout_p"])
    ref_kwargs = dict(causal=causal, softcap=kwargs["softcap"], alibi_slopes=kwargs.get("alibi_slopes"))
    if kwargs["dropout_p"] > 0:
        ref_kwargs.update(dropout_p=kwargs["dropout_p"],
                          dropout_mask=keep_mask(rng_state, kwargs["dropout_p"], 2, 4, seqlen_q, seqlen_k))

    def attention(q, k, v):  # every call draws the (seed, offset) the mask above was built from
        torch.cuda.set_rng_state(state)
        return flash_attn_func(q, k, v, causal=causal, **kwargs)

    check_both_paths(q, k, v, attention, **ref_kwargs)


@pytest.mark.parametrize("seqlen_q, seqlen_k", SEQLENS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [40, 64, 96, 128, 200, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hopper_backward_matches_reference_and_portable(dtype, head_dim, causal, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=6, nheads_k=3, head_dim=head_dim,
                       dtype=dtype)
    check_both_paths(q, k, v, lambda q, k, v: flash_attn_func(q, k, v, causal=causal), causal=causal)


@pytest.mark.parametrize("window_size", [(64, 0), (100, 30), (0, 0), (-1, 5)])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_hopper_backward_windows(head_dim, window_size):
    q, k, v = make_qkv(batch=1, seqlen_q=700, seqlen_k=900, nheads=4, nheads_k=2, head_dim=head_dim,
                       dtype=torch.bfloat16)
    causal = window_size[1] == 0
    check_both_paths(q, k, v, lambda q, k, v: flash_attn_func(q, k, v, causal=causal, window_size=window_size),
                     causal=causal, window_size=window_size)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_hopper_backward_varlen(head_dim, causal):
    lengths = [1, 17, 300, 0, 129, 1000]
    cu = cu_seqlens(lengths)
    q, k, v = (t[0] for t in make_qkv(batch=1, seqlen_q=sum(lengths), nheads=8, nheads_k=2, head_dim=head_dim))
    dout = torch.randn_like(q)
    attention = lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=causal)
    fast, portable = both_paths(lambda: grads_of(attention, q, k, v, dout))
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        rows = slice(cu[b].item(), cu[b + 1].item())
        args = [t[rows][None] for t in (q, k, v, dout)]
        refs = reference_grads(*args, causal=causal)
        eagers = reference_grads(*args, upcast=False, causal=causal)
        for name, g, g_portable, ref, eager in zip(("dq", "dk", "dv"), fast, portable, refs, eagers):
            floor = max(1.0, ref.abs().max().item())
            assert_within_eager_error(g[rows][None], ref, eager, f"{name}[{b}]", floor_magnitude=floor)
            assert_within_eager_error(g_portable[rows][None], ref, eager, f"{name}[{b}] portable",
                                      floor_magnitude=floor)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_hopper_backward_deterministic(head_dim, causal):
    q, k, v = make_qkv(batch=2, seqlen_q=1000, nheads=8, nheads_k=2, head_dim=head_dim, dtype=torch.bfloat16)
    dout = torch.randn_like(q)
    attention = lambda q, k, v: flash_attn_func(q, k, v, causal=causal, deterministic=True)
    with hopper(True):
        first = grads_of(attention, q, k, v, dout)
        for _ in range(5):
            for name, g, want in zip(("dq", "dk", "dv"), grads_of(attention, q, k, v, dout), first):
                assert torch.equal(g, want), name
    check_both_paths(q, k, v, attention, causal=causal)


@pytest.mark.parametrize("broadcast", ["kv", "dout"])
def test_hopper_backward_broadcast_strides_fall_back(broadcast):
    # k and v, or dout, expanded over the batch (batch stride 0): TMA cannot describe them, so
    # the call goes to the portable backward and must still be right.
    q, k, v = make_qkv(batch=3, seqlen_q=200, seqlen_k=300, nheads=4, nheads_k=2, head_dim=128)
    dout = torch.randn_like(q)
    if broadcast == "kv":
        k, v = (t[:1].expand(3, -1, -1, -1) for t in (k, v))
        assert k.stride(0) == 0
    else:
        dout = dout[:1].expand(3, -1, -1, -1)
        assert dout.stride(0) == 0
    with hopper(True):
        grads = grads_of(lambda q, k, v: flash_attn_func(q, k, v, causal=True), q, k, v, dout)
    assert_grads_within_criterion(grads, q, k, v, dout, causal=True)


@pytest.mark.sanitizer
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_hopper_backward_sanitizer_subset(head_dim, causal):
    q, k, v = make_qkv(batch=1, seqlen_q=131, seqlen_k=277, nheads=4, nheads_k=2, head_dim=head_dim)
    dout = torch.randn_like(q)
    with hopper(True):
        grads = grads_of(lambda q, k, v: flash_attn_func(q, k, v, causal=causal), q, k, v, dout)
    assert_grads_within_criterion(grads, q, k, v, dout, causal=causal)


def test_environment_variable_turns_the_hopper_kernels_off():
    code = "from flash_attn_rocm._ops import set_hopper_kernels; print(set_hopper_kernels(True))"
    for value, expected in (("0", "False"), ("1", "True")):
        env = dict(os.environ, FLASH_ATTN_ROCM_HOPPER=value)
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert result.stdout.strip() == expected, (value, result.stdout, result.stderr)
