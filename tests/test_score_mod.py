"""Score modifiers, flash-attn's softcap and alibi_slopes: forward (out and lse) and gradients
against the float32 reference, dense and varlen, alone and together with causal, windows and GQA."""

import pytest
import torch

from conftest import (DTYPES, assert_within_eager_error, attention_ref, cu_seqlens, make_qkv, poison_allocator_cache,
                      requires_gpu, window_mask)

from flash_attn_rocm import flash_attn_func, flash_attn_varlen_func

pytestmark = requires_gpu

SEQLENS = [(113, 203), (203, 113), (1000, 1000), (1, 17)]


def alibi(shape):
    """Random positive slopes: most of the bias range ALiBi models use (2^-8 .. 1/2), and some larger."""
    return torch.rand(shape, device="cuda") * 0.6 + 2.0 ** -8


# softcap 2 saturates the tanh on unit-variance scores; 50 is Gemma-2's value (nearly linear).
MODS = {
    "softcap2": lambda b, h: dict(softcap=2.0),
    "softcap50": lambda b, h: dict(softcap=50.0),
    "alibi-per-head": lambda b, h: dict(alibi_slopes=alibi(h)),
    "alibi-per-batch": lambda b, h: dict(alibi_slopes=alibi((b, h))),
    "both": lambda b, h: dict(softcap=5.0, alibi_slopes=alibi(h)),
}


def check_grads_and_out(q, k, v, causal=False, window_size=(-1, -1), deterministic=False, **mods):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    poison_allocator_cache((q.shape, q.dtype), (k.shape, k.dtype))
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, window_size=window_size, deterministic=deterministic,
                                  return_attn_probs=True, **mods)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    out_ref, lse_ref = attention_ref(q, k, v, causal, window_size=window_size, **mods)
    out_pt, _ = attention_ref(q, k, v, causal, window_size=window_size, upcast=False, **mods)
    grads_ref = torch.autograd.grad(out_ref, (q, k, v), dout.float())
    grads_pt = torch.autograd.grad(out_pt, (q, k, v), dout)

    seen = window_mask(q.shape[1], k.shape[1], window_size, causal, q.device).any(dim=-1)
    assert (out[:, ~seen] == 0).all() and lse[:, :, ~seen].isneginf().all(), "rows that see no key"
    # The lse is in logit units, which ALiBi's bias makes large: compare relative to them.
    torch.testing.assert_close(lse[:, :, seen], lse_ref[:, :, seen], atol=2e-3, rtol=1e-4)
    assert_within_eager_error(out, out_ref, out_pt)
    for name, g, g_ref, g_pt in zip(("dq", "dk", "dv"), grads, grads_ref, grads_pt):
        assert g.isfinite().all(), name
        assert_within_eager_error(g, g_ref, g_pt, name, floor_magnitude=max(1.0, g_ref.abs().max().item()))


@pytest.mark.parametrize("seqlen_q, seqlen_k", SEQLENS)
@pytest.mark.parametrize("mod", MODS.values(), ids=MODS.keys())
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_score_mod_matches_reference(dtype, head_dim, causal, mod, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=2, head_dim=head_dim,
                       dtype=dtype)
    check_grads_and_out(q, k, v, causal, **mod(2, 4))


@pytest.mark.parametrize("head_dim", [32, 96, 192, 256])
@pytest.mark.parametrize("mod", ["softcap2", "alibi-per-batch"])
def test_score_mod_other_head_dims(head_dim, mod):
    q, k, v = make_qkv(batch=2, seqlen_q=300, seqlen_k=257, nheads=2, head_dim=head_dim)
    check_grads_and_out(q, k, v, True, **MODS[mod](2, 2))


@pytest.mark.parametrize("window_size", [(64, 0), (30, 17)])
def test_score_mod_with_window(window_size):
    q, k, v = make_qkv(batch=2, seqlen_q=500, seqlen_k=700, nheads=4, nheads_k=1, head_dim=128,
                       dtype=torch.bfloat16)
    check_grads_and_out(q, k, v, window_size[1] == 0, window_size, **MODS["both"](2, 4))


