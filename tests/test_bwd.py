"""Backward pass of flash_attn_func on a CUDA GPU: gradients against eager autograd references,
determinism, the op's input checks, and the autograd machinery built on it (torch.compile,
activation checkpointing, a short training run)."""

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.checkpoint import checkpoint

from conftest import (CAUSAL, DTYPES, HEAD_DIMS, STRIDED_LAYOUTS, SelfAttention, assert_within_eager_error,
                      attention_ref, fully_masked_rows, make_qkv, poison_allocator_cache, requires_gpu,
                      seqlen_params)

import flash_attn_rocm  # noqa: F401  (registers torch.ops.flash_attn_rocm)
from flash_attn_rocm import flash_attn_func

pytestmark = requires_gpu

GRAD_NAMES = ("dq", "dk", "dv")

# Single rows/keys, partial tiles, sq < sk and sq > sk (causal rows with no visible key),
# and many tiles in both directions.
SEQLENS = seqlen_params([(1, 1), (1, 17), (17, 1), (113, 203), (128, 128), (1000, 17), (17, 1000),
                         (1000, 1000)])
LONG_SEQLENS = seqlen_params([(2048, 2048), (2048, 113)])


def random_dout(q):
    """A random incoming gradient for out, which has q's shape and dtype."""
    return torch.randn(q.shape, dtype=q.dtype, device=q.device)


def leaves(*tensors):
    """Detached tensors (strides kept) that require grad: what the gradients are taken of."""
    return tuple(t.detach().requires_grad_() for t in tensors)


def flash_grads(q, k, v, dout, **kwargs):
    """dq, dk, dv of flash_attn_func(q, k, v, **kwargs) for the incoming gradient dout."""
    q, k, v = leaves(q, k, v)
    out = flash_attn_func(q, k, v, **kwargs)
    # NaN blocks of each gradient's size, in its dtype and in float32 (accumulator scratch), so a
    # gradient element the kernel never writes, or an accumulator it never zeroes, shows up as NaN.
    poison_allocator_cache(*[(t.shape, dtype) for t in (q, k, v) for dtype in (t.dtype, torch.float32)])
    return torch.autograd.grad(out, (q, k, v), dout)


def reference_grads(q, k, v, dout, causal=False, softmax_scale=None, upcast=True):
    """dq, dk, dv by autograd through attention_ref: in float32 (upcast) or in the input dtype."""
    if upcast:  # float32 leaves, else autograd would round the gradients back to the input dtype
        q, k, v, dout = (t.float() for t in (q, k, v, dout))
    q, k, v = leaves(q, k, v)
    out, _ = attention_ref(q, k, v, causal, softmax_scale, upcast=upcast)
    return torch.autograd.grad(out, (q, k, v), dout)


def check_grads(q, k, v, dout, grads, causal=False, softmax_scale=None):
    for name, grad, like in zip(GRAD_NAMES, grads, (q, k, v)):
        assert (grad.shape, grad.dtype, grad.device) == (like.shape, like.dtype, like.device), name
        assert grad.isfinite().all(), f"{name} has non-finite elements"
    dq = grads[0]
    masked = fully_masked_rows(q.shape[1], k.shape[1], causal, q.device)
    assert (dq[:, masked] == 0).all(), "queries that see no key must get dq == 0 exactly"

    refs = reference_grads(q, k, v, dout, causal, softmax_scale)
    eagers = reference_grads(q, k, v, dout, causal, softmax_scale, upcast=False)
    for name, grad, ref, eager in zip(GRAD_NAMES, grads, refs, eagers):
        # A gradient that is 0 in exact math (one key: the softmax is constant, so dq = dk = 0)
        # comes out exactly 0 from both eager paths but as rounding noise of the kernel's
        # dP - rowsum(dout * out); one ulp at 1, the scale of the unit-variance inputs and
        # dout, bounds that noise.
        assert_within_eager_error(grad, ref, eager, name, floor_magnitude=max(1.0, ref.abs().max().item()))


def run_and_check_grads(q, k, v, causal=False, softmax_scale=None, deterministic=False):
    dout = random_dout(q)
    grads = flash_grads(q, k, v, dout, causal=causal, softmax_scale=softmax_scale, deterministic=deterministic)
    check_grads(q, k, v, dout, grads, causal, softmax_scale)
    return grads


