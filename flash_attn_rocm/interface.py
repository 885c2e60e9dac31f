"""The public functions, call-compatible with flash-attn 2.8, and their autograd wiring."""

from __future__ import annotations

import math

import torch

from . import _dropout
from ._ops import ops

_DTYPES = (torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256


def _check_qkv(q, k, v, varlen: bool = False) -> None:
    """Raises a TypeError/ValueError naming the argument. Device checks come last so that shape
    errors can be reported (and tested) without a GPU. Dense: [batch, seqlen, nheads, head_dim];
    varlen: [total, nheads, head_dim]."""
    named = (("q", q), ("k", k), ("v", v))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    layout = "[total, nheads, head_dim]" if varlen else "[batch, seqlen, nheads, head_dim]"
    for name, t in named:
        if t.dim() != (3 if varlen else 4):
            raise ValueError(f"{name} must be {3 if varlen else 4}-D {layout}, got shape {tuple(t.shape)}")
    for name, t in named:
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16 or bfloat16, got {t.dtype}")
    for name, t in named[1:]:
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}: q, k and v must share one dtype")

    nheads, head_dim = q.shape[-2:]
    if head_dim == 0 or head_dim % 8 != 0 or head_dim > _MAX_HEAD_DIM:
        raise ValueError(f"head dim of q must be a positive multiple of 8 and at most {_MAX_HEAD_DIM}, got {head_dim}")
    for name, t in named[1:]:
        if t.shape[-1] != head_dim:
            raise ValueError(f"{name} has head dim {t.shape[-1]} but q has {head_dim}")
        if not varlen and t.shape[0] != q.shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]} but q has {q.shape[0]}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    nheads_k = k.shape[-2]
    if nheads_k == 0 or nheads % nheads_k != 0:
        raise ValueError(f"nheads of q ({nheads}) must be divisible by nheads of k and v ({nheads_k})")
    _check_last_dim_contiguous(*named)


def _check_last_dim_contiguous(*named) -> None:
    """named: (name, tensor) pairs; the kernels read rows in 16-byte chunks."""
    for name, t in named:
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension (stride(-1) == 1), got {t.stride(-1)}")


def _check_varlen_args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> None:
    """What can be checked without reading device memory. The values of cu_seqlens (0 first,
    non-decreasing, last = total rows, lengths <= max_seqlen) are the caller's contract; the
    kernels clamp them, so bad values give wrong rows but never an out-of-bounds access."""
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
        if cu.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {cu.dtype}")
        if cu.dim() != 1 or cu.shape[0] < 1:
            raise ValueError(f"{name} must be 1-D [batch + 1], got shape {tuple(cu.shape)}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length, got "
                         f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_devices(q, *others) -> None:
    """others: (name, tensor) pairs that must sit on q's device. Meta tensors pass, so that
    shapes can be traced without a GPU."""
    if q.device.type not in ("cuda", "meta"):
        raise ValueError(f"q must be a CUDA tensor, got device {q.device}")
    for name, t in others:
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: all must be on one device")


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _named(name: str, t):
    """(name, t) for _check_devices, or nothing when the optional tensor is absent."""
    return () if t is None else ((name, t),)


def _resolve_softmax_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale) or softmax_scale < 0:
        # The kernels scale after taking the row max of the raw scores: with a negative scale
        # the exponents are distances from the wrong end of the row, and the fp16 P can overflow.
        raise ValueError(f"softmax_scale must be finite and >= 0, got {softmax_scale}")
    return float(softmax_scale)


def _resolve_window(window_size) -> tuple[int, int]:
    """flash-attn's (left, right), -1 meaning unbounded."""
    if isinstance(window_size, (str, bytes)) or not hasattr(window_size, "__len__") or len(window_size) != 2:
        raise TypeError(f"window_size must be a pair (left, right), got {window_size!r}")
    left, right = window_size
    for value in (left, right):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise TypeError(f"window_size entries must be ints, got {window_size!r}")
        if value < -1:
            raise ValueError(f"window_size entries must be >= -1 (-1: unbounded), got {window_size!r}")
    return int(left), int(right)


def _resolve_softcap(softcap) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a float, got {type(softcap).__name__}")
    if not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap must be finite and >= 0 (0: off), got {softcap}")
    return float(softcap)


