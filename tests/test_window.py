"""Sliding-window (local) attention, flash-attn's window_size = (left, right): forward and
backward against the masked float32 reference, dense and varlen, with causal and GQA."""

import pytest
import torch

from conftest import (DTYPES, assert_within_eager_error, attention_ref, cu_seqlens, make_qkv, poison_allocator_cache,
                      requires_gpu, window_mask)

from flash_attn_rocm import flash_attn_func, flash_attn_varlen_func

pytestmark = requires_gpu

WINDOWS = [(16, 0), (0, 16), (100, 50), (-1, 8), (7, -1), (0, 0)]
SEQLENS = [(113, 203), (203, 113), (1000, 1000), (1, 17)]


def check_grads_and_out(q, k, v, causal, window_size, **kwargs):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    poison_allocator_cache((q.shape, q.dtype), (k.shape, k.dtype))
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, window_size=window_size, return_attn_probs=True, **kwargs)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    out_ref, lse_ref = attention_ref(q, k, v, causal, window_size=window_size)
    out_pt, _ = attention_ref(q, k, v, causal, window_size=window_size, upcast=False)
    grads_ref = torch.autograd.grad(out_ref, (q, k, v), dout.float())
    grads_pt = torch.autograd.grad(out_pt, (q, k, v), dout)

    no_key = ~window_mask(q.shape[1], k.shape[1], window_size, causal, q.device).any(dim=-1)
    assert (out[:, no_key] == 0).all() and lse[:, :, no_key].isneginf().all(), "rows that see no key"
    seen = ~no_key
    torch.testing.assert_close(lse[:, :, seen], lse_ref[:, :, seen], atol=1e-3, rtol=0)
    assert_within_eager_error(out, out_ref, out_pt)
    for name, g, g_ref, g_pt in zip(("dq", "dk", "dv"), grads, grads_ref, grads_pt):
        assert g.isfinite().all(), name
        assert_within_eager_error(g, g_ref, g_pt, name, floor_magnitude=max(1.0, g_ref.abs().max().item()))


@pytest.mark.parametrize("seqlen_q, seqlen_k", SEQLENS)
@pytest.mark.parametrize("window_size", WINDOWS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_window_matches_reference(dtype, head_dim, causal, window_size, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=2, head_dim=head_dim,
                       dtype=dtype)
    check_grads_and_out(q, k, v, causal, window_size)


@pytest.mark.parametrize("head_dim", [32, 96, 192, 256])
def test_window_other_head_dims(head_dim):
    q, k, v = make_qkv(batch=1, seqlen_q=300, seqlen_k=300, nheads=2, head_dim=head_dim)
    check_grads_and_out(q, k, v, True, (40, 0))


@pytest.mark.parametrize("causal", [False, True])
def test_window_deterministic_is_bitwise_repeatable(causal):
    # The deterministic dQ order starts at each query block's first key block in the window.
    q, k, v = make_qkv(batch=2, seqlen_q=1000, seqlen_k=1000, nheads=4, nheads_k=2, head_dim=128)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    dout = torch.randn_like(q)

    def grads():
        out = flash_attn_func(q, k, v, causal=causal, window_size=(200, 100), deterministic=True)
        return torch.autograd.grad(out, (q, k, v), dout)

    first = grads()
    for _ in range(5):
        assert all(torch.equal(a, b) for a, b in zip(grads(), first))


def test_window_varlen_causal_gqa_matches_per_sequence():
    lengths = [1, 17, 300, 0, 129]
    cu = cu_seqlens(lengths)
    q, k, v = make_qkv(batch=1, seqlen_q=sum(lengths), nheads=8, nheads_k=2, head_dim=64)
    q, k, v = (t[0].detach().requires_grad_() for t in (q, k, v))
    out = flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=True, window_size=(32, 0))
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        rows = slice(cu[b].item(), cu[b + 1].item())
        qb, kb, vb = (t.detach()[rows][None].requires_grad_() for t in (q, k, v))
        out_b = flash_attn_func(qb, kb, vb, causal=True, window_size=(32, 0))
        grads_b = torch.autograd.grad(out_b, (qb, kb, vb), dout[rows][None])
        torch.testing.assert_close(out[rows], out_b[0], atol=2e-3, rtol=0)
        for g, g_b in zip((dq, dk, dv), grads_b):
            torch.testing.assert_close(g[rows], g_b[0], atol=2e-3, rtol=0)


@pytest.mark.sanitizer
@pytest.mark.parametrize("window_size", [(16, 0), (7, 20)])
def test_window_sanitizer_subset(window_size):
    q, k, v = make_qkv(batch=1, seqlen_q=131, seqlen_k=77, nheads=4, nheads_k=2, head_dim=64)
    check_grads_and_out(q, k, v, False, window_size, deterministic=True)
