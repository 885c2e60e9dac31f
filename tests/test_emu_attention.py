"""flash_attn_rocm's kernels as an AMD GPU would run them, without one: the kernel library compiled
for each AMD target (gfx90a, gfx942, gfx950, gfx1100, gfx1201) and executed by the wavefront
emulator on CPU tensors (compiled and emulated, not run on AMD hardware). Held to the GPU tests'
fp32 reference and 2x criterion: forward, backward, varlen (with empty sequences), GQA, causal and
window, softcap and ALiBi, dropout (the mask of flash_attn_rocm._dropout), the deterministic
backward, and the KV cache with pages and splits (varlen over paged K/V: refused, for now);
tiny odd shapes, fp16 and bf16; and the fp8 forward on gfx942/gfx950 against the error that
rounding P to e4m3 explains.

The AMD kernels run on the target's matrix cores (MFMA on CDNA, WMMA on RDNA: fwd_kernel_amd.h,
bwd_kernel_amd.h, fwd_kvcache_kernel_amd.h), whose tiles fit every target's LDS; a kernel that
could not launch somewhere would be listed, by kernel and target, in emu_targets.REPLACED_BY_ISSUE_21
(empty) and be a strict expected failure there.
"""

import pytest
import torch

from conftest import (DTYPES, assert_within_eager_error, assert_within_fp8_error, attention_ref, cu_seqlens,
                      fp8_attention_reference, fully_masked_rows)
from emu_library import LaunchRefused
from emu_targets import (REPLACED_BY_ISSUE_21, TARGET_LDS, TARGETS, dropout_module, emu,  # noqa: F401 (emu: a fixture)
                         target_head_dim_params, target_params)

CPU = "cpu"


def randn(*shape, dtype=torch.float16):
    return torch.randn(*shape, dtype=dtype)


def make_qkv(batch, seqlen_q, seqlen_k, heads, heads_k, head_dim, dtype):
    return (randn(batch, seqlen_q, heads, head_dim, dtype=dtype),
            randn(batch, seqlen_k, heads_k, head_dim, dtype=dtype), randn(batch, seqlen_k, heads_k, head_dim, dtype=dtype))


def check_lse(lse, lse_ref):
    hidden = lse_ref.isneginf()
    assert (lse[hidden] == float("-inf")).all(), "rows that see no key must have lse = -inf"
    assert torch.allclose(lse[~hidden], lse_ref[~hidden], atol=1e-3, rtol=1e-3)


def check_forward(emu, q, k, v, dropout_mask=None, **kwargs):
    """Runs the emulated forward and checks out and lse; returns (out, lse, rng_state)."""
    out, lse, rng_state = emu.fwd(q, k, v, **kwargs)
    ref_kwargs = {key: value for key, value in kwargs.items() if key not in ("seed", "offset")}
    if dropout_mask is not None:
        ref_kwargs["dropout_mask"] = dropout_mask(rng_state)
    ref, lse_ref = attention_ref(q, k, v, **ref_kwargs)
    eager, _ = attention_ref(q, k, v, upcast=False, **ref_kwargs)
    assert_within_eager_error(out, ref, eager)
    check_lse(lse, lse_ref)
    return out, lse, rng_state


def reference_grads(q, k, v, dout, upcast, **kwargs):
    if upcast:
        q, k, v, dout = (t.float() for t in (q, k, v, dout))
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, _ = attention_ref(q, k, v, upcast=upcast, **kwargs)
    return torch.autograd.grad(out, (q, k, v), dout)


def check_grads(grads, q, k, v, dout, **kwargs):
    refs = reference_grads(q, k, v, dout, True, **kwargs)
    eagers = reference_grads(q, k, v, dout, False, **kwargs)
    for name, grad, ref, eager in zip(("dq", "dk", "dv"), grads, refs, eagers):
        assert grad.isfinite().all(), f"{name} has non-finite elements"
        # One ulp at 1 (the scale of the unit-variance inputs) bounds the kernel's rounding noise
        # where a gradient is 0 in exact math (test_bwd.py).
        assert_within_eager_error(grad, ref, eager, name, floor_magnitude=max(1.0, ref.abs().max().item()))


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target, head_dim", target_head_dim_params("fwd", [40, 128, 200]))
def test_fwd_gqa(emu, dtype, head_dim, causal):
    """Two query heads on one kv head; 97 rows against 130 keys (partial tiles both ways)."""
    q, k, v = make_qkv(2, 97, 130, 2, 1, head_dim, dtype)
    check_forward(emu, q, k, v, causal=causal)


