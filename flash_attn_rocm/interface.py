"""The public functions, call-compatible with flash-attn 2.8, and their autograd wiring."""

from __future__ import annotations

import torch

from . import _dropout, _fp8
from ._inputs import (
    check_alibi_slopes,
    check_devices,
    check_metadata,
    check_packed,
    check_paged_qkv,
    check_qkv,
    check_varlen_args,
    optional,
    pad_head_dim,
    resolve_dropout_p,
    resolve_softcap,
    resolve_softmax_scale,
    resolve_window,
)
from ._ops import ops

# flash-attn's name for S_dmask's key-block width, which its tests import from flash_attn_interface.
_get_block_size_n = _dropout.block_size_n


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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
    *,
    q_descale=None,
    k_descale=None,
    v_descale=None,
):
    """Attention over q [b, sq, h, d] and k, v [b, sk, h_k, d] (h % h_k == 0), fp16/bf16 on a GPU.

    causal masks key j for query i when j > i + sk - sq (aligned to the bottom-right corner);
    window_size = (left, right) keeps keys i + sk - sq - left <= j <= i + sk - sq + right (-1:
    unbounded; causal means right = 0), skipping the key blocks outside the window.
    softcap > 0 caps the logits: softcap * tanh(q.k * softmax_scale / softcap). alibi_slopes (fp32
    [h] or [b, h]) adds -slope * |i + sk - sq - j| to the logits. dropout_p drops probabilities
    (Philox, seeded from torch's CUDA generator) and scales the kept ones by 1 / (1 - dropout_p).
    Returns out [b, sq, h, d]; with return_attn_probs, (out, softmax_lse [b, h, sq] float32,
    S_dmask), S_dmask being empty while dropout_p is 0, else flash-attn's [b, h, sq, sk]: per key
    block (_get_block_size_n keys), exp(score - running row max), negative where dropped
    (recomputed in PyTorch: for tests, O(b h sq sk) memory). Differentiable in q, k, v; with
    deterministic=True the backward is bitwise reproducible (a little slower). A head dim that
    is not a multiple of 8 is zero-padded to one (a copy) and out sliced back.
    float8 q, k, v (e4m3fn or e4m3fnuz, all three) with FlashAttention-3's q_descale, k_descale,
    v_descale (float32 [b, h_k] or one element; keyword-only): forward only, out in bfloat16; an
    fp8 kernel where the device has one for the call, else dequantized to bfloat16 (_fp8.py).
    """
    descales = (q_descale, k_descale, v_descale)
    if _fp8.requested(q, k, v, descales):
        _fp8.check(q, k, v, descales, batch=_leading_size(q))
        if _fp8.runs_natively(q, softcap, alibi_slopes, dropout_p):
            return _fp8_forward(q, k, v, descales, softmax_scale, causal, window_size, return_attn_probs)
        q, k, v = _fp8.dequantize(q, k, v, descales)
    check_qkv(q, k, v)
    head_dim = q.shape[-1]
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    window = resolve_window(window_size)
    softcap = resolve_softcap(softcap)
    check_alibi_slopes(alibi_slopes, q.shape[0], q.shape[2])
    dropout_p = resolve_dropout_p(dropout_p)
    check_devices(("q", q), ("k", k), ("v", v), *optional("alibi_slopes", alibi_slopes))
    return _checked_attention(q, k, v, dropout_p, scale, causal, window, softcap, alibi_slopes, deterministic,
                              return_attn_probs)


def _checked_attention(q, k, v, dropout_p, scale, causal, window, softcap, alibi_slopes, deterministic,
                       return_attn_probs=False):
    """flash_attn_func past its checks: q, k, v as check_qkv and check_devices want them and every
    other argument resolved (scale a float, window an int pair, ...). For callers that have
    checked already (the transformers integration, whose per-layer host time counts)."""
    head_dim = q.shape[-1]
    q, k, v = pad_head_dim(q, k, v)
    if _needs_grad(q, k, v):
        out, softmax_lse, rng_state = FlashAttnFunc.apply(q, k, v, dropout_p, scale, bool(causal), window, softcap,
                                                          alibi_slopes, bool(deterministic))
    else:  # inference: the op alone, without autograd's bookkeeping
        out, softmax_lse, rng_state = ops.fwd(q, k, v, scale, bool(causal), *window, softcap, alibi_slopes, dropout_p)
    if out.shape[-1] != head_dim:  # padded to a multiple of 8 above
        out = out[..., :head_dim]
    if not return_attn_probs:
        return out
    if dropout_p == 0.0:
        return out, softmax_lse, q.new_empty(0)
    with torch.no_grad():
        dmask = _dropout.s_dmask(q, k, rng_state, dropout_p, scale, bool(causal), window, softcap, alibi_slopes,
                                 head_dim=head_dim)
    return out, softmax_lse, dmask


