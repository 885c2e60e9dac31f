#!/usr/bin/env python
"""The fp8 forward against our bf16 forward and PyTorch's bf16 SDPA backends, in one run: issue
24's bar is fp8 at 16k >= 1,000 TFLOP/s at d128 and >= 1,100 at d256, causal and not, and >= 1.5x
our own 16-bit forward (PyTorch 2.11 exposes no fp8 SDPA: `sdpa_cudnn_fp8` is tried and reported
when it cannot run).

fp8 q, k, v (e4m3 in the device's format, per-(batch, kv head) descales) through flash_attn_func,
which takes the fp8 kernel where there is one (Hopper; AMD gfx942/gfx950) and says so in the
`fp8_path` column; on Hopper its time includes the V transposition pre-pass (fp8_vt_sm90.h).
Shapes: b*s = 16k tokens, h*d = 2048. TFLOP/s count 4*b*h*s*s*d, halved for causal.

  python benchmarks/bench_fp8.py                      # d128 and d256, 1k 4k 16k
  python benchmarks/bench_fp8.py --seqlens 16384 --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--headdims", type=int, nargs="+", default=[128, 256])
    p.add_argument("--seqlens", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out-dir", type=Path, default=None)
    return p.parse_args(argv)


def fp8_inputs(shape: common.Shape):
    from flash_attn_rocm import _fp8

    fp8 = _fp8.native_format("cuda") or torch.float8_e4m3fn
    q, k, v = (t * 3 for t in common.make_inputs(shape, torch.bfloat16))
    heads_k = k.shape[2]
    descales = [torch.rand(shape.batch, heads_k, device="cuda") * 0.5 + 0.05 for _ in range(3)]
    return [t.to(fp8) for t in (q, k, v)], descales


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_fp8.py needs a CUDA GPU")
    from flash_attn_rocm import _fp8, flash_attn_func

    rows = []
    for d in args.headdims:
        for s in args.seqlens:
            for causal in (False, True):
                shape = common.Shape(batch=max(1, 16384 // s), heads=2048 // d, seqlen=s, headdim=d, causal=causal)
                flops = shape.flops("fwd")
                (q, k, v), descales = fp8_inputs(shape)
                native = _fp8.runs_natively(q, 0.0, None, 0.0)
                fp8_ms = common.bench_ms(lambda: flash_attn_func(q, k, v, causal=causal, q_descale=descales[0],
                                                                 k_descale=descales[1], v_descale=descales[2]),
                                         args.quick)
                row = dict(d=d, seqlen=s, causal=causal, fp8_path="kernel" if native else "dequantized",
                           fp8=common.tflops(flops, fp8_ms))
                qb, kb, vb = common.make_inputs(shape, torch.bfloat16)
                row["bf16"] = common.tflops(flops, common.bench_ms(lambda: flash_attn_func(qb, kb, vb, causal=causal),
                                                                   args.quick))
                qt, kt, vt_ = (t.transpose(1, 2) for t in (qb, kb, vb))
                for backend in ("sdpa_flash", "sdpa_cudnn"):
                    with common.sdpa_backends(backend):
                        row[backend] = common.tflops(flops, common.bench_ms(
                            lambda: F.scaled_dot_product_attention(qt, kt, vt_, is_causal=causal), args.quick))
                try:
                    with common.sdpa_backends("sdpa_cudnn"):
                        q8, k8, v8 = (t.transpose(1, 2) for t in (q, k, v))
                        row["sdpa_cudnn_fp8"] = common.tflops(flops, common.bench_ms(
                            lambda: F.scaled_dot_product_attention(q8, k8, v8, is_causal=causal), args.quick))
                except (RuntimeError, TypeError) as e:
                    common.log_once(f"sdpa_cudnn_fp8: cannot run ({common._first_line(e)})")
                    row["sdpa_cudnn_fp8"] = float("nan")
                row["fp8/bf16"] = common.ratio(row["fp8"], row["bf16"])
                row["fp8/sdpa_cudnn"] = common.ratio(row["fp8"], row["sdpa_cudnn"])
                rows.append(row)
                common.log(f"{shape.label()}: fp8 ({row['fp8_path']}) {row['fp8']:.1f}, bf16 {row['bf16']:.1f}, "
                           f"sdpa_cudnn {row['sdpa_cudnn']:.1f} TFLOP/s")
    out_dir = args.out_dir or common.default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_csv(out_dir / "fp8.csv", rows)
    columns = [("d", "d", "d"), ("seqlen", "seqlen", "d"), ("causal", "causal", "s"), ("path", "fp8_path", "s"),
               ("fp8", "fp8", ".1f"), ("bf16", "bf16", ".1f"), ("sdpa_flash", "sdpa_flash", ".1f"),
               ("sdpa_cudnn", "sdpa_cudnn", ".1f"), ("sdpa_cudnn_fp8", "sdpa_cudnn_fp8", ".1f"),
               ("fp8/bf16", "fp8/bf16", ".2f"), ("fp8/sdpa_cudnn", "fp8/sdpa_cudnn", ".2f")]
    print(f"\n== fp8 forward, TFLOP/s ({common.device_name()}; bf16 columns on the same shapes, same run) ==")
    print(common.format_table(rows, columns))


if __name__ == "__main__":
    main()
