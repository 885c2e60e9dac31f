"""Context-parallel attention (flash_attn_rocm.context_parallel) across the GPUs of one host.

Forward + backward of causal attention over one long sequence (default 128k tokens, head dim
128, 32 query heads, 8 KV heads), split zigzag over 1, 2, 4, 8 GPUs with NCCL, one process per
GPU (spawned here; no torchrun needed). Reports TFLOP/s per GPU (causal FLOPs: half the square,
backward 2.5x the forward) and the efficiency against one GPU's throughput at 16k tokens with
plain flash_attn_func (the size a single GPU trains at without context parallelism):
efficiency = TFLOP/s per GPU at N GPUs / TFLOP/s of one GPU at 16k.

    python benchmarks/bench_context_parallel.py                      # 1 2 4 8 GPUs (those present)
    python benchmarks/bench_context_parallel.py --gpus 2 4 --method ring all_gather
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import attn_flops, default_out_dir, tflops, write_csv  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="GPU counts (skipped if absent)")
    p.add_argument("--seqlen", type=int, default=128 * 1024, help="global tokens of the sequence")
    p.add_argument("--baseline-seqlen", type=int, default=16 * 1024, help="single-GPU reference length")
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--heads-k", type=int, default=8)
    p.add_argument("--headdim", type=int, default=128)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--method", nargs="+", choices=["ring", "all_gather"], default=["ring"])
    p.add_argument("--no-causal", dest="causal", action="store_false")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="CSV path (default: results/context_parallel.csv)")
    return p.parse_args(argv)


def _time_ms(step, iters: int, warmup: int, group=None) -> float:
    """Mean ms per step over iters, the slowest rank's (steps synchronise through the ring anyway)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    if group is not None:
        dist.barrier(group)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    ms = torch.tensor(start.elapsed_time(end) / iters, device="cuda")
    if group is not None:
        dist.all_reduce(ms, op=dist.ReduceOp.MAX, group=group)
    return ms.item()


def _inputs(args, seqlen):
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    q = torch.randn(1, seqlen, args.heads, args.headdim, device="cuda", dtype=dtype, requires_grad=True)
    k, v = (torch.randn(1, seqlen, args.heads_k, args.headdim, device="cuda", dtype=dtype, requires_grad=True)
            for _ in range(2))
    return q, k, v


def _fwd_bwd(fn, q, k, v):
    dout = torch.randn_like(q)

    def step():
        q.grad = k.grad = v.grad = None
        fn(q, k, v).backward(dout)

    return step


def baseline(args) -> float:
    """TFLOP/s of flash_attn_func, fwd+bwd, on one GPU at baseline_seqlen."""
    from flash_attn_rocm import flash_attn_func

    q, k, v = _inputs(args, args.baseline_seqlen)
    ms = _time_ms(_fwd_bwd(lambda q, k, v: flash_attn_func(q, k, v, causal=args.causal), q, k, v), args.iters,
                  args.warmup)
    return tflops(attn_flops(1, args.heads, args.baseline_seqlen, args.baseline_seqlen, args.headdim, args.causal,
                             "fwdbwd"), ms)


def _worker(rank, world_size, args, method, init_file, result_file):
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(minutes=5), device_id=torch.device("cuda", rank))
    from flash_attn_rocm.context_parallel import cp_flash_attn_func

    local = args.seqlen // world_size
    q, k, v = _inputs(args, local)
    ms = _time_ms(_fwd_bwd(lambda q, k, v: cp_flash_attn_func(q, k, v, causal=args.causal, method=method), q, k, v),
                  args.iters, args.warmup, dist.group.WORLD)
    if rank == 0:
        peak = torch.cuda.max_memory_allocated() / 2**30
        with open(result_file, "w") as f:
            f.write(f"{ms} {peak}")
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.seqlen % (2 * max(args.gpus)):
        raise SystemExit(f"--seqlen must be a multiple of 2 x the largest GPU count ({2 * max(args.gpus)})")
    available = torch.cuda.device_count()
    base = baseline(args)
    print(f"{torch.cuda.get_device_name()}: flash_attn_func fwd+bwd at {args.baseline_seqlen} tokens: "
          f"{base:.1f} TFLOP/s", flush=True)
    flops = attn_flops(1, args.heads, args.seqlen, args.seqlen, args.headdim, args.causal, "fwdbwd")
    rows = []
    for method in args.method:
        for n in args.gpus:
            if n > available:
                print(f"{method} {n} GPUs: skipped, {available} present", flush=True)
                continue
            tag = f"/tmp/bench_cp_{os.getpid()}_{method}_{n}"
            mp.spawn(_worker, args=(n, args, method, tag + ".init", tag + ".out"), nprocs=n)
            with open(tag + ".out") as f:
                ms, peak = (float(x) for x in f.read().split())
            per_gpu = tflops(flops, ms) / n
            rows.append(dict(method=method, gpus=n, seqlen=args.seqlen, local_seqlen=args.seqlen // n,
                             heads=args.heads, heads_k=args.heads_k, headdim=args.headdim, causal=args.causal,
                             ms_fwdbwd=round(ms, 3), tflops_per_gpu=round(per_gpu, 1),
                             efficiency_vs_1gpu_16k=round(per_gpu / base, 3), peak_gib_rank0=round(peak, 2),
                             baseline_tflops_16k=round(base, 1), device=torch.cuda.get_device_name()))
            r = rows[-1]
            print(f"{method:10s} {n} GPUs: {ms:9.2f} ms fwd+bwd, {per_gpu:6.1f} TFLOP/s per GPU, "
                  f"efficiency {r['efficiency_vs_1gpu_16k']:.0%}, rank 0 peak {peak:.1f} GiB", flush=True)
            for suffix in (".init", ".out"):
                if os.path.exists(tag + suffix):
                    os.remove(tag + suffix)
    if rows:
        write_csv(args.out or default_out_dir() / "context_parallel.csv", rows)


if __name__ == "__main__":
    main()