def _check_alibi_slopes(alibi_slopes, batch: int, nheads: int) -> None:
    """flash-attn's ALiBi: fp32 [nheads] or [batch, nheads]; the bias is -slope * |i + sk - sq - j|."""
    if alibi_slopes is None:
        return
    if not isinstance(alibi_slopes, torch.Tensor):
        raise TypeError(f"alibi_slopes must be a torch.Tensor or None, got {type(alibi_slopes).__name__}")
    if alibi_slopes.dtype != torch.float32:
        raise TypeError(f"alibi_slopes must be float32, got {alibi_slopes.dtype}")
    if tuple(alibi_slopes.shape) not in ((nheads,), (batch, nheads)):
        raise ValueError(f"alibi_slopes must have shape [nheads] = [{nheads}] or [batch, nheads] = [{batch}, {nheads}], "
                         f"got {tuple(alibi_slopes.shape)}")


def _resolve_dropout_p(dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return float(dropout_p)


class FlashAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, dropout_p, softmax_scale, causal, window, softcap, alibi_slopes, deterministic):
        out, softmax_lse, rng_state = ops.fwd(q, k, v, softmax_scale, causal, *window, softcap, alibi_slopes, dropout_p)
        ctx.save_for_backward(q, k, v, out, softmax_lse, alibi_slopes, rng_state)
        ctx.softmax_scale, ctx.causal, ctx.window, ctx.deterministic = softmax_scale, causal, window, deterministic
        ctx.softcap, ctx.dropout_p = softcap, dropout_p
        ctx.mark_non_differentiable(softmax_lse, rng_state)
        return out, softmax_lse, rng_state

    @staticmethod
    def backward(ctx, dout, dsoftmax_lse, drng_state):
        q, k, v, out, softmax_lse, alibi_slopes, rng_state = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = ops.bwd(dout, q, k, v, out, softmax_lse, ctx.softmax_scale, ctx.causal, ctx.deterministic,
                             *ctx.window, ctx.softcap, alibi_slopes, ctx.dropout_p, rng_state)
        return (dq, dk, dv) + (None,) * 7


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention over q [b, sq, h, d] and k, v [b, sk, h_k, d] (h % h_k == 0), fp16/bf16 on a GPU.

    causal masks key j for query i when j > i + sk - sq (aligned to the bottom-right corner);
    window_size = (left, right) keeps keys i + sk - sq - left <= j <= i + sk - sq + right (-1:
    unbounded; causal means right = 0), skipping the key blocks outside the window.
    softcap > 0 caps the logits: softcap * tanh(q.k * softmax_scale / softcap). alibi_slopes (fp32
    [h] or [b, h]) adds -slope * |i + sk - sq - j| to the logits. dropout_p drops probabilities
    (Philox, seeded from torch's CUDA generator) and scales the kept ones by 1 / (1 - dropout_p).
    Returns out [b, sq, h, d]; with return_attn_probs, (out, softmax_lse [b, h, sq] float32,
    S_dmask), S_dmask being empty while dropout_p is 0, else the probabilities [b, h, sq, sk],
    negative where dropped (recomputed in PyTorch: for tests, O(b h sq sk) memory). Differentiable in q, k, v; with
    deterministic=True the backward is bitwise reproducible (a little slower).
    """
    _check_qkv(q, k, v)
    scale = _resolve_softmax_scale(softmax_scale, q.shape[-1])
    window = _resolve_window(window_size)
    softcap = _resolve_softcap(softcap)
    _check_alibi_slopes(alibi_slopes, q.shape[0], q.shape[2])
    dropout_p = _resolve_dropout_p(dropout_p)
    _check_devices(q, ("k", k), ("v", v), *_named("alibi_slopes", alibi_slopes))
    if _needs_grad(q, k, v):
        out, softmax_lse, rng_state = FlashAttnFunc.apply(q, k, v, dropout_p, scale, bool(causal), window, softcap,
                                                          alibi_slopes, bool(deterministic))
    else:  # inference: the op alone, without autograd's bookkeeping
        out, softmax_lse, rng_state = ops.fwd(q, k, v, scale, bool(causal), *window, softcap, alibi_slopes, dropout_p)
    if not return_attn_probs:
        return out
    if dropout_p == 0.0:
        return out, softmax_lse, q.new_empty(0)
    with torch.no_grad():
        dmask = _dropout.s_dmask(q, k, softmax_lse, rng_state, dropout_p, scale, bool(causal), window, softcap,
                                 alibi_slopes)
    return out, softmax_lse, dmask


class FlashAttnVarlenFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                causal, window, softcap, alibi_slopes, deterministic):
        out, softmax_lse, rng_state = ops.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                     softmax_scale, causal, *window, softcap, alibi_slopes, dropout_p)
        ctx.save_for_backward(q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state)
        ctx.softcap, ctx.dropout_p = softcap, dropout_p
        ctx.max_seqlen_q, ctx.max_seqlen_k = max_seqlen_q, max_seqlen_k
        ctx.softmax_scale, ctx.causal, ctx.window, ctx.deterministic = softmax_scale, causal, window, deterministic
        ctx.mark_non_differentiable(softmax_lse, rng_state)
        return out, softmax_lse, rng_state

    @staticmethod
    def backward(ctx, dout, dsoftmax_lse, drng_state):
        q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = ops.varlen_bwd(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, ctx.max_seqlen_q,
                                    ctx.max_seqlen_k, ctx.softmax_scale, ctx.causal, ctx.deterministic, *ctx.window,
                                    ctx.softcap, alibi_slopes, ctx.dropout_p, rng_state)
        return (dq, dk, dv) + (None,) * 11


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Attention over a batch of sequences of different lengths, packed without padding:
    q [total_q, h, d], k, v [total_k, h_k, d]; sequence b is rows cu_seqlens[b] .. cu_seqlens[b + 1]
    (int32 [batch + 1], starting at 0); max_seqlen_* bound every length. Causal masking is per
    sequence, bottom-right aligned. Returns out [total_q, h, d]; with return_attn_probs,
    (out, softmax_lse [h, total_q] float32, S_dmask), S_dmask empty while dropout_p is 0.
    """
    _check_qkv(q, k, v, varlen=True)
    _check_varlen_args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    scale = _resolve_softmax_scale(softmax_scale, q.shape[-1])
    window = _resolve_window(window_size)
    softcap = _resolve_softcap(softcap)
    _check_alibi_slopes(alibi_slopes, cu_seqlens_q.shape[0] - 1, q.shape[1])
    dropout_p = _resolve_dropout_p(dropout_p)
    if block_table is not None:
        raise NotImplementedError("block_table (paged KV) is not implemented yet in flash_attn_rocm")
    _check_devices(q, ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k),
                   *_named("alibi_slopes", alibi_slopes))
    if _needs_grad(q, k, v):
        out, softmax_lse, rng_state = FlashAttnVarlenFunc.apply(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, scale, bool(causal), window,
            softcap, alibi_slopes, bool(deterministic))
    else:
        out, softmax_lse, rng_state = ops.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                     scale, bool(causal), *window, softcap, alibi_slopes, dropout_p)
    if not return_attn_probs:
        return out
    if dropout_p == 0.0:
        return out, softmax_lse, q.new_empty(0)
    with torch.no_grad():
        dmask = _varlen_s_dmask(q, k, softmax_lse, rng_state, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                dropout_p, scale, bool(causal), window, softcap, alibi_slopes)
    return out, softmax_lse, dmask