def assert_bitwise_equal(grads, expected):
    for name, grad, want in zip(GRAD_NAMES, grads, expected):
        assert torch.equal(grad, want), f"{name} differs"


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("seqlen_q, seqlen_k", SEQLENS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grads_match_reference(dtype, head_dim, causal, seqlen_q, seqlen_k):
    # 3 heads: an odd count catches head-indexing mistakes that 2 or 4 would hide.
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=3,
                       head_dim=head_dim, dtype=dtype)
    run_and_check_grads(q, k, v, causal)


@pytest.mark.parametrize("seqlen_q, seqlen_k", LONG_SEQLENS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grads_match_reference_long_sequences(dtype, head_dim, causal, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=1, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=2,
                       head_dim=head_dim, dtype=dtype)
    run_and_check_grads(q, k, v, causal)


@pytest.mark.parametrize("seqlen_q, seqlen_k", seqlen_params([(113, 203), (1000, 17), (17, 1000)]))
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gqa_grads_match_reference(dtype, group, head_dim, causal, seqlen_q, seqlen_k):
    # Random data per kv head, so any other head mapping than i // group fails, and dk, dv
    # must sum over the `group` query heads of their kv head.
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=2 * group,
                       nheads_k=2, head_dim=head_dim, dtype=dtype)
    run_and_check_grads(q, k, v, causal)


@pytest.mark.parametrize("softmax_scale", [0.05, 1.0])
@pytest.mark.parametrize("causal", CAUSAL)
def test_custom_softmax_scale(causal, softmax_scale):
    # The scale enters the backward twice (recomputing P, and dS -> dq, dk); every other test
    # uses the default, which a kernel ignoring the argument would also get right.
    q, k, v = make_qkv(seqlen_q=300, seqlen_k=500, head_dim=128)
    run_and_check_grads(q, k, v, causal, softmax_scale)


# ---------------------------------------------------------------- determinism and strides


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_deterministic_backward_is_bitwise_reproducible(head_dim, causal):
    """Many key blocks contribute to each dq row, and 4 query heads to each dk/dv head: the
    sums that atomics would make order-dependent. The allocator is re-poisoned every call."""
    q, k, v = make_qkv(batch=2, seqlen_q=1000, nheads=8, nheads_k=2, head_dim=head_dim, dtype=torch.bfloat16)
    dout = random_dout(q)
    first = flash_grads(q, k, v, dout, causal=causal, deterministic=True)
    check_grads(q, k, v, dout, first, causal)  # the deterministic path must be accurate too
    for _ in range(9):
        assert_bitwise_equal(flash_grads(q, k, v, dout, causal=causal, deterministic=True), first)


@STRIDED_LAYOUTS
@pytest.mark.parametrize("causal", CAUSAL)
def test_strided_inputs_match_contiguous_copies(layout, causal):
    # deterministic=True: the same arithmetic on the same values must give the same bits,
    # whatever the strides the values are read with.
    q, k, v = layout(2, 200, 4, 64)
    dout = random_dout(q)
    grads = flash_grads(q, k, v, dout, causal=causal, deterministic=True)
    copies = [t.contiguous() for t in (q, k, v)]
    assert_bitwise_equal(grads, flash_grads(*copies, dout, causal=causal, deterministic=True))
    check_grads(*copies, dout, grads, causal)


def heads_first_dout(dout):
    """dout's values in [b, h, s, d] memory order: stride(-1) == 1 but not contiguous."""
    return dout.transpose(1, 2).contiguous().transpose(1, 2)


def every_other_channel_dout(dout):
    """dout's values with stride(-1) == 2: the op rejects it, so flash_attn_func's backward
    must make it contiguous first (flash-attn does)."""
    return dout.new_zeros(*dout.shape[:-1], 2 * dout.shape[-1])[..., ::2].copy_(dout)


