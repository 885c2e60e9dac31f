"""flash_attn_varlen_func and the packed variants on a CUDA GPU.

Every sequence of a packed batch is checked against eager attention over that sequence alone
(conftest's 2x-eager criterion, per sequence, so a short sequence's error cannot hide behind a
long one's), forward and gradients; then the edges of the cu_seqlens layout (empty sequences,
max_seqlen 1, fewer tokens than sequences), the bert_padding round trip against a masked dense
reference, determinism, and the packed variants against the unpacked calls.

The varlen API is looked up at call time (conftest.api): this module collects without it.
"""

from dataclasses import dataclass
import pytest
import torch

from conftest import (CAUSAL, DTYPES, api, assert_within_eager_error, attention_ref, cu_seqlens, fully_masked_rows,
                      make_qkv, poison_allocator_cache, requires_gpu)

import flash_attn_rocm  # noqa: F401  (registers torch.ops.flash_attn_rocm)
from flash_attn_rocm import flash_attn_func
from flash_attn_rocm.bert_padding import pad_input, unpad_input

pytestmark = requires_gpu

GRAD_NAMES = ("dq", "dk", "dv")
NHEADS_K = 3  # odd: head-indexing mistakes that 2 or 4 would hide show up
GQA_GROUPS = [pytest.param(1, id="mha"), pytest.param(4, id="gqa4")]


@dataclass(frozen=True)
class Lengths:
    """The query and key length of every sequence of a varlen batch (Python ints: the tests
    never read them back from the GPU)."""

    q: tuple[int, ...]
    k: tuple[int, ...]

    @classmethod
    def of(cls, q_lens, k_lens=None):
        return cls(tuple(q_lens), tuple(q_lens if k_lens is None else k_lens))

    def cu_seqlens(self, device="cuda"):
        """cu_seqlens_q, cu_seqlens_k: int32 [batch + 1] offsets, from 0."""
        return cu_seqlens(self.q, device), cu_seqlens(self.k, device)

    def args(self, device="cuda"):
        """cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k: the varlen arguments after q, k, v."""
        return (*self.cu_seqlens(device), max(self.q), max(self.k))


def make_varlen_qkv(lengths, group=1, head_dim=64, dtype=torch.float16):
    """Random q [total_q, 3 * group, d] and k, v [total_k, 3, d]."""
    q, k, v = make_qkv(batch=1, seqlen_q=sum(lengths.q), seqlen_k=sum(lengths.k), nheads=NHEADS_K * group,
                       nheads_k=NHEADS_K, head_dim=head_dim, dtype=dtype)
    return q[0], k[0], v[0]


def flash_varlen(lengths, **kwargs):
    """flash_attn_varlen_func over q, k, v packed as `lengths` says, as a function of q, k, v."""
    def attention(q, k, v):
        return api("flash_attn_varlen_func")(q, k, v, *lengths.args(q.device), **kwargs)
    return attention