class FlashAttnVarlenFunc(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                causal, window, softcap, alibi_slopes, deterministic, block_table=None):
        out, softmax_lse, rng_state = ops.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                     softmax_scale, causal, *window, softcap, alibi_slopes, dropout_p,
                                                     block_table)
        ctx.mark_non_differentiable(softmax_lse, rng_state)
        ctx.paged = block_table is not None
        if ctx.paged:  # the backward only raises: nothing to keep
            return out, softmax_lse, rng_state
        ctx.save_for_backward(q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state)
        ctx.softcap, ctx.dropout_p = softcap, dropout_p
        ctx.max_seqlen_q, ctx.max_seqlen_k = max_seqlen_q, max_seqlen_k
        ctx.softmax_scale, ctx.causal, ctx.window, ctx.deterministic = softmax_scale, causal, window, deterministic
        return out, softmax_lse, rng_state

    @staticmethod
    def backward(ctx, dout, dsoftmax_lse, drng_state):
        if ctx.paged:
            # flash-attn 2.8 has no backward with a block table either (its tests check none).
            raise NotImplementedError("flash_attn_varlen_func has no backward with block_table (paged K/V is for "
                                      "inference: chunked prefill); run it under torch.no_grad() or pass "
                                      "q.detach(), or pass contiguous k, v [total_k, nheads_k, head_dim] to train")
        q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, rng_state = ctx.saved_tensors
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq, dk, dv = ops.varlen_bwd(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, ctx.max_seqlen_q,
                                    ctx.max_seqlen_k, ctx.softmax_scale, ctx.causal, ctx.deterministic, *ctx.window,
                                    ctx.softcap, alibi_slopes, ctx.dropout_p, rng_state)
        return (dq, dk, dv) + (None,) * 12


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
    *,
    q_descale=None,
    k_descale=None,
    v_descale=None,
):
    """Attention over a batch of sequences of different lengths, packed without padding:
    q [total_q, h, d], k, v [total_k, h_k, d]; sequence b is rows cu_seqlens[b] .. cu_seqlens[b + 1]
    (int32 [batch + 1], starting at 0); max_seqlen_* bound every length. Causal masking is per
    sequence, bottom-right aligned. Returns out [total_q, h, d]; with return_attn_probs,
    (out, softmax_lse [h, total_q] float32, S_dmask), S_dmask empty while dropout_p is 0, else
    [batch, h, max_seqlen_q, max_seqlen_k] as flash_attn_func's per sequence. The values of
    cu_seqlens (and block_table) are checked only with metadata checks on
    (flash_attn_rocm.set_metadata_checks).

    block_table (int32 [batch, max_pages_per_sequence]; chunked prefill over a paged KV cache):
    k, v are then pages [num_pages, page_size, h_k, d], page_size a power of two >= 16, and
    sequence i's cu_seqlens_k[i + 1] - cu_seqlens_k[i] keys are its rows 0, 1, ... : row r in page
    block_table[i, r // page_size]. Forward only, as in flash-attn 2.8: the backward raises. NVIDIA
    only for now (on AMD: NotImplementedError).

    float8 q, k, v with q_descale, k_descale, v_descale: as flash_attn_func (not with block_table).
    """
    descales = (q_descale, k_descale, v_descale)
    if _fp8.requested(q, k, v, descales):
        if block_table is not None:
            raise NotImplementedError("float8 q, k, v with block_table (paged K/V) are not supported yet")
        check_varlen_args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        _fp8.check(q, k, v, descales, batch=cu_seqlens_q.shape[0] - 1, varlen=True)
        rows = _fp8.varlen_batch_of_row(cu_seqlens_q, cu_seqlens_k, _leading_size(q), _leading_size(k))
        q, k, v = _fp8.dequantize(q, k, v, descales, batch_of_row=rows)
    if block_table is None:
        check_qkv(q, k, v, varlen=True)
        check_varlen_args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    else:
        check_varlen_args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        check_paged_qkv(q, k, v, block_table, cu_seqlens_q.shape[0] - 1)
        if torch.version.hip is not None:
            raise NotImplementedError("block_table (paged K/V) in flash_attn_varlen_func is not implemented on AMD "
                                      "GPUs yet: the AMD forward reads contiguous K/V only (flash_attn_with_kvcache "
                                      "takes paged caches)")
    head_dim = q.shape[-1]
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    window = resolve_window(window_size)
    softcap = resolve_softcap(softcap)
    check_alibi_slopes(alibi_slopes, cu_seqlens_q.shape[0] - 1, q.shape[1])
    dropout_p = resolve_dropout_p(dropout_p)
    if block_table is None:
        check_metadata(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, total_q=q.shape[0], total_k=k.shape[0],
                       max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k)
    else:
        check_metadata(cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, total_q=q.shape[0], total_k=None,
                       max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, block_table=block_table,
                       num_pages=k.shape[0], page_size=k.shape[1])
    check_devices(("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k),
                  *optional("alibi_slopes", alibi_slopes), *optional("block_table", block_table))
    q, k, v = pad_head_dim(q, k, v)
    if _needs_grad(q, k, v):
        out, softmax_lse, rng_state = FlashAttnVarlenFunc.apply(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, scale, bool(causal), window,
            softcap, alibi_slopes, bool(deterministic), block_table)
    else:
        out, softmax_lse, rng_state = ops.varlen_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                                     scale, bool(causal), *window, softcap, alibi_slopes, dropout_p,
                                                     block_table)
    if out.shape[-1] != head_dim:  # padded to a multiple of 8 above
        out = out[..., :head_dim]
    if not return_attn_probs:
        return out
    if dropout_p == 0.0:
        return out, softmax_lse, q.new_empty(0)
    with torch.no_grad():
        if block_table is not None:
            k = _paged_keys(k, block_table, cu_seqlens_k)
        dmask = _varlen_s_dmask(q, k, rng_state, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                scale, bool(causal), window, softcap, alibi_slopes, head_dim)
    return out, softmax_lse, dmask