@pytest.mark.parametrize("dout_layout", [heads_first_dout, every_other_channel_dout], ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", CAUSAL)
def test_strided_dout_matches_contiguous(dout_layout, causal):
    q, k, v = make_qkv(seqlen_q=200, seqlen_k=300, nheads=4, nheads_k=2)
    dout = random_dout(q)
    strided = dout_layout(dout)
    assert not strided.is_contiguous() and torch.equal(strided, dout)
    assert_bitwise_equal(flash_grads(q, k, v, strided, causal=causal, deterministic=True),
                         flash_grads(q, k, v, dout, causal=causal, deterministic=True))


# ---------------------------------------------------------------- the raw op


def bwd_args(q, k, v, causal):
    """Arguments of the raw bwd op, from a real forward; deterministic=True."""
    out, lse, _ = torch.ops.flash_attn_rocm.fwd(q, k, v, 0.125, causal)
    return random_dout(q), q, k, v, out, lse, 0.125, causal, True


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("seqlen_q, seqlen_k, nheads_k", [(64, 64, 4), (50, 130, 2), (130, 50, 1)])
def test_opcheck(seqlen_q, seqlen_k, nheads_k, causal):
    """Schema, fake (meta) implementation and torch.compile behaviour of the raw op.
    deterministic=True: opcheck compares runs with assert_close's fp16 tolerance (atol 1e-5),
    which atomics' last-bit differences on small gradient elements could exceed."""
    q, k, v = make_qkv(seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=nheads_k)
    torch.library.opcheck(torch.ops.flash_attn_rocm.bwd.default, bwd_args(q, k, v, causal))


@STRIDED_LAYOUTS
def test_fake_impl_strides_match_real_op(layout):
    """Compiled code asserts the strides the fake impl promised, and opcheck does not compare
    strides. Dense permuted inputs (heads_first) are where empty_like-style fakes diverge."""
    args = bwd_args(*layout(2, 64, 4, 64), causal=True)
    real = torch.ops.flash_attn_rocm.bwd(*args)
    with FakeTensorMode() as mode:
        fake = torch.ops.flash_attn_rocm.bwd(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a
                                               for a in args))
    for name, fake_grad, real_grad in zip(GRAD_NAMES, fake, real):
        assert (fake_grad.shape, fake_grad.stride()) == (real_grad.shape, real_grad.stride()), name


def valid_bwd_args():
    q, k, v = make_qkv(seqlen_q=64, seqlen_k=96, nheads=4, nheads_k=2)
    out, lse, _ = torch.ops.flash_attn_rocm.fwd(q, k, v, 0.125, True)
    return dict(dout=random_dout(q), q=q, k=k, v=v, out=out, softmax_lse=lse, softmax_scale=0.125,
                is_causal=True, deterministic=False)


# name -> (how to spoil the valid arguments, the argument the error must name)
INVALID_BWD_ARGUMENTS = {
    "dout-shape": (lambda a: {"dout": a["dout"][:, :-1]}, "dout"),
    "dout-dtype": (lambda a: {"dout": a["dout"].bfloat16()}, "dout"),
    "dout-fp32": (lambda a: {"dout": a["dout"].float()}, "dout"),
    "dout-last-dim-strided": (lambda a: {"dout": every_other_channel_dout(a["dout"])}, "dout"),
    "softmax_lse-shape": (lambda a: {"softmax_lse": a["softmax_lse"][..., :-1]}, "softmax_lse"),
    "softmax_lse-transposed": (lambda a: {"softmax_lse": a["softmax_lse"].transpose(1, 2).contiguous()},
                               "softmax_lse"),
    "softmax_lse-dtype": (lambda a: {"softmax_lse": a["softmax_lse"].half()}, "softmax_lse"),
}


@pytest.mark.parametrize("spoil, argument", INVALID_BWD_ARGUMENTS.values(), ids=INVALID_BWD_ARGUMENTS.keys())
def test_op_rejects_invalid_arguments(spoil, argument):
    args = valid_bwd_args()
    args |= spoil(args)
    with pytest.raises((RuntimeError, ValueError), match=rf"\b{argument}\b"):
        torch.ops.flash_attn_rocm.bwd(**args)


# ---------------------------------------------------------------- autograd machinery


def input_and_parameter_grads(model, x, dout):
    x = x.detach().requires_grad_()
    return torch.autograd.grad(model(x), (x, *model.parameters()), dout)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_fullgraph_backward_matches_eager(dynamic):
    model = SelfAttention(partial(flash_attn_func, deterministic=True)).cuda().half()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True, dynamic=dynamic)
    names = ["x", *(name for name, _ in model.named_parameters())]
    for seqlen in (64, 100):
        x = torch.randn(2, seqlen, 256, dtype=torch.float16, device="cuda")
        dout = torch.randn_like(x)
        eager = input_and_parameter_grads(model, x, dout)
        for name, grad, want in zip(names, input_and_parameter_grads(compiled, x, dout), eager, strict=True):
            # The attention grads are bitwise reproducible; the compiled projections around
            # them may round differently.
            torch.testing.assert_close(grad, want, atol=1e-2, rtol=1e-2, msg=f"d{name}")
    assert not counters["graph_break"]


