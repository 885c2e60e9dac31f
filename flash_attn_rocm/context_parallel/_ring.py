"""Context-parallel attention: the ring and the all-gather, forward and backward.

Every rank holds its share of the sequence(s): q, k, v with the same split (zigzag by default,
see _split.py). The ring (method="ring") computes, at step t, the local queries against the keys
and values of rank (rank − t) mod world, merging each block's out and lse in fp32, while the
next block travels (rank → rank + 1). The backward passes K/V around again; dk/dv accumulate in
fp32 in buffers that travel with the K/V they belong to and reach their owner after the last
step. The all-gather (method="all_gather") gathers K/V once and makes one call per query chunk
with the kernels' own bottom-right alignment; its backward reduce-scatters dk/dv. Which calls a
step makes, with which causal/window, is _plan.plan's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from . import _plan
from ._blocks import BlockArgs, merge_block
from ._comm import Comm


class _Slice:
    """Rows [start, stop) of a dense buffer (a view)."""

    def __init__(self, start: int, stop: int):
        self.start, self.length = start, stop - start

    def take(self, t, dim):
        return t.narrow(dim, self.start, self.length)

    def put(self, t, dim, value):
        self.take(t, dim).copy_(value)

    def add(self, t, dim, value):
        self.take(t, dim).add_(value)


class _Rows:
    """Rows of a varlen buffer, given per sequence (idx None: all of them, in order)."""

    def __init__(self, idx: Optional[torch.Tensor]):
        self.idx = idx

    def take(self, t, dim):
        return t if self.idx is None else t.index_select(dim, self.idx)

    def put(self, t, dim, value):
        if self.idx is None:
            t.copy_(value)
        else:
            t.index_copy_(dim, self.idx, value)

    def add(self, t, dim, value):
        if self.idx is None:
            t.add_(value)
        else:
            t.index_add_(dim, self.idx, value)


@dataclass
class _Call:
    q: object  # _Slice or _Rows
    k: object
    causal: bool
    window: tuple[int, int]
    varlen: Optional[tuple]  # (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) or None


class Geometry:
    """Where every local row of every rank sits in the global sequence(s), and the kernel calls a
    step makes. Dense: one sequence of global length seqlen (positions of q shifted by
    seqlen_k − seqlen_q, flash-attn's bottom-right alignment); varlen: the batch's global lengths."""

    def __init__(self, layout: str, rank: int, world_size: int, lengths_q: list[int], lengths_k: list[int],
                 varlen: bool, band: tuple, device, need_aligned: bool):
        self.layout, self.rank, self.world_size, self.varlen = layout, rank, world_size, varlen
        self.lengths_q, self.lengths_k, self.band, self.device = lengths_q, lengths_k, band, device
        self.need_aligned = need_aligned
        parts = 2 * world_size if layout == "zigzag" else world_size
        for name, lengths in (("q", lengths_q), ("k", lengths_k)):
            for length in lengths:
                if length % parts:
                    what = "every sequence length" if varlen else "the global sequence length"
                    raise ValueError(f"context parallelism ({layout} over {world_size} ranks) needs {what} of {name} "
                                     f"to be a multiple of {parts}, got {length}")

    def _segments(self, rank, lengths, shift):
        """Per sequence, the rank's segments (local offsets within the rank's varlen buffer)."""
        w, out, local = self.world_size, [], 0
        for length, sh in zip(lengths, shift):
            if self.layout == "zigzag":
                c = length // (2 * w)
                segs = [_plan.Segment(s.local, s.start + sh, s.length)
                        for s in _plan.zigzag_segments(rank, w, c, local)]
            else:
                segs = [_plan.Segment(local, rank * (length // w) + sh, length // w)]
            out.append(segs)
            local += length // w
        return out

    def q_segments(self):
        return self._segments(self.rank, self.lengths_q, [lk - lq for lq, lk in zip(self.lengths_q, self.lengths_k)])

    def k_segments(self, rank):
        return self._segments(rank, self.lengths_k, [0] * len(self.lengths_k))

    def k_global_segments(self):
        """The gathered K in global order: one segment per sequence."""
        out, row = [], 0
        for length in self.lengths_k:
            out.append([_plan.Segment(row, 0, length)])
            row += length
        return out

    def k_global_rows(self) -> torch.Tensor:
        """For the rank-major gathered K ([rank 0's rows, rank 1's rows, ...]), each row's global row."""
        rows = []
        for r in range(self.world_size):
            start = 0
            for length, segs in zip(self.lengths_k, self.k_segments(r)):
                rows += [torch.arange(start + s.start, start + s.start + s.length) for s in segs]
                start += length
        return torch.cat(rows).to(self.device)

    def calls(self, q_segs, k_segs, k_total: int) -> list[_Call]:
        """The calls of queries q_segs against a key buffer of k_total rows holding k_segs."""
        lo, hi = self.band
        live = [i for i, segs in enumerate(q_segs) if segs[0].length > 0 and k_segs[i][0].length > 0]
        level = next(lvl for lvl in range(4) if all(_plan.acceptable(q_segs[i], k_segs[i], lo, hi, lvl) for i in live))
        per_seq = [{c.group: c for c in _plan.plan(q_segs[i], k_segs[i], lo, hi, level)} if i in live else {}
                   for i in range(len(q_segs))]
        calls = []
        for group in sorted(set().union(*per_seq)):
            present = [d[group] for d in per_seq if group in d]
            kind = _common_kind(present)
            if kind is None:
                raise NotImplementedError(
                    "window_size with varlen context parallelism by ring: the sequences' chunks differ in length, so "
                    "the window is a different kernel window for each of them; use method='all_gather'")
            if self.need_aligned and not all(c.aligned for c in present):
                raise NotImplementedError(
                    "alibi_slopes with context parallelism: the kernels' ALiBi bias counts positions within one call, "
                    "and this split pairs query and key chunks whose global distance the call cannot see; ALiBi works "
                    "with method='all_gather' and causal=True")
            causal, window = kind
            if not self.varlen:
                c = present[0]
                calls.append(_Call(_Slice(*c.q_rows), _Slice(*c.k_rows), causal, window, None))
                continue
            qr = [d[group].q_rows if group in d else (0, 0) for d in per_seq]
            kr = [d[group].k_rows if group in d else (0, 0) for d in per_seq]
            q_sel, cu_q, max_q = self._rows(qr, sum(self.lengths_q) // self.world_size)
            k_sel, cu_k, max_k = self._rows(kr, k_total)
            calls.append(_Call(q_sel, k_sel, causal, window, (cu_q, cu_k, max_q, max_k)))
        return calls

    def _rows(self, ranges, total):
        lengths = [b - a for a, b in ranges]
        cu = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(torch.int32)
        whole = sum(lengths) == total and all(
            a == int(cu[i]) for i, (a, _) in enumerate(ranges))
        idx = None if whole else torch.cat([torch.arange(a, b) for a, b in ranges]).to(self.device)
        return _Rows(idx), cu.to(self.device), max(lengths, default=0)


def _kernel_band(m: int, n: int, causal: bool, window: tuple[int, int]):
    """The diagonals j − i an m × n kernel call with (causal, window) sees, clipped to the rectangle's."""
    left, right = window[0], 0 if causal else window[1]
    lo = -(m - 1) if left < 0 else max(-(m - 1), n - m - left)
    hi = n - 1 if right < 0 else min(n - 1, n - m + right)
    return lo, hi


def _common_kind(calls):
    """One (causal, window) that gives every call of a varlen group its mask (a call whose band
    covers its whole rectangle is 'full' on its own but agrees with a causal neighbour), or None."""
    def size(c):
        return c.q_rows[1] - c.q_rows[0], c.k_rows[1] - c.k_rows[0]

    for cand in dict.fromkeys((c.causal, c.window) for c in calls):
        if all(_kernel_band(*size(c), *cand) == _kernel_band(*size(c), c.causal, c.window) for c in calls):
            return cand
    return None


@dataclass
class Job:
    """One context-parallel attention call: everything but the tensors."""

    geometry: Geometry
    comm: Comm
    blocks: object  # _blocks.BlockAttention
    args: BlockArgs
    method: str  # "ring" or "all_gather"


def _dims(varlen: bool):
    return (0, 1) if varlen else (1, 2)  # sequence dim of q/out, of lse


def _acc_dtype(dtype):
    return torch.promote_types(dtype, torch.float32)


def _lse_shape(q, varlen):
    return (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])