def test_softcap_with_custom_scale_is_gemma_style():
    # Gemma-2 scales by query_pre_attn_scalar ** -0.5, not head_dim ** -0.5, and caps at 50.
    q, k, v = make_qkv(batch=1, seqlen_q=257, nheads=8, nheads_k=4, head_dim=128, dtype=torch.bfloat16)
    q, k, v = (t.detach().requires_grad_() for t in (q * 4, k, v))
    out = flash_attn_func(q, k, v, softmax_scale=256 ** -0.5, causal=True, softcap=50.0)
    out_ref, _ = attention_ref(q, k, v, True, softmax_scale=256 ** -0.5, softcap=50.0)
    out_pt, _ = attention_ref(q, k, v, True, softmax_scale=256 ** -0.5, softcap=50.0, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)


@pytest.mark.parametrize("causal", [False, True])
def test_score_mod_deterministic_is_bitwise_repeatable(causal):
    q, k, v = make_qkv(batch=2, seqlen_q=700, seqlen_k=900, nheads=4, nheads_k=2, head_dim=64)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    dout = torch.randn_like(q)
    slopes = alibi(4)

    def grads():
        out = flash_attn_func(q, k, v, causal=causal, softcap=3.0, alibi_slopes=slopes, deterministic=True)
        return torch.autograd.grad(out, (q, k, v), dout)

    first = grads()
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(grads(), first))


@pytest.mark.parametrize("causal", [False, True])
def test_score_mod_varlen_matches_per_sequence(causal):
    # Per-batch slopes: sequence b must use row b of alibi_slopes.
    q_lens, k_lens = [1, 17, 300, 0, 129], [5, 17, 250, 3, 400]
    cu_q = cu_seqlens(q_lens)
    cu_k = cu_seqlens(k_lens)
    q, _, _ = make_qkv(batch=1, seqlen_q=sum(q_lens), nheads=6, nheads_k=3, head_dim=64)
    _, k, v = make_qkv(batch=1, seqlen_q=1, seqlen_k=sum(k_lens), nheads=6, nheads_k=3, head_dim=64)
    q, k, v = (t[0].detach().requires_grad_() for t in (q, k, v))
    slopes = alibi((len(q_lens), 6))
    out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal=causal, softcap=4.0,
                                 alibi_slopes=slopes)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    for b in range(len(q_lens)):
        if q_lens[b] == 0:
            continue
        rows_q, rows_k = slice(cu_q[b].item(), cu_q[b + 1].item()), slice(cu_k[b].item(), cu_k[b + 1].item())
        qb, kb, vb = (t.detach()[rows][None].requires_grad_() for t, rows in ((q, rows_q), (k, rows_k), (v, rows_k)))
        out_b = flash_attn_func(qb, kb, vb, causal=causal, softcap=4.0, alibi_slopes=slopes[b])
        grads_b = torch.autograd.grad(out_b, (qb, kb, vb), dout[rows_q][None])
        torch.testing.assert_close(out[rows_q], out_b[0], atol=2e-3, rtol=0)
        for g, g_b, rows in zip((dq, dk, dv), grads_b, (rows_q, rows_k, rows_k)):
            torch.testing.assert_close(g[rows], g_b[0], atol=2e-3, rtol=0)


def test_zero_slopes_equal_no_alibi():
    q, k, v = make_qkv(batch=2, seqlen_q=200, nheads=4, head_dim=64)
    plain = flash_attn_func(q, k, v, causal=True)
    zero = flash_attn_func(q, k, v, causal=True, alibi_slopes=torch.zeros(4, device="cuda"))
    torch.testing.assert_close(zero, plain, atol=1e-3, rtol=0)


def test_alibi_slopes_on_another_device_is_rejected():
    q, k, v = make_qkv(batch=1, seqlen_q=16, nheads=2, head_dim=64)
    with pytest.raises(ValueError, match="alibi_slopes"):
        flash_attn_func(q, k, v, alibi_slopes=torch.ones(2))


@pytest.mark.sanitizer
@pytest.mark.parametrize("mod", ["softcap2", "both"])
def test_score_mod_sanitizer_subset(mod):
    q, k, v = make_qkv(batch=1, seqlen_q=131, seqlen_k=77, nheads=4, nheads_k=2, head_dim=64)
    check_grads_and_out(q, k, v, True, deterministic=True, **MODS[mod](1, 4))
