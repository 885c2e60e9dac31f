"""Forward pass of flash_attn_func on a CUDA GPU: accuracy against eager references,
plus the runtime contracts (streams, CUDA graphs, torch.compile, memory)."""

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import (CAUSAL, COMPILED_HEAD_DIMS, DTYPES, HEAD_DIMS, STRIDED_LAYOUTS, SelfAttention,
                      assert_within_eager_error, attention_ref, fully_masked_rows, make_qkv, poison_allocator_cache,
                      requires_gpu, seqlen_params)

import flash_attn_rocm  # noqa: F401  (registers torch.ops.flash_attn_rocm)
from flash_attn_rocm import flash_attn_func

pytestmark = requires_gpu

# Single rows/keys, partial tiles, sq < sk and sq > sk (causal rows with no visible key).
SMALL_SEQLENS = seqlen_params([(1, 1), (1, 17), (17, 1), (113, 203), (128, 128), (1000, 17), (17, 1000)])
# Many tiles in both directions; kept to a separate, thinner test for run time.
LARGE_SEQLENS = seqlen_params([(1000, 1000), (2048, 2048), (2048, 113)])


def check_against_reference(q, k, v, out, lse, causal=False, softmax_scale=None):
    batch, seqlen_q, nheads, _ = q.shape
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    assert lse.shape == (batch, nheads, seqlen_q) and lse.dtype == torch.float32

    masked = fully_masked_rows(seqlen_q, k.shape[1], causal, q.device)
    assert (out[:, masked] == 0).all(), "rows with no visible key must be exactly zero"
    assert lse[:, :, masked].isneginf().all(), "rows with no visible key must have lse == -inf"
    assert out[:, ~masked].isfinite().all()
    assert lse[:, :, ~masked].isfinite().all()

    out_ref, lse_ref = attention_ref(q, k, v, causal, softmax_scale)
    out_pt, _ = attention_ref(q, k, v, causal, softmax_scale, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
    # The kernel keeps lse in float32, so it should agree closely with the float32 one.
    torch.testing.assert_close(lse[:, :, ~masked], lse_ref[:, :, ~masked], atol=1e-3, rtol=0)


def run_and_check(q, k, v, causal=False, softmax_scale=None):
    batch, seqlen_q, nheads, _ = q.shape
    poison_allocator_cache((q.shape, q.dtype), ((batch, nheads, seqlen_q), torch.float32))
    out, lse, s_dmask = flash_attn_func(q, k, v, softmax_scale=softmax_scale, causal=causal,
                                        return_attn_probs=True)
    assert s_dmask.numel() == 0, "S_dmask must be empty without dropout"
    check_against_reference(q, k, v, out, lse, causal, softmax_scale)
    return out


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize("seqlen_q, seqlen_k", SMALL_SEQLENS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(dtype, head_dim, causal, seqlen_q, seqlen_k):
    # 3 heads: an odd count catches head-indexing mistakes that 2 or 4 would hide.
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=3,
                       head_dim=head_dim, dtype=dtype)
    run_and_check(q, k, v, causal)


@pytest.mark.parametrize("seqlen_q, seqlen_k", LARGE_SEQLENS)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_long_sequences(dtype, head_dim, causal, seqlen_q, seqlen_k):
    q, k, v = make_qkv(batch=1, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=2,
                       head_dim=head_dim, dtype=dtype)
    run_and_check(q, k, v, causal)


@pytest.mark.parametrize("seqlen_q, seqlen_k", seqlen_params([(1, 17), (113, 203), (1000, 17)]))
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", [40, 128, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gqa_matches_reference(dtype, group, head_dim, causal, seqlen_q, seqlen_k):
    # Random data per kv head, so any other head mapping than i // group fails.
    q, k, v = make_qkv(batch=2, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=2 * group,
                       nheads_k=2, head_dim=head_dim, dtype=dtype)
    run_and_check(q, k, v, causal)


@pytest.mark.parametrize("softmax_scale", [0.05, 1.0])
@pytest.mark.parametrize("causal", CAUSAL)
def test_custom_softmax_scale(causal, softmax_scale):
    # 1.0 at head dim 128 makes scores ~N(0, 128): exp overflows unless the kernel
    # subtracts the running row max properly.
    q, k, v = make_qkv(seqlen_q=300, seqlen_k=500, head_dim=128)
    run_and_check(q, k, v, causal, softmax_scale)


@STRIDED_LAYOUTS
@pytest.mark.parametrize("causal", CAUSAL)
def test_non_contiguous_inputs(layout, causal):
    q, k, v = layout(2, 200, 4, 64)
    assert not (k.is_contiguous() and v.is_contiguous()), "layout should be strided"
    run_and_check(q, k, v, causal)


def test_batch_elements_are_independent():
    # Scale each batch element differently: mixing up batch offsets cannot go unnoticed.
    q, k, v = make_qkv(batch=4, seqlen_q=150, seqlen_k=250)
    scale = torch.arange(1, 5, device="cuda", dtype=q.dtype).view(4, 1, 1, 1)
    q, v = q * scale, v * scale
    out = run_and_check(q, k, v, causal=True)
    for i in range(4):
        alone = flash_attn_func(q[i:i + 1], k[i:i + 1], v[i:i + 1], causal=True)
        torch.testing.assert_close(out[i:i + 1], alone)


@pytest.mark.parametrize("dtype", DTYPES)
def test_outputs_dtype_and_device(dtype):
    q, k, v = make_qkv(dtype=dtype)
    out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)
    assert (out.dtype, out.device) == (dtype, q.device)
    assert (lse.dtype, lse.device) == (torch.float32, q.device)
    assert isinstance(flash_attn_func(q, k, v), torch.Tensor), "out alone unless return_attn_probs"


