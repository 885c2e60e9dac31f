"""Shared fixtures and helpers for the flash_attn_rocm test-suite.

Test modules import the helpers with `from conftest import ...`, which relies on
pytest's default ("prepend") import mode putting tests/ on sys.path.
"""

import contextlib
import os
import zlib
from itertools import accumulate

import pytest
import torch

# The GPU tests exercise the Hopper kernels that have not yet run on a GPU (off by default for
# users: flash_attn_rocm._ops.set_unverified_kernels), so that a GPU run is what verifies them.
os.environ.setdefault("FLASH_ATTN_ROCM_UNVERIFIED", "1")

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def hopper_available() -> bool:
    """An sm_90 GPU and a build with the Hopper (sm_90a) kernels."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        return False
    from flash_attn_rocm._ops import set_hopper_kernels

    previous = set_hopper_kernels(True)
    set_hopper_kernels(previous)
    return previous


requires_hopper = pytest.mark.skipif(not hopper_available(), reason="needs an sm_90 GPU and an sm_90a build")


@contextlib.contextmanager
def hopper(enabled: bool):
    """Lets the dispatch use the Hopper kernels (or not) inside the block."""
    from flash_attn_rocm._ops import set_hopper_kernels

    previous = set_hopper_kernels(enabled)
    try:
        yield
    finally:
        set_hopper_kernels(previous)


def both_paths(fn):
    """fn() with the Hopper kernels, then with the portable ones."""
    with hopper(True):
        fast = fn()
    with hopper(False):
        portable = fn()
    return fast, portable


# The float32 reference must really be float32: TF32 matmuls would make it less
# accurate than the fp16 kernel it judges.
torch.set_float32_matmul_precision("highest")

DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]

# Softcap, ALiBi and dropout, alone and together (the Hopper kernels' extras variants).
EXTRAS = [pytest.param(dict(softcap=5.0), id="softcap"), pytest.param(dict(alibi=True), id="alibi"),
          pytest.param(dict(dropout_p=0.17), id="dropout"),
          pytest.param(dict(softcap=5.0, alibi=True, dropout_p=0.3), id="all")]


def extras_kwargs(extras: dict, batch: int, nheads: int) -> dict:
    """flash_attn_func's softcap, dropout_p and alibi_slopes ([batch, nheads] on the GPU) for an
    EXTRAS entry."""
    kwargs = dict(softcap=extras.get("softcap", 0.0), dropout_p=extras.get("dropout_p", 0.0))
    if extras.get("alibi"):
        kwargs["alibi_slopes"] = torch.rand(batch, nheads, device="cuda") * 0.3
    return kwargs


def _compiled_head_dims():
    """This build's head dims, or None when flash_attn_rocm does not import (the tests that use
    it then fail on their own, at call time, instead of skipping)."""
    try:
        from flash_attn_rocm import compiled_head_dims
    except ImportError:
        return None
    return tuple(compiled_head_dims())


COMPILED_HEAD_DIMS = _compiled_head_dims()


def head_dim_served(head_dim) -> bool:
    """Whether this build runs head_dim: some compiled head dim is at least as large (the kernels
    pad up to it). A development build filtered by FLASH_ATTN_ROCM_HEAD_DIMS may have none."""
    return COMPILED_HEAD_DIMS is None or head_dim <= COMPILED_HEAD_DIMS[-1]


def _not_served(head_dim) -> str:
    return (f"head dim {head_dim} is above this build's largest, {COMPILED_HEAD_DIMS[-1]} "
            f"(FLASH_ATTN_ROCM_HEAD_DIMS filtered it out)")


def head_dim_params(*head_dims):
    """pytest params of these head dims, each skipped where this build does not serve it."""
    return [pytest.param(d, marks=() if head_dim_served(d) else pytest.mark.skip(reason=_not_served(d)))
            for d in head_dims]


def skip_unless_served(head_dim) -> None:
    """Skips the calling test where this build does not serve head_dim."""
    if not head_dim_served(head_dim):
        pytest.skip(_not_served(head_dim))


# Every compiled head dim, and two that no build compiles, to exercise the rounding up to the next
# one: 40 (to 64 in a full build) and 136 (to 192), skipped where nothing as large is compiled.
ROUNDED_HEAD_DIMS = (40, 136)
HEAD_DIMS = head_dim_params(*sorted({*(COMPILED_HEAD_DIMS or ()), *ROUNDED_HEAD_DIMS}))
CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]


def seqlen_params(pairs):
    return [pytest.param(sq, sk, id=f"sq{sq}-sk{sk}") for sq, sk in pairs]


def cu_seqlens(lengths, device="cuda"):
    """Varlen offsets of sequences with these lengths: int32 [batch + 1], from 0."""
    return torch.tensor([0, *accumulate(lengths)], dtype=torch.int32, device=device)


@pytest.fixture(autouse=True)
def seed(request):
    """Seeds the CPU and CUDA RNGs from the test id: every case gets its own data,
    and a failing case sees the same data when re-run alone."""
    value = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(value)
    return value


def make_qkv(*, batch=2, seqlen_q=128, seqlen_k=None, nheads=4, nheads_k=None, head_dim=64,
             dtype=torch.float16, device="cuda"):
    """Random q [b, sq, h, d] and k, v [b, sk, h_k, d]; skips the test where this build does not
    serve head_dim."""
    skip_unless_served(head_dim)
    seqlen_k = seqlen_q if seqlen_k is None else seqlen_k
    nheads_k = nheads if nheads_k is None else nheads_k

    def randn(seqlen, heads):
        return torch.randn(batch, seqlen, heads, head_dim, dtype=dtype, device=device)

    return randn(seqlen_q, nheads), randn(seqlen_k, nheads_k), randn(seqlen_k, nheads_k)


def causal_mask(seqlen_q, seqlen_k, device=None):
    """[sq, sk] bool, True where query i sees key j, i.e. j <= i + sk - sq
    (bottom-right aligned, as in flash-attn >= 2.1)."""
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    return visible.tril(diagonal=seqlen_k - seqlen_q)


def fully_masked_rows(seqlen_q, seqlen_k, causal, device=None):
    """[sq] bool, True for the query rows that see no key at all."""
    if not causal:
        return torch.zeros(seqlen_q, dtype=torch.bool, device=device)
    return ~causal_mask(seqlen_q, seqlen_k, device).any(dim=-1)


def window_mask(seqlen_q, seqlen_k, window_size, causal=False, device=None):
    """[sq, sk] bool, True where query i sees key j under flash-attn's window_size = (left, right):
    i + sk - sq - left <= j <= i + sk - sq + right, -1 meaning unbounded; causal sets right = 0."""
    left, right = window_size
    right = 0 if causal else right
    offset = (torch.arange(seqlen_k, device=device)[None, :] - torch.arange(seqlen_q, device=device)[:, None]
              - (seqlen_k - seqlen_q))  # j - (i + sk - sq)
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if left >= 0:
        visible &= offset >= -left
    if right >= 0:
        visible &= offset <= right
    return visible


def attention_ref(q, k, v, causal=False, softmax_scale=None, upcast=True, key_padding_mask=None,
                  window_size=(-1, -1), softcap=0.0, alibi_slopes=None, dropout_p=0.0, dropout_mask=None):
    """Eager attention, the obvious way.

    upcast=True computes in float32 (the accuracy reference); upcast=False computes
    in the input dtype, like PyTorch's own low-precision eager path (the yardstick
    for how much error the dtype itself causes).
    key_padding_mask: optional [b, sk] bool, True for the keys that exist (flash-attn's
    convention); the others are invisible to every query. window_size: see window_mask.
    softcap > 0: logits softcap * tanh(scores / softcap); alibi_slopes ([h] or [b, h] fp32): bias
    -slope * |i + sk - sq - j| added after the softcap (flash-attn's order). dropout_mask ([b, h, sq,
    sk] bool, True = kept) zeroes the dropped probabilities and scales the kept by 1 / (1 - dropout_p).
    Returns out [b, sq, h, d] (float32 if upcast, else the input dtype) and the
    natural-log softmax_lse [b, h, sq] in float32 (-inf for rows with no visible key).
    """
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    group = q.shape[2] // k.shape[2]  # GQA: q head i reads kv head i // group
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale

    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        rows = torch.arange(seqlen_q, device=q.device)[:, None]
        cols = torch.arange(seqlen_k, device=q.device)[None, :]
        distance = (rows + seqlen_k - seqlen_q - cols).abs().to(scores.dtype)
        slopes = alibi_slopes.to(scores.dtype).reshape(-1, q.shape[2], 1, 1)  # [1 or b, h, 1, 1]
        scores = scores - slopes * distance
    if causal or tuple(window_size) != (-1, -1):
        scores = scores.masked_fill(~window_mask(seqlen_q, seqlen_k, window_size, causal, q.device), float("-inf"))
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)
    # softmax of an all -inf row is NaN; such rows are defined to output zeros
    probs = torch.softmax(scores, dim=-1).masked_fill(lse.isneginf()[..., None], 0.0)
    if dropout_mask is not None:
        probs = probs.masked_fill(~dropout_mask, 0.0) / (1 - dropout_p)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out, lse


def assert_within_eager_error(value, ref, eager, name="out", floor_magnitude=None):
    """flash-attn's criterion: `value` may be at most twice as far from the float32 reference
    `ref` as PyTorch's eager path in the same dtype (`eager`) is, plus one ulp at
    `floor_magnitude` (default: ref's largest magnitude) for shapes where the eager path is
    exact (one key: out == v)."""
    if floor_magnitude is None:
        floor_magnitude = ref.abs().max().item()
    err = (value.float() - ref).abs().max().item()
    eager_err = (eager.float() - ref).abs().max().item()
    floor = torch.finfo(value.dtype).eps * floor_magnitude
    assert err <= 2 * eager_err + floor, (
        f"{name}: max error {err:.3g}, eager {value.dtype} error {eager_err:.3g}, floor {floor:.3g}")


def assert_functional(schema):
    # A functional op with fresh outputs is what torch.compile and CUDA graphs assume.
    assert not schema.is_mutable
    assert all(ret.alias_info is None for ret in schema.returns)


def api(name):
    """flash_attn_rocm.<name>, looked up at call time: a test of a function that has not landed
    yet fails alone, while its module still collects and its other tests run."""
    import flash_attn_rocm

    return getattr(flash_attn_rocm, name)


def poison_allocator_cache(*blocks):
    """Leaves NaN-filled blocks of the given (shape, dtype)s in PyTorch's caching allocator, so
    output or scratch elements the kernel forgets to write (or to zero before accumulating
    into) most likely read as NaN, not 0. All blocks live at once, so equal sizes get
    distinct blocks."""
    poisoned = [torch.full(shape, float("nan"), dtype=dtype, device="cuda") for shape, dtype in blocks]
    del poisoned


# ---------------------------------------------------------------- strided layouts
# Each returns fp16 CUDA q, k, v [b, s, h, d] that are views with other strides than a
# contiguous tensor's, as real models produce them.


def packed_qkv(batch, seqlen, nheads, head_dim):
    """q, k, v as views of one [b, s, 3, h, d] tensor, like a fused QKV projection."""
    return torch.randn(batch, seqlen, 3, nheads, head_dim, dtype=torch.float16, device="cuda").unbind(2)


def packed_kv(batch, seqlen, nheads, head_dim):
    """q alone, k and v as views of one [b, sk, 2, h, d] tensor, with sk != sq."""
    q = torch.randn(batch, seqlen, nheads, head_dim, dtype=torch.float16, device="cuda")
    kv = torch.randn(batch, seqlen + 37, 2, nheads, head_dim, dtype=torch.float16, device="cuda")
    return (q, *kv.unbind(2))


def heads_first(batch, seqlen, nheads, head_dim):
    """[b, h, s, d] tensors transposed to [b, s, h, d]: the head stride exceeds the seq stride."""
    return tuple(torch.randn(batch, nheads, seqlen, head_dim, dtype=torch.float16, device="cuda")
                 .transpose(1, 2) for _ in range(3))


def head_dim_slice(batch, seqlen, nheads, head_dim):
    """The first head_dim channels of wider rows: padded head and sequence strides."""
    return tuple(torch.randn(batch, seqlen, nheads, head_dim + 24, dtype=torch.float16, device="cuda")
                 [..., :head_dim] for _ in range(3))


STRIDED_LAYOUTS = pytest.mark.parametrize("layout", [packed_qkv, packed_kv, heads_first, head_dim_slice],
                                          ids=lambda f: f.__name__)


# ---------------------------------------------------------------- fp8


def fp8_attention_reference(q, k, v, descales, causal, window_size=(-1, -1)):
    """(exact, simulated, lse): attention over the dequantized inputs (descales [b, h_k]) in float32,
    and the same with P rounded to e4m3 the way the fp8 kernels feed it to the second product
    (P * 128, using the final row max where the kernels use the running one): the error the fp8 P
    alone explains."""
    heads, heads_k = q.shape[2], k.shape[2]
    qf, kf, vf = (t.float() * d.to(t.device).repeat_interleave(t.shape[2] // heads_k, 1)[:, None, :, None]
                  for t, d in zip((q, k, v), descales))
    exact, lse = attention_ref(qf, kf, vf, causal=causal, window_size=window_size)
    kr, vr = (t.repeat_interleave(heads // heads_k, 2) for t in (kf, vf))
    scores = torch.einsum("bqhd,bkhd->bhqk", qf, kr) * q.shape[-1] ** -0.5
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    rows = torch.arange(seqlen_q, device=q.device)[:, None] + seqlen_k - seqlen_q
    cols = torch.arange(seqlen_k, device=q.device)[None, :]
    left, right = window_size
    right = 0 if causal else right
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=q.device)
    if right >= 0:
        visible &= cols <= rows + right
    if left >= 0:
        visible &= cols >= rows - left
    scores = scores.masked_fill(~visible, float("-inf"))
    p = torch.exp(scores - scores.amax(-1, keepdim=True)).nan_to_num(0.0)
    p_fp8 = (p * 128).to(q.dtype).float() / 128
    simulated = torch.einsum("bhqk,bkhd->bqhd", p_fp8 / p.sum(-1, keepdim=True).clamp_min(1e-30), vr)
    return exact, simulated, lse


def _rms(x):
    return x.float().pow(2).mean().sqrt().item()


def assert_within_fp8_error(out, exact, simulated):
    """An fp8 forward's out against fp8_attention_reference: RMS within 1.25x and max within 1.5x
    of the error rounding P to e4m3 explains, plus bf16's rounding of the output."""
    out_error, p_error = out.float() - exact, simulated - exact
    assert _rms(out_error) <= 1.25 * _rms(p_error) + 2 ** -8 * _rms(exact), (_rms(out_error), _rms(p_error))
    assert out_error.abs().max().item() <= 1.5 * p_error.abs().max().item() + 2 ** -8 * exact.abs().max().item(), (
        out_error.abs().max().item(), p_error.abs().max().item())


# ---------------------------------------------------------------- models


class SelfAttention(torch.nn.Module):
    """A fused-QKV projection feeding `attention(q, k, v, causal=True)` (flash_attn_func or an
    eager stand-in), then an output projection: the op sits between other layers."""

    def __init__(self, attention, dim=256, nheads=4):
        super().__init__()
        self.attention = attention
        self.nheads = nheads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        batch, seqlen, dim = x.shape
        q, k, v = self.qkv(x).view(batch, seqlen, 3, self.nheads, dim // self.nheads).unbind(2)
        out = self.attention(q, k, v, causal=True)
        return self.proj(out.reshape(batch, seqlen, dim))
