"""flash_attn_with_kvcache: decoding and chunked prefill against a KV cache, contiguous or paged,
with the in-place append of new k, v (rotary applied to them and to q), against an eager
reference; plus CUDA graphs, torch.compile, the op's schema and argument validation (CPU).

Written against the spec before the API landed: flash_attn_rocm is imported only at call time
(conftest.api), so this module collects even while the package does not import.

The reference (kvcache_ref) spells out the semantics: sequence i appends its s_new new rows at
cache rows cache_seqlens[i] .. cache_seqlens[i] + s_new - 1 (of cache row cache_batch_idx[i], or
through block_table), then attends to cache rows cache_leftpad[i] .. cache_seqlens[i] + s_new - 1,
whose count seqlen_k_i is what causal, window and ALiBi are bottom-right aligned with. Rotary
positions are cache rows, as in flash-attn 2.8's tests: the new rows sit at cache_seqlens[i] + t
whatever cache_leftpad[i] is.
"""

import math
from functools import partial
from typing import NamedTuple

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import (DTYPES, api, assert_within_eager_error, attention_ref, head_dim_params, poison_allocator_cache,
                      requires_gpu, skip_unless_served)

# Where make_kvcache puts the GPU tests' tensors (read at call time).
DEVICE = "cuda"

# ---------------------------------------------------------------- reference


class KVCacheRef(NamedTuple):
    out: torch.Tensor        # float32 [b, sq, h, d]
    lse: torch.Tensor        # float32 [b, h, sq], -inf for rows that see no key
    out_eager: torch.Tensor  # the same attention computed in q's dtype: the error yardstick
    k_cache: torch.Tensor    # the caches as they must be after the call
    v_cache: torch.Tensor


def apply_rotary(x, cos, sin, positions, interleaved):
    """x [s, h, d] with channels < rotary_dim = 2 * cos.shape[1] rotated by the angles of rows
    `positions` [s] of cos, sin: GPT-J pairs (x[2j], x[2j+1]) if interleaved, else GPT-NeoX pairs
    (x[j], x[j + rotary_dim / 2]); (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos).

    Float32 math on the dtype values, rounded once to x's dtype. A product of two fp16 (or bf16)
    values is exact in float32, so x1 cos - x2 sin rounds once whether or not a kernel fuses it
    into an FMA: a kernel that rotates in float32 reproduces this bit for bit."""
    rotary_dim = 2 * cos.shape[1]
    cos, sin = cos.float()[positions][:, None], sin.float()[positions][:, None]  # [s, 1, rotary_dim / 2]
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else rot.chunk(2, dim=-1)
    out1, out2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    rot = torch.stack((out1, out2), dim=-1).flatten(-2) if interleaved else torch.cat((out1, out2), dim=-1)
    return torch.cat((rot.to(x.dtype), rest), dim=-1)


def per_sequence(value, batch, default):
    """None, an int or an int tensor [b] as a list of b ints."""
    if value is None:
        return [default] * batch
    if isinstance(value, int):
        return [value] * batch
    return value.tolist()


def cache_capacity(k_cache, block_table):
    """Rows per sequence: max_blocks_per_seq * page_size when paged, else the cache's seqlen."""
    return k_cache.shape[1] if block_table is None else block_table.shape[1] * k_cache.shape[1]


