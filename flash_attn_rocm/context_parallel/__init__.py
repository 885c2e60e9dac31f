"""Context parallelism: exact attention over a sequence split across the ranks of a process group.

Each rank holds its share of the sequence (for a causal mask, the zigzag split: chunks r and
2·world − 1 − r of 2·world, so every rank has the same work) and calls cp_flash_attn_func with
flash_attn_func's arguments plus the group. The result on every rank is its rows of the attention
over the whole sequence, and the backward gives every rank the gradients of its own q, k, v.

    import torch.distributed as dist
    from flash_attn_rocm.context_parallel import cp_flash_attn_func, cp_split, cp_position_ids

    dist.init_process_group("nccl")                       # one rank per GPU
    rank, world = dist.get_rank(), dist.get_world_size()
    ids = cp_split(input_ids, world, rank)               # [b, S] -> [b, S / world]
    labels = cp_split(labels, world, rank)                # shift labels before splitting
    pos = cp_position_ids(S, world, rank, device="cuda")  # for rotary embeddings
    ...
    out = cp_flash_attn_func(q, k, v, causal=True, group=dist.group.WORLD)   # q, k, v [b, S / world, h, d]

method="ring" (default): K/V travel around the ring (rank → rank + 1) while each step's attention
runs, memory O(S / world). method="all_gather": K/V are gathered once and each query chunk makes
one call; simpler, memory O(S) for K/V, better for short rings and the only way for ALiBi.
See README's "Context parallelism" section for a training loop and the transformers recipe.
"""

from __future__ import annotations

import torch

from .._inputs import (
    check_alibi_slopes,
    check_devices,
    check_gqa,
    check_qkv,
    check_tensor,
    check_varlen_args,
    optional,
    resolve_dropout_p,
    resolve_softcap,
    resolve_softmax_scale,
    resolve_window,
)
from . import _plan
from ._blocks import BlockArgs, BlockAttention, EagerBlocks, KernelBlocks
from ._comm import Comm
from ._ring import CPAttention, Geometry, Job
from ._split import LAYOUTS, cp_gather, cp_indices, cp_position_ids, cp_split, cp_unsplit

METHODS = ("ring", "all_gather")

__all__ = [
    "cp_flash_attn_func",
    "cp_flash_attn_varlen_func",
    "cp_split",
    "cp_unsplit",
    "cp_gather",
    "cp_indices",
    "cp_position_ids",
    "BlockAttention",
    "EagerBlocks",
    "KernelBlocks",
]


def _check_common(dropout_p, softmax_scale, head_dim, window_size, softcap, causal, method, layout):
    dropout_p = resolve_dropout_p(dropout_p)
    if dropout_p > 0:
        raise NotImplementedError(
            "dropout_p > 0 with context parallelism: the kernels draw the dropout mask from (seed, offset, batch, "
            "head, row, column) with row and column counted inside each call, so a block of a ring would drop "
            "different entries than the same attention on one GPU (and ranks sharing a seed would repeat "
            "each other's masks); use dropout_p=0")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    scale = resolve_softmax_scale(softmax_scale, head_dim)
    window = resolve_window(window_size)
    return scale, window, resolve_softcap(softcap), bool(causal)


def _check_combinations(alibi_slopes, causal, window, method, world_size, varlen_lengths=None):
    """Refusals that depend only on arguments every rank shares, so that all ranks raise alike,
    before any message is sent."""
    if alibi_slopes is not None and world_size > 1 and not (method == "all_gather" and (causal or window[1] == 0)):
        raise NotImplementedError(
            "alibi_slopes with context parallelism: the kernels' ALiBi bias counts positions within one call, and "
            "a ring step pairs query and key chunks whose global distance the call cannot see; ALiBi works with "
            "method='all_gather' and causal=True (or window_size=(left, 0))")
    if (varlen_lengths is not None and method == "ring" and window != (-1, -1)
            and len({n for n in varlen_lengths if n}) > 1):
        raise NotImplementedError(
            "window_size with flash_attn_varlen context parallelism by ring and sequences of different lengths: "
            "their chunks differ in length, so the window is a different kernel window for each; use "
            "method='all_gather'")


def _resolve_blocks(block_attention, checks):
    """The kernels (with flash_attn_func's input checks) unless a backend is injected."""
    if block_attention is None:
        checks()
        return KernelBlocks()
    return block_attention


