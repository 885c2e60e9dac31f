"""The Hopper (sm_90a, wgmma) forward against the float32 reference and against the portable
forward on the same inputs. The rest of the suite runs it too wherever it applies (head dims that
round to 64, 128 or 256; softcap, ALiBi and dropout at 64 and 128); here the two paths meet."""

import pytest
import torch

from conftest import (CAUSAL, DTYPES, EXTRAS, assert_within_eager_error, attention_ref, both_paths, cu_seqlens,
                      extras_kwargs, make_qkv, poison_allocator_cache, requires_gpu, requires_hopper,
                      skip_unless_served)

from flash_attn_rocm import flash_attn_func, flash_attn_varlen_func
from flash_attn_rocm._dropout import keep_mask
from flash_attn_rocm._ops import kernel_family, ops

pytestmark = [requires_gpu, requires_hopper]

SEQLENS = [(1, 1), (1, 17), (17, 1), (113, 203), (128, 128), (129, 257), (1000, 1000), (2048, 113), (300, 2100)]


@pytest.mark.parametrize("seqlen_q, seqlen_k", SEQLENS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [40, 64, 96, 128, 200, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hopper_forward_matches_reference_and_portable(dtype, head_dim, causal, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=6, nheads_k=3, head_dim=head_dim,
                       dtype=dtype)
    poison_allocator_cache((q.shape, q.dtype))
    (out, lse, _), (out_portable, lse_portable, _) = both_paths(
        lambda: flash_attn_func(q, k, v, causal=causal, return_attn_probs=True))
    out_ref, lse_ref = attention_ref(q, k, v, causal)
    out_pt, _ = attention_ref(q, k, v, causal, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
    seen = lse_ref.isfinite()
    assert torch.equal(lse.isneginf(), ~seen) and (out.transpose(1, 2)[~seen] == 0).all()
    torch.testing.assert_close(lse[seen], lse_ref[seen], atol=1e-3, rtol=0)
    torch.testing.assert_close(out, out_portable, atol=4 * (out_pt.float() - out_ref).abs().max().item() + 1e-3,
                               rtol=0)
    torch.testing.assert_close(lse, lse_portable, atol=1e-3, rtol=0)


@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(113, 203), (1000, 1000), (300, 2100)])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hopper_forward_extras_match_reference_and_portable(dtype, head_dim, causal, seqlen_q, seqlen_k, extras):
    """Softcap, ALiBi and dropout on the Hopper forward (dropout up to d128): the same mask as the
    portable kernel (both draw the same (seed, offset) here), out and lse against the reference
    with that mask."""
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=2, head_dim=head_dim,
                       dtype=dtype)
    kwargs = extras_kwargs(extras, batch=2, nheads=4)
    hopper_serves = head_dim <= 128 or kwargs["dropout_p"] == 0
    assert kernel_family(head_dim, dtype, **kwargs) == f"{'sm90' if hopper_serves else 'sm80'}:hdim{head_dim}"
    poison_allocator_cache((q.shape, q.dtype))

    def run():
        torch.manual_seed(11)
        state = torch.cuda.get_rng_state()
        out, lse, rng_state = ops.fwd(q, k, v, head_dim ** -0.5, causal, -1, -1, kwargs["softcap"],
                                      kwargs.get("alibi_slopes"), kwargs["dropout_p"])
        torch.cuda.set_rng_state(state)
        return out, lse, rng_state

    (out, lse, rng), (out_portable, lse_portable, rng_portable) = both_paths(run)
    assert torch.equal(rng, rng_portable)
    ref_kwargs = {key: value for key, value in kwargs.items() if value is not None}
    if kwargs["dropout_p"] > 0:
        ref_kwargs["dropout_mask"] = keep_mask(rng, kwargs["dropout_p"], 2, 4, seqlen_q, seqlen_k)
    out_ref, _ = attention_ref(q, k, v, causal, **ref_kwargs)
    out_pt, _ = attention_ref(q, k, v, causal, upcast=False, **ref_kwargs)
    assert_within_eager_error(out, out_ref, out_pt)
    torch.testing.assert_close(out, out_portable, atol=4 * (out_pt.float() - out_ref).abs().max().item() + 1e-3,
                               rtol=0)
    torch.testing.assert_close(lse, lse_portable, atol=1e-3, rtol=0)