def varlen_attention_ref(q, k, v, lengths, causal=False, softmax_scale=None, upcast=True):
    """attention_ref over each sequence alone, concatenated: out [total_q, h, d], lse [h, total_q]."""
    outs, lses = [], []
    for q_seq, k_seq, v_seq in zip(q.split(lengths.q), k.split(lengths.k), v.split(lengths.k)):
        out, lse = attention_ref(q_seq[None], k_seq[None], v_seq[None], causal, softmax_scale, upcast)
        outs.append(out[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)


def blind_rows(lengths, causal, device="cuda"):
    """[total_q] bool: the query rows that see no key (an empty key sequence, or causal with sq > sk)."""
    return torch.cat([fully_masked_rows(sq, sk, causal, device) | (sk == 0) for sq, sk in zip(lengths.q, lengths.k)])


def grads_of(attention, tensors, dout, upcast=False, poison=False):
    """Gradients of attention(*tensors) for the incoming gradient dout, by autograd. upcast: in
    float32. poison: NaN-fill the allocator cache before the backward (as test_bwd does), so a
    gradient element the kernel never writes, or an accumulator it never zeroes, shows as NaN."""
    if upcast:
        tensors, dout = [t.float() for t in tensors], dout.float()
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = attention(*leaves)
    if poison:
        poison_allocator_cache(*[(t.shape, dtype) for t in leaves for dtype in (t.dtype, torch.float32)])
    return torch.autograd.grad(out, leaves, dout)


def assert_sequences_within_eager_error(name, value, ref, eager, lens, floor_at_least=0.0, ulps=1):
    """conftest's criterion for each sequence (rows split by `lens`) on its own, with a floor of
    `ulps` ulps at the sequence's largest reference magnitude (at least floor_at_least)."""
    for i, (value_seq, ref_seq, eager_seq) in enumerate(zip(*(t.split(lens) for t in (value, ref, eager)))):
        if ref_seq.numel():
            floor = ulps * max(floor_at_least, ref_seq.abs().max().item())
            assert_within_eager_error(value_seq, ref_seq, eager_seq, f"{name} of sequence {i}", floor)


def assert_bitwise_equal(names, values, expected):
    for name, value, want in zip(names, values, expected, strict=True):
        assert torch.equal(value, want), f"{name} differs"


def check_forward(q, k, v, lengths, causal=False, softmax_scale=None):
    """Runs flash_attn_varlen_func and checks out and lse against per-sequence references."""
    total_q, nheads, _ = q.shape
    poison_allocator_cache((q.shape, q.dtype), ((nheads, total_q), torch.float32))
    attention = flash_varlen(lengths, causal=causal, softmax_scale=softmax_scale, return_attn_probs=True)
    out, lse, s_dmask = attention(q, k, v)
    assert (out.shape, out.dtype, out.device) == (q.shape, q.dtype, q.device)
    assert (lse.shape, lse.dtype, lse.device) == ((nheads, total_q), torch.float32, q.device)
    assert s_dmask.numel() == 0, "S_dmask must be empty without dropout"

    blind = blind_rows(lengths, causal)
    assert (out[blind] == 0).all(), "rows with no visible key must be exactly zero"
    assert lse[:, blind].isneginf().all(), "rows with no visible key must have lse == -inf"
    assert out[~blind].isfinite().all() and lse[:, ~blind].isfinite().all()

    out_ref, lse_ref = varlen_attention_ref(q, k, v, lengths, causal, softmax_scale)
    out_pt, _ = varlen_attention_ref(q, k, v, lengths, causal, softmax_scale, upcast=False)
    assert_sequences_within_eager_error("out", out, out_ref, out_pt, lengths.q)
    torch.testing.assert_close(lse[:, ~blind], lse_ref[:, ~blind], atol=1e-3, rtol=0)


def check_backward(q, k, v, lengths, causal=False, softmax_scale=None, deterministic=False):
    """Checks dq, dk, dv of flash_attn_varlen_func against per-sequence references; returns
    (dout, grads) for further comparisons."""
    dout = torch.randn_like(q)
    attention = flash_varlen(lengths, causal=causal, softmax_scale=softmax_scale, deterministic=deterministic)
    grads = grads_of(attention, (q, k, v), dout, poison=True)
    for name, grad, like in zip(GRAD_NAMES, grads, (q, k, v)):
        assert (grad.shape, grad.dtype, grad.device) == (like.shape, like.dtype, like.device), name
        assert grad.isfinite().all(), f"{name} has non-finite elements"
    assert (grads[0][blind_rows(lengths, causal)] == 0).all(), "queries that see no key must get dq == 0 exactly"

    def reference(*qkv, upcast):
        return varlen_attention_ref(*qkv, lengths, causal, softmax_scale, upcast)[0]

    refs = grads_of(lambda *qkv: reference(*qkv, upcast=True), (q, k, v), dout, upcast=True)
    eagers = grads_of(lambda *qkv: reference(*qkv, upcast=False), (q, k, v), dout)
    for name, grad, ref, eager, lens in zip(GRAD_NAMES, grads, refs, eagers, (lengths.q, lengths.k, lengths.k)):
        # Floor at 1 as in test_bwd: exactly-zero gradients (one key) come out as rounding noise.
        assert_sequences_within_eager_error(name, grad, ref, eager, lens, floor_at_least=1.0)
    return dout, grads


# ---------------------------------------------------------------- accuracy

LENGTHS = [
    pytest.param(Lengths.of([1, 17, 1000, 0, 5]), id="mixed-with-empty"),
    pytest.param(Lengths.of([0, 0, 3]), id="leading-empties"),
    pytest.param(Lengths.of([64] * 8), id="equal-64x8"),
    # sq < sk, an empty query sequence with keys, sq == sk, sq > sk (causal rows with no key),
    # and queries without any key.
    pytest.param(Lengths.of([3, 0, 100, 40, 5], [50, 7, 100, 9, 0]), id="sq-ne-sk"),
]


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("group", GQA_GROUPS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 40])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_reference(dtype, head_dim, causal, group, lengths):
    check_forward(*make_varlen_qkv(lengths, group, head_dim, dtype), lengths, causal)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("group", GQA_GROUPS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [64, 128, 40])
