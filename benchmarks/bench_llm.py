#!/usr/bin/env python
"""End-to-end LLM inference in transformers: attn_implementation eager vs sdpa vs flash_attn_rocm.

Architectures from their published configs (hard-coded here, no hub access) with random bf16
weights created directly on the GPU: Mistral-7B-v0.1 (GQA, sliding window 4096), Llama-3-8B
(GQA), Phi-2 (head dim 80, partial rotary). Batch 1, prompt lengths 512..4096. Each model is
built once and switched between implementations with set_attn_implementation.

  prefill_ms  one forward over the prompt that fills the KV cache (logits of the last token
              only, as generate() runs it): median of --reps after a warm-up, the impls
              timed in alternating rounds (the GPU's clock drifts over a run)
  prefill_host_ms  the host's time to issue that forward (returning before the GPU is done):
              close to prefill_ms, the prefill is launch-bound and each impl's host cost
              per layer decides it
  prefill_syncs  host syncs in one such forward (torch.cuda.set_sync_debug_mode), to see
              whether an attention path stalls the launch queue layer by layer
  decode_ms   time per output token where the host is out of the way: the prompt prefilled
              into a StaticCache (room for --new-tokens more), one greedy decode step (forward,
              argmax, next position) captured as a CUDA graph, then --new-tokens replays timed
              with CUDA events, median of --reps such runs, every impl alike. Full-attention
              cache layers for every model (Mistral's window of 4096 still masks: the cache
              layers just keep every key), so a replay never depends on host-side cache state.
              A timing from generate() measured Python and launch overhead instead (sdpa 80.85
              ms/token vs eager 39.13 at Llama-3-8B 4096 in one run): it is gone.

Writes llm.csv (model, seqlen, impl, prefill_ms, prefill_host_ms, prefill_syncs, decode_ms, speedup_vs_eager:
eager's prefill time over this one's, prefill_vs_sdpa and decode_vs_sdpa: sdpa's time over this
one's, from the same run) and llm_prefill_speedup.png (bars per model x seqlen, one per impl)
to --out-dir, and prints a table; the flash_attn_rocm decode path taken is logged once per model.

Examples:
  python benchmarks/bench_llm.py
  python benchmarks/bench_llm.py --quick --models llama-3-8b
  python benchmarks/bench_llm.py --device cpu --tiny --seqlens 32 --new-tokens 4   # plumbing check, no GPU
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

IMPLS = ("eager", "sdpa", "flash_attn_rocm")
SEQLENS = (512, 1024, 2048, 4096)
SEQLENS_QUICK = (512, 2048)
DTYPE = torch.bfloat16

# Published configs (config.json on the hub), reduced to what shapes the computation.
ARCHS = {
    "mistral-7b": ("MistralConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=32000, max_position_embeddings=32768,
        rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=4096, hidden_act="silu",
        tie_word_embeddings=False)),
    "llama-3-8b": ("LlamaConfig", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False)),
    "phi-2": ("PhiConfig", dict(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=51200, max_position_embeddings=2048, partial_rotary_factor=0.4,
        rope_theta=10000.0, layer_norm_eps=1e-5, hidden_act="gelu_new", qk_layernorm=False,
        tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=None,
                   help="where CSV/PNG files go (default: $OUT/bench if OUT is set, else benchmarks/results)")
    p.add_argument("--models", nargs="+", choices=tuple(ARCHS), default=list(ARCHS), help="architectures to run")
    p.add_argument("--seqlens", nargs="+", type=int, default=None, help=f"prompt lengths (default: {SEQLENS})")
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS), help="attention implementations")
    p.add_argument("--new-tokens", type=int, default=None, help="decode steps per decode_ms run (default: 64)")
    p.add_argument("--reps", type=int, default=None, help="timed prefill repetitions and decode runs (default: 5)")
    p.add_argument("--no-decode", action="store_true", help="prefill columns only")
    p.add_argument("--quick", action="store_true",
                   help=f"seqlens {SEQLENS_QUICK}, 32 new tokens, 2 reps: a smoke run")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: a plumbing check with --tiny (float32, no CUDA graphs, wall-clock times)")
    p.add_argument("--tiny", action="store_true", help="2 layers, hidden 256: the architectures' shapes shrunk")
    args = p.parse_args(argv)
    args.seqlens = args.seqlens or (SEQLENS_QUICK if args.quick else SEQLENS)
    args.new_tokens = args.new_tokens or (32 if args.quick else 64)
    args.reps = args.reps or (2 if args.quick else 5)
    args.out_dir = args.out_dir or common.default_out_dir()
    return args


# --------------------------------------------------------------------------- models


TINY = dict(num_hidden_layers=2, vocab_size=512, num_attention_heads=4)


def build_model(arch: str, device: str = "cuda", tiny: bool = False):
    """Random weights (bf16 on the GPU, float32 on the CPU), allocated and initialised on the
    device (no CPU round trip)."""
    import transformers
    from transformers import AutoModelForCausalLM

    config_class, fields = ARCHS[arch]
    if tiny:  # the same head dim and features (GQA or not, window, partial rotary), 2 layers of 4 heads
        head_dim = fields["hidden_size"] // fields["num_attention_heads"]
        gqa = fields["num_key_value_heads"] < fields["num_attention_heads"]
        fields = {**fields, **TINY, "hidden_size": 4 * head_dim, "intermediate_size": 8 * head_dim,
                  "num_key_value_heads": 2 if gqa else 4}
    config = getattr(transformers, config_class)(**fields)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPE if device == "cuda" else torch.float32,
                                                 attn_implementation="eager")
    return model.eval()


def available_impls(wanted) -> list[str]:
    impls = list(wanted)
    if "flash_attn_rocm" in impls:
        try:
            import flash_attn_rocm.integrations.transformers  # noqa: F401  (registers the implementation)
        except ImportError as e:
            common.log(f"WARNING: flash_attn_rocm's transformers integration unavailable ({e}); skipping it")
            impls.remove("flash_attn_rocm")
    return impls


# --------------------------------------------------------------------------- timing


def time_prefill_ms(model, ids) -> tuple[float, float]:
    """(GPU time from the first launch to the last kernel's end, the host's time to return from
    the forward): when the two are close the prefill is launch-bound and the host's cost per
    layer decides it."""
    if ids.device.type != "cuda":
        start = time.perf_counter()
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
        elapsed = 1e3 * (time.perf_counter() - start)
        return elapsed, elapsed
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    host_start = time.perf_counter()
    start.record()
    model(input_ids=ids, use_cache=True, logits_to_keep=1)
    end.record()
    host_ms = 1e3 * (time.perf_counter() - host_start)
    torch.cuda.synchronize()
    return start.elapsed_time(end), host_ms


def prefill_syncs(model, ids) -> float:
    """Host syncs during one prefill forward, as counted by torch.cuda.set_sync_debug_mode."""
    if ids.device.type != "cuda":
        return math.nan
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return float(sum("synchronizing" in str(w.message) for w in caught))


class Decoder:
    """Greedy decoding from a prefilled StaticCache, one step (forward, argmax, next position)
    captured as a CUDA graph and replayed: the GPU's time per token, no host in the loop."""

    def __init__(self, model, ids, new_tokens: int):
        from transformers import StaticCache

        from flash_attn_rocm.integrations.transformers import cache_keyword

        self.model, self.prompt_len, self.new_tokens = model, ids.shape[1], new_tokens
        # Full-attention layers for every architecture: a sliding-window layer keeps host-side
        # counters that a graph replay would not advance. The window itself is the model's, not the cache's.
        cache_config = copy.deepcopy(model.config)
        cache_config.sliding_window = None
        if getattr(cache_config, "layer_types", None) is not None:
            cache_config.layer_types = ["full_attention"] * len(cache_config.layer_types)
        self.cache = StaticCache(config=cache_config, max_cache_len=self.prompt_len + new_tokens + 1)
        self.cache_kwargs = {cache_keyword(model): self.cache}  # its name changed in transformers 5.24
        self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **self.cache_kwargs)
        self.token = ids[:, -1:].clone()
        self.position = torch.full_like(self.token, self.prompt_len)
        self.graph = None

    def rewind(self):
        """Back to the end of the prompt: the cache forgets the decoded tokens (their slots are overwritten)."""
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.prompt_len)
        self.position.fill_(self.prompt_len)

    def step(self):
        logits = self.model(input_ids=self.token, position_ids=self.position, use_cache=True, **self.cache_kwargs).logits
        self.token.copy_(logits[:, -1].argmax(dim=-1, keepdim=True))
        self.position.add_(1)

    def capture(self):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture (cuBLAS workspaces, lazy inits)
            for _ in range(2):
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        self.rewind()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def run_ms(self) -> float:
        """Milliseconds per token over new_tokens steps from the end of the prompt."""
        self.rewind()
        if self.graph is None:  # the CPU plumbing check
            start = time.perf_counter()
            for _ in range(self.new_tokens):
                self.step()
            return 1e3 * (time.perf_counter() - start) / self.new_tokens
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(self.new_tokens):
            self.graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / self.new_tokens


