"""Shared fixtures and helpers for the flash_attn_rocm test-suite.

Test modules import the helpers with `from conftest import ...`, which relies on
pytest's default ("prepend") import mode putting tests/ on sys.path.
"""

import zlib

import pytest
import torch

requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# The float32 reference must really be float32: TF32 matmuls would make it less
# accurate than the fp16 kernel it judges.
torch.set_float32_matmul_precision("highest")


@pytest.fixture(autouse=True)
def seed(request):
    """Seeds the CPU and CUDA RNGs from the test id: every case gets its own data,
    and a failing case sees the same data when re-run alone."""
    value = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(value)
    return value


def make_qkv(*, batch=2, seqlen_q=128, seqlen_k=None, nheads=4, nheads_k=None, head_dim=64,
             dtype=torch.float16, device="cuda"):
    """Random q [b, sq, h, d] and k, v [b, sk, h_k, d]."""
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


def attention_ref(q, k, v, causal=False, softmax_scale=None, upcast=True):
    """Eager attention, the obvious way.

    upcast=True computes in float32 (the accuracy reference); upcast=False computes
    in the input dtype, like PyTorch's own low-precision eager path (the yardstick
    for how much error the dtype itself causes).
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
    if causal:
        scores = scores.masked_fill(~causal_mask(seqlen_q, seqlen_k, q.device), float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)
    # softmax of an all -inf row is NaN; such rows are defined to output zeros
    probs = torch.softmax(scores, dim=-1).masked_fill(lse.isneginf()[..., None], 0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out, lse
