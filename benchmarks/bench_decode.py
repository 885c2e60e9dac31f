#!/usr/bin/env python
"""Decode attention (one new query token per sequence) against a full KV cache, as memory bandwidth.

Shape: sq = 1, h = 32 query heads, h_k = 8 KV heads (GQA 4:1), head dim 128, fp16 by default;
batch in {1, 8, 32, 128} x cache length in {1024, 8192, 65536}, every cache full
(cache_seqlens = cache length), non-causal (with sq = 1 causal masks nothing; SDPA's top-left
is_causal would mask all but the first key, so neither side passes it). Combinations whose
K+V cache is over --max-gb are skipped.

Backends, all timed in one run on the same K/V values:
  rocm           flash_attn_rocm.flash_attn_with_kvcache on a contiguous [b, s, h_k, d] cache,
                 num_splits=0 (the kernel's own choice).
  rocm_paged16   the same cache in pages of 16 (and of 256 for rocm_paged256), the pages in a
  rocm_paged256  random order (block_table from torch.randperm), num_splits=0.
  sdpa_flash     F.scaled_dot_product_attention forced onto one backend, q [b, h, 1, d],
  sdpa_cudnn     k/v [b, h_k, s, d] with enable_gqa=True ("gqa"). Default K/V layout is a
                 contiguous [b, h_k, s, d] copy (SDPA's native cache layout; made before timing),
                 or the transposed view of the [b, s, h_k, d] cache if the copy does not fit or
                 with --sdpa-layout view. A backend that refuses GQA gets K/V expanded to h heads
                 (also made before timing; "expanded").
  rocm_append    (--with-append) rocm on the contiguous cache, also writing one new k/v token
                 per call: cache_seqlens = cache - 1, the same slot is rewritten every call.
  copy           dst.copy_(src) of a buffer of the K+V cache's size (capped at 8 GB).
  rocm_splitsN   (--splits N ...) rocm on the contiguous cache with num_splits=N forced.
  rocm_bhsd      (--probe) rocm reading SDPA's [b, h_k, s, d] copy (each head's keys contiguous),
                 to tell the kernel's cost from the [b, s, h_k, d] layout's strided rows.
  read           (--probe) a read-only pass over a buffer of the K+V cache's size (a Triton sum,
                 torch's sum without Triton): how far above copy a pure read stream goes.

GB/s for every attention backend = bytes of the un-expanded K and V cache (b * s * h_k * d *
2 tensors * element size) / time: all are judged on the same useful bytes, whatever they read.
copy's GB/s counts read + write (2 x buffer bytes / time); pct_copy = backend GB/s / copy GB/s,
in percent. Ratios (vs_cudnn, vs_best_sdpa, paged/contiguous) are GB/s ratios: > 1 is faster.
Timing: common.bench_ms (median, L2 flushed before each call). Outputs of the paged and SDPA
backends are checked against rocm contiguous (rel_diff = max |diff| / max |ref|).

Writes decode_<dtype>.csv (one row per batch, cache, backend) to the out dir and prints, per
(batch, cache), the ms of each backend, then GB/s with the ratios.

Examples:
  python benchmarks/bench_decode.py
  python benchmarks/bench_decode.py --batches 1 32 --caches 8192 --with-append --quick
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HEADS, HEADS_K, HEADDIM = 32, 8, 128
BATCHES = (1, 8, 32, 128)
CACHES = (1024, 8192, 65536)
PAGE_SIZES = (16, 256)
SDPA_NAMES = ("sdpa_flash", "sdpa_cudnn")
COPY_CAP_BYTES = 8e9
GB = 1e9
MARGIN_BYTES = 1 << 30  # headroom kept free when deciding whether an extra copy fits
REL_DIFF_WARN = 1e-2

CSV_COLUMNS = ("batch", "cache", "backend", "variant", "kv_layout", "kv_gb", "ms", "gbps",
               "vs_cudnn", "vs_best_sdpa", "pct_copy", "rel_diff", "note")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="default: %(default)s")
    p.add_argument("--caches", type=int, nargs="+", default=list(CACHES),
                   help="cache lengths (multiples of every page size; default: %(default)s)")
    p.add_argument("--dtype", choices=tuple(common.DTYPES), default="fp16", help="default: %(default)s")
    p.add_argument("--max-gb", type=float, default=40.0,
                   help="skip combinations whose K+V cache is over this many GB (1e9 bytes; default: %(default)s)")
    p.add_argument("--page-sizes", type=int, nargs="+", default=list(PAGE_SIZES), help="default: %(default)s")
    p.add_argument("--sdpa-layout", choices=("bhsd", "view"), default="bhsd",
                   help="K/V given to SDPA: a contiguous [b, h_k, s, d] copy (default) or the transposed "
                        "view of the [b, s, h_k, d] cache")
    p.add_argument("--with-append", action="store_true",
                   help="also time rocm appending one new k/v token per call (rocm_append)")
    p.add_argument("--splits", type=int, nargs="*", default=[],
                   help="also time rocm with num_splits forced to each of these (rocm_splitsN)")
    p.add_argument("--probe", action="store_true", help="also time rocm_bhsd and the read-only pass (read)")
    p.add_argument("--quick", action="store_true", help="short timing (common.bench_ms quick mode)")
    p.add_argument("--out", "--out-dir", dest="out_dir", type=Path, default=None,
                   help="directory for the CSV (default: $OUT/bench if OUT is set, else benchmarks/results)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- helpers


def kv_bytes(batch: int, cache: int, dtype: torch.dtype) -> int:
    """Bytes of the un-expanded K and V cache: the useful bytes every backend is judged on."""
    return batch * cache * HEADS_K * HEADDIM * torch.finfo(dtype).bits // 8 * 2


def free_bytes() -> int:
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


def fits(nbytes: float) -> bool:
    return free_bytes() >= nbytes + MARGIN_BYTES


def release():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def reason(e: BaseException, caught=()) -> str:
    """One line: the exception, plus the first warnings raised on the way (SDPA says why there)."""
    msg = f"{type(e).__name__}: {common._first_line(e)}"
    notes = [common._first_line(w.message) for w in caught if str(w.message).strip()]
    if notes:
        msg += " | " + " | ".join(dict.fromkeys(notes))
    return msg[:300].replace(",", ";")


def timed(name: str, fn, quick: bool):
    """(ms, output of one call, failure reason). A failure gives NaN and is logged once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = fn()
            torch.cuda.synchronize()
            return common.bench_ms(fn, quick), out, ""
        except (RuntimeError, ValueError, TypeError) as e:  # refused shape/dtype/option, OOM
            why = reason(e, caught)
    common.log_once(f"{name}: cannot run, recording NaN ({why})")
    release()
    return math.nan, None, why


