"""Peak memory of forward + backward, flash_attn_rocm beside PyTorch's SDPA backends.

For each shape: q, k, v (requiring grad) and dout are allocated first; the peak of
torch.cuda.max_memory_allocated over one forward + backward, minus what was allocated before
it, is what the attention itself needed (outputs, saved tensors, workspaces, gradients).
Prints a table and writes memory.csv.

    python benchmarks/bench_memory.py            # seqlen 16k (batch 1) and 4k (batch 4), d 64 / 128
"""

from __future__ import annotations

import argparse

import torch

import common

BACKENDS = ("flash_attn_rocm", "sdpa_flash", "sdpa_cudnn")


def peak_extra_mib(backend: common.Backend, shape: common.Shape, dtype: torch.dtype) -> float:
    torch.cuda.empty_cache()
    q, k, v = common.make_inputs(shape, dtype, requires_grad=True)
    dout = torch.randn_like(q)
    try:
        with backend.context():
            fwd, inputs = backend.prepare(q, k, v, shape.causal)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out = fwd()
            grads = torch.autograd.grad(out, inputs, dout.view_as(out))
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - before
            del out, grads
    except (RuntimeError, ValueError, NotImplementedError) as e:
        common.log_once(f"{backend.name}: cannot run ({type(e).__name__}: {str(e).splitlines()[0]})")
        return float("nan")
    return peak / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=str, default=None)
    parser.add_argument("--dtype", choices=list(common.DTYPES), default="fp16")
    args = parser.parse_args()
    dtype = common.DTYPES[args.dtype]
    backends = common.make_backends(BACKENDS, common.import_rocm())
    rows = []
    for seqlen, batch in ((16384, 1), (4096, 4)):
        for headdim in (64, 128):
            for causal in (False, True):
                shape = common.Shape(batch, 2048 // headdim, seqlen, headdim, causal)
                row = dict(seqlen=seqlen, batch=batch, headdim=headdim, causal=causal)
                for backend in backends:
                    row[backend.name] = round(peak_extra_mib(backend, shape, dtype), 1)
                row["ratio_vs_sdpa_flash"] = round(common.ratio(row["flash_attn_rocm"], row["sdpa_flash"]), 3)
                rows.append(row)
    out_dir = common.default_out_dir() if args.out_dir is None else common.Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common.write_csv(out_dir / f"memory_{args.dtype}.csv", rows)
    print(f"Peak extra memory of forward + backward (MiB), {common.device_name()}, {args.dtype}")
    columns = [(c, c, "") for c in rows[0]]
    print(common.format_table(rows, columns))


if __name__ == "__main__":
    main()