def decode_ms(model, ids, args) -> float:
    decoder = Decoder(model, ids, args.new_tokens)
    if ids.device.type == "cuda":
        decoder.capture()
    decoder.run_ms()  # warm-up
    return statistics.median(decoder.run_ms() for _ in range(args.reps))


def decode_path(model, ids) -> str:
    """Which flash_attn_rocm backend entries one eager decode step reaches (e.g. "spans" = flash_attn_with_kvcache)."""
    from flash_attn_rocm.integrations import transformers as hf

    called, original = set(), hf._KERNELS

    def spy(name, fn):
        def wrapped(*a, **k):
            called.add(name)
            return fn(*a, **k)
        return wrapped

    hf._KERNELS = hf._Backend(*(spy(name, fn) for name, fn in zip(hf._Backend._fields, original)))
    try:
        decoder = Decoder(model, ids, 1)
        called.clear()  # the prefill's path is not the question
        decoder.step()
    finally:
        hf._KERNELS = original
    names = {"dense": "dense (flash_attn_func)", "varlen": "varlen (flash_attn_varlen_func)",
             "spans": "spans (flash_attn_with_kvcache)"}
    return ", ".join(names[n] for n in sorted(called)) or "the PyTorch fallback"


def measure(model, impls: list[str], seqlen: int, args) -> dict[str, dict]:
    """{impl: {prefill_ms, prefill_syncs, decode_ms}} at one prompt length; NaNs (logged) where an
    impl cannot run. The timed prefills go in rounds, one per impl per round, the order reversed
    every other round, so that the GPU's clock drift (it warms up over a run) falls on every impl
    alike; the decode runs follow, impl after impl."""
    device = next(model.parameters()).device
    ids = torch.randint(1, model.config.vocab_size, (1, seqlen), device=device)
    times = {impl: [] for impl in impls}

    def attempt(impl, fn):
        try:
            model.set_attn_implementation(impl)
            with torch.inference_mode():
                return fn()
        except (RuntimeError, ValueError, NotImplementedError) as e:  # OOM, unsupported shapes, a sync in capture
            common.log_once(f"{impl}: cannot run at seqlen {seqlen}, recording NaN "
                            f"({type(e).__name__}: {common._first_line(e)})")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return math.nan

    nan_pair = (math.nan, math.nan)
    for impl in impls:  # warm-up
        attempt(impl, lambda: time_prefill_ms(model, ids))
    for r in range(args.reps):
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            timing = attempt(impl, lambda: time_prefill_ms(model, ids))
            times[impl].append(nan_pair if isinstance(timing, float) else timing)
    results = {impl: dict(prefill_ms=statistics.median(t[0] for t in times[impl]),
                          prefill_host_ms=statistics.median(t[1] for t in times[impl]),
                          prefill_syncs=attempt(impl, lambda: prefill_syncs(model, ids)),
                          decode_ms=math.nan) for impl in impls}
    if not args.no_decode:
        if "flash_attn_rocm" in impls:
            path = attempt("flash_attn_rocm", lambda: decode_path(model, ids))
            common.log_once(f"{model.config.model_type}: flash_attn_rocm decode step runs: {path}")
        for impl in impls:
            results[impl]["decode_ms"] = attempt(impl, lambda: decode_ms(model, ids, args))
            gc.collect()  # the static cache of the last impl
    return results