def first(out):
    """flash-attn style functions may return (out, lse, ...)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def rel_diff(out, ref) -> float:
    if out is None or ref is None:
        return math.nan
    out, ref = first(out).float(), ref.float()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@functools.cache
def triton_read_kernel():
    """The read pass's Triton kernel (built once, compiled once), or None without Triton."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def read_kernel(x, partial, n, BLOCK: tl.constexpr, STEPS: tl.constexpr):
        base = tl.program_id(0).to(tl.int64) * BLOCK * STEPS
        acc = tl.zeros([BLOCK], dtype=tl.int32)
        for i in range(STEPS):
            offs = base + i * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(x + offs, mask=offs < n, other=0)
        tl.store(partial + tl.program_id(0), tl.sum(acc))

    return read_kernel


def read_pass(buf: torch.Tensor):
    """A function that reads every byte of buf once (int32 sums per program, Triton if present)."""
    words = buf.view(torch.int32)
    read_kernel = triton_read_kernel()
    if read_kernel is None:
        return lambda: words.sum()
    block, steps = 4096, 16
    programs = (words.numel() + block * steps - 1) // (block * steps)
    partial = torch.empty(programs, dtype=torch.int32, device=buf.device)
    return lambda: read_kernel[(programs,)](words, partial, words.numel(), BLOCK=block, STEPS=steps)


# --------------------------------------------------------------------------- one (batch, cache)