def kvcache_ref(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                window_size=(-1, -1), softcap=0.0, rotary_interleaved=True, alibi_slopes=None):
    """flash_attn_with_kvcache in PyTorch, one sequence at a time, on copies of the caches.

    Appends k (rotated) and v at each sequence's cache_seqlens, through block_table or
    cache_batch_idx; rotates q (every row at the first new position unless causal or local,
    where row t is at that position + t; rounded to q's dtype, as the kernel feeds it to its
    products); then runs conftest.attention_ref on the rows the sequence sees, in float32 and
    in q's dtype. Returns a KVCacheRef."""
    batch, seqlen_q = q.shape[:2]
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    page_size = k_cache.shape[1]
    seqlens = per_sequence(cache_seqlens, batch, cache_capacity(k_cache, block_table))
    leftpads = per_sequence(cache_leftpad, batch, 0)
    seqlen_new = 0 if k is None else k.shape[1]
    local = causal or tuple(window_size) != (-1, -1)

    def cache_index(i, rows):
        """The index of logical rows `rows` of sequence i in the caches."""
        if block_table is not None:
            return block_table[i].long()[rows // page_size], rows % page_size
        return (i if cache_batch_idx is None else int(cache_batch_idx[i])), rows

    def arange(start, end):
        return torch.arange(start, end, device=q.device)

    outs, lses, eager_outs = [], [], []
    for i in range(batch):
        first_new = seqlens[i]  # the rotary position of the first new row (cache_leftpad does not shift it)
        end = seqlens[i] + seqlen_new
        if seqlen_new:
            k_new = k[i]
            if rotary_cos is not None:
                k_new = apply_rotary(k_new, rotary_cos, rotary_sin, first_new + arange(0, seqlen_new),
                                     rotary_interleaved)
            k_cache[cache_index(i, arange(seqlens[i], end))] = k_new
            v_cache[cache_index(i, arange(seqlens[i], end))] = v[i]
        q_i = q[i]
        if rotary_cos is not None:
            offsets = arange(0, seqlen_q) if local else torch.zeros(seqlen_q, dtype=torch.long, device=q.device)
            q_i = apply_rotary(q_i, rotary_cos, rotary_sin, first_new + offsets, rotary_interleaved)
        visible = cache_index(i, arange(leftpads[i], end))
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[i]
        args = (q_i[None], k_cache[visible][None], v_cache[visible][None], causal, softmax_scale)
        options = dict(window_size=window_size, softcap=softcap, alibi_slopes=slopes)
        out, lse = attention_ref(*args, **options)
        out_eager, _ = attention_ref(*args, upcast=False, **options)
        outs.append(out)
        lses.append(lse)
        eager_outs.append(out_eager)
    return KVCacheRef(torch.cat(outs), torch.cat(lses), torch.cat(eager_outs), k_cache, v_cache)


# ---------------------------------------------------------------- inputs and checks


def make_kvcache(*, batch=3, seqlen_q=1, seqlen_new=0, cache_len=300, nheads=8, nheads_k=2, head_dim=64,
                 dtype=torch.float16, page_size=None, rotary=None, rotary_dim=None, leftpad=False, batch_idx=False,
                 seqlens="tensor"):
    """Random q [b, sq, h, d], caches and the keyword arguments of one call, on DEVICE.

    cache_len rows per sequence, rounded up to whole pages when paged (pages in random order,
    plus spare blocks no sequence owns); batch_idx: 2 more cache rows than sequences, picked by
    a random cache_batch_idx. seqlen_new: rows k, v to append. seqlens: "tensor" (int32 [b]:
    the first sequence's cache empty, the last's full after the append, the others random),
    "int" (one random int for all) or "none" (the full capacity; no append). leftpad: random
    cache_leftpad[i] in [0, cache_seqlens[i]]. rotary: None, "interleaved" (GPT-J) or "neox",
    with random angles in q's dtype and rotary_dim (default head_dim) channels. Skips the test
    where this build does not serve head_dim."""
    skip_unless_served(head_dim)
    device = DEVICE

    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    q = randn(batch, seqlen_q, nheads, head_dim)
    kwargs = {}
    if page_size is None:
        capacity = cache_len
        cache_batch = batch + 2 if batch_idx else batch
        k_cache, v_cache = randn(cache_batch, capacity, nheads_k, head_dim), randn(cache_batch, capacity, nheads_k,
                                                                                   head_dim)
        if batch_idx:
            kwargs["cache_batch_idx"] = torch.randperm(cache_batch, device=device)[:batch].int()
    else:
        pages = -(-cache_len // page_size)
        capacity = pages * page_size
        num_blocks = batch * pages + 3
        k_cache, v_cache = randn(num_blocks, page_size, nheads_k, head_dim), randn(num_blocks, page_size, nheads_k,
                                                                                   head_dim)
        kwargs["block_table"] = torch.randperm(num_blocks, device=device)[:batch * pages].view(batch, pages).int()

    most = capacity - seqlen_new
    assert most >= 0, "the new rows do not fit in the cache"
    if seqlens == "tensor":
        lengths = torch.randint(0, most + 1, (batch,))
        lengths[-1] = most
        if batch > 1:
            lengths[0] = 0
        kwargs["cache_seqlens"] = lengths.int().to(device)
    elif seqlens == "int":
        kwargs["cache_seqlens"] = int(torch.randint(1, most + 1, ())) if most else 0
        lengths = torch.full((batch,), kwargs["cache_seqlens"])
    else:
        assert seqlens == "none" and seqlen_new == 0, "cache_seqlens=None means a full cache"
        lengths = torch.full((batch,), capacity)
    if leftpad:
        pads = [int(torch.randint(0, length + 1, ())) for length in lengths.tolist()]
        kwargs["cache_leftpad"] = torch.tensor(pads, dtype=torch.int32, device=device)

    if seqlen_new:
        kwargs["k"], kwargs["v"] = randn(batch, seqlen_new, nheads_k, head_dim), randn(batch, seqlen_new, nheads_k,
                                                                                      head_dim)
    if rotary is not None:
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        angle = torch.rand(capacity + 5, rotary_dim // 2, device=device) * (2 * math.pi)  # seqlen_ro > capacity
        kwargs |= dict(rotary_cos=angle.cos().to(dtype), rotary_sin=angle.sin().to(dtype),
                       rotary_interleaved=rotary == "interleaved")
    return q, k_cache, v_cache, kwargs


def assert_cache_equal(value, expected, name):
    if not torch.equal(value, expected):
        wrong = (value != expected).any(dim=(-2, -1)).nonzero().tolist()
        raise AssertionError(f"{name}: {len(wrong)} rows differ from the reference, first (block/batch, row): "
                             f"{wrong[:5]}")


def check_outputs(out, lse, ref):
    """out within flash-attn's eager-error criterion, lse close; rows that see no key: out 0, lse -inf."""
    batch, seqlen_q, nheads, head_dim = ref.out.shape
    assert (out.shape, out.dtype, out.device) == (ref.out.shape, ref.out_eager.dtype, ref.out.device)
    assert (lse.shape, lse.dtype) == ((batch, nheads, seqlen_q), torch.float32)
    no_key = ref.lse.isneginf()  # [b, h, sq]
    assert (out.transpose(1, 2)[no_key] == 0).all(), "rows that see no key must be exactly zero"
    assert lse[no_key].isneginf().all(), "rows that see no key must have lse == -inf"
    assert out.isfinite().all()
    assert lse[~no_key].isfinite().all()
    assert_within_eager_error(out, ref.out, ref.out_eager)
    torch.testing.assert_close(lse[~no_key], ref.lse[~no_key], atol=1e-3, rtol=1e-4)


def run_and_check(q, k_cache, v_cache, num_splits=0, **kwargs):
    """One call, appending into k_cache, v_cache in place; checks out, lse, the whole caches
    (the rows written and every other one) and that no other input was written. Returns (out, lse)."""
    ref = kvcache_ref(q, k_cache, v_cache, **kwargs)
    inputs = {"q": q} | {name: t for name, t in kwargs.items() if isinstance(t, torch.Tensor)}
    before = {name: t.clone() for name, t in inputs.items()}
    batch, seqlen_q, nheads, head_dim = q.shape
    poison_allocator_cache((q.shape, q.dtype), ((batch, nheads, seqlen_q), torch.float32),
                           ((8, batch, nheads, seqlen_q, head_dim), torch.float32))  # split-KV partials
    out, lse = api("flash_attn_with_kvcache")(q, k_cache, v_cache, num_splits=num_splits, return_softmax_lse=True,
                                              **kwargs)
    check_outputs(out, lse, ref)
    assert_cache_equal(k_cache, ref.k_cache, "k_cache")
    assert_cache_equal(v_cache, ref.v_cache, "v_cache")
    for name, t in inputs.items():
        assert torch.equal(t, before[name]), f"{name} was modified"
    return out, lse


# ---------------------------------------------------------------- accuracy (GPU)

HEAD_DIMS = head_dim_params(64, 80, 128, 256)  # 80: not a compiled head dim, rounds up
GQA = [pytest.param(2, 2, id="mha"), pytest.param(8, 2, id="gqa4"), pytest.param(8, 1, id="mqa8")]
ROTARY = [pytest.param("interleaved", id="gptj"), pytest.param("neox", id="neox")]


def layouts(*page_sizes):
    return [pytest.param(size, id="contiguous" if size is None else f"page{size}") for size in page_sizes]


@requires_gpu
@pytest.mark.parametrize("page_size", layouts(None, 16, 256))
@pytest.mark.parametrize("nheads, nheads_k", GQA)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_matches_reference(dtype, head_dim, nheads, nheads_k, page_size):
    """The decoding step: one new token per sequence, appended, then attended to."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_new=1, cache_len=1000, nheads=nheads, nheads_k=nheads_k,
                                               head_dim=head_dim, dtype=dtype, page_size=page_size)
    run_and_check(q, k_cache, v_cache, causal=True, **kwargs)


@requires_gpu
@pytest.mark.parametrize("page_size", layouts(None, 16, 64))
@pytest.mark.parametrize("seqlen_new", [pytest.param(0, id="read-only"), pytest.param(1, id="append")])
@pytest.mark.parametrize("cache_len", [1, 17, 1000])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_lengths(dtype, cache_len, seqlen_new, page_size):
    """Caches of one row, of a partial page or tile, of many; without an append the first
    sequence sees no key at all (out 0, lse -inf)."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_new=seqlen_new, cache_len=cache_len, nheads=4, nheads_k=2,
                                               head_dim=128, dtype=dtype, page_size=page_size)
    run_and_check(q, k_cache, v_cache, **kwargs)


# page size, seqlen_q (= rows appended), rotary, call options
LONG_CACHE_CASES = [
    pytest.param(None, 1, None, {}, id="contiguous-decode"),
    pytest.param(None, 1, None, {"num_splits": 1}, id="contiguous-decode-one-split"),
    pytest.param(16, 1, None, {}, id="page16-decode"),
    pytest.param(256, 1, "interleaved", {"causal": True}, id="page256-decode-gptj"),
    pytest.param(256, 128, "neox", {"causal": True}, id="page256-prefill128-causal-neox"),
]


@requires_gpu
@pytest.mark.parametrize("page_size, seqlen_q, rotary, options", LONG_CACHE_CASES)
def test_64k_cache(page_size, seqlen_q, rotary, options):
    """One sequence whose cache is full after the append: 65536 rows (4096 pages of 16)."""
    q, k_cache, v_cache, kwargs = make_kvcache(batch=1, seqlen_q=seqlen_q, seqlen_new=seqlen_q, cache_len=65536,
                                               nheads=4, nheads_k=1, head_dim=128, page_size=page_size, rotary=rotary)
    run_and_check(q, k_cache, v_cache, **kwargs, **options)


MASKS = [pytest.param(False, (-1, -1), id="full"), pytest.param(True, (-1, -1), id="causal"),
         pytest.param(False, (48, 0), id="window")]


@requires_gpu
@pytest.mark.parametrize("page_size", layouts(None, 64))
@pytest.mark.parametrize("seqlen_q", [1, 128])
@pytest.mark.parametrize("causal, window_size", MASKS)
@pytest.mark.parametrize("rotary", ROTARY)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_matches_reference(dtype, rotary, causal, window_size, seqlen_q, page_size):
    """Rotary on the appended k (checked bitwise in the cache) and on q: without a mask every q
    row sits at the first new position, with causal or a window row t sits t further."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_q=seqlen_q, seqlen_new=seqlen_q, cache_len=400, head_dim=128,
                                               dtype=dtype, page_size=page_size, rotary=rotary)
    run_and_check(q, k_cache, v_cache, causal=causal, window_size=window_size, **kwargs)


@requires_gpu
@pytest.mark.parametrize("head_dim, rotary_dim", [(128, 64), (128, 32), (256, 128), (80, 80)])
@pytest.mark.parametrize("rotary", ROTARY)
def test_partial_rotary_dim(rotary, head_dim, rotary_dim):
    """Channels from rotary_dim on pass through unrotated."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_q=16, seqlen_new=16, head_dim=head_dim, rotary=rotary,
                                               rotary_dim=rotary_dim, dtype=torch.bfloat16)
    run_and_check(q, k_cache, v_cache, causal=True, **kwargs)


def slopes(*shape):
    return torch.rand(*shape, device=DEVICE) * 0.3


# name: (batch, nheads) -> call options
MASKS_AND_BIASES = {
    "causal": lambda b, h: dict(causal=True),
    "window-left": lambda b, h: dict(window_size=(40, 0)),
    "window-both-sides": lambda b, h: dict(window_size=(24, 24)),
    "window-right-only": lambda b, h: dict(window_size=(-1, 8)),
    "causal-window": lambda b, h: dict(causal=True, window_size=(70, -1)),
    "alibi-per-head": lambda b, h: dict(alibi_slopes=slopes(h)),
    "alibi-per-sequence-causal": lambda b, h: dict(alibi_slopes=slopes(b, h), causal=True),
    "softcap-causal": lambda b, h: dict(softcap=2.0, causal=True),
    "softmax_scale": lambda b, h: dict(softmax_scale=0.5),  # scores ~ N(0, 16): the row max matters
}


@requires_gpu
@pytest.mark.parametrize("page_size", layouts(None, 64))
@pytest.mark.parametrize("seqlen_q", [1, 128])
@pytest.mark.parametrize("options", MASKS_AND_BIASES.values(), ids=MASKS_AND_BIASES.keys())
@pytest.mark.parametrize("dtype", DTYPES)
def test_masks_and_biases(dtype, options, seqlen_q, page_size):
    """Masks and biases are aligned with each sequence's own seqlen_k (cache_seqlens + s_new)."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_q=seqlen_q, seqlen_new=seqlen_q, cache_len=500, dtype=dtype,
                                               page_size=page_size)
    run_and_check(q, k_cache, v_cache, **kwargs, **options(q.shape[0], q.shape[2]))


@requires_gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("page_size", layouts(None, 16, 256))
@pytest.mark.parametrize("seqlen_q", [128, 512])
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_prefill(dtype, seqlen_q, page_size, causal):
    """A chunk of a prompt appended after a partly filled cache: many query rows, several
    query tiles, every sequence with a different offset."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_q=seqlen_q, seqlen_new=seqlen_q, cache_len=1500, head_dim=128,
                                               dtype=dtype, page_size=page_size)
    run_and_check(q, k_cache, v_cache, causal=causal, **kwargs)


