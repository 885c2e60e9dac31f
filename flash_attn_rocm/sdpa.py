"""A drop-in for torch.nn.functional.scaled_dot_product_attention.

Inputs the kernels serve run on them, without copies beyond the [b, h, s, d] -> [b, s, h, d]
view; anything else falls back to PyTorch's own SDPA with a one-time warning that says why:
an arbitrary attn_mask, or inputs that break flash_attn_func's rules (flash_attn_rocm._inputs:
CPU tensors, fp32, head dims this build lacks, ...).
A boolean key-padding mask ([b, 1, 1, sk] or [b, sk]) runs through the varlen kernels.
is_causal with seqlen_q != seqlen_k is PyTorch's top-left causal mask (query i sees keys
j <= i), which the kernels' bottom-right masks express exactly (_top_left_causal).
float8 query, key, value (e4m3, all three; PyTorch's SDPA has no fp8 kernel) go through
flash_attn_func's fp8 path with descales of 1 and come back in bfloat16 (forward only).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F

from . import _fp8
from ._inputs import check_devices, check_servable, check_tensor, fallback_reason, resolve_softmax_scale
from .interface import flash_attn_func, flash_attn_varlen_func

_torch_sdpa = F.scaled_dot_product_attention
_NAMES = ("query", "key", "value")
_warned: set[str] = set()


def _fallback_reason(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> str | None:
    reason = fallback_reason(lambda: _check_kernel_inputs(query, key, value, scale))
    if reason is not None:
        return reason
    if query.shape[1] != key.shape[1] and not enable_gqa:
        return "query and key/value head counts differ without enable_gqa"
    if attn_mask is not None:
        if is_causal:
            return "attn_mask together with is_causal"
        if _fp8.is_fp8(query):
            return "attn_mask with float8 inputs"
        if _key_padding(attn_mask, query.shape[0], key.shape[2]) is None:
            return "attn_mask is not a boolean key-padding mask"
    return None


def _check_kernel_inputs(query, key, value, scale) -> None:
    """flash_attn_func's rules (flash_attn_rocm._inputs), on SDPA's [b, h, s, d] layout."""
    for name, t in zip(_NAMES, (query, key, value)):
        check_tensor(name, t, 4, "[batch, heads, seqlen, head_dim]")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if _fp8.requested(q, k, v, (None, None, None)):
        check_devices(*zip(_NAMES, (q, k, v)), allow_meta=False)
        _fp8.check(q, k, v, (None, None, None), batch=q.shape[0], names=_NAMES)
        resolve_softmax_scale(scale, q.shape[-1], "scale")
        return
    check_servable(q, k, v, scale, names=_NAMES, scale_name="scale")


def _top_left_causal(seqlen_q: int, seqlen_k: int) -> tuple[int, bool, tuple[int, int]]:
    """PyTorch's is_causal (query i sees keys j <= i, aligned top-left) as the kernels' bottom-right
    masks: (keys to keep, causal, window_size). With seqlen_q <= seqlen_k no query sees a key past
    seqlen_q - 1, so the keys are cut there and the two alignments coincide. With seqlen_q >
    seqlen_k, query i sees j <= i = i + sk - sq + (sq - sk): a right window of sq - sk. Every
    query sees key 0, so no row is empty."""
    if seqlen_q <= seqlen_k:
        return seqlen_q, True, (-1, -1)
    return seqlen_k, False, (-1, seqlen_q - seqlen_k)


def _key_padding(attn_mask, batch: int, seqlen_k: int):
    """The [b, sk] bool mask (True = attend) if attn_mask is a key-padding mask, else None."""
    if attn_mask.dtype != torch.bool:
        return None
    if attn_mask.dim() == 2 and tuple(attn_mask.shape) == (batch, seqlen_k):
        return attn_mask
    if attn_mask.dim() == 4 and tuple(attn_mask.shape) in ((batch, 1, 1, seqlen_k),):
        return attn_mask[:, 0, 0, :]
    return None


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"flash_attn_rocm.scaled_dot_product_attention: falling back to PyTorch's SDPA: {reason}",
                      stacklevel=3)


def _padded_keys_attention(q, k, v, keep, scale, dropout_p):
    """q [b, sq, h, d], k/v [b, sk, h_k, d], keep [b, sk]: every query row attends to the kept keys
    of its batch element, through the varlen kernels."""
    batch, seqlen_q, heads, head_dim = q.shape
    seqlen_k = k.shape[1]
    keep = keep.to(q.device)
    lengths_k = keep.sum(dim=1, dtype=torch.int32)
    cu_seqlens_k = F.pad(lengths_k.cumsum(0, dtype=torch.int32), (1, 0))
    cu_seqlens_q = torch.arange(0, (batch + 1) * seqlen_q, seqlen_q, dtype=torch.int32, device=q.device)
    flat_keep = keep.reshape(-1)
    k_unpad = k.reshape(batch * seqlen_k, *k.shape[2:])[flat_keep]
    v_unpad = v.reshape(batch * seqlen_k, *v.shape[2:])[flat_keep]
    out = flash_attn_varlen_func(q.reshape(batch * seqlen_q, heads, head_dim), k_unpad, v_unpad, cu_seqlens_q,
                                 cu_seqlens_k, seqlen_q, seqlen_k, dropout_p, softmax_scale=scale)
    return out.reshape(batch, seqlen_q, heads, head_dim)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention's signature and [b, h, s, d] layout."""
    reason = _fallback_reason(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if reason is not None:
        _warn_once(reason)
        return _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                           scale=scale, enable_gqa=enable_gqa)
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # views: [b, s, h, d]
    if attn_mask is not None:
        out = _padded_keys_attention(q, k, v, _key_padding(attn_mask, q.shape[0], k.shape[1]), scale, dropout_p)
    elif is_causal and q.shape[1] != k.shape[1]:
        keys, causal, window = _top_left_causal(q.shape[1], k.shape[1])
        out = flash_attn_func(q, k[:, :keys], v[:, :keys], dropout_p, softmax_scale=scale, causal=causal,
                              window_size=window)
    else:
        out = flash_attn_func(q, k, v, dropout_p, softmax_scale=scale, causal=is_causal)
    return out.transpose(1, 2)


def patch_sdpa() -> None:
    """Routes torch.nn.functional.scaled_dot_product_attention through this module."""
    F.scaled_dot_product_attention = scaled_dot_product_attention


def unpatch_sdpa() -> None:
    F.scaled_dot_product_attention = _torch_sdpa


@contextlib.contextmanager
def sdpa_patched():
    """`with sdpa_patched(): model(x)` runs existing SDPA callers on flash_attn_rocm."""
    previous = F.scaled_dot_product_attention
    patch_sdpa()
    try:
        yield
    finally:
        F.scaled_dot_product_attention = previous