def run_config(args, kvcache_fn, batch: int, cache: int, dtype: torch.dtype) -> list[dict]:
    nbytes = kv_bytes(batch, cache, dtype)
    rows: list[dict] = []

    def add(backend, ms, variant="", kv_layout="", note="", diff=math.nan, useful=nbytes):
        rows.append({"batch": batch, "cache": cache, "backend": backend, "variant": variant,
                     "kv_layout": kv_layout, "kv_gb": nbytes / GB, "ms": ms, "gbps": useful / (ms * 1e6),
                     "rel_diff": diff, "note": note})

    # copy first, while nothing else of this configuration is allocated.
    copy_bytes = int(min(nbytes, COPY_CAP_BYTES))
    src = torch.empty(copy_bytes, dtype=torch.uint8, device="cuda").random_(0, 256)
    dst = torch.empty_like(src)
    ms, _, why = timed("copy", lambda: dst.copy_(src), args.quick)
    capped = f"; {copy_bytes / GB:.1f} GB buffer (capped)" if copy_bytes < nbytes else ""
    add("copy", ms, "read+write", "flat uint8", (why or "gbps counts read + write bytes") + capped,
        useful=2 * copy_bytes)
    if args.probe:
        ms, _, why = timed("read", read_pass(src), args.quick)
        add("read", ms, "read only", "flat int32", (why or "gbps counts the bytes read") + capped,
            useful=copy_bytes)
    del src, dst
    release()

    q = torch.randn(batch, 1, HEADS, HEADDIM, device="cuda", dtype=dtype)
    k_cache = torch.randn(batch, cache, HEADS_K, HEADDIM, device="cuda", dtype=dtype)
    v_cache = torch.randn_like(k_cache)
    seqlens = torch.full((batch,), cache, dtype=torch.int32, device="cuda")

    # rocm, contiguous cache: also the reference output for the others.
    ref = None
    if kvcache_fn is None:
        add("rocm", math.nan, "contiguous", "[b,s,hk,d]", "flash_attn_rocm.flash_attn_with_kvcache not importable")
    else:
        ms, out, why = timed("rocm", lambda: kvcache_fn(q, k_cache, v_cache, cache_seqlens=seqlens, num_splits=0),
                             args.quick)
        ref = first(out)
        add("rocm", ms, "contiguous", "[b,s,hk,d]", why)
        for n in args.splits:
            ms, out, why = timed(f"rocm_splits{n}", lambda: kvcache_fn(q, k_cache, v_cache, cache_seqlens=seqlens,
                                                                       num_splits=n), args.quick)
            add(f"rocm_splits{n}", ms, f"num_splits={n}", "[b,s,hk,d]", why, rel_diff(out, ref))

    # SDPA: its own K/V layout, built untimed; expanded to h heads only if GQA is refused.
    qt = q.transpose(1, 2)  # [b, h, 1, d]
    sdpa_copy = args.sdpa_layout == "bhsd" and fits(nbytes)
    if sdpa_copy:
        kt, vt = (t.transpose(1, 2).contiguous() for t in (k_cache, v_cache))
        layout = "[b,hk,s,d]"
    else:
        kt, vt = (t.transpose(1, 2) for t in (k_cache, v_cache))
        layout = "[b,s,hk,d] transposed view"
    expanded = None
    for name in SDPA_NAMES:
        with common.sdpa_backends(name):
            ms, out, why = timed(f"{name} gqa", lambda: F.scaled_dot_product_attention(qt, kt, vt, enable_gqa=True),
                                 args.quick)
            variant = "gqa"
            if why:
                groups = HEADS // HEADS_K
                if expanded is None and fits(nbytes * groups):
                    expanded = tuple(t.repeat_interleave(groups, dim=1) for t in (kt, vt))
                if expanded is None:
                    why += f"; expanded K/V ({nbytes * groups / GB:.1f} GB) does not fit"
                else:
                    ke, ve = expanded
                    ms, out, why2 = timed(f"{name} expanded", lambda: F.scaled_dot_product_attention(qt, ke, ve),
                                          args.quick)
                    variant, why = "expanded", (f"gqa refused ({why}); " + why2 if why2 else f"gqa refused ({why})")
        diff = rel_diff(out.transpose(1, 2) if out is not None else None, ref)
        add(name, ms, variant, layout + (" expanded to h" if variant == "expanded" else ""), why, diff)
        del out
    if args.probe and kvcache_fn is not None and sdpa_copy:
        kb, vb = (t.transpose(1, 2) for t in (kt, vt))  # [b, s, h_k, d] views of the [b, h_k, s, d] copies
        ms, out, why = timed("rocm_bhsd", lambda: kvcache_fn(q, kb, vb, cache_seqlens=seqlens, num_splits=0),
                             args.quick)
        add("rocm_bhsd", ms, "contiguous", "[b,hk,s,d] transposed view", why, rel_diff(out, ref))
        del kb, vb, out
    del kt, vt, expanded
    release()

    # Paged caches: the same values, pages in a random order.
    for page in args.page_sizes:
        name = f"rocm_paged{page}"
        if kvcache_fn is None:
            add(name, math.nan, f"paged{page}", f"[blocks,{page},hk,d]", "flash_attn_with_kvcache not importable")
            continue
        if cache % page:
            add(name, math.nan, f"paged{page}", f"[blocks,{page},hk,d]", f"cache {cache} not a multiple of {page}")
            continue
        if not fits(nbytes):
            add(name, math.nan, f"paged{page}", f"[blocks,{page},hk,d]", "paged copy does not fit beside the cache")
            continue
        num_blocks = batch * cache // page
        perm = torch.randperm(num_blocks, device="cuda")
        block_table = perm.to(torch.int32).view(batch, cache // page)
        paged = []
        for t in (k_cache, v_cache):
            p = torch.empty(num_blocks, page, HEADS_K, HEADDIM, device="cuda", dtype=dtype)
            p[perm] = t.view(num_blocks, page, HEADS_K, HEADDIM)  # logical block i lives in physical perm[i]
            paged.append(p)
        pk, pv = paged
        ms, out, why = timed(name, lambda: kvcache_fn(q, pk, pv, cache_seqlens=seqlens, block_table=block_table,
                                                       num_splits=0), args.quick)
        add(name, ms, f"paged{page}", f"[blocks,{page},hk,d] random page order", why, rel_diff(out, ref))
        del paged, pk, pv, out, perm, block_table
        release()

    # Last: it writes into the cache.
    if args.with_append:
        if kvcache_fn is None:
            add("rocm_append", math.nan, "append 1", "[b,s,hk,d]", "flash_attn_with_kvcache not importable")
        else:
            k_new, v_new = (torch.randn(batch, 1, HEADS_K, HEADDIM, device="cuda", dtype=dtype) for _ in range(2))
            seqlens_m1 = seqlens - 1
            ms, _, why = timed("rocm_append", lambda: kvcache_fn(q, k_cache, v_cache, k=k_new, v=v_new,
                                                                 cache_seqlens=seqlens_m1, num_splits=0), args.quick)
            add("rocm_append", ms, "append 1", "[b,s,hk,d]", why or "cache_seqlens = cache - 1; same slot rewritten")

    del q, k_cache, v_cache, seqlens, ref
    release()

    by = {r["backend"]: r["gbps"] for r in rows}
    cudnn = by.get("sdpa_cudnn", math.nan)
    best = max((g for g in (by.get(n, math.nan) for n in SDPA_NAMES) if not math.isnan(g)), default=math.nan)
    for r in rows:
        r["vs_cudnn"] = common.ratio(r["gbps"], cudnn)
        r["vs_best_sdpa"] = common.ratio(r["gbps"], best)
        r["pct_copy"] = 100 * common.ratio(r["gbps"], by["copy"])
        if r["rel_diff"] > REL_DIFF_WARN:
            common.log(f"WARNING: {r['backend']} b{batch} cache {cache}: output differs from rocm contiguous "
                       f"(max |diff| / max |ref| = {r['rel_diff']:.3g})")
    return rows


# --------------------------------------------------------------------------- tables


def backend_names(args) -> list[str]:
    return (["rocm"] + [f"rocm_splits{n}" for n in args.splits] + (["rocm_bhsd"] if args.probe else [])
            + [f"rocm_paged{p}" for p in args.page_sizes] + list(SDPA_NAMES)
            + (["rocm_append"] if args.with_append else []) + ["copy"] + (["read"] if args.probe else []))


def print_tables(args, rows: list[dict]):
    names = backend_names(args)
    table = common.pivot(rows, ("batch", "cache", "kv_gb"), ("ms", "gbps"))
    for r in table:
        rocm = r.get("rocm_gbps", math.nan)
        best = max((g for g in (r.get(f"{n}_gbps", math.nan) for n in SDPA_NAMES) if not math.isnan(g)),
                   default=math.nan)
        r["rocm/cudnn"] = common.ratio(rocm, r.get("sdpa_cudnn_gbps", math.nan))
        r["rocm/best"] = common.ratio(rocm, best)
        r["rocm%copy"] = 100 * common.ratio(rocm, r.get("copy_gbps", math.nan))
        for p in args.page_sizes:
            r[f"p{p}/contig"] = common.ratio(r.get(f"rocm_paged{p}_gbps", math.nan), rocm)

    short = {"rocm_append": "append", "sdpa_flash": "flash", "sdpa_cudnn": "cudnn", "rocm_bhsd": "bhsd"}
    label = {n: short.get(n, n.replace("rocm_paged", "paged").replace("rocm_splits", "s")) for n in names}
    keys = [("batch", "batch", "d"), ("cache", "cache", "d"), ("KV GB", "kv_gb", ".3f")]
    print(f"\n== decode: ms (sq=1 h={HEADS} h_k={HEADS_K} d={HEADDIM} {args.dtype}, {common.device_name()}) ==")
    print(common.format_table(table, keys + [(label[n], f"{n}_ms", ".4f") for n in names]))
    print("\n== decode: GB/s of K+V cache bytes (copy: read+write GB/s); ratios are GB/s ratios ==")
    print(common.format_table(table, keys[:2] + [(label[n], f"{n}_gbps", ".0f") for n in names] + [
        ("rocm/cudnn", "rocm/cudnn", ".2f"), ("rocm/best", "rocm/best", ".2f"), ("rocm%copy", "rocm%copy", ".1f"),
    ] + [(f"p{p}/contig", f"p{p}/contig", ".2f") for p in args.page_sizes]))


# --------------------------------------------------------------------------- main


def warm_up(seconds: float = 1.0) -> None:
    """Keeps the GPU busy for a moment first: the first small configurations (tens of µs a call)
    otherwise run on a GPU still coming out of idle and read up to 2x slow."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    while True:
        for _ in range(20):
            a @ a
        end.record()
        end.synchronize()
        if start.elapsed_time(end) > seconds * 1e3:
            return


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_decode: a CUDA GPU is required")
    args.out_dir = args.out_dir or common.default_out_dir()
    dtype = common.DTYPES[args.dtype]
    kvcache_fn = common.import_rocm("flash_attn_with_kvcache")
    torch.manual_seed(0)
    print(f"device: {common.device_name()} | torch {torch.__version__} | dtype {args.dtype} | "
          f"timer: {common.timer_name()}{' (quick)' if args.quick else ''} | out: {args.out_dir}", flush=True)

    configs = []
    for batch in args.batches:
        for cache in args.caches:
            gb = kv_bytes(batch, cache, dtype) / GB
            if gb > args.max_gb:
                print(f"skip b{batch} cache {cache}: K+V cache {gb:.3g} GB > --max-gb {args.max_gb:g}", flush=True)
            else:
                configs.append((batch, cache))

    warm_up()
    rows = []
    with common.progress(len(configs), "decode") as bar:
        for batch, cache in configs:
            bar.set_postfix_str(f"b{batch} cache {cache}")
            gb = kv_bytes(batch, cache, dtype) / GB
            if not fits(gb * GB):
                common.log(f"skip b{batch} cache {cache}: K+V cache {gb:.1f} GB does not fit in free memory")
            else:
                rows += run_config(args, kvcache_fn, batch, cache, dtype)
            bar.update()

    if not rows:
        sys.exit("bench_decode: nothing was measured")
    common.write_csv(args.out_dir / f"decode_{args.dtype}.csv", rows, CSV_COLUMNS)
    print_tables(args, rows)


if __name__ == "__main__":
    main()
