"""Padding helpers for variable-length batches, call-compatible with flash-attn 2.8's
`flash_attn.bert_padding`.

`unpad_input` packs the tokens an attention mask keeps from [batch, seqlen, ...] into one
[total, ...] tensor plus the `cu_seqlens` that the `flash_attn_varlen_*` functions take;
`pad_input` scatters a [total, ...] result back to [batch, seqlen, ...], zeros at padding.

Pure PyTorch, on any device. Every function is differentiable in its tensor argument: the
gradient of a gather is a scatter-add into the gathered rows and vice versa, so gradients
flow through unpad -> attention -> pad to the padded inputs (zero at padding).
"""

from __future__ import annotations

import torch

__all__ = ["index_first_axis", "index_put_first_axis", "pad_input", "unpad_input"]


def index_first_axis(input: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The rows `indices` of `input`: [n, ...] -> [len(indices), ...]."""
    return input.index_select(0, indices)


def index_put_first_axis(values: torch.Tensor, indices: torch.Tensor, first_axis_dim: int) -> torch.Tensor:
    """Zeros of shape [first_axis_dim, ...] with row i of `values` at row indices[i] (indices distinct)."""
    zeros = values.new_zeros((first_axis_dim, *values.shape[1:]))
    return zeros.index_copy(0, indices, values)


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask: torch.Tensor | None = None):
    """Packs the kept tokens of `hidden_states` [batch, seqlen, ...], sequence after sequence.

    attention_mask: [batch, seqlen] bool or integer, nonzero for the tokens to keep.
    unused_mask: optional [batch, seqlen], nonzero for tokens that are allocated but unused (e.g.
        reserved slots): they are packed like kept tokens and count in cu_seqlens, but not in seqused.

    Returns
        hidden_states [total, ...]: the packed tokens, in row-major order of the mask;
        indices [total] int64: where each packed token sits in the flattened [batch * seqlen];
        cu_seqlens [batch + 1] int32: start offsets of the sequences in the packed tensor, from 0;
        max_seqlen_in_batch (int): the longest sequence, packed tokens counted (a host sync);
        seqused [batch] int32: the used tokens (attention_mask) of each sequence.
    """
    if attention_mask.dim() != 2 or hidden_states.shape[:2] != attention_mask.shape:
        raise ValueError(f"attention_mask must be [batch, seqlen] = {tuple(hidden_states.shape[:2])} "
                         f"(the first two dims of hidden_states), got {tuple(attention_mask.shape)}")
    used = attention_mask.bool()
    packed = used if unused_mask is None else used | unused_mask.bool()

    indices, cu_seqlens, max_seqlen_in_batch = unpad_indices(packed)
    seqused = used.sum(dim=-1, dtype=torch.int32)
    return index_first_axis(hidden_states.flatten(0, 1), indices), indices, cu_seqlens, max_seqlen_in_batch, seqused


def unpad_indices(mask: torch.Tensor):
    """(indices, cu_seqlens, max_seqlen) of the True entries of a bool mask [batch, seqlen]: where
    they sit in the flattened batch (int64), the rows' start offsets from 0 (int32 [batch + 1]) and
    the longest row (a host sync). unpad_input's bookkeeping without the packing."""
    seqlens = mask.sum(dim=-1, dtype=torch.int32)
    indices = mask.flatten().nonzero().squeeze(1)
    cu_seqlens = torch.cat([seqlens.new_zeros(1), seqlens.cumsum(0, dtype=torch.int32)])
    return indices, cu_seqlens, int(seqlens.max()) if seqlens.numel() else 0


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """The inverse of unpad_input: packed [total, ...] -> [batch, seqlen, ...], zeros where no
    packed token goes. `indices` is what unpad_input returned."""
    return index_put_first_axis(hidden_states, indices, batch * seqlen).unflatten(0, (batch, seqlen))
