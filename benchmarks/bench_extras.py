#!/usr/bin/env python
"""Softcap, ALiBi and dropout against the plain call, in one run: issue 22's bar is fwd+bwd with
each at >= 0.9x of the same shape without it (d128, 16k tokens). Every variant runs on the Hopper
kernels and on the portable ones (set_hopper_kernels(False)) beside sdpa_flash and sdpa_cudnn on
the plain shape (and sdpa_flash with the same dropout, the one extra SDPA has).

Shapes: b*s = 16k tokens, h*d = 2048, causal and not. TFLOP/s count the matmuls only (FLOPs
4*b*h*s*s*d, halved for causal, x3.5 fwd+bwd), so a slower variant shows as fewer TFLOP/s.

  python benchmarks/bench_extras.py                       # d128 16k, fwd and fwdbwd
  python benchmarks/bench_extras.py --headdims 64 128 --seqlens 4096 16384
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = {
    "plain": {},
    "softcap": dict(softcap=30.0),
    "alibi": dict(alibi=True),
    "dropout": dict(dropout_p=0.1),
    "all": dict(softcap=30.0, alibi=True, dropout_p=0.1),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--headdims", type=int, nargs="+", default=[128])
    p.add_argument("--seqlens", type=int, nargs="+", default=[16384])
    p.add_argument("--modes", choices=common.MODES, nargs="+", default=["fwd", "fwdbwd"])
    p.add_argument("--dtype", choices=tuple(common.DTYPES), default="fp16")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", type=Path, default=None)
    return p.parse_args(argv)


def rocm_ms(shape: common.Shape, dtype, mode: str, kwargs: dict, hopper: bool, quick: bool) -> float:
    from flash_attn_rocm import flash_attn_func
    from flash_attn_rocm._ops import set_hopper_kernels

    q, k, v = common.make_inputs(shape, dtype, requires_grad=mode != "fwd")
    call = dict(kwargs)
    if call.pop("alibi", False):
        call["alibi_slopes"] = torch.rand(shape.batch, shape.heads, device="cuda") * 0.3
    previous = set_hopper_kernels(hopper)
    try:
        step = common.make_step(lambda: flash_attn_func(q, k, v, causal=shape.causal, **call), (q, k, v), mode)
        step()
        return common.bench_ms(step, quick)
    finally:
        set_hopper_kernels(previous)


def sdpa_ms(shape: common.Shape, dtype, mode: str, backend: str, dropout_p: float, quick: bool) -> float:
    q, k, v = (t.transpose(1, 2) for t in common.make_inputs(shape, dtype, requires_grad=mode != "fwd"))
    inputs = (q, k, v)
    with common.sdpa_backends(backend):
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=shape.causal, dropout_p=dropout_p)  # noqa: E731
        try:
            step = common.make_step(fwd, inputs, mode)
            step()
            return common.bench_ms(step, quick)
        except RuntimeError as e:
            common.log_once(f"{backend}: cannot run ({common._first_line(e)})")
            return float("nan")


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_extras.py needs a CUDA GPU")
    dtype = common.DTYPES[args.dtype]
    rows = []
    for d in args.headdims:
        for s in args.seqlens:
            for causal in (False, True):
                shape = common.Shape(batch=max(1, 16384 // s), heads=2048 // d, seqlen=s, headdim=d, causal=causal)
                for mode in args.modes:
                    flops = shape.flops(mode)
                    row = dict(d=d, seqlen=s, causal=causal, mode=mode)
                    for name, kwargs in VARIANTS.items():
                        for hopper in (True, False):
                            ms = rocm_ms(shape, dtype, mode, kwargs, hopper, args.quick)
                            row[f"{name}_{'sm90' if hopper else 'sm80'}"] = common.tflops(flops, ms)
                    for backend in ("sdpa_flash", "sdpa_cudnn"):
                        row[backend] = common.tflops(flops, sdpa_ms(shape, dtype, mode, backend, 0.0, args.quick))
                    row["sdpa_flash_dropout"] = common.tflops(
                        flops, sdpa_ms(shape, dtype, mode, "sdpa_flash", 0.1, args.quick))
                    for name in VARIANTS:
                        row[f"{name}/plain"] = common.ratio(row[f"{name}_sm90"], row["plain_sm90"])
                    rows.append(row)
                    common.log(f"{shape.label()} {mode}: " + ", ".join(
                        f"{n} {row[f'{n}_sm90']:.1f} ({row[f'{n}/plain']:.2f}x; portable {row[f'{n}_sm80']:.1f})"
                        for n in VARIANTS))
    out_dir = args.out_dir or common.default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_csv(out_dir / "extras.csv", rows)
    columns = [("d", "d", "d"), ("seqlen", "seqlen", "d"), ("causal", "causal", "s"), ("mode", "mode", "s")]
    columns += [(f"{n} sm90", f"{n}_sm90", ".1f") for n in VARIANTS]
    columns += [(f"{n} sm80", f"{n}_sm80", ".1f") for n in VARIANTS]
    columns += [(b, b, ".1f") for b in ("sdpa_flash", "sdpa_cudnn", "sdpa_flash_dropout")]
    columns += [(f"{n}/plain", f"{n}/plain", ".2f") for n in VARIANTS if n != "plain"]
    print(f"\n== extras vs plain, TFLOP/s ({common.device_name()}, {args.dtype}; sm90 = Hopper kernels, sm80 = "
          f"portable; x/plain on Hopper, same run) ==")
    print(common.format_table(rows, columns))


if __name__ == "__main__":
    main()
