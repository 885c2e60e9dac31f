"""Communication for context parallelism: the ring exchange and the all-gather / reduce-scatter.

NCCL: the ring's isend/irecv pairs (batch_isend_irecv) are issued from a side stream that waits
only for the work queued before the exchange started, and the compute stream waits for the side
stream only when it needs the received blocks, so a step's transfer overlaps its attention.

Other backends (gloo) with CUDA tensors: gloo has no CUDA send/recv or all-gather, so the tensors
are staged through host memory (synchronous copies, no overlap). This is what lets the tests run
several ranks on one GPU (NCCL refuses two ranks on one device); for speed, use NCCL.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _is_nccl(group) -> bool:
    return "nccl" in str(dist.get_backend(group)).lower()


def _needs_staging(group, t: torch.Tensor) -> bool:
    return t.is_cuda and not _is_nccl(group)


class _Done:
    def __init__(self, tensors):
        self._tensors = tensors

    def wait(self):
        return self._tensors


class _Pending:
    def __init__(self, works, recvs, keep, stream, device):
        self._works, self._recvs, self._keep, self._stream, self._device = works, recvs, keep, stream, device

    def wait(self) -> list[torch.Tensor]:
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                for w in self._works:
                    w.wait()  # makes the side stream wait for NCCL's
            torch.cuda.current_stream().wait_stream(self._stream)
        else:
            for w in self._works:
                w.wait()
        self._keep = None  # the sends are done: their buffers may go
        if self._device is not None:  # staged through the host
            return [r.to(self._device) for r in self._recvs]
        return self._recvs


class Comm:
    """The process group's ring (rank → rank + 1) and collectives."""

    def __init__(self, group=None):
        self.group = dist.group.WORLD if group is None else group
        self.rank = dist.get_rank(self.group)
        self.world_size = dist.get_world_size(self.group)
        self._next = dist.get_global_rank(self.group, (self.rank + 1) % self.world_size)
        self._prev = dist.get_global_rank(self.group, (self.rank - 1) % self.world_size)
        self._exchanges = 0  # gloo pairs messages by tag: every rank numbers its exchanges alike
        self._stream = None

    def _side_stream(self):
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def send_recv(self, tensors: list[torch.Tensor]):
        """Sends tensors to the next rank and receives the previous rank's (same shapes and
        dtypes) without waiting; .wait() on the result returns the received tensors. A ring of one
        hands the tensors back."""
        if self.world_size == 1:
            return _Done(list(tensors))
        tensors = [t.contiguous() for t in tensors]
        device = None
        if _needs_staging(self.group, tensors[0]):
            device = tensors[0].device
            tensors = [t.cpu() for t in tensors]
        recvs = [torch.empty_like(t) for t in tensors]
        base = self._exchanges * len(tensors)
        self._exchanges += 1
        ops = [dist.P2POp(dist.isend, t, self._next, self.group, base + i) for i, t in enumerate(tensors)]
        ops += [dist.P2POp(dist.irecv, r, self._prev, self.group, base + i) for i, r in enumerate(recvs)]
        stream = None
        if tensors[0].is_cuda:
            stream = self._side_stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                works = dist.batch_isend_irecv(ops)
        else:
            works = dist.batch_isend_irecv(ops)
        return _Pending(works, recvs, tensors, stream, device)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """[world_size, *t.shape]: every rank's t, by rank."""
        t = t.contiguous()
        if self.world_size == 1:
            return t[None]
        if not (t.is_cuda and _is_nccl(self.group)):  # gloo: a list of host tensors
            parts = [torch.empty_like(t, device="cpu") for _ in range(self.world_size)]
            dist.all_gather(parts, t.cpu(), group=self.group)
            return torch.stack(parts).to(t.device)
        out = t.new_empty((self.world_size, *t.shape))
        dist.all_gather_into_tensor(out, t, group=self.group)
        return out

    def reduce_scatter(self, t: torch.Tensor) -> torch.Tensor:
        """t [world_size, ...] on every rank; returns the sum over ranks of t[rank]."""
        t = t.contiguous()
        if self.world_size == 1:
            return t[0]
        if t.is_cuda and _is_nccl(self.group):
            out = t.new_empty(t.shape[1:])
            dist.reduce_scatter_tensor(out, t, group=self.group)
            return out
        staged = t.cpu() if t.is_cuda else t.clone()
        dist.all_reduce(staged, group=self.group)  # gloo has no reduce_scatter
        return staged[self.rank].to(t.device)
