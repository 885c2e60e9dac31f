"""Rotary position embeddings in plain PyTorch, call-compatible with flash-attn 2.8's
`flash_attn.layers.rotary.apply_rotary_emb` (which runs a Triton kernel).

flash_attn_with_kvcache rotates on the GPU itself; this eager version is for callers that rotate
q/k before attention, and for references in tests. Any device, differentiable.
"""

from __future__ import annotations

import torch

__all__ = ["apply_rotary_emb"]


def _positions(x, seqlen_offsets, cu_seqlens):
    """The position of every row of x: [b, s] (dense) or [total] (varlen), as int64."""
    device = x.device
    if cu_seqlens is None:
        batch, seqlen = x.shape[:2]
        rows = torch.arange(seqlen, device=device)[None, :]
        if isinstance(seqlen_offsets, torch.Tensor):
            return rows + seqlen_offsets.to(device=device, dtype=torch.int64).reshape(-1, 1)
        return (rows + int(seqlen_offsets)).expand(batch, seqlen)
    total = x.shape[0]
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    rows = torch.arange(total, device=device)
    sequence = torch.searchsorted(cu[1:], rows, right=True)  # the sequence each row is in
    positions = rows - cu[sequence]
    if isinstance(seqlen_offsets, torch.Tensor):
        return positions + seqlen_offsets.to(device=device, dtype=torch.int64)[sequence]
    return positions + int(seqlen_offsets)


def apply_rotary_emb(x, cos, sin, interleaved=False, inplace=False, seqlen_offsets=0, cu_seqlens=None,
                     max_seqlen=None):
    """Rotates the first rotary_dim = 2 * cos.shape[-1] channels of x by the angle of its row's
    position; the other channels pass through.

    x: [b, s, h, d], or [total, h, d] with cu_seqlens (int32 [b + 1]); cos, sin: [seqlen_ro,
    rotary_dim / 2]. Row t of sequence i sits at position seqlen_offsets (+ [i] for a [b] tensor)
    + t; positions at or past seqlen_ro are left unrotated, as flash-attn's kernel does.
    interleaved pairs channels (2j, 2j + 1) (GPT-J), else (j, j + rotary_dim / 2) (GPT-NeoX).
    Computed in float32, returned in x's dtype; inplace writes the result into x and returns it.
    max_seqlen is accepted for flash-attn's signature and not needed here.
    """
    del max_seqlen
    half = cos.shape[-1]
    rotary_dim = 2 * half
    if cos.dim() != 2 or cos.shape != sin.shape:
        raise ValueError(f"cos and sin must both be [seqlen_ro, rotary_dim / 2], got {tuple(cos.shape)} and "
                         f"{tuple(sin.shape)}")
    if rotary_dim > x.shape[-1]:
        raise ValueError(f"rotary_dim (2 * cos.shape[-1] = {rotary_dim}) must be at most x's head dim {x.shape[-1]}")
    positions = _positions(x, seqlen_offsets, cu_seqlens)
    seqlen_ro = cos.shape[0]
    # One extra identity row (cos 1, sin 0) serves every position past the table.
    cos = torch.cat([cos.float(), cos.new_ones(1, half, dtype=torch.float32)])
    sin = torch.cat([sin.float(), sin.new_zeros(1, half, dtype=torch.float32)])
    index = positions.clamp(0, seqlen_ro)
    c, s = cos[index].unsqueeze(-2), sin[index].unsqueeze(-2)  # [..., 1, rotary_dim / 2], broadcast over heads
    rotated = x[..., :rotary_dim].float()
    if interleaved:
        x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
        rotated = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = rotated[..., :half], rotated[..., half:]
        rotated = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    out = torch.cat((rotated.to(x.dtype), x[..., rotary_dim:]), dim=-1)
    if inplace:
        return x.copy_(out)
    return out
