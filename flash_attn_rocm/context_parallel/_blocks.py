"""The per-block attention a context-parallel step calls, and the merge of block results.

A block backend computes attention of some query rows against some key rows with the kernels'
conventions (bottom-right aligned causal / window_size, lse float32 [b, h, sq] or varlen
[h, total_q]) and, for the backward, takes the *merged* out and lse of the whole attention, as the
kernels' backward does: P = exp(S − lse) is then the global probability, and D = rowsum(dout · out)
the global one, so each block's dq, dk, dv are its exact share of the gradient.

KernelBlocks runs flash_attn_rocm's ops (CUDA/HIP). EagerBlocks is the same contract in plain
PyTorch (any device, float64 too): the CPU tests run the ring and the merge with it, and it is the
reference a new backend can be checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from .._masks import window_visible

# (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) of a varlen call; None for dense.
Varlen = Optional[tuple[torch.Tensor, torch.Tensor, int, int]]


@dataclass(frozen=True)
class BlockArgs:
    """What every block of one attention call shares."""

    softmax_scale: float
    softcap: float
    alibi_slopes: Optional[torch.Tensor]  # fp32 [h] or [b, h]
    deterministic: bool


class BlockAttention(Protocol):
    def forward(self, q, k, v, causal: bool, window: tuple[int, int], args: BlockArgs, varlen: Varlen = None):
        """(out in q's dtype, lse) for q [b, sq, h, d] / k, v [b, sk, h_k, d] (varlen: [total, h, d])."""

    def backward(self, dout, q, k, v, out, lse, causal: bool, window: tuple[int, int], args: BlockArgs,
                 varlen: Varlen = None):
        """(dq, dk, dv) of the block, given the merged out and lse of the rows q."""


class KernelBlocks:
    """flash_attn_rocm's kernels (torch.ops.flash_attn_rocm.{fwd, bwd, varlen_fwd, varlen_bwd})."""

    def __init__(self):
        from .._ops import ops  # loads the extension; EagerBlocks needs none

        self._ops = ops

    def forward(self, q, k, v, causal, window, args, varlen=None):
        if varlen is None:
            out, lse, _ = self._ops.fwd(q, k, v, args.softmax_scale, causal, *window, args.softcap,
                                        args.alibi_slopes, 0.0)
        else:
            out, lse, _ = self._ops.varlen_fwd(q, k, v, *varlen, args.softmax_scale, causal, *window, args.softcap,
                                               args.alibi_slopes, 0.0)
        return out, lse

    def backward(self, dout, q, k, v, out, lse, causal, window, args, varlen=None):
        if varlen is None:
            return self._ops.bwd(dout, q, k, v, out, lse, args.softmax_scale, causal, args.deterministic, *window,
                                 args.softcap, args.alibi_slopes, 0.0, None)
        return self._ops.varlen_bwd(dout, q, k, v, out, lse, *varlen, args.softmax_scale, causal, args.deterministic,
                                    *window, args.softcap, args.alibi_slopes, 0.0, None)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class EagerBlocks:
    """The block contract in PyTorch, O(sq · sk) memory per block: for tests and CPU."""

    def _scores(self, q, k, causal, window, args, slopes):
        """Logits S [b, h, sq, sk] in the compute dtype (−inf where masked), and tanh of the capped
        logits (for the backward) or None."""
        seqlen_q, seqlen_k, nheads = q.shape[1], k.shape[1], q.shape[2]
        dt = _compute_dtype(q.dtype)
        k = k.to(dt).repeat_interleave(nheads // k.shape[2], dim=2)
        s = torch.einsum("bqhd,bkhd->bhqk", q.to(dt), k) * args.softmax_scale
        tanh = None
        if args.softcap > 0:
            tanh = torch.tanh(s / args.softcap)
            s = args.softcap * tanh
        if slopes is not None:
            rows = torch.arange(seqlen_q, device=q.device)[:, None] + seqlen_k - seqlen_q
            cols = torch.arange(seqlen_k, device=q.device)[None, :]
            s = s - slopes.to(dt).reshape(-1, nheads, 1, 1) * (rows - cols).abs()
        visible = window_visible(seqlen_q, seqlen_k, window, causal, q.device)
        if visible is not None:
            s = s.masked_fill(~visible, float("-inf"))
        return s, tanh

    def _dense_forward(self, q, k, v, causal, window, args, slopes):
        s, _ = self._scores(q, k, causal, window, args, slopes)
        lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - torch.where(lse.isneginf(), 0, lse)[..., None])
        v = v.to(s.dtype).repeat_interleave(q.shape[2] // v.shape[2], dim=2)
        out = torch.einsum("bhqk,bkhd->bqhd", p, v)
        return out.to(q.dtype), lse.to(torch.float32 if s.dtype == torch.float32 else s.dtype)

    def _dense_backward(self, dout, q, k, v, out, lse, causal, window, args, slopes):
        s, tanh = self._scores(q, k, causal, window, args, slopes)
        dt, group, nheads_k = s.dtype, q.shape[2] // k.shape[2], k.shape[2]
        lse = lse.to(dt)
        p = torch.exp(s - torch.where(lse.isneginf(), 0, lse)[..., None])
        dout, out = dout.to(dt), out.to(dt)
        v_rep = v.to(dt).repeat_interleave(group, dim=2)
        k_rep = k.to(dt).repeat_interleave(group, dim=2)
        dv = torch.einsum("bhqk,bqhd->bkhd", p, dout)
        dp = torch.einsum("bqhd,bkhd->bhqk", dout, v_rep)
        delta = (dout * out).sum(-1).transpose(1, 2)[..., None]  # [b, h, sq, 1]
        ds = p * (dp - delta)
        if tanh is not None:
            ds = ds * (1 - tanh * tanh)
        dq = torch.einsum("bhqk,bkhd->bqhd", ds, k_rep) * args.softmax_scale
        dk = torch.einsum("bhqk,bqhd->bkhd", ds, q.to(dt)) * args.softmax_scale

        def fold(g):  # GQA: a key head's gradient sums over its query heads
            return g.reshape(*g.shape[:2], nheads_k, group, g.shape[-1]).sum(3)

        return dq.to(q.dtype), fold(dk).to(k.dtype), fold(dv).to(v.dtype)

    @staticmethod
    def _sequences(varlen, alibi_slopes):
        cu_q, cu_k = varlen[0].tolist(), varlen[1].tolist()
        for b in range(len(cu_q) - 1):
            slopes = alibi_slopes if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes[b]
            yield slice(cu_q[b], cu_q[b + 1]), slice(cu_k[b], cu_k[b + 1]), slopes

    def forward(self, q, k, v, causal, window, args, varlen=None):
        if varlen is None:
            return self._dense_forward(q, k, v, causal, window, args, args.alibi_slopes)
        out = torch.zeros_like(q)
        lse = torch.full((q.shape[1], q.shape[0]), float("-inf"), device=q.device,
                         dtype=torch.float32 if _compute_dtype(q.dtype) == torch.float32 else torch.float64)
        for rows_q, rows_k, slopes in self._sequences(varlen, args.alibi_slopes):
            if rows_q.stop > rows_q.start and rows_k.stop > rows_k.start:
                o, l = self._dense_forward(q[rows_q][None], k[rows_k][None], v[rows_k][None], causal, window, args,
                                           slopes)
                out[rows_q], lse[:, rows_q] = o[0], l[0]
        return out, lse

    def backward(self, dout, q, k, v, out, lse, causal, window, args, varlen=None):
        if varlen is None:
            return self._dense_backward(dout, q, k, v, out, lse, causal, window, args, args.alibi_slopes)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for rows_q, rows_k, slopes in self._sequences(varlen, args.alibi_slopes):
            if rows_q.stop > rows_q.start and rows_k.stop > rows_k.start:
                g = self._dense_backward(dout[rows_q][None], q[rows_q][None], k[rows_k][None], v[rows_k][None],
                                         out[rows_q][None], lse[:, rows_q][None], causal, window, args, slopes)
                dq[rows_q], dk[rows_k], dv[rows_k] = g[0][0], g[1][0], g[2][0]
        return dq, dk, dv


def merge_block(out_acc: torch.Tensor, lse_acc: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                seq_dim: int, lse_seq_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges a block's (out, lse) into running (out_acc, lse_acc) over the same rows:
    lse' = log(e^lse_acc + e^lse), out' = e^(lse_acc − lse')·out_acc + e^(lse − lse')·out, in the
    accumulators' dtype. Rows that have seen no key yet (lse = −inf) stay zero / −inf."""
    lse = lse.to(lse_acc.dtype)
    merged = torch.logaddexp(lse_acc, lse)
    safe = torch.where(merged.isneginf(), 0, merged)

    def weight(x):  # [b, h, s] -> [b, s, h, 1] (varlen: [h, t] -> [t, h, 1])
        return torch.exp(x - safe).movedim(lse_seq_dim, seq_dim).unsqueeze(-1).to(out_acc.dtype)

    return out_acc * weight(lse_acc) + out.to(out_acc.dtype) * weight(lse), merged
