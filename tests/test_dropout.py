"""Dropout (flash-attn's dropout_p): the kernels' mask must be the one flash_attn_rocm._dropout
recomputes in PyTorch (an independent implementation of csrc/kernels/dropout.h), so out and
gradients are checked against the float32 reference with that mask; then the keep rate, the
seeding, S_dmask, varlen, determinism and CUDA graph replay."""

import pytest
import torch

from conftest import (DTYPES, assert_within_eager_error, attention_ref, cu_seqlens, make_qkv, poison_allocator_cache,
                      requires_gpu)

from flash_attn_rocm import flash_attn_func, flash_attn_varlen_func
from flash_attn_rocm._dropout import block_size_n, keep_mask, masked_scores
from flash_attn_rocm._ops import ops

pytestmark = requires_gpu

SEQLENS = [(113, 203), (203, 113), (1000, 1000), (1, 17)]


def run_with_mask(q, k, v, dropout_p, causal=False, deterministic=False, **kwargs):
    """out, grads and the rng_state of one dropout call, through the op (which exposes rng_state)
    and the public function's autograd."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    poison_allocator_cache((q.shape, q.dtype), (k.shape, k.dtype))
    state = torch.cuda.get_rng_state()
    _, _, rng_state = ops.fwd(q, k, v, q.shape[-1] ** -0.5, causal, -1, -1, kwargs.get("softcap", 0.0),
                              kwargs.get("alibi_slopes"), dropout_p)
    torch.cuda.set_rng_state(state)  # the public call below draws the same (seed, offset)
    out = flash_attn_func(q, k, v, dropout_p, causal=causal, deterministic=deterministic, **kwargs)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    return (q, k, v), out, grads, dout, rng_state


def check_against_reference(q, k, v, dropout_p, causal=False, deterministic=False, **kwargs):
    (q, k, v), out, grads, dout, rng_state = run_with_mask(q, k, v, dropout_p, causal, deterministic, **kwargs)
    mask = keep_mask(rng_state, dropout_p, q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    ref_kwargs = dict(dropout_p=dropout_p, dropout_mask=mask, **kwargs)
    out_ref, _ = attention_ref(q, k, v, causal, **ref_kwargs)
    out_pt, _ = attention_ref(q, k, v, causal, upcast=False, **ref_kwargs)
    assert_within_eager_error(out, out_ref, out_pt)
    grads_ref = torch.autograd.grad(out_ref, (q, k, v), dout.float())
    grads_pt = torch.autograd.grad(out_pt, (q, k, v), dout)
    for name, g, g_ref, g_pt in zip(("dq", "dk", "dv"), grads, grads_ref, grads_pt):
        assert g.isfinite().all(), name
        assert_within_eager_error(g, g_ref, g_pt, name, floor_magnitude=max(1.0, g_ref.abs().max().item()))


@pytest.mark.parametrize("seqlen_q, seqlen_k", SEQLENS)
@pytest.mark.parametrize("dropout_p", [0.17, 0.5])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_matches_reference_with_the_same_mask(dtype, head_dim, causal, dropout_p, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=2, head_dim=head_dim,
                       dtype=dtype)
    check_against_reference(q, k, v, dropout_p, causal)


@pytest.mark.parametrize("head_dim", [32, 96, 192, 256])
def test_dropout_other_head_dims(head_dim):
    q, k, v = make_qkv(batch=2, seqlen_q=300, seqlen_k=257, nheads=2, head_dim=head_dim)
    check_against_reference(q, k, v, 0.3, True)


def test_dropout_with_softcap_and_alibi():
    q, k, v = make_qkv(batch=2, seqlen_q=250, seqlen_k=300, nheads=4, nheads_k=1, head_dim=64, dtype=torch.bfloat16)
    slopes = torch.rand(2, 4, device="cuda") * 0.3
    check_against_reference(q, k, v, 0.2, True, softcap=5.0, alibi_slopes=slopes)


@pytest.mark.parametrize("dropout_p", [0.1, 0.5, 0.9])
def test_keep_rate_of_the_kernel(dropout_p):
    # q = k = 0 makes every probability 1 / sk and v = 1 makes out the kept fraction / (1 - p):
    # a direct read of the kernel's keep rate over 8 * 2048 * 4096 draws.
    q = torch.zeros(1, 2048, 8, 64, device="cuda", dtype=torch.float16)
    k = torch.zeros(1, 4096, 8, 64, device="cuda", dtype=torch.float16)
    v = torch.ones_like(k)
    out = flash_attn_func(q, k, v, dropout_p)
    keep_rate = out.float().mean().item() * (1 - dropout_p)
    assert abs(keep_rate - (1 - dropout_p)) < 0.01 * (1 - dropout_p)


def test_same_seed_same_output_other_seed_other_mask():
    q, k, v = make_qkv(batch=2, seqlen_q=256, nheads=4, head_dim=64)

    def run(seed):
        torch.manual_seed(seed)
        return flash_attn_func(q, k, v, 0.3, causal=True, return_attn_probs=True)

    (out_a, _, dmask_a), (out_b, _, dmask_b), (out_c, _, dmask_c) = run(1), run(1), run(2)
    assert torch.equal(out_a, out_b) and torch.equal(dmask_a, dmask_b)
    assert not torch.equal(out_a, out_c)
    kept_a, kept_c = dmask_a > 0, dmask_c > 0
    assert (kept_a != kept_c).float().mean() > 0.1


def test_consecutive_calls_draw_fresh_masks():
    q, k, v = make_qkv(batch=1, seqlen_q=128, nheads=2, head_dim=64)
    assert not torch.equal(flash_attn_func(q, k, v, 0.5), flash_attn_func(q, k, v, 0.5))


def test_s_dmask_marks_the_dropped_probabilities():
    q, k, v = make_qkv(batch=2, seqlen_q=177, seqlen_k=300, nheads=4, nheads_k=2, head_dim=64)
    state = torch.cuda.get_rng_state()
    out, lse, dmask = flash_attn_func(q, k, v, 0.25, causal=True, return_attn_probs=True)
    torch.cuda.set_rng_state(state)
    _, _, rng_state = ops.fwd(q, k, v, 64 ** -0.5, True, -1, -1, 0.0, None, 0.25)
    mask = keep_mask(rng_state, 0.25, 2, 4, 177, 300)
    # flash-attn's convention: per key block, exp(s - running max); times exp(m - lse), the probabilities.
    scores = masked_scores(q, k, 64 ** -0.5, True, (-1, -1), 0.0, None)
    block_n = block_size_n(q.device, 64, True, True)
    running_max = torch.stack([b.amax(-1) for b in scores.split(block_n, -1)], -1).flip(-1).cummax(-1).values.flip(-1)
    factor = torch.exp(running_max - lse[..., None]).repeat_interleave(block_n, -1)[..., :300]
    probs = dmask.float().abs() * factor
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), atol=2e-2, rtol=0)
    visible = probs > 0
    assert torch.equal((dmask > 0) & visible, mask & visible)
    # out is the kept probabilities (rescaled) times v.
    v_rep = v.float().repeat_interleave(2, dim=2)
    expected = torch.einsum("bhqk,bkhd->bqhd", probs * mask / 0.75, v_rep)
    torch.testing.assert_close(out.float(), expected, atol=5e-3, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_varlen_matches_reference_per_sequence(causal):
    q_lens, k_lens = [1, 17, 300, 0, 129], [5, 17, 250, 3, 400]
    cu_q = cu_seqlens(q_lens)
    cu_k = cu_seqlens(k_lens)
    q, _, _ = make_qkv(batch=1, seqlen_q=sum(q_lens), nheads=6, nheads_k=3, head_dim=64)
    _, k, v = make_qkv(batch=1, seqlen_q=1, seqlen_k=sum(k_lens), nheads=6, nheads_k=3, head_dim=64)
    q, k, v = (t[0].detach().requires_grad_() for t in (q, k, v))
    state = torch.cuda.get_rng_state()
    _, _, rng_state = ops.varlen_fwd(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), 64 ** -0.5, causal, -1, -1, 0.0,
                                     None, 0.4)
    torch.cuda.set_rng_state(state)
    out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), 0.4, causal=causal)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    for b in range(len(q_lens)):
        if q_lens[b] == 0:
            continue
        rows_q, rows_k = slice(cu_q[b].item(), cu_q[b + 1].item()), slice(cu_k[b].item(), cu_k[b + 1].item())
        qb, kb, vb = (t.detach()[rows][None].requires_grad_() for t, rows in ((q, rows_q), (k, rows_k), (v, rows_k)))
        mask = keep_mask(rng_state, 0.4, len(q_lens), 6, q_lens[b], k_lens[b], batch_index=b)
        out_ref, _ = attention_ref(qb, kb, vb, causal, dropout_p=0.4, dropout_mask=mask)
        out_pt, _ = attention_ref(qb, kb, vb, causal, upcast=False, dropout_p=0.4, dropout_mask=mask)
        assert_within_eager_error(out[rows_q][None], out_ref, out_pt)
        grads_ref = torch.autograd.grad(out_ref, (qb, kb, vb), dout[rows_q][None].float())
        grads_pt = torch.autograd.grad(out_pt, (qb, kb, vb), dout[rows_q][None])
        for g, rows, g_ref, g_pt in zip(grads, (rows_q, rows_k, rows_k), grads_ref, grads_pt):
            assert_within_eager_error(g[rows][None], g_ref, g_pt, floor_magnitude=max(1.0, g_ref.abs().max().item()))


def test_varlen_s_dmask_matches_the_dense_call_of_each_sequence():
    lengths = [33, 0, 70]
    cu = torch.tensor([0, 33, 33, 103], dtype=torch.int32, device="cuda")
    q, k, v = (t[0] for t in make_qkv(batch=1, seqlen_q=103, nheads=2, head_dim=64))
    _, _, dmask = flash_attn_varlen_func(q, k, v, cu, cu, 70, 70, 0.3, causal=True, return_attn_probs=True)
    assert dmask.shape == (3, 2, 70, 70)
    assert (dmask[1] == 0).all() and (dmask[0, :, 33:] == 0).all() and (dmask[0, :, :, 33:] == 0).all()
    assert ((dmask[2] < 0).float().mean() - 0.3 * 0.5).abs() < 0.05  # about half the square is causal-visible


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_deterministic_is_bitwise_repeatable(causal):
    q, k, v = make_qkv(batch=2, seqlen_q=700, seqlen_k=900, nheads=4, nheads_k=2, head_dim=64)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    torch.manual_seed(0)
    out = flash_attn_func(q, k, v, 0.2, causal=causal, deterministic=True)
    dout = torch.randn_like(out)
    first = torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)
    for _ in range(3):
        assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), first))


def test_cuda_graph_replays_draw_fresh_masks():
    q, k, v = make_qkv(batch=1, seqlen_q=256, nheads=2, head_dim=64)
    static_out = torch.empty_like(q)
    static_rng = torch.empty(2, dtype=torch.int64, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the graph
        ops.fwd(q, k, v, 0.125, False, -1, -1, 0.0, None, 0.5)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, _, rng_state = ops.fwd(q, k, v, 0.125, False, -1, -1, 0.0, None, 0.5)
        static_out.copy_(out)
        static_rng.copy_(rng_state)
    results = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        results.append((static_out.clone(), static_rng.clone()))
    (out_a, rng_a), (out_b, rng_b) = results
    assert not torch.equal(rng_a, rng_b) and not torch.equal(out_a, out_b)
    for out_i, rng_i in results:
        mask = keep_mask(rng_i, 0.5, 1, 2, 256, 256)
        ref, _ = attention_ref(q, k, v, softmax_scale=0.125, dropout_p=0.5, dropout_mask=mask)
        torch.testing.assert_close(out_i.float(), ref, atol=2e-3, rtol=0)


def test_backward_without_rng_state_is_rejected():
    q, k, v = make_qkv(batch=1, seqlen_q=32, nheads=2, head_dim=64)
    out, lse, _ = ops.fwd(q, k, v, 0.125, False, -1, -1, 0.0, None, 0.3)
    with pytest.raises(RuntimeError, match="rng_state"):
        ops.bwd(torch.randn_like(out), q, k, v, out, lse, 0.125, False, False, -1, -1, 0.0, None, 0.3, None)


@pytest.mark.sanitizer
@pytest.mark.parametrize("causal", [False, True])
def test_dropout_sanitizer_subset(causal):
    q, k, v = make_qkv(batch=1, seqlen_q=131, seqlen_k=77, nheads=4, nheads_k=2, head_dim=64)
    check_against_reference(q, k, v, 0.3, causal, deterministic=True)