@pytest.mark.parametrize("dtype", DTYPES)
def test_grads_match_reference(dtype, head_dim, causal, group, lengths):
    check_backward(*make_varlen_qkv(lengths, group, head_dim, dtype), lengths, causal)


EDGE_CASES = [
    # flash-attn #1537: max_seqlen_q == 1 with empty sequences broke its seqlen-1 GQA shortcut.
    pytest.param(Lengths.of([0, 1, 0, 1], [0, 3, 0, 5]), id="max_seqlen_q-1-with-empties"),
    pytest.param(Lengths.of([0, 1, 0, 1, 1]), id="max_seqlen-1-with-empties"),
    # flash-attn #1619: fewer tokens in total (5) than sequences (8), with GQA.
    pytest.param(Lengths.of([1, 0, 1, 0, 1, 1, 0, 1]), id="fewer-tokens-than-sequences"),
    pytest.param(Lengths.of([1, 0, 1, 0, 1, 1, 0, 1], [4, 2, 1, 0, 3, 1, 9, 1]), id="fewer-queries-than-sequences"),
    # No query at all (max_seqlen_q == 0): an empty launch; dk and dv must still be written (zeros).
    pytest.param(Lengths.of([0, 0], [0, 3]), id="no-queries"),
]


@pytest.mark.parametrize("lengths", EDGE_CASES)
@pytest.mark.parametrize("group", GQA_GROUPS)
@pytest.mark.parametrize("causal", CAUSAL)
def test_edge_cases_of_the_packed_layout(causal, group, lengths):
    q, k, v = make_varlen_qkv(lengths, group, dtype=torch.bfloat16)
    check_forward(q, k, v, lengths, causal)
    check_backward(q, k, v, lengths, causal)


@pytest.mark.parametrize("softmax_scale", [0.05, 1.0])
@pytest.mark.parametrize("causal", CAUSAL)
def test_custom_softmax_scale(causal, softmax_scale):
    lengths = Lengths.of([3, 0, 300, 40], [50, 7, 500, 9])
    q, k, v = make_varlen_qkv(lengths, group=2, head_dim=128)
    check_forward(q, k, v, lengths, causal, softmax_scale)
    check_backward(q, k, v, lengths, causal, softmax_scale)


# ---------------------------------------------------------------- against other calls


def dense_lse_as_varlen(lse):
    """[b, h, s] -> [h, b * s]: the varlen layout of a dense lse."""
    return lse.transpose(0, 1).flatten(1)


@pytest.mark.parametrize("causal", CAUSAL)
def test_equal_lengths_match_the_dense_call(causal):
    """A batch of equal lengths is a dense batch: the same kernels should agree to rounding."""
    batch, seqlen_q, seqlen_k = 4, 200, 300
    q, k, v = make_qkv(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=8, nheads_k=2)
    packed = [t.flatten(0, 1) for t in (q, k, v)]
    lengths = Lengths.of([seqlen_q] * batch, [seqlen_k] * batch)
    out, lse, _ = flash_varlen(lengths, causal=causal, return_attn_probs=True)(*packed)
    dense_out, dense_lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    torch.testing.assert_close(out, dense_out.flatten(0, 1))
    torch.testing.assert_close(lse, dense_lse_as_varlen(dense_lse))

    dout = torch.randn_like(q)
    dense_grads = grads_of(lambda *qkv: flash_attn_func(*qkv, causal=causal, deterministic=True), (q, k, v), dout)
    varlen = flash_varlen(lengths, causal=causal, deterministic=True)
    for name, grad, want in zip(GRAD_NAMES, grads_of(varlen, packed, dout.flatten(0, 1)), dense_grads):
        torch.testing.assert_close(grad, want.flatten(0, 1), msg=name)


