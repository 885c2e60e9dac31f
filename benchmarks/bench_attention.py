#!/usr/bin/env python
"""Attention benchmarks: flash_attn_rocm vs eager attention vs PyTorch SDPA backends.

Parts (both run by default; pick one with --only):
  blog  batch 1, 32 heads, head dim 128, causal, seqlen 256..4096 step 64:
        flash_attn_rocm, eager, sdpa_flash, sdpa_cudnn, sdpa_efficient.
        Writes blog_<mode>_<dtype>.csv (seqlen, backend, ms, tflops, speedup_over_eager)
        and a PNG of speedup over eager vs seqlen.
  grid  FlashAttention paper grid: batch*seqlen = 16384, hidden 2048 (heads = 2048/d),
        d in {64, 128}, causal off/on, seqlen 512..16k: flash_attn_rocm, sdpa_flash,
        sdpa_cudnn. Writes grid_<mode>_<dtype>.csv and prints the TFLOP/s table last.

Examples:
  python benchmarks/bench_attention.py
  python benchmarks/bench_attention.py --quick --only grid --dtype bf16
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Shape  # noqa: E402

BLOG_SEQLENS = range(256, 4096 + 1, 64)
BLOG_SEQLENS_QUICK = (256, 1024, 4096)
BLOG_BACKENDS = ("flash_attn_rocm", "eager", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient")

GRID_TOKENS, GRID_HIDDEN = 16384, 2048
GRID_HEADDIMS = (64, 128)
GRID_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
GRID_SEQLENS_QUICK = (512, 4096)
GRID_BACKENDS = ("flash_attn_rocm", "sdpa_flash", "sdpa_cudnn")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where CSV/PNG files go (default: $OUT/bench if OUT is set, else benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="few seqlens and short timing: a smoke run")
    p.add_argument("--only", choices=("blog", "grid"), help="run only one part (default: both)")
    p.add_argument("--mode", choices=common.MODES, nargs="+", default=["fwd"],
                   help="passes to time: forward, backward, or both; several run one after another (default: fwd)")
    p.add_argument("--headdims", type=int, nargs="+", default=list(GRID_HEADDIMS),
                   help=f"head dims of the grid (default: {' '.join(map(str, GRID_HEADDIMS))})")
    p.add_argument("--dtype", choices=tuple(common.DTYPES), default="fp16", help="input dtype (default: fp16)")
    p.add_argument("--blog-backends", nargs="+", choices=BLOG_BACKENDS, default=list(BLOG_BACKENDS),
                   help="backends of the blog curve (default: all; without eager its speedup column is empty)")
    p.add_argument("--seqlens", type=int, nargs="+", default=None,
                   help=f"sequence lengths of the grid (default: {' '.join(map(str, GRID_SEQLENS))})")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- blog


def run_blog(args, flash_attn_func) -> None:
    seqlens = BLOG_SEQLENS_QUICK if args.quick else BLOG_SEQLENS
    shapes = [Shape(batch=1, heads=32, seqlen=s, headdim=128, causal=True) for s in seqlens]
    names = [b for b in BLOG_BACKENDS if b in args.blog_backends]
    backends = common.make_backends(names, flash_attn_func)
    rows = common.run_cases(shapes, backends, args.mode, common.DTYPES[args.dtype], args.quick, desc="blog")

    eager_ms = {r["seqlen"]: r["ms"] for r in rows if r["backend"] == "eager"}
    for r in rows:
        r["speedup_over_eager"] = common.ratio(eager_ms.get(r["seqlen"], math.nan), r["ms"])

    tag = f"{args.mode}_{args.dtype}"
    common.write_csv(args.out_dir / f"blog_{tag}.csv", rows,
                     ("seqlen", "backend", "ms", "tflops", "speedup_over_eager"))
    series = {b.name: ([r["seqlen"] for r in rows if r["backend"] == b.name],
                       [r["speedup_over_eager"] for r in rows if r["backend"] == b.name]) for b in backends}
    common.plot_lines(args.out_dir / f"blog_{tag}.png", series,
                      f"Causal attention {args.mode} speedup over eager, b=1 h=32 d=128 {args.dtype}\n"
                      f"{common.device_name()}",
                      "sequence length", "speedup over eager (x)")

    table = [r for r in common.pivot(rows, ("seqlen",), ("speedup_over_eager",))
             if args.quick or r["seqlen"] == 256 or r["seqlen"] % 512 == 0]
    print(f"\n== blog: speedup over eager ({args.mode}, {args.dtype}) ==")
    columns = [("seqlen", "seqlen", "d")] + [(b, f"{b}_speedup_over_eager", ".2f") for b in names]
    print(common.format_table(table, columns))
    # The bar: at or above cuDNN at every length.
    ms = {(r["seqlen"], r["backend"]): r["ms"] for r in rows}
    if "sdpa_cudnn" in names:
        vs_cudnn = {s: common.ratio(ms[(s, "sdpa_cudnn")], ms[(s, "flash_attn_rocm")]) for s in seqlens}
        below = [s for s, x in vs_cudnn.items() if x < 1.0]
        worst = min(vs_cudnn, key=vs_cudnn.get)
        print(f"blog vs sdpa_cudnn: {len(below)} of {len(vs_cudnn)} lengths below 1.0x; "
              f"lowest {vs_cudnn[worst]:.3f}x at {worst}")


# --------------------------------------------------------------------------- grid


def grid_shapes(quick: bool, headdims=GRID_HEADDIMS, seqlens=None) -> list[Shape]:
    seqlens = seqlens or (GRID_SEQLENS_QUICK if quick else GRID_SEQLENS)
    return [Shape(batch=GRID_TOKENS // s, heads=GRID_HIDDEN // d, seqlen=s, headdim=d, causal=causal)
            for d in headdims for causal in (False, True) for s in seqlens]


def run_grid(args, flash_attn_func) -> None:
    backends = common.make_backends(GRID_BACKENDS, flash_attn_func)
    rows = common.run_cases(grid_shapes(args.quick, args.headdims, args.seqlens), backends, args.mode,
                            common.DTYPES[args.dtype], args.quick, desc="grid")

    table = common.pivot(rows, ("headdim", "causal", "seqlen", "batch", "heads"), ("tflops", "ms"))
    for r in table:
        r["rocm/flash"] = common.ratio(r["flash_attn_rocm_tflops"], r["sdpa_flash_tflops"])
        r["rocm/cudnn"] = common.ratio(r["flash_attn_rocm_tflops"], r["sdpa_cudnn_tflops"])
    common.write_csv(args.out_dir / f"grid_{args.mode}_{args.dtype}.csv", table)

    print(f"\n== grid: {args.mode} TFLOP/s, {args.dtype}, {common.device_name()} ==")
    print(common.format_table(table, [
        ("d", "headdim", "d"), ("causal", "causal", ""), ("seqlen", "seqlen", "d"),
        ("batch", "batch", "d"), ("heads", "heads", "d"),
        ("rocm", "flash_attn_rocm_tflops", ".1f"), ("sdpa_flash", "sdpa_flash_tflops", ".1f"),
        ("sdpa_cudnn", "sdpa_cudnn_tflops", ".1f"),
        ("rocm/flash", "rocm/flash", ".2f"), ("rocm/cudnn", "rocm/cudnn", ".2f"),
    ]))


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_attention: a CUDA GPU is required")
    args.out_dir = args.out_dir or common.default_out_dir()
    flash_attn_func = common.import_rocm("flash_attn_func")
    torch.manual_seed(0)
    print(f"device: {common.device_name()} | torch {torch.__version__} | modes {' '.join(args.mode)} | "
          f"dtype {args.dtype} | timer: {common.timer_name()} | out: {args.out_dir}", flush=True)

    for mode in args.mode:
        mode_args = argparse.Namespace(**{**vars(args), "mode": mode})
        if args.only in (None, "blog"):
            run_blog(mode_args, flash_attn_func)
        if args.only in (None, "grid"):
            run_grid(mode_args, flash_attn_func)  # last: its table is the tail of the output


if __name__ == "__main__":
    main()