@requires_gpu
@pytest.mark.parametrize("page_size", layouts(None, 64))
@pytest.mark.parametrize("cache_len", [17, 1000, 65536])
def test_num_splits_agree(cache_len, page_size):
    """No split, the heuristic, 8 splits and 128 (most of them empty for short caches) each
    meet the criterion against the same reference (so agree with each other within twice it),
    and append the same cache rows."""
    batch = 1 if cache_len > 4096 else 3
    q, k_cache, v_cache, kwargs = make_kvcache(batch=batch, seqlen_new=1, cache_len=cache_len, nheads=8, nheads_k=1,
                                               head_dim=128, page_size=page_size)
    for num_splits in (1, 0, 8, 128):
        run_and_check(q, k_cache.clone(), v_cache.clone(), num_splits=num_splits, causal=True, **kwargs)


# seqlen_q, rows appended, rotary, causal
BATCH_IDX_CASES = [
    pytest.param(1, 0, None, False, id="decode-read-only"),
    pytest.param(1, 1, None, True, id="decode"),
    pytest.param(1, 1, "interleaved", True, id="decode-gptj"),
    pytest.param(64, 64, "neox", True, id="prefill64-causal-neox"),
]


@requires_gpu
@pytest.mark.parametrize("seqlen_q, seqlen_new, rotary, causal", BATCH_IDX_CASES)
def test_cache_batch_idx(seqlen_q, seqlen_new, rotary, causal):
    """Sequence i reads and appends to cache row cache_batch_idx[i] (a random pick of 3 of 5
    rows); the 2 rows no sequence owns stay untouched."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_q=seqlen_q, seqlen_new=seqlen_new, rotary=rotary,
                                               batch_idx=True)
    run_and_check(q, k_cache, v_cache, causal=causal, **kwargs)


# seqlen_q (= rows appended, 0: none), rotary, call options
LEFTPAD_CASES = [
    pytest.param(1, 0, None, {}, id="decode-read-only"),
    pytest.param(1, 1, "neox", {"causal": True}, id="decode-neox"),
    pytest.param(64, 64, "interleaved", {"causal": True}, id="prefill64-causal-gptj"),
    pytest.param(64, 64, "neox", {}, id="prefill64-full-neox"),
    pytest.param(64, 64, None, {"window_size": (20, 4), "softcap": 3.0}, id="prefill64-window-softcap"),
]


@requires_gpu
@pytest.mark.sanitizer  # small, and it walks paged caches, the append and the rotary (gpu_check.sh)
@pytest.mark.parametrize("page_size", layouts(None, 16, 64))
@pytest.mark.parametrize("seqlen_q, seqlen_new, rotary, options", LEFTPAD_CASES)
def test_cache_leftpad(seqlen_q, seqlen_new, rotary, options, page_size):
    """Rows before cache_leftpad[i] are invisible; masks count from it, rotary positions do not."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_q=seqlen_q, seqlen_new=seqlen_new, rotary=rotary, leftpad=True,
                                               page_size=page_size)
    run_and_check(q, k_cache, v_cache, **kwargs, **options)


