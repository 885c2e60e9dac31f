"""flash_attn_with_kvcache: attention over a KV cache (decode, chunked prefill), flash-attn 2.8's call."""

from __future__ import annotations

import torch

from ._inputs import (
    check_alibi_slopes,
    check_block_table,
    check_devices,
    check_dtype,
    check_gqa,
    check_head_dim,
    check_int32,
    check_last_dim_contiguous,
    check_metadata,
    check_same_head_dim,
    check_same_shape,
    check_tensor,
    optional,
    pad_head_dim,
    resolve_softcap,
    resolve_softmax_scale,
    resolve_window,
)
from ._ops import ops

_MAX_SPLITS = 128


def _check_index_tensor(name, t, batch):
    """An optional int32 [batch] tensor."""
    if t is None:
        return
    check_int32(name, t, 1, f"[batch] = [{batch}]")
    if t.shape[0] != batch:
        raise ValueError(f"{name} must have shape [batch] = [{batch}], got {tuple(t.shape)}")


def _check_cache(q, k_cache, v_cache, block_table, cache_batch_idx) -> int:
    """Checks the caches against q and returns a sequence's capacity in rows."""
    batch, _, nheads, head_dim = q.shape
    layout = "[num_pages, page_size, nheads_k, head_dim]" if block_table is not None else \
        "[batch_cache, seqlen_cache, nheads_k, head_dim]"
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, t, 4, layout)
        check_dtype(name, t, like=("q", q))
        check_same_head_dim(name, t, "q", head_dim)
    check_same_shape("k_cache", k_cache, "v_cache", v_cache)
    check_gqa(nheads, k_cache.shape[2], "q", "k_cache and v_cache")
    if block_table is None:
        if cache_batch_idx is None and k_cache.shape[0] != batch:
            raise ValueError(f"k_cache has batch size {k_cache.shape[0]} but q has {batch} (pass cache_batch_idx to "
                             f"pick cache rows)")
        return k_cache.shape[1]
    check_block_table(block_table, batch, k_cache.shape[1], "k_cache")
    if cache_batch_idx is not None:
        raise ValueError("cache_batch_idx cannot be combined with block_table: the table already maps each batch "
                         "element to its pages")
    return block_table.shape[1] * k_cache.shape[1]


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),
    softcap=0.0,
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """Attention of q [b, sq, h, d] over a KV cache, after appending new keys and values to it.

    k_cache, v_cache: [b_cache, s_cache, h_k, d], or with block_table (int32 [b, max_pages]) paged
    [num_pages, page_size, h_k, d] with page_size a power of two >= 16; row r of sequence i is then
    in page block_table[i, r // page_size]. cache_seqlens (int or int32 [b]; None: the whole cache)
    counts the rows already in each sequence's cache; cache_batch_idx (int32 [b]) picks the cache
    row of each batch element (contiguous caches); cache_leftpad (int32 [b]) marks rows
    0 .. leftpad - 1 as padding.
    k, v [b, s_new, h_k, d]: written in place into the caches at rows cache_seqlens ..
    cache_seqlens + s_new - 1, then attended to. With rotary_cos/rotary_sin ([seqlen_ro,
    rotary_dim / 2], seqlen_ro >= the cache capacity) the new k is rotated at positions
    cache_seqlens + t (flash-attn's: cache_leftpad does not shift them), and q at those positions (causal or local attention) or all at
    the first one; rotary_interleaved pairs channels (2i, 2i + 1), else (i, i + rotary_dim / 2).
    The keys are numbered from cache_leftpad; causal, window_size, softcap and alibi_slopes are
    flash_attn_func's on them, aligned to the bottom-right. num_splits splits the keys across
    thread blocks (0: chosen from the shape, 1: no split, at most 128).

    Values in cache_seqlens, cache_leftpad, cache_batch_idx and block_table are read on the
    device and clamped to the tensors: bad values give wrong rows, never out-of-bounds accesses;
    rows appended past the capacity are dropped (an int cache_seqlens is checked here; with
    metadata checks on, flash_attn_rocm.set_metadata_checks, the tensors' values are too).
    A head dim that is not a multiple of 8 is zero-padded to one: q, the new k, v and the caches
    are copied, and the appended caches copied back (slow; flash-attn does the same).
    Returns out [b, sq, h, d], or (out, softmax_lse [b, h, sq] float32) with return_softmax_lse.
    No backward.
    """
    check_tensor("q", q, 4, "[batch, seqlen_q, nheads, head_dim]")
    check_dtype("q", q)
    batch, _, nheads, head_dim = q.shape
    check_head_dim(head_dim)
    capacity = _check_cache(q, k_cache, v_cache, block_table, cache_batch_idx)
    nheads_k = k_cache.shape[2]

    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new keys and values to append)")
    seqlen_new = 0
    if k is not None:
        for name, t in (("k", k), ("v", v)):
            check_tensor(name, t, 4, "[batch, seqlen_new, nheads_k, head_dim]")
        expected = (batch, k.shape[1], nheads_k, head_dim)
        for name, t in (("k", k), ("v", v)):
            check_dtype(name, t, like=("q", q))
            if tuple(t.shape) != expected:
                raise ValueError(f"{name} must have shape [batch, seqlen_new, nheads_k, head_dim] = {expected}, got "
                                 f"{tuple(t.shape)}")
        seqlen_new = k.shape[1]
        if cache_seqlens is None:
            raise ValueError("cache_seqlens is needed to append k and v: it says where the new rows go")
        if seqlen_new > capacity:
            raise ValueError(f"k has {seqlen_new} new rows but the cache holds {capacity} per sequence")

    if isinstance(cache_seqlens, bool) or not (cache_seqlens is None or isinstance(cache_seqlens, (int, torch.Tensor))):
        raise TypeError(f"cache_seqlens must be an int, an int32 tensor or None, got {type(cache_seqlens).__name__}")
    if isinstance(cache_seqlens, int):
        if cache_seqlens < 0 or cache_seqlens + seqlen_new > capacity:
            raise ValueError(f"cache_seqlens ({cache_seqlens}) + new rows ({seqlen_new}) must be within the cache "
                             f"capacity {capacity}")
    else:
        _check_index_tensor("cache_seqlens", cache_seqlens, batch)
    _check_index_tensor("cache_batch_idx", cache_batch_idx, batch)
    _check_index_tensor("cache_leftpad", cache_leftpad, batch)

    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None:
        if k is None:
            raise ValueError("rotary_cos/rotary_sin rotate the new k: pass k and v too")
        for name, t in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin)):
            check_tensor(name, t, 2, "[seqlen_ro, rotary_dim / 2]")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if rotary_cos.shape != rotary_sin.shape:
            raise ValueError(f"rotary_cos and rotary_sin must have one shape, got {tuple(rotary_cos.shape)} and "
                             f"{tuple(rotary_sin.shape)}")
        rotary_dim = 2 * rotary_cos.shape[1]
        if rotary_dim == 0 or rotary_dim % 16 != 0 or rotary_dim > head_dim:
            raise ValueError(f"rotary_dim (2 * rotary_cos.shape[1] = {rotary_dim}) must be a positive multiple of 16 "
                             f"and at most the head dim {head_dim}")
        if rotary_cos.shape[0] < capacity:
            raise ValueError(f"rotary_cos must have a row per cache position ({capacity}), got {rotary_cos.shape[0]}")

    if isinstance(num_splits, bool) or not isinstance(num_splits, int):
        raise TypeError(f"num_splits must be an int, got {type(num_splits).__name__}")
    if not 0 <= num_splits <= _MAX_SPLITS:
        raise ValueError(f"num_splits must be in [0, {_MAX_SPLITS}] (0: heuristic, 1: no split), got {num_splits}")
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    window = resolve_window(window_size)
    softcap = resolve_softcap(softcap)
    check_alibi_slopes(alibi_slopes, batch, nheads)
    check_last_dim_contiguous(("q", q), ("k_cache", k_cache), ("v_cache", v_cache), *optional("k", k),
                              *optional("v", v))
    seqlens_tensor = cache_seqlens if isinstance(cache_seqlens, torch.Tensor) else None
    check_metadata(cache_seqlens=seqlens_tensor, seqlen_new=seqlen_new, capacity=capacity,
                   cache_batch_idx=cache_batch_idx, batch_cache=k_cache.shape[0], block_table=block_table,
                   num_pages=k_cache.shape[0] if block_table is not None else None,
                   page_size=k_cache.shape[1] if block_table is not None else None)
    check_devices(("q", q), ("k_cache", k_cache), ("v_cache", v_cache), *optional("k", k), *optional("v", v),
                  *optional("rotary_cos", rotary_cos), *optional("rotary_sin", rotary_sin),
                  *optional("cache_seqlens", seqlens_tensor), *optional("cache_batch_idx", cache_batch_idx),
                  *optional("cache_leftpad", cache_leftpad), *optional("block_table", block_table),
                  *optional("alibi_slopes", alibi_slopes))
    if isinstance(cache_seqlens, int):
        seqlens_tensor = torch.full((batch,), cache_seqlens, dtype=torch.int32, device=q.device)

    k_cache_og, v_cache_og = k_cache, v_cache
    q, k_cache, v_cache, k, v = pad_head_dim(q, k_cache, v_cache, k, v)
    out, softmax_lse = ops.fwd_kvcache(q, k_cache, v_cache, k, v, rotary_cos, rotary_sin, seqlens_tensor,
                                       cache_batch_idx, cache_leftpad, block_table, scale, bool(causal), *window,
                                       softcap, bool(rotary_interleaved), alibi_slopes, num_splits)
    if out.shape[-1] != head_dim:  # padded: the op appended to the padded copies of the caches
        out = out[..., :head_dim]
        if k is not None:
            k_cache_og.copy_(k_cache[..., :head_dim])
            v_cache_og.copy_(v_cache[..., :head_dim])
    return (out, softmax_lse) if return_softmax_lse else out