@pytest.mark.parametrize("window_size", [(64, 0), (100, 30), (0, 0), (-1, 5)])
@pytest.mark.parametrize("head_dim", [128, 256])
def test_hopper_forward_windows(head_dim, window_size):
    q, k, v = make_qkv(batch=1, seqlen_q=700, seqlen_k=900, nheads=4, nheads_k=2, head_dim=head_dim,
                       dtype=torch.bfloat16)
    causal = window_size[1] == 0
    out, out_portable = both_paths(lambda: flash_attn_func(q, k, v, causal=causal, window_size=window_size))
    out_ref, _ = attention_ref(q, k, v, causal, window_size=window_size)
    out_pt, _ = attention_ref(q, k, v, causal, window_size=window_size, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
    assert_within_eager_error(out_portable, out_ref, out_pt)


# Past 4096 keys the longest sequence takes every sequence to 192-key blocks at d64 (non-causal).
@pytest.mark.parametrize("lengths", [[1, 17, 300, 0, 129, 1000], [17, 4100, 0, 300]], ids=["short", "long"])
@pytest.mark.parametrize("causal", CAUSAL)
def test_hopper_forward_varlen(causal, lengths):
    cu = cu_seqlens(lengths)
    q, k, v = (t[0] for t in make_qkv(batch=1, seqlen_q=sum(lengths), nheads=8, nheads_k=2, head_dim=64))
    out, out_portable = both_paths(
        lambda: flash_attn_varlen_func(q, k, v, cu, cu, max(lengths), max(lengths), causal=causal))
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        rows = slice(cu[b].item(), cu[b + 1].item())
        out_ref, _ = attention_ref(q[rows][None], k[rows][None], v[rows][None], causal)
        out_pt, _ = attention_ref(q[rows][None], k[rows][None], v[rows][None], causal, upcast=False)
        assert_within_eager_error(out[rows][None], out_ref, out_pt)
        assert_within_eager_error(out_portable[rows][None], out_ref, out_pt)


# Head dim 64 without the causal mask takes 192-key blocks from 4096 keys on (fwd_launch_sm90.h);
# the last blocks here are partial, and a window leaves whole blocks out.
@pytest.mark.parametrize("seqlen_q, seqlen_k",
                         [(1, 4096), pytest.param(131, 4133, marks=pytest.mark.sanitizer), (4133, 4133)])
@pytest.mark.parametrize("window_size", [(-1, -1), (500, 70)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hopper_forward_wide_key_blocks(dtype, window_size, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=2, head_dim=64,
                       dtype=dtype)
    poison_allocator_cache((q.shape, q.dtype))
    (out, lse, _), (out_portable, lse_portable, _) = both_paths(
        lambda: flash_attn_func(q, k, v, window_size=window_size, return_attn_probs=True))
    out_ref, lse_ref = attention_ref(q, k, v, False, window_size=window_size)
    out_pt, _ = attention_ref(q, k, v, False, window_size=window_size, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
    seen = lse_ref.isfinite()
    torch.testing.assert_close(lse[seen], lse_ref[seen], atol=1e-3, rtol=0)
    torch.testing.assert_close(lse, lse_portable, atol=1e-3, rtol=0)


def test_hopper_forward_strided_inputs_and_backward():
    # [b, h, s, d] views (as transformers passes them) and the gradients of the portable backward
    # on the Hopper forward's output.
    skip_unless_served(128)
    base = [torch.randn(2, 6, 333, 128, device="cuda", dtype=torch.float16) for _ in range(3)]
    q, k, v = (t.transpose(1, 2).requires_grad_() for t in base)
    out = flash_attn_func(q, k, v, causal=True)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    out_ref, _ = attention_ref(q, k, v, True)
    out_pt, _ = attention_ref(q, k, v, True, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
    grads_ref = torch.autograd.grad(out_ref, (q, k, v), dout.float())
    grads_pt = torch.autograd.grad(out_pt, (q, k, v), dout)
    for g, g_ref, g_pt in zip(grads, grads_ref, grads_pt):
        assert_within_eager_error(g, g_ref, g_pt, floor_magnitude=max(1.0, g_ref.abs().max().item()))


def test_hopper_forward_broadcast_kv_falls_back():
    # k and v expanded over the batch (batch stride 0): TMA cannot describe them, so the call
    # goes to the portable kernel and must still be right.
    q, k, v = make_qkv(batch=3, seqlen_q=200, seqlen_k=300, nheads=4, nheads_k=2, head_dim=128)
    k, v = (t[:1].expand(3, -1, -1, -1) for t in (k, v))
    assert k.stride(0) == 0
    out = flash_attn_func(q, k, v, causal=True)
    out_ref, _ = attention_ref(q, k, v, True)
    out_pt, _ = attention_ref(q, k, v, True, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)


@pytest.mark.sanitizer
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_hopper_forward_sanitizer_subset(head_dim, causal):
    q, k, v = make_qkv(batch=1, seqlen_q=131, seqlen_k=277, nheads=4, nheads_k=2, head_dim=head_dim)
    out = flash_attn_func(q, k, v, causal=causal)
    out_ref, _ = attention_ref(q, k, v, causal)
    out_pt, _ = attention_ref(q, k, v, causal, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