@requires_gpu
@pytest.mark.parametrize("page_size", layouts(None, 64))
@pytest.mark.parametrize("seqlens, seqlen_new", [("none", 0), ("int", 0), ("int", 1), ("int", 32)],
                         ids=["none", "int-read-only", "int-decode", "int-prefill32"])
def test_cache_seqlens_as_none_or_int(seqlens, seqlen_new, page_size):
    """cache_seqlens=None means full caches; an int is every sequence's length."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_q=max(seqlen_new, 1), seqlen_new=seqlen_new, cache_len=200,
                                               page_size=page_size, seqlens=seqlens)
    run_and_check(q, k_cache, v_cache, causal=True, **kwargs)


@requires_gpu
def test_out_alone_without_return_softmax_lse():
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_new=1, page_size=16)
    k_copy, v_copy = k_cache.clone(), v_cache.clone()
    flash_attn_with_kvcache = api("flash_attn_with_kvcache")
    out = flash_attn_with_kvcache(q, k_cache, v_cache, **kwargs)
    assert isinstance(out, torch.Tensor), "out alone unless return_softmax_lse"
    out_with_lse, _ = flash_attn_with_kvcache(q, k_copy, v_copy, **kwargs, return_softmax_lse=True)
    assert torch.equal(out, out_with_lse)
    assert torch.equal(k_cache, k_copy) and torch.equal(v_cache, v_copy)


# ---------------------------------------------------------------- runtime contracts (GPU)


@requires_gpu
@pytest.mark.parametrize("page_size", layouts(None, 64))
def test_cuda_graph_decode_step(page_size):
    """A captured decoding step replayed with new cache_seqlens, q, k, v written into its input
    tensors (fixed shapes) does what an eager call on copies of the caches does, bit for bit."""
    q, k_cache, v_cache, kwargs = make_kvcache(seqlen_new=1, cache_len=500, head_dim=128, page_size=page_size,
                                               rotary="neox")
    flash_attn_with_kvcache = api("flash_attn_with_kvcache")
    step = partial(flash_attn_with_kvcache, causal=True, return_softmax_lse=True, **kwargs)
    side = torch.cuda.Stream()  # warm up on a side stream, as torch.cuda.graph's docs ask
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(q, k_cache, v_cache)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_lse = step(q, k_cache, v_cache)
    seqlens, capacity = kwargs["cache_seqlens"], cache_capacity(k_cache, kwargs.get("block_table"))
    for _ in range(3):
        new_seqlens = torch.randint(0, capacity, seqlens.shape)
        new_seqlens[0], new_seqlens[-1] = 0, capacity - 1
        seqlens.copy_(new_seqlens)
        for t in (q, kwargs["k"], kwargs["v"]):
            t.copy_(torch.randn_like(t))
        ref = kvcache_ref(q, k_cache, v_cache, causal=True, **kwargs)
        eager_k, eager_v = k_cache.clone(), v_cache.clone()
        graph.replay()
        eager_out, eager_lse = step(q, eager_k, eager_v)
        assert torch.equal(static_out, eager_out)
        assert torch.equal(static_lse, eager_lse)
        assert torch.equal(k_cache, eager_k) and torch.equal(v_cache, eager_v)
        check_outputs(static_out, static_lse, ref)
        assert_cache_equal(k_cache, ref.k_cache, "k_cache")
        assert_cache_equal(v_cache, ref.v_cache, "v_cache")


@requires_gpu
def test_torch_compile_fullgraph_matches_eager():
    """The append is an in-place write of graph inputs: the compiled function must leave the
    caches as eager does, without graph breaks (paged, with rotary: every tensor argument)."""
    flash_attn_with_kvcache = api("flash_attn_with_kvcache")

    def decode_step(q, k_cache, v_cache, k, v, **kwargs):
        # Ops around the call, for the compiler to handle; powers of two keep them exact.
        out = flash_attn_with_kvcache(q * 2, k_cache, v_cache, k=k * 0.5, v=v, causal=True, **kwargs)
        return out * 4

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(decode_step, fullgraph=True)
    for _ in range(2):
        q, k_cache, v_cache, kwargs = make_kvcache(seqlen_new=1, page_size=64, rotary="interleaved")
        eager_k, eager_v = k_cache.clone(), v_cache.clone()
        out = compiled(q, k_cache, v_cache, **kwargs)
        eager_out = decode_step(q, eager_k, eager_v, **kwargs)
        torch.testing.assert_close(out, eager_out)
        assert_cache_equal(k_cache, eager_k, "k_cache")
        assert_cache_equal(v_cache, eager_v, "v_cache")
    assert not counters["graph_break"]


# ---------------------------------------------------------------- the op, without a GPU


def test_fwd_kvcache_schema_marks_the_caches_mutated():
    """The op writes k_cache and v_cache in place and nothing else: its schema must say so
    (Tensor(a!)), or torch.compile and functionalization may drop or reorder the append."""
    import flash_attn_rocm  # noqa: F401  (registers torch.ops.flash_attn_rocm)

    schema = torch.ops.flash_attn_rocm.fwd_kvcache.default._schema
    written = {arg.name for arg in schema.arguments if arg.alias_info is not None and arg.alias_info.is_write}
    assert written == {"k_cache", "v_cache"}
    assert all(ret.alias_info is None for ret in schema.returns), "outputs must be fresh tensors"


# ---------------------------------------------------------------- argument validation (CPU)

B, H, H_K, D, CACHE_LEN, PAGE = 2, 4, 2, 64, 32, 16


def zeros(*shape, dtype=torch.float16):
    return torch.zeros(*shape, dtype=dtype)


def int_tensor(values, dtype=torch.int32):
    return torch.tensor(values, dtype=dtype)


def valid_arguments():
    """A decoding step on a contiguous cache of CACHE_LEN rows, which on CPU tensors only fails
    the CUDA check."""
    return dict(q=zeros(B, 1, H, D), k_cache=zeros(B, CACHE_LEN, H_K, D), v_cache=zeros(B, CACHE_LEN, H_K, D),
                k=zeros(B, 1, H_K, D), v=zeros(B, 1, H_K, D), cache_seqlens=int_tensor([3, 5]))


def paged(page_size=PAGE, pages=CACHE_LEN // PAGE, num_blocks=2 * B + 2, dtype=torch.int32):
    """The same capacity in pages: caches [num_blocks, page_size, h_k, d] and block_table."""
    return dict(k_cache=zeros(num_blocks, page_size, H_K, D), v_cache=zeros(num_blocks, page_size, H_K, D),
                block_table=torch.arange(B * pages, dtype=dtype).view(B, pages) % num_blocks)


def rotary(rotary_dim=D, seqlen_ro=CACHE_LEN, sin_dim=None):
    sin_dim = rotary_dim if sin_dim is None else sin_dim
    return dict(rotary_cos=zeros(seqlen_ro, rotary_dim // 2), rotary_sin=zeros(seqlen_ro, sin_dim // 2))


def call_with(**overrides):
    return api("flash_attn_with_kvcache")(**(valid_arguments() | overrides))


ARG_Q, ANY_KV, ANY_CACHE, ANY_ROTARY = r"\bq\b", r"\b[kv]\b", r"\b[kv]_cache\b", r"\brotary_(cos|sin)\b"
BAD_TYPE = (TypeError, ValueError)
NO_NEW = {"k": None, "v": None}

# (overrides, expected exception(s), regex the message must match)
INVALID_ARGUMENTS = {
    "q-list": ({"q": [[0.0]]}, TypeError, ARG_Q),
    "q-3d": ({"q": zeros(B, H, D)}, ValueError, ARG_Q),
    "q-fp32": ({"q": zeros(B, 1, H, D, dtype=torch.float32)}, BAD_TYPE, ARG_Q),
    "k_cache-3d": ({"k_cache": zeros(B, CACHE_LEN, D), "v_cache": zeros(B, CACHE_LEN, D)}, ValueError, ANY_CACHE),
    "k_cache-bf16": ({"k_cache": zeros(B, CACHE_LEN, H_K, D, dtype=torch.bfloat16)}, BAD_TYPE, r"\bk_cache\b"),
    "v_cache-bf16": ({"v_cache": zeros(B, CACHE_LEN, H_K, D, dtype=torch.bfloat16)}, BAD_TYPE, r"\bv_cache\b"),
    "cache-shapes-differ": ({"v_cache": zeros(B, CACHE_LEN + 1, H_K, D)}, ValueError, ANY_CACHE),
    "cache-batch-differs-from-q": ({"k_cache": zeros(B + 1, CACHE_LEN, H_K, D),
                                    "v_cache": zeros(B + 1, CACHE_LEN, H_K, D)}, ValueError, ANY_CACHE),
    "cache-head-dim-differs-from-q": ({"k_cache": zeros(B, CACHE_LEN, H_K, 2 * D),
                                       "v_cache": zeros(B, CACHE_LEN, H_K, 2 * D), "k": zeros(B, 1, H_K, 2 * D),
                                       "v": zeros(B, 1, H_K, 2 * D)}, ValueError, r"(?i)\b(q|[kv]_cache)\b|head.?dim"),
    "nheads-not-divisible": ({"q": zeros(B, 1, 3, D)}, ValueError, r"(?i)n_?heads"),
    "k-without-v": ({"v": None}, BAD_TYPE, ANY_KV),
    "v-without-k": ({"k": None}, BAD_TYPE, ANY_KV),
    "k-fp32": ({"k": zeros(B, 1, H_K, D, dtype=torch.float32)}, BAD_TYPE, r"\bk\b"),
    "k-3d": ({"k": zeros(B, H_K, D), "v": zeros(B, H_K, D)}, ValueError, ANY_KV),
    "k-head-dim-differs": ({"k": zeros(B, 1, H_K, D // 2), "v": zeros(B, 1, H_K, D // 2)}, ValueError, ANY_KV),
    "k-nheads-differ-from-cache": ({"k": zeros(B, 1, H, D), "v": zeros(B, 1, H, D)}, ValueError, ANY_KV),
    "k-batch-differs": ({"k": zeros(B + 1, 1, H_K, D), "v": zeros(B + 1, 1, H_K, D)}, ValueError, ANY_KV),
    "v-shape-differs-from-k": ({"v": zeros(B, 2, H_K, D)}, ValueError, ANY_KV),
    "rotary-without-k-v": (NO_NEW | rotary(), ValueError, r"\brotary_cos\b"),
    "rotary_sin-missing": (rotary() | {"rotary_sin": None}, BAD_TYPE, ANY_ROTARY),
    "rotary-shapes-differ": (rotary(sin_dim=D // 2), ValueError, ANY_ROTARY),
    "rotary_dim-above-head-dim": (rotary(rotary_dim=D + 16), ValueError, r"(?i)\brotary[_ ](cos|sin|dim)\b"),
    "rotary-shorter-than-cache": (rotary(seqlen_ro=CACHE_LEN - 1), ValueError, ANY_ROTARY),
    "cache_seqlens-int64": ({"cache_seqlens": int_tensor([3, 5], torch.int64)}, BAD_TYPE, r"\bcache_seqlens\b"),
    "cache_seqlens-float": ({"cache_seqlens": 3.0}, BAD_TYPE, r"\bcache_seqlens\b"),
    "cache_seqlens-wrong-length": ({"cache_seqlens": int_tensor([3, 5, 1])}, ValueError, r"\bcache_seqlens\b"),
    "cache_seqlens-2d": ({"cache_seqlens": int_tensor([[3], [5]])}, ValueError, r"\bcache_seqlens\b"),
    "cache_seqlens-negative-int": ({"cache_seqlens": -1}, ValueError, r"\bcache_seqlens\b"),
    "cache_seqlens-int-overflows": ({"cache_seqlens": CACHE_LEN}, ValueError, r"\bcache_seqlens\b"),
    "cache_seqlens-int-overflows-paged": (paged() | {"cache_seqlens": CACHE_LEN}, ValueError, r"\bcache_seqlens\b"),
    "block_table-int64": (paged(dtype=torch.int64), BAD_TYPE, r"\bblock_table\b"),
    "block_table-1d": (paged() | {"block_table": int_tensor([0, 1])}, ValueError, r"\bblock_table\b"),
    "block_table-batch-differs": (paged() | {"block_table": int_tensor([[0, 1], [2, 3], [4, 5]])}, ValueError,
                                  r"\bblock_table\b"),
    "page-size-24": (paged(page_size=24, pages=2), ValueError, r"(?i)page"),
    "page-size-8": (paged(page_size=8, pages=4), ValueError, r"(?i)page"),
    "block_table-and-cache_batch_idx": (paged() | {"cache_batch_idx": int_tensor([0, 1])}, ValueError,
                                        r"\bcache_batch_idx\b"),
    "num_splits-negative": ({"num_splits": -1}, ValueError, r"\bnum_splits\b"),
    "num_splits-129": ({"num_splits": 129}, ValueError, r"\bnum_splits\b"),
    "window_size-below-minus-1": ({"window_size": (-2, 0)}, ValueError, "window_size"),
    "window_size-not-a-pair": ({"window_size": (4,)}, TypeError, "window_size"),
    "softcap-negative": ({"softcap": -1.0}, ValueError, "softcap"),
    "softmax_scale-negative": ({"softmax_scale": -0.5}, ValueError, r"\bsoftmax_scale\b"),
    "cache_leftpad-int64": ({"cache_leftpad": int_tensor([0, 1], torch.int64)}, BAD_TYPE, r"\bcache_leftpad\b"),
    "cache_leftpad-wrong-length": ({"cache_leftpad": int_tensor([0, 1, 2])}, ValueError, r"\bcache_leftpad\b"),
    "alibi_slopes-wrong-heads": ({"alibi_slopes": torch.ones(H + 1)}, ValueError, "alibi_slopes"),
    "cpu-tensors": ({}, ValueError, "CUDA"),
}


@pytest.mark.parametrize("overrides, error, message", INVALID_ARGUMENTS.values(), ids=INVALID_ARGUMENTS.keys())
def test_rejects_invalid_arguments(overrides, error, message):
    with pytest.raises(error, match=message):
        call_with(**overrides)


VALID_VARIANTS = {
    "paged": paged(),
    "paged-page256": paged(page_size=256, pages=1, num_blocks=B),
    "read-only-full-caches": NO_NEW | {"cache_seqlens": None},
    "int-cache_seqlens-filling-the-cache": {"cache_seqlens": CACHE_LEN - 1},
    "cache_batch_idx": {"k_cache": zeros(B + 2, CACHE_LEN, H_K, D), "v_cache": zeros(B + 2, CACHE_LEN, H_K, D),
                        "cache_batch_idx": int_tensor([3, 0])},
    "cache_leftpad-paged": paged() | {"cache_leftpad": int_tensor([1, 2])},
    "rotary-partial-neox-longer-table": rotary(rotary_dim=D // 2, seqlen_ro=CACHE_LEN + 9)
                                        | {"rotary_interleaved": False},
    "every-option": {"softmax_scale": 0.5, "causal": True, "window_size": (8, 0), "softcap": 5.0,
                     "alibi_slopes": torch.ones(B, H), "num_splits": 128, "return_softmax_lse": True},
}


@pytest.mark.parametrize("overrides", VALID_VARIANTS.values(), ids=VALID_VARIANTS.keys())
def test_valid_arguments_pass_every_check_before_the_device(overrides):
    with pytest.raises(ValueError, match="CUDA"):  # i.e. every check before the device passed
        call_with(**overrides)


@pytest.mark.parametrize("overrides", [{}, paged() | {"cache_leftpad": int_tensor([1, 2])}],
                         ids=["contiguous", "paged-leftpad"])
def test_meta_tensors_give_output_metadata(overrides):
    """Through the op's fake implementation, as torch.compile traces it: out like q, lse [b, h, sq]."""
    kwargs = {name: t.to("meta") if isinstance(t, torch.Tensor) else t
              for name, t in (valid_arguments() | overrides).items()}
    out, lse = api("flash_attn_with_kvcache")(**kwargs, return_softmax_lse=True)
    q = kwargs["q"]
    assert (out.shape, out.dtype, out.device) == (q.shape, q.dtype, q.device)
    assert (lse.shape, lse.dtype, lse.device) == ((B, H, 1), torch.float32, q.device)