@pytest.mark.parametrize("causal", CAUSAL)
def test_activation_checkpointing_gives_the_same_grads(causal):
    """Non-reentrant checkpointing drops the forward's saved tensors and recomputes them in
    the backward; with deterministic=True the gradients must not change at all."""
    q, k, v = make_qkv(seqlen_q=300, seqlen_k=500, nheads=8, nheads_k=2)
    dout = random_dout(q)
    attention = partial(flash_attn_func, causal=causal, deterministic=True)
    q_leaf, k_leaf, v_leaf = leaves(q, k, v)
    out = checkpoint(attention, q_leaf, k_leaf, v_leaf, use_reentrant=False)
    recomputed = torch.autograd.grad(out, (q_leaf, k_leaf, v_leaf), dout)
    assert_bitwise_equal(recomputed, flash_grads(q, k, v, dout, causal=causal, deterministic=True))


# ---------------------------------------------------------------- a short training run


class Block(torch.nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, attention, dim, nheads):
        super().__init__()
        self.attention_norm = torch.nn.LayerNorm(dim)
        self.attention = SelfAttention(attention, dim, nheads)
        self.mlp_norm = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyLanguageModel(torch.nn.Module):
    def __init__(self, attention, vocab, seqlen, dim=128, nheads=4, nlayers=2):
        super().__init__()
        self.token_embedding = torch.nn.Embedding(vocab, dim)
        self.position_embedding = torch.nn.Embedding(seqlen, dim)
        self.blocks = torch.nn.Sequential(*(Block(attention, dim, nheads) for _ in range(nlayers)))
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        return self.head(self.norm(self.blocks(x)))


def eager_attention(q, k, v, causal):
    return attention_ref(q, k, v, causal, upcast=False)[0]


def repeating_pattern_batches(steps, batch, seqlen, vocab, period, seed=0):
    """Each sequence repeats a random pattern of `period` tokens of its own. Predicting the next
    token means looking back `period - 1` positions, which only attention can do, and the
    first period - 1 targets stay unpredictable (a loss floor of about ln(vocab) * period / seqlen)."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randint(vocab, (steps, batch, period), generator=generator)
    sequences = patterns.repeat(1, 1, (seqlen + 1 + period - 1) // period)[..., :seqlen + 1]
    return [(s[:, :-1].cuda(), s[:, 1:].cuda()) for s in sequences]


def train(attention, batches, vocab, seqlen):
    """Trains a fresh TinyLanguageModel under bf16 autocast (same initial weights for every
    attention: the seed is reset first); returns the loss of every step."""
    torch.manual_seed(0)
    model = TinyLanguageModel(attention, vocab, seqlen).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for tokens, targets in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_matches_eager_attention():
    vocab, seqlen = 32, 128
    batches = repeating_pattern_batches(steps=200, batch=8, seqlen=seqlen, vocab=vocab, period=8)
    flash_losses = train(flash_attn_func, batches, vocab, seqlen)
    eager_losses = train(eager_attention, batches, vocab, seqlen)

    def final(losses):  # averaged: single-step losses are noisy
        return sum(losses[-20:]) / 20

    assert final(flash_losses) < 0.5 * flash_losses[0], (
        f"did not learn: {flash_losses[0]:.3f} -> {final(flash_losses):.3f}")
    assert final(flash_losses) == pytest.approx(final(eager_losses), rel=0.05), (
        f"flash {final(flash_losses):.4f} vs eager {final(eager_losses):.4f}")


# ---------------------------------------------------------------- compute-sanitizer subset
# scripts/gpu_check.sh runs `-m sanitizer` under memcheck and racecheck: few, small cases with
# partial tiles in both directions, causal rows that see no key, GQA, both dtypes and both
# accumulation modes.

SANITIZER_CASES = [
    pytest.param(64, torch.float16, False, id="d64-fp16"),
    pytest.param(128, torch.bfloat16, False, id="d128-bf16"),
    pytest.param(256, torch.float16, False, id="d256-fp16"),
    pytest.param(128, torch.float16, True, id="d128-fp16-deterministic"),
]


@pytest.mark.sanitizer
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim, dtype, deterministic", SANITIZER_CASES)
def test_sanitizer_subset(head_dim, dtype, deterministic, causal):
    q, k, v = make_qkv(batch=1, seqlen_q=131, seqlen_k=77, nheads=4, nheads_k=2, head_dim=head_dim, dtype=dtype)
    run_and_check_grads(q, k, v, causal, deterministic=deterministic)
