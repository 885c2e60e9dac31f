"""Splitting a batch across the ranks of a context-parallel group, and putting it back together.

zigzag (the default): the sequence is cut into 2·world chunks and rank r holds chunks r and
2·world − 1 − r, so that under a causal mask every rank has the same amount of work (chunk r sees
little, chunk 2·world − 1 − r sees much). PyTorch's context_parallel calls this split "head-tail";
the layouts are the same. contiguous: rank r holds the r-th of world equal runs (balanced only
without a causal mask). Varlen batches (cu_seqlens) split every sequence that way.

Split everything that lives along the sequence the same way: input ids, labels (shift them for
next-token prediction *before* splitting), position ids (cp_position_ids, for rotary embeddings),
per-token loss weights.
"""

from __future__ import annotations

import torch

LAYOUTS = ("zigzag", "contiguous")


def _check(world_size: int, rank: int, layout: str):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank!r}, world_size {world_size!r}")


def _lengths(seqlen, cu_seqlens):
    if cu_seqlens is None:
        return [int(seqlen)], [0]
    cu = [int(x) for x in (cu_seqlens.tolist() if isinstance(cu_seqlens, torch.Tensor) else cu_seqlens)]
    return [b - a for a, b in zip(cu, cu[1:])], cu[:-1]


def cp_indices(seqlen: int | None, world_size: int, rank: int, *, cu_seqlens=None, layout: str = "zigzag",
               device=None) -> torch.Tensor:
    """int64 [local rows]: the global rows rank holds, in its local order (dense: positions in a
    sequence of seqlen; varlen, seqlen None: rows of the packed batch described by cu_seqlens)."""
    _check(world_size, rank, layout)
    parts = 2 * world_size if layout == "zigzag" else world_size
    rows = []
    for length, start in zip(*_lengths(seqlen, cu_seqlens)):
        if length % parts:
            raise ValueError(f"{layout} context parallelism over {world_size} ranks needs sequence lengths that are "
                             f"multiples of {parts}, got {length}")
        chunk = length // parts
        picks = (rank, 2 * world_size - 1 - rank) if layout == "zigzag" else (rank,)
        rows += [torch.arange(start + p * chunk, start + (p + 1) * chunk) for p in picks]
    return torch.cat(rows).to(device)


def cp_split(x: torch.Tensor, world_size: int, rank: int, *, dim: int = 1, cu_seqlens=None,
             layout: str = "zigzag") -> torch.Tensor:
    """Rank's share of x along dim (dense: the sequence dim, e.g. 1 for [b, s, ...]; varlen: the
    packed token dim, usually 0, with the batch's global cu_seqlens)."""
    idx = cp_indices(x.shape[dim], world_size, rank, cu_seqlens=cu_seqlens, layout=layout, device=x.device)
    return x.index_select(dim, idx)


def cp_unsplit(shards: list[torch.Tensor], *, dim: int = 1, cu_seqlens=None, layout: str = "zigzag") -> torch.Tensor:
    """The full tensor from every rank's share (shards[r] from rank r): cp_split's inverse."""
    world_size = len(shards)
    total = sum(s.shape[dim] for s in shards)
    idx = torch.cat([cp_indices(total, world_size, r, cu_seqlens=cu_seqlens, layout=layout,
                                device=shards[0].device) for r in range(world_size)])
    full = torch.empty_like(torch.cat(shards, dim))
    return full.index_copy_(dim, idx, torch.cat(shards, dim))


def cp_position_ids(seqlen: int | None, world_size: int, rank: int, *, cu_seqlens=None, layout: str = "zigzag",
                    device=None) -> torch.Tensor:
    """int64 [local rows]: the position within its sequence of every row rank holds (what rotary
    embeddings need; transformers' position_ids [1, local] is this, unsqueezed)."""
    idx = cp_indices(seqlen, world_size, rank, cu_seqlens=cu_seqlens, layout=layout, device=device)
    if cu_seqlens is None:
        return idx
    lengths, starts = _lengths(None, cu_seqlens)
    seq_start = torch.repeat_interleave(torch.tensor(starts), torch.tensor(lengths))
    return idx - seq_start.to(idx.device)[idx]


def cp_gather(x: torch.Tensor, group=None, *, dim: int = 1, cu_seqlens=None, layout: str = "zigzag") -> torch.Tensor:
    """Every rank's share all-gathered and unsplit (outputs, logits for evaluation); no autograd.
    CUDA tensors over gloo are staged through host memory."""
    from ._comm import Comm

    comm = Comm(group)
    gathered = comm.all_gather(x)
    return cp_unsplit(list(gathered.unbind(0)), dim=dim, cu_seqlens=cu_seqlens, layout=layout)