def run(args) -> list[dict]:
    impls = available_impls(args.impls)
    rows = []
    with common.progress(len(args.models) * len(args.seqlens), "llm") as bar:
        for arch in args.models:
            model = build_model(arch, args.device, args.tiny)
            for seqlen in args.seqlens:
                bar.set_postfix_str(f"{arch} s{seqlen}")
                for impl, result in measure(model, impls, seqlen, args).items():
                    rows.append(dict(model=arch, seqlen=seqlen, impl=impl, **result))
                bar.update()
            del model  # the next architecture needs the memory
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
    by_impl = {(r["model"], r["seqlen"], r["impl"]): r for r in rows}
    for r in rows:
        eager = by_impl.get((r["model"], r["seqlen"], "eager"), {})
        sdpa = by_impl.get((r["model"], r["seqlen"], "sdpa"), {})
        r["speedup_vs_eager"] = common.ratio(eager.get("prefill_ms", math.nan), r["prefill_ms"])
        r["prefill_vs_sdpa"] = common.ratio(sdpa.get("prefill_ms", math.nan), r["prefill_ms"])
        r["decode_vs_sdpa"] = common.ratio(sdpa.get("decode_ms", math.nan), r["decode_ms"])
    return rows


# --------------------------------------------------------------------------- output


def plot_speedup_bars(path: Path, rows: list[dict], impls: list[str], title: str):
    """Grouped bars: one group per (model, seqlen), one bar per impl, height = prefill speedup over eager."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed: skipping plot {path}", flush=True)
        return
    groups = list(dict.fromkeys((r["model"], r["seqlen"]) for r in rows))
    speedup = {(r["model"], r["seqlen"], r["impl"]): r["speedup_vs_eager"] for r in rows}
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(groups)), 5))
    for i, impl in enumerate(impls):
        xs = [g + (i - (len(impls) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [speedup.get((*group, impl), math.nan) for group in groups], width, label=impl)
        if impl != "eager":  # eager is 1 by definition
            ax.bar_label(bars, fmt="%.2f", fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), [f"{model}\n{seqlen}" for model, seqlen in groups], fontsize=8)
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.margins(y=0.12)  # room for the bar labels
    ax.set(title=title, ylabel="prefill speedup over eager (x)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(impls), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}", flush=True)


CSV_COLUMNS = ("model", "seqlen", "impl", "prefill_ms", "prefill_host_ms", "prefill_syncs", "decode_ms", "speedup_vs_eager",
               "prefill_vs_sdpa", "decode_vs_sdpa")


def print_table(rows: list[dict], impls: list[str]):
    table = {}
    for r in rows:
        entry = table.setdefault((r["model"], r["seqlen"]), {"model": r["model"], "seqlen": r["seqlen"]})
        entry.update({f"{r['impl']}_{key}": r[key] for key in CSV_COLUMNS[3:]})
    columns = [("model", "model", "s"), ("seqlen", "seqlen", "d")]
    columns += [(f"prefill {i}", f"{i}_prefill_ms", ".1f") for i in impls]
    columns += [(f"host {i}", f"{i}_prefill_host_ms", ".1f") for i in impls]
    columns += [(f"syncs {i}", f"{i}_prefill_syncs", ".0f") for i in impls]
    columns += [(f"decode {i}", f"{i}_decode_ms", ".2f") for i in impls]
    columns += [(f"x eager {i}", f"{i}_speedup_vs_eager", ".2f") for i in impls if i != "eager"]
    columns += [(f"prefill sdpa/{i}", f"{i}_prefill_vs_sdpa", ".2f") for i in impls if i != "sdpa"]
    columns += [(f"decode sdpa/{i}", f"{i}_decode_vs_sdpa", ".2f") for i in impls if i != "sdpa"]
    print(common.format_table(list(table.values()), columns))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_llm.py needs a CUDA GPU (or --device cpu --tiny for a plumbing check)")
    torch.manual_seed(0)
    rows = run(args)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    common.write_csv(args.out_dir / "llm.csv", rows, CSV_COLUMNS)
    if args.device == "cuda":
        plot_speedup_bars(args.out_dir / "llm_prefill_speedup.png", rows, impls,
                          f"Prefill speedup over eager attention, transformers, batch 1, bf16, random weights\n"
                          f"{common.device_name()}")
    print(f"\n== LLM prefill (ms), its host syncs, decode (ms per token: CUDA graph replays from a static cache, "
          f"{args.new_tokens} tokens), prefill speedup over eager, sdpa's time over each impl's (same run) ==")
    print_table(rows, impls)


if __name__ == "__main__":
    main()