def _fp8_forward(q, k, v, descales, softmax_scale, causal, window_size, return_attn_probs):
    """flash_attn_func on the fp8 kernel (_fp8.runs_natively): out bf16."""
    scale = resolve_softmax_scale(softmax_scale, q.shape[-1])
    window = resolve_window(window_size)
    given = [(name, d) for name, d in zip(_fp8.DESCALE_NAMES, descales) if d is not None]
    check_devices(("q", q), ("k", k), ("v", v), *given)
    out, softmax_lse = ops.fwd_fp8(q, k, v, *descales, scale, bool(causal), *window)
    return (out, softmax_lse, q.new_empty(0)) if return_attn_probs else out


def _leading_size(t) -> int:
    """t.shape[0], or 0 for what is not a tensor with dimensions (the checks then name it)."""
    return t.shape[0] if isinstance(t, torch.Tensor) and t.dim() > 0 else 0


def _paged_keys(pages, block_table, cu_seqlens_k):
    """Paged keys [num_pages, page_size, h_k, d] as the packed [total_k, h_k, d] rows that
    cu_seqlens_k index (for S_dmask, testing only)."""
    lengths = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).tolist()
    rows = [pages[block_table[i].long()].flatten(0, 1)[:n] for i, n in enumerate(lengths)]
    return torch.cat([pages.new_zeros(int(cu_seqlens_k[0]), *pages.shape[2:]), *rows])


def _varlen_s_dmask(q, k, rng_state, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, scale,
                    causal, window, softcap, alibi_slopes, head_dim):
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
            q[rows_q][None], k[rows_k][None], rng_state, dropout_p, scale, causal, window, softcap, slopes,
            batch_index=b, head_dim=head_dim)[0]
    return dmask


# Packed layouts: thin views over the packed tensor; autograd routes the gradients back into it.


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                              softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """qkv [b, s, 3, h, d]; otherwise as flash_attn_func."""
    check_packed(qkv, "qkv", 5, 2, 3)
    return flash_attn_func(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], dropout_p, softmax_scale, causal, window_size,
                           softcap, alibi_slopes, deterministic, return_attn_probs)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                             softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv [b, sk, 2, h_k, d]; otherwise as flash_attn_func."""
    check_packed(kv, "kv", 5, 2, 2)
    return flash_attn_func(q, kv[:, :, 0], kv[:, :, 1], dropout_p, softmax_scale, causal, window_size, softcap,
                           alibi_slopes, deterministic, return_attn_probs)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False,
                                     window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False):
    """qkv [total, 3, h, d]; otherwise as flash_attn_varlen_func with the same lengths for q and k."""
    check_packed(qkv, "qkv", 4, 1, 3)
    return flash_attn_varlen_func(qkv[:, 0], qkv[:, 1], qkv[:, 2], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False, return_attn_probs=False):
    """kv [total_k, 2, h_k, d]; otherwise as flash_attn_varlen_func."""
    check_packed(kv, "kv", 4, 1, 2)
    return flash_attn_varlen_func(q, kv[:, 0], kv[:, 1], cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                  dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs)