@pytest.mark.parametrize("seqlen_q, seqlen_k, causal", [(1, 1, False), (17, 1, True), (130, 60, True), (1, 200, False)],
                         ids=["1x1", "17x1-causal", "130x60-causal", "1x200"])
@pytest.mark.parametrize("target", target_params())
def test_fwd_edges(emu, seqlen_q, seqlen_k, causal):
    """Single rows and keys, and causal rows that see no key (sq > sk): O = 0, lse = -inf."""
    q, k, v = make_qkv(1, seqlen_q, seqlen_k, 2, 2, 64, torch.float16)
    out, _, _ = check_forward(emu, q, k, v, causal=causal)
    assert (out[:, fully_masked_rows(seqlen_q, seqlen_k, causal)] == 0).all()


@pytest.mark.parametrize("window_size, causal", [((20, 5), False), ((33, -1), True), ((0, 0), False)],
                         ids=["20-5", "33-causal", "0-0"])
@pytest.mark.parametrize("target", target_params())
def test_fwd_window(emu, window_size, causal):
    q, k, v = make_qkv(1, 150, 170, 2, 1, 64, torch.bfloat16)
    check_forward(emu, q, k, v, causal=causal, window_size=window_size)


@pytest.mark.parametrize("softcap, alibi, causal", [(5.0, None, False), (0.0, "per-head", True),
                                                    (3.0, "per-batch", False)],
                         ids=["softcap", "alibi-causal", "softcap-alibi"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", target_params())
def test_fwd_score_mods(emu, dtype, softcap, alibi, causal):
    q, k, v = make_qkv(2, 70, 90, 2, 2, 64, dtype)
    slopes = {None: None, "per-head": torch.rand(2) * 0.3, "per-batch": torch.rand(2, 2) * 0.3}[alibi]
    check_forward(emu, q, k, v, causal=causal, softcap=softcap, alibi_slopes=slopes)


@pytest.mark.parametrize("extras", ["softcap-alibi-window", "dropout"])
@pytest.mark.parametrize("target, head_dim", target_head_dim_params("fwd", [200]))
def test_fwd_extras_with_the_head_dim_split(emu, head_dim, extras):
    """Above head dim 128 RDNA's waves share their query rows, each with a part of the head dim
    (tile_config.h's kDSplit): the score modifiers, the window and dropout must see the whole of S,
    and one wave of each pair writes the rows' lse. 200 leaves the second part partly empty."""
    q, k, v = make_qkv(1, 40, 70, 2, 1, head_dim, torch.float16)
    if extras == "dropout":
        keep_mask = dropout_module().keep_mask
        check_forward(emu, q, k, v, causal=True, dropout_p=0.3, seed=0x1234_5678_9ABC, offset=8,
                      dropout_mask=lambda rng_state: keep_mask(rng_state, 0.3, 1, 2, 40, 70))
    else:
        check_forward(emu, q, k, v, softcap=4.0, alibi_slopes=torch.rand(2) * 0.3, window_size=(25, 3))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("target", target_params())
def test_fwd_dropout_mask_is_flash_attn_rocms(emu, causal):
    """The kernel drops exactly what flash_attn_rocm._dropout.keep_mask (the NVIDIA kernels' mask)
    says for the same (seed, offset), and records them in rng_state."""
    keep_mask = dropout_module().keep_mask
    q, k, v = make_qkv(2, 77, 140, 2, 1, 64, torch.float16)
    seed, offset = 0x1234_5678_9ABC, 8

    def mask(rng_state):
        assert rng_state.tolist() == [seed, offset]
        return keep_mask(rng_state, 0.3, 2, 2, 77, 140)

    check_forward(emu, q, k, v, causal=causal, dropout_p=0.3, seed=seed, offset=offset, dropout_mask=mask)


def varlen_case(q_lens, k_lens, heads, heads_k, head_dim, dtype):
    q = randn(sum(q_lens), heads, head_dim, dtype=dtype)
    k, v = randn(sum(k_lens), heads_k, head_dim, dtype=dtype), randn(sum(k_lens), heads_k, head_dim, dtype=dtype)
    return q, k, v, cu_seqlens(q_lens, CPU), cu_seqlens(k_lens, CPU)


def split(t, lens):
    return torch.split(t, list(lens))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", target_params())
def test_varlen_fwd(emu, dtype, causal):
    """Sequences of 37, 0, 130 and 1 rows against 50, 3, 120 and 0 keys: an empty sequence, and a
    row with no key at all (O = 0, lse = -inf)."""
    q_lens, k_lens = [37, 0, 130, 1], [50, 3, 120, 0]
    q, k, v, cu_q, cu_k = varlen_case(q_lens, k_lens, 2, 1, 64, dtype)
    out, lse, _ = emu.varlen_fwd(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal=causal)
    sequences = zip(split(q, q_lens), split(k, k_lens), split(v, k_lens), split(out, q_lens))
    for i, (qs, ks, vs, os_) in enumerate(sequences):
        if len(qs) == 0:
            continue
        lse_i = lse[:, cu_q[i]:cu_q[i + 1]]
        if len(ks) == 0:
            assert (os_ == 0).all() and lse_i.isneginf().all(), f"sequence {i} has no key"
            continue
        ref, lse_ref = attention_ref(qs[None], ks[None], vs[None], causal)
        eager, _ = attention_ref(qs[None], ks[None], vs[None], causal, upcast=False)
        assert_within_eager_error(os_[None], ref, eager, f"out of sequence {i}")
        check_lse(lse_i, lse_ref[0])


@pytest.mark.parametrize("target", target_params())
def test_varlen_fwd_paged_is_refused(emu):
    """varlen_fwd with block_table (paged K/V, chunked prefill) is NVIDIA-only for now: the AMD
    forward reads contiguous K/V, and paging it spilled SGPRs in its extras variants (dispatch.cu),
    so the dispatch refuses the launch instead of reading the pages as one tensor."""
    from test_varlen_paged import paged_kv

    q_lens, k_lens = [37, 0, 5], [50, 3, 77]
    q = randn(sum(q_lens), 4, 64)
    k_pages, v_pages, block_table, _, _ = paged_kv(k_lens, 2, 64, 16, torch.float16, device=CPU)
    with pytest.raises(LaunchRefused):
        emu.varlen_fwd(q, k_pages, v_pages, cu_seqlens(q_lens, CPU), cu_seqlens(k_lens, CPU), max(q_lens),
                       max(k_lens), block_table=block_table)




# ---------------------------------------------------------------- fp8 forward (gfx942, gfx950)

FP8_FORMAT = {"gfx942": torch.float8_e4m3fnuz, "gfx950": torch.float8_e4m3fn}  # what their fp8 MFMA reads


@pytest.mark.parametrize("window_size", [(-1, -1), (40, 0), (-1, -1, "causal")], ids=["full", "window", "causal"])
@pytest.mark.parametrize("descale", ["per_batch_head", "per_tensor", "none"])
@pytest.mark.parametrize("target, head_dim", [pytest.param(t, d, id=f"{t}-d{d}") for t in TARGETS if t in FP8_FORMAT
                                              for d in (64, 128, 256)])
def test_fwd_fp8(emu, target, head_dim, descale, window_size):
    """The fp8 forward on the fp8 MFMA: out within what rounding P to e4m3 explains of the float32
    reference over the dequantized inputs (RMS within 1.25x of the simulated rounding's, max within
    1.5x, plus bf16's output rounding), lse as in the other tests (it comes from the fp32 scores); GQA,
    97 queries against 130 keys (partial tiles), seeded random inputs spanning e4m3's range."""
    causal = len(window_size) == 3
    window_size = window_size[:2]
    fp8 = FP8_FORMAT[target]
    g = torch.Generator().manual_seed(head_dim)
    batch, seqlen_q, seqlen_k, heads, heads_k = 2, 97, 130, 4, 2
    q, k, v = ((torch.randn(batch, s, h, head_dim, generator=g) * 3).to(fp8)
               for s, h in ((seqlen_q, heads), (seqlen_k, heads_k), (seqlen_k, heads_k)))
    if descale == "per_batch_head":
        descales = [torch.rand(batch, heads_k, generator=g) * 0.5 + 0.05 for _ in range(3)]
    elif descale == "per_tensor":
        descales = [torch.tensor([0.3]), torch.tensor([0.2]), torch.tensor([1.7])]
    else:
        descales = [None] * 3
    out, lse = emu.fwd_fp8(q, k, v, *descales, causal=causal, window_size=window_size)
    assert out.dtype == torch.bfloat16
    ones = torch.ones(batch, heads_k)
    full = [ones if d is None else d.expand(batch, heads_k) for d in descales]
    exact, simulated, lse_ref = fp8_attention_reference(q, k, v, full, causal, window_size)
    assert_within_fp8_error(out, exact, simulated)
    check_lse(lse, lse_ref)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("target", [pytest.param(t, id=t) for t in TARGETS if t in FP8_FORMAT])
def test_varlen_fwd_fp8(emu, target, causal):
    """The fp8 forward over packed sequences of different lengths (an empty one included), each
    with its own descales: every sequence against its own reference."""
    fp8 = FP8_FORMAT[target]
    lengths, heads, heads_k, head_dim = [5, 0, 70, 33], 4, 2, 64
    cu = cu_seqlens(lengths, device=CPU)
    g = torch.Generator().manual_seed(7)
    total = sum(lengths)
    q, k, v = ((torch.randn(total, h, head_dim, generator=g) * 3).to(fp8) for h in (heads, heads_k, heads_k))
    descales = [torch.rand(len(lengths), heads_k, generator=g) * 0.5 + 0.05 for _ in range(3)]
    out, lse = emu.fwd_fp8(q, k, v, *descales, causal=causal, cu_seqlens=(cu, cu, max(lengths), max(lengths)))
    for b, length in enumerate(lengths):
        if length == 0:
            continue
        rows = slice(cu[b].item(), cu[b + 1].item())
        exact, simulated, lse_ref = fp8_attention_reference(
            *(t[rows][None] for t in (q, k, v)), [d[b:b + 1] for d in descales], causal)
        assert_within_fp8_error(out[rows][None], exact, simulated)
        check_lse(lse[:, rows][None], lse_ref)


# ---------------------------------------------------------------- backward


def run_backward(emu, q, k, v, deterministic=False, **kwargs):
    out, lse, rng_state = emu.fwd(q, k, v, **kwargs)
    dout = torch.randn_like(out)
    bwd_kwargs = {key: value for key, value in kwargs.items() if key not in ("seed", "offset")}
    grads = emu.bwd(dout, q, k, v, out, lse, rng_state=rng_state, deterministic=deterministic, **bwd_kwargs)
    return grads, dout, rng_state


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", target_params(("bwd", 32)))
def test_bwd_gqa(emu, dtype, causal):
    """dq, dk, dv (summed over the two query heads of the kv head) at head dim 32: 100 queries
    against 150 keys, two key blocks."""
    q, k, v = make_qkv(1, 100, 150, 2, 1, 32, dtype)
    grads, dout, _ = run_backward(emu, q, k, v, causal=causal)
    check_grads(grads, q, k, v, dout, causal=causal)


@pytest.mark.parametrize("target, head_dim", target_head_dim_params("bwd", [64, 128, 200, 256]))
def test_bwd_head_dims(emu, head_dim):
    """Head dims on both sides of 128, where the AMD backward splits dK and dV's channels over two
    waves (200 runs the d256 kernel with a partial head dim)."""
    q, k, v = make_qkv(1, 40, 40, 1, 1, head_dim, torch.float16)
    grads, dout, _ = run_backward(emu, q, k, v)
    check_grads(grads, q, k, v, dout)


@pytest.mark.parametrize("target", target_params(("bwd", 32)))
def test_bwd_deterministic_is_bitwise_reproducible_across_schedules(emu):
    """The deterministic backward adds each key block's dQ behind a semaphore that other blocks
    release: the emulator must switch blocks when one spins, and every block and thread order
    (three seeds) must give the same bits."""
    q, k, v = make_qkv(1, 90, 300, 2, 2, 32, torch.float16)
    out, lse, _ = emu.fwd(q, k, v, causal=True)
    dout = torch.randn_like(out)
    results, resumed = [], 0
    for seed in (1, 2, 3):
        emu.set_seed(seed)
        results.append(emu.bwd(dout, q, k, v, out, lse, causal=True, deterministic=True))
        resumed += emu.raw.fa_emu_last_launch_resumed_blocks()
    assert resumed > 0, "some block must have waited for another one"
    for grads in results[1:]:
        for a, b in zip(results[0], grads):
            assert torch.equal(a, b)
    check_grads(results[0], q, k, v, dout, causal=True)


@pytest.mark.parametrize("kwargs", [dict(window_size=(30, 10)), dict(softcap=4.0, alibi_slopes="per-head"),
                                    dict(causal=True, dropout_p=0.25)],
                         ids=["window", "softcap-alibi", "dropout-causal"])
@pytest.mark.parametrize("target", target_params(("bwd", 32)))
def test_bwd_extras(emu, kwargs):
    kwargs = dict(kwargs)
    if kwargs.get("alibi_slopes") == "per-head":
        kwargs["alibi_slopes"] = torch.rand(2) * 0.3
    if kwargs.get("dropout_p"):
        kwargs.update(seed=99, offset=4)
    q, k, v = make_qkv(2, 60, 140, 2, 2, 32, torch.bfloat16)
    grads, dout, rng_state = run_backward(emu, q, k, v, **kwargs)
    ref_kwargs = {key: value for key, value in kwargs.items() if key not in ("seed", "offset")}
    if kwargs.get("dropout_p"):
        ref_kwargs["dropout_mask"] = dropout_module().keep_mask(rng_state, kwargs["dropout_p"], 2, 2, 60, 140)
    check_grads(grads, q, k, v, dout, **ref_kwargs)


@pytest.mark.parametrize("target", target_params(("bwd", 32)))
def test_varlen_bwd(emu):
    """Packed sequences of 30, 0, 70 rows against 45, 5, 140 keys."""
    q_lens, k_lens = [30, 0, 70], [45, 5, 140]
    q, k, v, cu_q, cu_k = varlen_case(q_lens, k_lens, 2, 1, 32, torch.float16)
    out, lse, _ = emu.varlen_fwd(q, k, v, cu_q, cu_k, max(q_lens), max(k_lens), causal=True)
    dout = torch.randn_like(out)
    dq, dk, dv = emu.varlen_bwd(dout, q, k, v, out, lse, cu_q, cu_k, max(q_lens), max(k_lens), causal=True,
                                deterministic=True)
    for i in range(len(q_lens)):
        rows, keys = slice(cu_q[i], cu_q[i + 1]), slice(cu_k[i], cu_k[i + 1])
        if q_lens[i] == 0:
            assert (dk[keys] == 0).all() and (dv[keys] == 0).all(), "keys no query sees get zero gradients"
            continue
        check_grads((dq[rows][None], dk[keys][None], dv[keys][None]), q[rows][None], k[keys][None], v[keys][None],
                    dout[rows][None], causal=True)


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target, head_dim", target_head_dim_params("kvcache", [64, 128, 256]))
def test_kvcache_paged_with_splits(emu, dtype, head_dim):
    """Decode of 3 new rows into a paged cache (pages of 16 rows, a shuffled block table), with
    rotary and 3 KV splits, against the GPU tests' reference (test_kvcache.kvcache_ref)."""
    from test_kvcache import kvcache_ref

    batch, heads, heads_k, page, pages_per_seq = 2, 4, 2, 16, 6
    q = randn(batch, 3, heads, head_dim, dtype=dtype)
    k_cache = randn(batch * pages_per_seq + 2, page, heads_k, head_dim, dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    block_table = torch.randperm(batch * pages_per_seq + 2, dtype=torch.int32)[:batch * pages_per_seq]
    block_table = block_table.view(batch, pages_per_seq).contiguous()
    cache_seqlens = torch.tensor([37, 80], dtype=torch.int32)
    k_new, v_new = randn(batch, 3, heads_k, head_dim, dtype=dtype), randn(batch, 3, heads_k, head_dim, dtype=dtype)
    rotary_dim = 32
    angles = torch.rand(page * pages_per_seq, rotary_dim // 2) * 6.28
    cos, sin = angles.cos(), angles.sin()
    kwargs = dict(k=k_new, v=v_new, rotary_cos=cos, rotary_sin=sin, cache_seqlens=cache_seqlens,
                  block_table=block_table, causal=True, softmax_scale=head_dim ** -0.5)
    ref = kvcache_ref(q, k_cache, v_cache, **kwargs)
    out, lse = emu.fwd_kvcache(q, k_cache, v_cache, num_splits=3, **kwargs)
    assert torch.equal(k_cache, ref.k_cache) and torch.equal(v_cache, ref.v_cache), "the append"
    assert_within_eager_error(out, ref.out, ref.out_eager)
    check_lse(lse, ref.lse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", target_params())
def test_kvcache_decode_contiguous(emu, dtype):
    """Decode (one query row per sequence, so the four query heads of the kv head fold into one
    block's rows) over a contiguous cache whose rows cache_batch_idx picks, left-padded, with one
    appended row rotated (GPT-NeoX) at flash-attn's position cache_seqlens, not shifted by the
    left padding, and 2 KV splits."""
    from test_kvcache import kvcache_ref

    batch, heads, head_dim, capacity = 3, 4, 64, 150
    q = randn(batch, 1, heads, head_dim, dtype=dtype)
    k_cache, v_cache = randn(4, capacity, 1, head_dim, dtype=dtype), randn(4, capacity, 1, head_dim, dtype=dtype)
    kwargs = dict(k=randn(batch, 1, 1, head_dim, dtype=dtype), v=randn(batch, 1, 1, head_dim, dtype=dtype),
                  cache_seqlens=torch.tensor([100, 5, 140], dtype=torch.int32),
                  cache_batch_idx=torch.tensor([2, 0, 3], dtype=torch.int32),
                  cache_leftpad=torch.tensor([10, 0, 30], dtype=torch.int32), softmax_scale=head_dim ** -0.5)
    angles = torch.rand(capacity, 16) * 6.28
    # cos, sin in q's dtype: their products with it are exact in fp32, so the rotated rows match bitwise.
    kwargs |= dict(rotary_cos=angles.cos().to(dtype), rotary_sin=angles.sin().to(dtype), rotary_interleaved=False)
    ref = kvcache_ref(q, k_cache, v_cache, **kwargs)
    out, lse = emu.fwd_kvcache(q, k_cache, v_cache, num_splits=2, **kwargs)
    assert torch.equal(k_cache, ref.k_cache) and torch.equal(v_cache, ref.v_cache), "the append"
    assert_within_eager_error(out, ref.out, ref.out_eager)
    check_lse(lse, ref.lse)


# ---------------------------------------------------------------- what cannot launch where


@pytest.mark.parametrize("target", TARGETS)
def test_issue_21_marks_are_exactly_the_refused_launches(emu, target):
    """REPLACED_BY_ISSUE_21 lists what the AMD kernels' LDS (tile_config.h) and the target's limit
    say, for every head dim of the full build: no mark is missing and none is stale (today: no
    kernel needs more LDS than any target has; test_emu_emulator.py shows a refused launch)."""
    assert emu.lds_bytes == TARGET_LDS[target]
    for kernel in ("fwd", "bwd", "kvcache"):
        for head_dim in (32, 64, 96, 128, 192, 256):
            refused = emu.lds_of(kernel, head_dim) > emu.lds_bytes
            assert refused == (target in REPLACED_BY_ISSUE_21.get((kernel, head_dim), ())), (kernel, head_dim)