@pytest.mark.parametrize("causal", CAUSAL)
def test_max_seqlen_above_the_longest_sequence_changes_nothing(causal):
    """max_seqlen_* bound the lengths; callers often pass the padded length."""
    lengths = Lengths.of([1, 17, 300, 0, 5], [30, 17, 300, 4, 0])
    q, k, v = make_varlen_qkv(lengths, group=2)
    cu_seqlens_q, cu_seqlens_k = lengths.cu_seqlens()
    exact = flash_varlen(lengths, causal=causal)(q, k, v)
    loose = api("flash_attn_varlen_func")(q, k, v, cu_seqlens_q, cu_seqlens_k, 512, 1024, causal=causal)
    torch.testing.assert_close(loose, exact)


def padding_mask(lengths, seqlen, left=False):
    """[b, s] bool, True for the tokens of sequences of the given lengths, padded on the right
    (or on the left, as for generation)."""
    lengths = torch.tensor(lengths, device="cuda")[:, None]
    positions = torch.arange(seqlen, device="cuda")
    return positions >= seqlen - lengths if left else positions < lengths


# Made inside the test, so that the random lengths come from the test's seed.
PADDING_MASKS = [
    pytest.param(lambda: padding_mask([300, 5, 0, 128, 77], 300), id="right-padded-with-empty-and-full"),
    pytest.param(lambda: padding_mask([300, 5, 0, 128, 77], 300, left=True), id="left-padded"),
    pytest.param(lambda: padding_mask(torch.randint(1, 17, (1000,)).tolist(), 16), id="1000-short-sequences"),
]


@pytest.mark.parametrize("make_mask", PADDING_MASKS)
@pytest.mark.parametrize("causal", CAUSAL)
def test_unpad_varlen_pad_matches_masked_dense_reference(causal, make_mask):
    """The Hugging Face flow: unpad a padded batch, run varlen attention, pad the result. The
    reference is dense attention with the padding keys masked out; padding rows are ignored
    (dout is zero there), and must come out zero, gradients included."""
    mask = make_mask()
    batch, seqlen = mask.shape
    q, k, v = make_qkv(batch=batch, seqlen_q=seqlen, nheads=8, nheads_k=2)
    dout = torch.randn_like(q) * mask[..., None, None]
    lengths = mask.sum(dim=1).tolist()

    def flash(q, k, v):
        (q_unpad, indices, cu_seqlens, max_seqlen, _), (k_unpad, *_), (v_unpad, *_) = (
            unpad_input(t, mask) for t in (q, k, v))
        out = api("flash_attn_varlen_func")(q_unpad, k_unpad, v_unpad, cu_seqlens, cu_seqlens, max_seqlen,
                                            max_seqlen, causal=causal)
        return pad_input(out, indices, batch, seqlen)

    def reference(upcast):
        return lambda q, k, v: attention_ref(q, k, v, causal, upcast=upcast, key_padding_mask=mask)[0]

    out = flash(q, k, v)
    assert (out[~mask] == 0).all()
    assert_sequences_within_eager_error("out", out[mask], reference(True)(q, k, v)[mask],
                                        reference(False)(q, k, v)[mask], lengths)

    grads = grads_of(flash, (q, k, v), dout, poison=True)
    refs = grads_of(reference(True), (q, k, v), dout, upcast=True)
    eagers = grads_of(reference(False), (q, k, v), dout)
    for name, grad, ref, eager in zip(GRAD_NAMES, grads, refs, eagers):
        assert (grad[~mask] == 0).all(), f"{name} must be zero at padding"
        # Up to 1000 tiny sequences x 8 heads: the maximum over that many independent problems
        # where eager fp16 is near-exact needs FlashAttention-3's gradient floor, two ulps (seen:
        # dq 2.0 ulps at |dq| ~ 1.1 in one sequence of 1000, H100, 2026-11-23).
        assert_sequences_within_eager_error(name, grad[mask], ref[mask], eager[mask], lengths, floor_at_least=1.0,
                                            ulps=2)