def _forward_calls(job: Job, q, blocks_kv, out_acc, lse_acc, calls, varlen):
    """Runs the calls of one step against the key/value buffers (k, v), merging into the
    accumulators (replaced, since merge_block returns new tensors for the rows)."""
    seq_dim, lse_dim = _dims(varlen)
    k, v = blocks_kv
    for c in calls:
        o, l = job.blocks.forward(c.q.take(q, seq_dim), c.k.take(k, seq_dim), c.k.take(v, seq_dim), c.causal,
                                  c.window, job.args, c.varlen)
        merged_out, merged_lse = merge_block(c.q.take(out_acc, seq_dim), c.q.take(lse_acc, lse_dim), o, l, seq_dim,
                                             lse_dim)
        c.q.put(out_acc, seq_dim, merged_out)
        c.q.put(lse_acc, lse_dim, merged_lse)


def _backward_calls(job: Job, dout, q, out, lse, kv, calls, dq_acc, varlen):
    """dq of the calls added into dq_acc; returns [(k rows, dk, dv)] for the owner's accumulators."""
    seq_dim, lse_dim = _dims(varlen)
    k, v = kv
    grads = []
    for c in calls:
        dq, dk, dv = job.blocks.backward(c.q.take(dout, seq_dim), c.q.take(q, seq_dim), c.k.take(k, seq_dim),
                                         c.k.take(v, seq_dim), c.q.take(out, seq_dim),
                                         c.q.take(lse, lse_dim).contiguous(), c.causal, c.window, job.args, c.varlen)
        c.q.add(dq_acc, seq_dim, dq.to(dq_acc.dtype))
        grads.append((c.k, dk, dv))
    return grads


class CPAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, job: Job):
        varlen = job.geometry.varlen
        acc = _acc_dtype(q.dtype)
        out_acc = torch.zeros(q.shape, dtype=acc, device=q.device)
        lse_acc = torch.full(_lse_shape(q, varlen), float("-inf"), dtype=acc, device=q.device)
        geo, comm = job.geometry, job.comm
        q_segs = geo.q_segments()
        if job.method == "ring":
            # Planned before any message is sent: a refusal raises before the ring starts.
            steps = [geo.calls(q_segs, geo.k_segments((comm.rank - step) % comm.world_size), k.shape[0])
                     for step in range(comm.world_size)]
            kv = (k, v)
            for step in range(comm.world_size):
                pending = comm.send_recv(list(kv)) if step + 1 < comm.world_size else None
                _forward_calls(job, q, kv, out_acc, lse_acc, steps[step], varlen)
                if pending is not None:
                    kv = tuple(pending.wait())
            ctx.steps = steps
        else:
            ctx.calls = geo.calls(q_segs, geo.k_global_segments(), k.shape[0] * comm.world_size)
            ctx.rows = rows = geo.k_global_rows()
            kv = _gather_global(comm, k, v, rows, varlen)
            _forward_calls(job, q, kv, out_acc, lse_acc, ctx.calls, varlen)
        out = out_acc.to(q.dtype)
        lse = lse_acc if acc != torch.float32 else lse_acc.float()
        ctx.job = job
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        job = ctx.job
        comm, varlen, seq_dim = job.comm, job.geometry.varlen, _dims(job.geometry.varlen)[0]
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        acc = _acc_dtype(q.dtype)
        dq_acc = torch.zeros(q.shape, dtype=acc, device=q.device)
        if job.method == "ring":
            kv, dkv_pending = (k, v), None
            for step in range(comm.world_size):
                kv_pending = comm.send_recv(list(kv)) if step + 1 < comm.world_size else None
                grads = _backward_calls(job, dout, q, out, lse, kv, ctx.steps[step], dq_acc, varlen)
                if dkv_pending is None:
                    dk_acc = torch.zeros(k.shape, dtype=acc, device=k.device)
                    dv_acc = torch.zeros(v.shape, dtype=acc, device=v.device)
                else:  # the accumulators of the block now held, from the previous rank
                    dk_acc, dv_acc = dkv_pending.wait()
                for rows, dk, dv in grads:
                    rows.add(dk_acc, seq_dim, dk.to(acc))
                    rows.add(dv_acc, seq_dim, dv.to(acc))
                # After the last step the next rank is the owner of the block held.
                dkv_pending = comm.send_recv([dk_acc, dv_acc])
                if kv_pending is not None:
                    kv = tuple(kv_pending.wait())
            dk, dv = dkv_pending.wait()
        else:
            kv = _gather_global(comm, k, v, ctx.rows, varlen)
            dk_all = torch.zeros(kv[0].shape, dtype=acc, device=k.device)
            dv_all = torch.zeros(kv[1].shape, dtype=acc, device=v.device)
            for rows, dk, dv in _backward_calls(job, dout, q, out, lse, kv, ctx.calls, dq_acc, varlen):
                rows.add(dk_all, seq_dim, dk.to(acc))
                rows.add(dv_all, seq_dim, dv.to(acc))
            dk = comm.reduce_scatter(_to_rank_major(dk_all, ctx.rows, comm.world_size, varlen))
            dv = comm.reduce_scatter(_to_rank_major(dv_all, ctx.rows, comm.world_size, varlen))
        return dq_acc.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def _gather_global(comm: Comm, k, v, rows, varlen):
    """K and V of every rank in global order (rows[i]: global row of rank-major row i)."""
    out = []
    for t in (k, v):
        g = comm.all_gather(t)  # [world, *t.shape]
        if not varlen:  # [w, b, s, h, d] -> [b, w * s, h, d]
            g = g.movedim(0, 1).flatten(1, 2)
        else:
            g = g.flatten(0, 1)
        seq_dim = 0 if varlen else 1
        glob = torch.empty_like(g)
        glob.index_copy_(seq_dim, rows, g)
        out.append(glob)
    return tuple(out)


def _to_rank_major(t, rows, world_size, varlen):
    """Inverse of _gather_global's reordering: [world, *local shape]."""
    if varlen:
        return t.index_select(0, rows).unflatten(0, (world_size, -1))
    return t.index_select(1, rows).unflatten(1, (world_size, -1)).movedim(1, 0)
