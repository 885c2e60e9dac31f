"""float8 q, k, v with FlashAttention-3's descale arguments (flash_attn_rocm/_fp8.py): the
dequantization against float64 arithmetic, the argument errors and the fp8 op's fake on the CPU;
the whole call against the reference on a GPU (NVIDIA: dequantized to bfloat16 for the bfloat16
kernels). The AMD fp8 kernel is held to its reference in the emulator (test_emu_attention.py)."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import (assert_within_eager_error, assert_within_fp8_error, attention_ref, fp8_attention_reference,
                      requires_gpu)

from flash_attn_rocm import _fp8, flash_attn_func, flash_attn_varlen_func

FP8 = [torch.float8_e4m3fn, torch.float8_e4m3fnuz]


def fp8_qkv(batch=2, seqlen=37, nheads=6, nheads_k=2, head_dim=64, dtype=torch.float8_e4m3fn, device="cpu",
            scale=4.0):
    g = torch.Generator().manual_seed(0)
    shapes = [(batch, seqlen, nheads, head_dim)] + [(batch, seqlen, nheads_k, head_dim)] * 2
    return [(torch.randn(s, generator=g) * scale).to(dtype).to(device) for s in shapes]


def descales(batch=2, nheads_k=2, device="cpu"):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(batch, nheads_k, generator=g) + 0.05).to(device) for _ in range(3)]


def expected(t, descale, nheads_k):
    """t * descale in float64, a query head taking its kv head's descale; then bfloat16."""
    x = t.double()
    if descale is not None:
        d = descale.double()
        if d.numel() > 1:
            d = d.repeat_interleave(t.shape[-2] // nheads_k, dim=1)[:, None, :, None]
        x = x * d.reshape(()) if d.numel() == 1 else x * d
    return x.to(torch.bfloat16)


@pytest.mark.parametrize("dtype", FP8, ids=["e4m3fn", "e4m3fnuz"])
@pytest.mark.parametrize("kind", ["per_batch_head", "one_value", "none"])
def test_dequantize_matches_float64(dtype, kind):
    q, k, v = fp8_qkv(dtype=dtype)
    if kind == "per_batch_head":
        scales = descales()
    elif kind == "one_value":
        scales = [torch.tensor([0.37]), torch.tensor(1.5), torch.tensor([[0.01]])]
    else:
        scales = [None, None, None]
    _fp8.check(q, k, v, scales, batch=2)
    got = _fp8.dequantize(q, k, v, scales)
    for t, d, g in zip((q, k, v), scales, got):
        assert g.dtype == torch.bfloat16
        assert torch.equal(g, expected(t, d, nheads_k=2))


def test_varlen_dequantize_takes_each_rows_sequence():
    lengths = [5, 0, 17, 3]
    cu = torch.tensor([0, 5, 5, 22, 25], dtype=torch.int32)
    total = sum(lengths)
    g = torch.Generator().manual_seed(2)
    q = (torch.randn(total, 4, 32, generator=g) * 3).to(torch.float8_e4m3fn)
    k = (torch.randn(total, 2, 32, generator=g) * 3).to(torch.float8_e4m3fn)
    v = (torch.randn(total, 2, 32, generator=g) * 3).to(torch.float8_e4m3fn)
    scales = descales(batch=4, nheads_k=2)
    rows = _fp8.varlen_batch_of_row(cu, cu, total, total)
    _fp8.check(q, k, v, scales, batch=4, varlen=True)
    got = _fp8.dequantize(q, k, v, scales, batch_of_row=rows)
    for t, d, g in zip((q, k, v), scales, got):
        for b in range(4):
            part = slice(cu[b].item(), cu[b + 1].item())
            assert torch.equal(g[part], expected(t[part][None], d[b:b + 1], nheads_k=2)[0])


def call(**overrides):
    q, k, v = fp8_qkv()
    kwargs = dict(q=q, k=k, v=v) | overrides
    return flash_attn_func(**kwargs)


@pytest.mark.parametrize("overrides, error, match", [
    (dict(q=torch.zeros(2, 37, 6, 64, dtype=torch.bfloat16)), TypeError, r"\bq\b.*dtype"),
    (dict(v=torch.zeros(2, 37, 2, 64, dtype=torch.float8_e4m3fnuz)), TypeError, r"\bq\b|\bv\b"),
    (dict(q_descale=torch.ones(2, 2, dtype=torch.float64)), TypeError, "q_descale.*float32"),
    (dict(k_descale=torch.ones(2, 6)), ValueError, r"k_descale.*\[2, 2\]"),
    (dict(v_descale=0.5), TypeError, "v_descale"),
    (dict(k=torch.zeros(2, 37, 4, 64).to(torch.float8_e4m3fn), v=torch.zeros(2, 37, 4, 64).to(torch.float8_e4m3fn)),
     ValueError, "divisible"),
    (dict(q=torch.zeros(37, 6, 64).to(torch.float8_e4m3fn)), ValueError, r"\bq\b"),
    (dict(k=torch.zeros(2, 37, 2, 32).to(torch.float8_e4m3fn)), ValueError, r"\bk\b.*head dim"),
    (dict(v=torch.zeros(1, 37, 2, 64).to(torch.float8_e4m3fn)), ValueError, r"\bv\b.*batch"),
], ids=["bf16-q-among-fp8", "two-fp8-formats", "descale-float64", "descale-shape", "descale-float", "gqa",
        "q-3d", "k-head-dim", "v-batch"])
def test_bad_fp8_arguments_name_themselves(overrides, error, match):
    with pytest.raises(error, match=match):
        call(**overrides)


def test_descale_without_fp8_is_refused():
    q = torch.zeros(1, 8, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="k_descale"):
        flash_attn_func(q, q, q, k_descale=torch.ones(1, 2))


def test_fp8_requiring_grad_is_refused():
    q, k, v = fp8_qkv()
    with pytest.raises(NotImplementedError, match="fp8 backward"):
        flash_attn_func(q.requires_grad_(), k, v)


def test_fp8_call_reaches_the_device_check():
    # Past the fp8 layer the usual checks run on the dequantized tensors: on the CPU, the device one.
    with pytest.raises(ValueError, match="CUDA"):
        call(q_descale=torch.ones(2, 2))


def test_varlen_with_block_table_is_refused():
    q = torch.zeros(10, 2, 64).to(torch.float8_e4m3fn)
    cu = torch.tensor([0, 10], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="block_table"):
        flash_attn_varlen_func(q, q, q, cu, cu, 10, 10, block_table=torch.zeros(1, 1, dtype=torch.int32))


def test_only_amd_fp8_devices_run_the_fp8_kernel():
    q, _, _ = fp8_qkv()
    assert not _fp8.runs_natively(q, 0.0, None, 0.0)  # a CPU tensor, and this build is not ROCm's


def test_fwd_fp8_fake_gives_a_bf16_out():
    with FakeTensorMode():
        q = torch.empty(2, 16, 8, 64, dtype=torch.float8_e4m3fnuz, device="cuda")
        k = torch.empty(2, 48, 2, 64, dtype=torch.float8_e4m3fnuz, device="cuda")
        out, lse = torch.ops.flash_attn_rocm.fwd_fp8(q, k, k, None, None, None, 0.125, True)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert lse.shape == (2, 8, 16) and lse.dtype == torch.float32


@requires_gpu
@pytest.mark.parametrize("causal", [False, True])
def test_dequantized_fp8_matches_the_reference(causal):
    """The dequantizing path (here: fp8 with a softcap, which no fp8 kernel takes): the bfloat16
    kernels' error over the dequantized values (the inputs' fp8 rounding is the caller's)."""
    q, k, v = fp8_qkv(batch=2, seqlen=300, device="cuda")
    scales = descales(device="cuda")
    out = flash_attn_func(q, k, v, causal=causal, softcap=30.0, q_descale=scales[0], k_descale=scales[1],
                          v_descale=scales[2])
    assert out.dtype == torch.bfloat16
    qd, kd, vd = (expected(t, d, nheads_k=2) for t, d in zip((q, k, v), scales))
    ref, _ = attention_ref(qd, kd, vd, causal=causal, softcap=30.0)
    eager, _ = attention_ref(qd, kd, vd, causal=causal, softcap=30.0, upcast=False)
    assert_within_eager_error(out, ref, eager)


def native_fp8_or_skip(head_dim):
    q = torch.empty(1, 1, 1, head_dim, device="cuda").to(_fp8.native_format("cuda") or torch.float8_e4m3fn)
    if not _fp8.runs_natively(q, 0.0, None, 0.0):
        pytest.skip("no fp8 kernel on this device and build (Hopper with sm_90a kernels, AMD gfx942/gfx950)")
    return q.dtype


@requires_gpu
@pytest.mark.parametrize("descale", ["per_batch_head", "per_tensor", "none"])
@pytest.mark.parametrize("window_size", [(-1, -1), (100, 0), "causal"], ids=["full", "window", "causal"])
@pytest.mark.parametrize("seqlen_q, seqlen_k", [(300, 1000), (1, 77), (513, 513), (1000, 129)])
@pytest.mark.parametrize("head_dim", [64, 80, 128, 160, 256])
def test_fp8_kernel_matches_the_reference(head_dim, seqlen_q, seqlen_k, window_size, descale):
    """The fp8 kernel (Hopper: fwd_kernel_sm90.h with V transposed by fp8_vt_sm90.h): out within
    what rounding P to e4m3 explains of the float32 reference over the dequantized inputs (the
    emulator holds the AMD kernel to the same bound), lse as the 16-bit kernels'; GQA 6:2."""
    dtype = native_fp8_or_skip(head_dim)
    causal = window_size == "causal"
    window_size = (-1, -1) if causal else window_size
    g = torch.Generator().manual_seed(seqlen_q + head_dim)
    batch, heads, heads_k = 2, 6, 2
    q, k, v = ((torch.randn(batch, s, h, head_dim, generator=g) * 3).to(dtype).cuda()
               for s, h in ((seqlen_q, heads), (seqlen_k, heads_k), (seqlen_k, heads_k)))
    if descale == "per_batch_head":
        scales = [(torch.rand(batch, heads_k, generator=g) * 0.5 + 0.05).cuda() for _ in range(3)]
    elif descale == "per_tensor":
        scales = [torch.tensor([0.3], device="cuda"), torch.tensor([0.2], device="cuda"),
                  torch.tensor([1.7], device="cuda")]
    else:
        scales = [None] * 3
    out, lse, _ = flash_attn_func(q, k, v, causal=causal, window_size=window_size, return_attn_probs=True,
                                  q_descale=scales[0], k_descale=scales[1], v_descale=scales[2])
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    full = [torch.ones(batch, heads_k, device="cuda") if d is None else d.expand(batch, heads_k) for d in scales]
    exact, simulated, lse_ref = fp8_attention_reference(q, k, v, full, causal, window_size)
    assert_within_fp8_error(out, exact, simulated)
    seen = lse_ref.isfinite()
    assert torch.allclose(lse[seen], lse_ref[seen], atol=1e-3, rtol=1e-3)


def test_sdpa_drop_in_takes_fp8_where_pytorch_has_no_kernel():
    from flash_attn_rocm import sdpa

    q = torch.zeros(2, 4, 16, 64).to(torch.float8_e4m3fn)  # [b, h, s, d]
    # On the CPU the reason to fall back is the device, not the dtype: fp8 is served on GPUs.
    reason = sdpa._fallback_reason(q, q, q, None, 0.0, True, None, False)
    assert "CUDA" in reason and "float8" not in reason


@requires_gpu
def test_sdpa_drop_in_runs_fp8():
    from flash_attn_rocm import sdpa

    q, k, v = fp8_qkv(batch=2, seqlen=200, nheads=4, nheads_k=4, device="cuda")
    out = sdpa.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    assert out.dtype == torch.bfloat16
    expected_out = flash_attn_func(q, k, v, causal=True).transpose(1, 2)
    assert torch.equal(out, expected_out)


def fp8_p_key(position: int) -> int:
    """csrc/kernels/fp8_vt_sm90.h's fp8_p_key: the key V^T holds at a position of its 16."""
    t, i = (position % 16) // 4, position % 4
    return position // 16 * 16 + 8 * (i // 2) + 2 * t + i % 2


def test_hopper_fp8_p_fragments_and_vt_agree_on_every_key():
    """The Hopper fp8 forward's two halves of one contract, modelled: pack_p (fwd_kernel_sm90.h)
    builds P's k32 A fragments from S's accumulators (mma's C layout: element e of n8 tile j is row
    g + 8 (e / 2), key 8 j + 2 t + e % 2, g = lane / 4, t = lane % 4), and PTX's 8-bit A fragment
    puts byte i of word w at row g + 8 (w % 2), k = 4 t + 16 (w / 2) + i; V^T stores key
    fp8_p_key(k) at k. Every (row, k) must hold the key V^T has there, each key exactly once."""
    for kk in range(4):  # the k32 steps of a 128-key block
        seen = {}
        for lane in range(32):
            g, t = lane // 4, lane % 4
            for w in range(4):
                tile, e = 4 * kk + 2 * (w // 2), 2 * (w % 2)  # pack_p's choice for word w
                sources = [(tile, e), (tile, e + 1), (tile + 1, e), (tile + 1, e + 1)]
                for i, (j, elem) in enumerate(sources):
                    row, key = g + 8 * (elem // 2), 8 * j + 2 * t + elem % 2
                    frag_row, k = g + 8 * (w % 2), 4 * t + 16 * (w // 2) + i
                    assert row == frag_row, (lane, w, i)
                    assert key == 32 * kk + fp8_p_key(k), (lane, w, i, key, k)
                    seen[(row, k)] = key
        assert len(seen) == 16 * 32  # every (row, k) of the 16-row strip once
        assert sorted({fp8_p_key(k) for k in range(32)}) == list(range(32))