# ---------------------------------------------------------------- determinism


@pytest.mark.parametrize("causal", CAUSAL)
def test_deterministic_backward_is_bitwise_reproducible(causal):
    """Many key blocks per dq row and 4 query heads per dk/dv head, over several sequences;
    the allocator is re-poisoned every call."""
    lengths = Lengths.of([700, 0, 1000, 33], [900, 5, 1000, 33])
    q, k, v = make_varlen_qkv(lengths, group=4, head_dim=128, dtype=torch.bfloat16)
    dout, first = check_backward(q, k, v, lengths, causal, deterministic=True)
    attention = flash_varlen(lengths, causal=causal, deterministic=True)
    for _ in range(9):
        assert_bitwise_equal(GRAD_NAMES, grads_of(attention, (q, k, v), dout, poison=True), first)


# ---------------------------------------------------------------- packed variants
# Each returns (packed inputs, the packed call, the same call on unbound views); both calls
# return (out, softmax_lse, S_dmask). deterministic=True: the same arithmetic must give the same bits.


def packed_kwargs(causal):
    return dict(causal=causal, deterministic=True, return_attn_probs=True)


def dense_qkvpacked(causal):
    qkv = torch.randn(2, 200, 3, 4, 64, dtype=torch.float16, device="cuda")
    return ((qkv,), lambda qkv: api("flash_attn_qkvpacked_func")(qkv, **packed_kwargs(causal)),
            lambda qkv: flash_attn_func(*qkv.unbind(2), **packed_kwargs(causal)))


def dense_kvpacked(causal):
    q = torch.randn(2, 200, 8, 64, dtype=torch.float16, device="cuda")
    kv = torch.randn(2, 300, 2, 2, 64, dtype=torch.float16, device="cuda")
    return ((q, kv), lambda q, kv: api("flash_attn_kvpacked_func")(q, kv, **packed_kwargs(causal)),
            lambda q, kv: flash_attn_func(q, *kv.unbind(2), **packed_kwargs(causal)))


def varlen_qkvpacked(causal):
    lengths = Lengths.of([1, 17, 300, 0, 5])
    cu_seqlens, _, max_seqlen, _ = lengths.args()
    qkv = torch.randn(sum(lengths.q), 3, 4, 64, dtype=torch.float16, device="cuda")
    return ((qkv,),
            lambda qkv: api("flash_attn_varlen_qkvpacked_func")(qkv, cu_seqlens, max_seqlen, **packed_kwargs(causal)),
            lambda qkv: flash_varlen(lengths, **packed_kwargs(causal))(*qkv.unbind(1)))


def varlen_kvpacked(causal):
    lengths = Lengths.of([1, 17, 300, 0, 5], [30, 17, 300, 4, 0])
    q = torch.randn(sum(lengths.q), 8, 64, dtype=torch.float16, device="cuda")
    kv = torch.randn(sum(lengths.k), 2, 2, 64, dtype=torch.float16, device="cuda")
    return ((q, kv),
            lambda q, kv: api("flash_attn_varlen_kvpacked_func")(q, kv, *lengths.args(), **packed_kwargs(causal)),
            lambda q, kv: flash_varlen(lengths, **packed_kwargs(causal))(q, *kv.unbind(1)))