@pytest.mark.parametrize("causal", CAUSAL)
def test_large_shape(causal):
    """b=2, s=8192, h=16, d=128; the full float32 reference would need 8 GiB, so only
    the first and last rows are checked, against references of their own size."""
    q, k, v = make_qkv(batch=2, seqlen_q=8192, nheads=16, head_dim=128, dtype=torch.bfloat16)
    out = flash_attn_func(q, k, v, causal=causal)
    assert out.isfinite().all()
    rows = 128
    # Bottom-right alignment makes the last rows against all keys a self-contained problem,
    # and with causal the first rows only see the first keys.
    head_keys = slice(0, rows) if causal else slice(None)
    for q_rows, keys in [(slice(-rows, None), slice(None)), (slice(0, rows), head_keys)]:
        q_part, k_part, v_part = q[:, q_rows], k[:, keys], v[:, keys]
        out_ref, _ = attention_ref(q_part, k_part, v_part, causal)
        out_pt, _ = attention_ref(q_part, k_part, v_part, causal, upcast=False)
        assert_within_eager_error(out[:, q_rows], out_ref, out_pt)


def test_extra_memory_is_linear_in_seqlen():
    # A kernel that materialises the [s, s] scores (1 GiB here) instead of streaming them fails.
    q, k, v = make_qkv(batch=1, seqlen_q=8192, nheads=8, head_dim=128)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    outputs = flash_attn_func(q, k, v, return_attn_probs=True)
    torch.cuda.synchronize()
    output_bytes = sum(t.untyped_storage().nbytes() for t in outputs)
    extra = torch.cuda.max_memory_allocated() - before - output_bytes
    assert extra < 2**20, f"{extra} bytes allocated besides out and lse"


# ---------------------------------------------------------------- runtime contracts


def test_runs_on_current_stream():
    """The inputs are written on a side stream that is held back by a GPU sleep; a kernel
    launched on another side stream (a cached or internal one) reads them before they are
    written. A launch on the legacy default stream syncs implicitly and passes here; the
    CUDA-graph test below catches that one."""
    q_src, k_src, v_src = make_qkv(seqlen_q=256)
    q, k, v = (torch.zeros_like(t) for t in (q_src, k_src, v_src))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of GPU time
        for dst, src in zip((q, k, v), (q_src, k_src, v_src)):
            dst.copy_(src)
        out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    torch.cuda.synchronize()
    check_against_reference(q_src, k_src, v_src, out, lse, causal=True)


@pytest.mark.parametrize("causal", CAUSAL)
def test_cuda_graph_replay_matches_eager(causal):
    q, k, v = make_qkv(seqlen_q=200, seqlen_k=300, nheads=8, nheads_k=2)
    # Warm up on a side stream, as torch.cuda.graph's docs ask, so any lazy
    # initialisation happens outside the capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        flash_attn_func(q, k, v, causal=causal)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    for _ in range(2):  # new data each replay: the graph must read the inputs, not a snapshot
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        graph.replay()
        eager_out, eager_lse, _ = flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
        # Same kernel, same inputs: a forward pass has no reason not to be bitwise reproducible.
        assert torch.equal(static_out, eager_out)
        assert torch.equal(static_lse, eager_lse)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_fullgraph_matches_eager(dynamic):
    # Parameters require grad, so AOTAutograd traces the backward too (test_bwd.py runs it).
    model = SelfAttention(flash_attn_func).cuda().half()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    for seqlen in (64, 100):
        x = torch.randn(2, seqlen, 256, dtype=torch.float16, device="cuda")
        torch.testing.assert_close(compiled(x), model(x), atol=1e-3, rtol=1e-3)
    assert not counters["graph_break"]


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("seqlen_q, seqlen_k, nheads_k", [(64, 64, 4), (50, 130, 2), (130, 50, 1)])
def test_opcheck(seqlen_q, seqlen_k, nheads_k, causal):
    """Schema, fake (meta) implementation and torch.compile behaviour of the raw op."""
    q, k, v = make_qkv(seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=4, nheads_k=nheads_k)
    torch.library.opcheck(torch.ops.flash_attn_rocm.fwd.default, (q, k, v, 0.125, causal))


def test_rejects_inputs_on_different_devices():
    q, k, v = make_qkv()
    with pytest.raises(ValueError):
        flash_attn_func(q, k.to("meta"), v.to("meta"))


# ---------------------------------------------------------------- compute-sanitizer subset
# scripts/gpu_check.sh runs `-m sanitizer` under memcheck and racecheck: few, small cases that
# still touch every compiled head dim, both masks, GQA and partial tiles.


@pytest.mark.sanitizer
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("head_dim", COMPILED_HEAD_DIMS)
def test_sanitizer_subset(head_dim, causal):
    q, k, v = make_qkv(batch=1, seqlen_q=131, seqlen_k=77, nheads=4, nheads_k=2,
                       head_dim=head_dim, dtype=torch.bfloat16 if head_dim % 64 else torch.float16)
    run_and_check(q, k, v, causal)
