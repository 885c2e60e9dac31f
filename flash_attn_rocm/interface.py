"""The public functions, call-compatible with flash-attn 2.8, and their autograd wiring."""

from __future__ import annotations

import math

import torch

from ._ops import ops

_DTYPES = (torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = 256


def _check_qkv(q, k, v) -> None:
    """Raises a TypeError/ValueError naming the argument. Device checks come last so that shape
    errors can be reported (and tested) without a GPU."""
    named = (("q", q), ("k", k), ("v", v))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in named:
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [batch, seqlen, nheads, head_dim], got shape {tuple(t.shape)}")
    for name, t in named:
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16 or bfloat16, got {t.dtype}")
    for name, t in named[1:]:
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}: q, k and v must share one dtype")

    batch, _, nheads, head_dim = q.shape
    if head_dim == 0 or head_dim % 8 != 0 or head_dim > _MAX_HEAD_DIM:
        raise ValueError(f"head dim of q must be a positive multiple of 8 and at most {_MAX_HEAD_DIM}, got {head_dim}")
    for name, t in named[1:]:
        if t.shape[-1] != head_dim:
            raise ValueError(f"{name} has head dim {t.shape[-1]} but q has {head_dim}")
        if t.shape[0] != batch:
            raise ValueError(f"{name} has batch size {t.shape[0]} but q has {batch}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    nheads_k = k.shape[2]
    if nheads_k == 0 or nheads % nheads_k != 0:
        raise ValueError(f"nheads of q ({nheads}) must be divisible by nheads of k and v ({nheads_k})")
    for name, t in named:
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension (stride(-1) == 1), got {t.stride(-1)}")


def _check_devices(q, k, v) -> None:
    # Meta tensors pass, so that shapes can be traced without a GPU.
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.device.type not in ("cuda", "meta"):
            raise ValueError(f"{name} must be a CUDA tensor, got device {t.device}")
    for name, t in (("k", k), ("v", v)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}: all must be on one device")


def _resolve_softmax_scale(softmax_scale, head_dim: int) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"softmax_scale must be a float or None, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale must be finite, got {softmax_scale}")
    return float(softmax_scale)


def _reject_unimplemented(dropout_p, window_size, softcap, alibi_slopes) -> None:
    """Arguments of flash-attn's signature that this version does not implement yet: refused,
    never silently ignored."""
    if dropout_p != 0.0:
        raise NotImplementedError("dropout_p > 0 is not implemented yet in flash_attn_rocm")
    if tuple(window_size) != (-1, -1):
        raise NotImplementedError("window_size (sliding-window attention) is not implemented yet in flash_attn_rocm")
    if softcap != 0.0:
        raise NotImplementedError("softcap is not implemented yet in flash_attn_rocm")
    if alibi_slopes is not None:
        raise NotImplementedError("alibi_slopes is not implemented yet in flash_attn_rocm")


class FlashAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, softmax_scale, causal, deterministic):
        out, softmax_lse = ops.fwd(q, k, v, softmax_scale, causal)
        ctx.save_for_backward(q, k, v, out, softmax_lse)
        ctx.softmax_scale, ctx.causal, ctx.deterministic = softmax_scale, causal, deterministic
        ctx.mark_non_differentiable(softmax_lse)
        return out, softmax_lse

    @staticmethod
    def backward(ctx, dout, dsoftmax_lse):
        q, k, v, out, softmax_lse = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = ops.bwd(dout, q, k, v, out, softmax_lse, ctx.softmax_scale, ctx.causal, ctx.deterministic)
        return dq, dk, dv, None, None, None


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

    causal masks key j for query i when j > i + sk - sq (aligned to the bottom-right corner).
    Returns out [b, sq, h, d]; with return_attn_probs, (out, softmax_lse [b, h, sq] float32,
    S_dmask), S_dmask being empty while dropout_p is 0. Differentiable in q, k, v; with
    deterministic=True the backward is bitwise reproducible (a little slower).
    """
    _check_qkv(q, k, v)
    scale = _resolve_softmax_scale(softmax_scale, q.shape[-1])
    _reject_unimplemented(dropout_p, window_size, softcap, alibi_slopes)
    _check_devices(q, k, v)
    out, softmax_lse = FlashAttnFunc.apply(q, k, v, scale, bool(causal), bool(deterministic))
    if return_attn_probs:
        return out, softmax_lse, q.new_empty(0)
    return out