def cp_flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0,
                       alibi_slopes=None, deterministic=False, return_attn_probs=False, *, group=None,
                       method="ring", layout="zigzag", block_attention=None):
    """flash_attn_func over a sequence split across group's ranks (default: the world).

    q [b, sq_local, h, d], k, v [b, sk_local, h_k, d]: this rank's rows, split by cp_split with the
    same layout ("zigzag": chunks rank and 2·world − 1 − rank of 2·world; "contiguous": the
    rank-th of world runs). The global lengths (world · local) must divide into those chunks.
    causal, window_size, softcap, GQA: as flash_attn_func on the whole sequence (causal and
    window positions are global; sq ≠ sk aligns bottom-right, as flash_attn_func does).
    alibi_slopes: only with method="all_gather" and causal=True (else NotImplementedError).
    dropout_p > 0: NotImplementedError (the kernels' mask counts rows/columns within a call).
    deterministic: the kernels' deterministic backward; the ring sums dk/dv in a fixed order.
    Returns out [b, sq_local, h, d] (this rank's rows); with return_attn_probs,
    (out, softmax_lse [b, h, sq_local] float32, empty tensor).
    block_attention: the per-block backend (default: the kernels, KernelBlocks()); EagerBlocks()
    runs the same algorithm in PyTorch on any device (tests, CPU).
    Every rank of the group must call it with the same arguments (shapes, flags).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4, "[batch, seqlen_local, nheads, head_dim]")
    scale, window, softcap, causal = _check_common(dropout_p, softmax_scale, q.shape[-1], window_size, softcap,
                                                   causal, method, layout)
    check_alibi_slopes(alibi_slopes, q.shape[0], q.shape[2])
    check_gqa(q.shape[2], k.shape[2], "q", "k and v")

    def checks():
        check_qkv(q, k, v)
        check_devices(("q", q), ("k", k), ("v", v), *optional("alibi_slopes", alibi_slopes))

    blocks = _resolve_blocks(block_attention, checks)
    comm = Comm(group)
    w = comm.world_size
    _check_combinations(alibi_slopes, causal, window, method, w)
    geometry = Geometry(layout, comm.rank, w, [q.shape[1] * w], [k.shape[1] * w], False,
                        _plan.band(causal, window), q.device, alibi_slopes is not None)
    job = Job(geometry, comm, blocks, BlockArgs(scale, softcap, alibi_slopes, bool(deterministic)), method)
    out, lse = _apply(q, k, v, job)
    return (out, lse, q.new_empty(0)) if return_attn_probs else out


def cp_flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                              softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False, block_table=None, *, group=None,
                              method="ring", layout="zigzag", block_attention=None):
    """flash_attn_varlen_func over a packed batch whose every sequence is split across group's ranks.

    cu_seqlens_q / cu_seqlens_k (int32 [batch + 1]) and max_seqlen_q / max_seqlen_k describe the
    WHOLE batch, identical on every rank; q [total_q / world, h, d], k, v [total_k / world, h_k, d]
    hold this rank's share of every sequence, in cp_split(x, world, rank, dim=0,
    cu_seqlens=...)'s order. Every sequence length must divide into the layout's chunks (zigzag:
    2·world). The lengths are read on the host once per call (a device sync). window_size with
    method="ring" needs equal-length sequences (else NotImplementedError: use "all_gather").
    Returns out [total_q / world, h, d]; with return_attn_probs (out, lse [h, total_q / world], empty).
    Otherwise as cp_flash_attn_func.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 3, "[total_local, nheads, head_dim]")
    check_varlen_args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    if block_table is not None:
        raise NotImplementedError("block_table (paged KV) with context parallelism: the key/value blocks travel "
                                  "between ranks as dense tensors")
    scale, window, softcap, causal = _check_common(dropout_p, softmax_scale, q.shape[-1], window_size, softcap,
                                                   causal, method, layout)
    check_alibi_slopes(alibi_slopes, cu_seqlens_q.shape[0] - 1, q.shape[1])
    check_gqa(q.shape[1], k.shape[1], "q", "k and v")

    def checks():
        check_qkv(q, k, v, varlen=True)
        check_devices(("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_seqlens_q),
                      ("cu_seqlens_k", cu_seqlens_k), *optional("alibi_slopes", alibi_slopes))

    blocks = _resolve_blocks(block_attention, checks)
    comm = Comm(group)
    w = comm.world_size
    cu_q, cu_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    lengths_q = [b - a for a, b in zip(cu_q, cu_q[1:])]
    lengths_k = [b - a for a, b in zip(cu_k, cu_k[1:])]
    for name, t, total in (("q", q, cu_q[-1]), ("k", k, cu_k[-1])):
        if t.shape[0] * w != total:
            raise ValueError(f"{name} has {t.shape[0]} rows but cu_seqlens_{name} describes {total} rows over "
                             f"{w} ranks: each rank passes its share, {total} / {w} rows")
    _check_combinations(alibi_slopes, causal, window, method, w, lengths_q + lengths_k)
    geometry = Geometry(layout, comm.rank, w, lengths_q, lengths_k, True, _plan.band(causal, window), q.device,
                        alibi_slopes is not None)
    job = Job(geometry, comm, blocks, BlockArgs(scale, softcap, alibi_slopes, bool(deterministic)), method)
    out, lse = _apply(q, k, v, job)
    return (out, lse, q.new_empty(0)) if return_attn_probs else out


def _apply(q, k, v, job):
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return CPAttention.apply(q, k, v, job)
    with torch.no_grad():
        return CPAttention.forward(_NoCtx(), q, k, v, job)


class _NoCtx:
    """Stands in for autograd's ctx in inference: keeps nothing."""

    def save_for_backward(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass
