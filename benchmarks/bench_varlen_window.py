"""Ragged batches and sliding windows, fwd+bwd, beside PyTorch's SDPA in one run.

ragged: 64 sequences with lengths drawn from 1..8192 (fixed seed), h=16, d=128, fp16, causal.
  flash_attn_rocm varlen vs sdpa_flash on the batch padded to the longest sequence, and vs
  SDPA on the same batch as a jagged nested tensor (torch.nested, layout=torch.jagged).
window: seqlen 32k, h=16, d=128, fp16: causal with window_size=(4096, 0) vs full causal.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def fwd_bwd(fn, inputs):
    """A callable running fn(*inputs) forward and backward with a fixed upstream gradient."""
    out = fn(*inputs)
    grad = torch.randn_like(out)

    def step():
        torch.autograd.grad(fn(*inputs), inputs, grad)

    return step


def ragged(args):
    from flash_attn_rocm import flash_attn_varlen_func

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 8193, (args.batch,), generator=gen).tolist()
    h, d, dtype = 16, 128, torch.float16
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    total, longest = sum(lengths), max(lengths)
    q, k, v = (torch.randn(total, h, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    useful = sum(common.attn_flops(1, h, n, n, d, True, "fwdbwd") for n in lengths)  # what the padding does not add

    times = {"rocm_varlen": common.bench_ms(fwd_bwd(
        lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, longest, longest, causal=True), (q, k, v)))}

    padded = [torch.zeros(args.batch, h, longest, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3)]
    with common.sdpa_backends("sdpa_flash"):
        times["sdpa_flash_padded"] = common.bench_ms(fwd_bwd(
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), padded))
    nested = [torch.nested.nested_tensor([t[cu[i]:cu[i + 1]].detach() for i in range(args.batch)],
                                         layout=torch.jagged, requires_grad=True) for t in (q, k, v)]
    try:
        times["sdpa_jagged"] = common.bench_ms(fwd_bwd(
            lambda q, k, v: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           is_causal=True).transpose(1, 2).values(), nested))
    except Exception as e:  # noqa: BLE001  (a backend that cannot run this batch is reported, not fatal)
        print(f"sdpa_jagged unavailable: {str(e).splitlines()[0]}")
        times["sdpa_jagged"] = float("nan")
    print(f"\n== ragged fwd+bwd: {args.batch} sequences, {total} tokens, longest {longest}, {common.device_name()} ==")
    for name, ms in times.items():
        print(f"{name:>18}: {ms:8.3f} ms  {useful / ms / 1e9:7.1f} useful TFLOP/s  "
              f"rocm speedup {ms / times['rocm_varlen']:5.2f}x")


def window(args):
    from flash_attn_rocm import flash_attn_func

    s, h, d = args.window_seqlen, 16, 128
    q, k, v = (torch.randn(1, s, h, d, device="cuda", dtype=torch.float16, requires_grad=True) for _ in range(3))
    full = common.bench_ms(fwd_bwd(lambda q, k, v: flash_attn_func(q, k, v, causal=True), (q, k, v)))
    local = common.bench_ms(fwd_bwd(
        lambda q, k, v: flash_attn_func(q, k, v, causal=True, window_size=(args.window, 0)), (q, k, v)))
    print(f"\n== window fwd+bwd: seqlen {s}, window ({args.window}, 0) vs full causal, {common.device_name()} ==")
    # Scores computed: s * w - w^2 / 2 for the window, s^2 / 2 for full causal.
    ideal = (s * args.window - args.window ** 2 / 2) / (s * s / 2)
    print(f"full causal {full:.3f} ms, window {local:.3f} ms, ratio {local / full:.3f} (proportional: {ideal:.3f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["ragged", "window"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--window-seqlen", type=int, default=32768)
    p.add_argument("--window", type=int, default=4096)
    args = p.parse_args(argv)
    if args.only in (None, "ragged"):
        ragged(args)
    if args.only in (None, "window"):
        window(args)


if __name__ == "__main__":
    main()