def outputs_and_packed_grads(attention, inputs, dout):
    """out, lse, and the .grad that backward leaves on each (packed) input."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    out, lse, _ = attention(*leaves)
    out.backward(dout)
    for leaf in leaves:
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape
    return (out, lse, *(leaf.grad for leaf in leaves))


@pytest.mark.parametrize("variant", [dense_qkvpacked, dense_kvpacked, varlen_qkvpacked, varlen_kvpacked],
                         ids=lambda f: f.__name__)
@pytest.mark.parametrize("causal", CAUSAL)
def test_packed_variant_matches_unpacked_call(causal, variant):
    inputs, packed, unpacked = variant(causal)
    dout = torch.randn_like(packed(*inputs)[0])
    names = ("out", "softmax_lse", *(f"grad of input {i}" for i in range(len(inputs))))
    assert_bitwise_equal(names, outputs_and_packed_grads(packed, inputs, dout),
                         outputs_and_packed_grads(unpacked, inputs, dout))


# ---------------------------------------------------------------- the raw ops

OPCHECK_LENGTHS = Lengths.of([5, 0, 70, 1], [40, 3, 70, 0])


def varlen_fwd_args(causal):
    q, k, v = make_varlen_qkv(OPCHECK_LENGTHS, group=2)
    return (q, k, v, *OPCHECK_LENGTHS.args(), 0.125, causal)


@pytest.mark.parametrize("causal", CAUSAL)
def test_opcheck_varlen_fwd(causal):
    """Schema, fake (meta) implementation and torch.compile behaviour of the raw op."""
    torch.library.opcheck(torch.ops.flash_attn_rocm.varlen_fwd.default, varlen_fwd_args(causal))


@pytest.mark.parametrize("causal", CAUSAL)
def test_opcheck_varlen_bwd(causal):
    """deterministic=True: opcheck compares runs at fp16's assert_close tolerance."""
    q, k, v, *rest = varlen_fwd_args(causal)
    out, lse, _ = torch.ops.flash_attn_rocm.varlen_fwd(q, k, v, *rest)
    torch.library.opcheck(torch.ops.flash_attn_rocm.varlen_bwd.default,
                          (torch.randn_like(q), q, k, v, out, lse, *rest, True))


def test_torch_compile_fullgraph_matches_eager():
    """The varlen path compiles without graph breaks, forward and backward (flash-attn's breaks
    graphs: transformers #41803), and gives the eager call's output and gradients."""
    from torch._dynamo.utils import counters

    lengths = Lengths.of([5, 0, 70, 1], [40, 3, 70, 9])
    cu_q, cu_k = cu_seqlens(lengths.q), cu_seqlens(lengths.k)

    def attention(q, k, v):
        out = api("flash_attn_varlen_func")(q, k, v, cu_q, cu_k, max(lengths.q), max(lengths.k), causal=True)
        return (out.float() ** 2).sum()

    q, k, v = (t.requires_grad_() for t in make_varlen_qkv(lengths, group=2))
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(attention, fullgraph=True)
    grads_compiled = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    grads_eager = torch.autograd.grad(attention(q, k, v), (q, k, v))
    assert not counters["graph_break"]
    for name, got, want in zip(GRAD_NAMES, grads_compiled, grads_eager):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------- compute-sanitizer subset
# scripts/gpu_check.sh runs `-m sanitizer` under memcheck and racecheck: sq < sk, sq > sk, empty
# query and key sequences, partial tiles, GQA, both dtypes and both accumulation modes.

SANITIZER_LENGTHS = Lengths.of([3, 0, 131, 40, 5], [50, 7, 77, 9, 0])
SANITIZER_CASES = [
    pytest.param(64, torch.float16, False, False, id="d64-fp16-full"),
    pytest.param(128, torch.bfloat16, True, False, id="d128-bf16-causal"),
    pytest.param(40, torch.float16, True, False, id="d40-fp16-causal"),
    pytest.param(128, torch.float16, False, True, id="d128-fp16-full-deterministic"),
]


@pytest.mark.sanitizer
@pytest.mark.parametrize("head_dim, dtype, causal, deterministic", SANITIZER_CASES)
def test_sanitizer_subset(head_dim, dtype, causal, deterministic):
    q, k, v = make_varlen_qkv(SANITIZER_LENGTHS, group=2, head_dim=head_dim, dtype=dtype)
    check_forward(q, k, v, SANITIZER_LENGTHS, causal)
    check_backward(q, k, v, SANITIZER_LENGTHS, causal, deterministic=deterministic)