def _varlen_s_dmask(q, k, softmax_lse, rng_state, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                    scale, causal, window, softcap, alibi_slopes):
    """S_dmask [batch, h, max_seqlen_q, max_seqlen_k], zero past each sequence's ends (testing only)."""
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    batch = len(starts_q) - 1
    dmask = q.new_zeros(batch, q.shape[1], max_seqlen_q, max_seqlen_k)
    for b in range(batch):
        rows_q, rows_k = slice(starts_q[b], starts_q[b + 1]), slice(starts_k[b], starts_k[b + 1])
        seqlen_q, seqlen_k = rows_q.stop - rows_q.start, rows_k.stop - rows_k.start
        if seqlen_q == 0 or seqlen_k == 0:
            continue
        slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[b]
        dmask[b, :, :seqlen_q, :seqlen_k] = _dropout.s_dmask(
            q[rows_q][None], k[rows_k][None], softmax_lse[:, rows_q][None], rng_state, dropout_p, scale, causal,
            window, softcap, slopes, batch_index=b)[0]
    return dmask


# Packed layouts: thin views over the packed tensor; autograd routes the gradients back into it.


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv [b, s, 3, h, d]; otherwise as flash_attn_func."""
    _check_packed(qkv, "qkv", 5, 2, 3)
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal, window_size,
                           softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv [b, sk, 2, h_k, d]; otherwise as flash_attn_func."""
    _check_packed(kv, "kv", 5, 2, 2)
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv [total, 3, h, d]; otherwise as flash_attn_varlen_func with the same lengths for q and k."""
    _check_packed(qkv, "qkv", 4, 1, 3)
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv [total_k, 2, h_k, d]; otherwise as flash_attn_varlen_func."""
    _check_packed(kv, "kv", 4, 1, 2)
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def _check_packed(t, name: str, rank: int, pack_dim: int, count: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank or t.shape[pack_dim] != count:
        raise ValueError(f"{name} must be {rank}-D with {count} at dim {pack_dim}, got shape {tuple(t.shape)}")
