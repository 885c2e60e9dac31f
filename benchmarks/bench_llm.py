#!/usr/bin/env python
"""End-to-end LLM inference in transformers: attn_implementation eager vs sdpa vs flash_attn_rocm.

Architectures from their published configs (hard-coded here, no hub access) with random bf16
weights created directly on the GPU: Mistral-7B-v0.1 (GQA, sliding window 4096), Llama-3-8B
(GQA), Phi-2 (head dim 80, partial rotary). Batch 1, prompt lengths 512..4096. Each model is
built once and switched between implementations with set_attn_implementation.

  prefill_ms  one forward over the prompt that fills the KV cache (logits of the last token
              only, as generate() runs it): median of --reps after a warm-up, the impls
              timed in alternating rounds (the GPU's clock drifts over a run)
  tpot_ms     time per output token: greedy generate(use_cache=True) of --new-tokens tokens,
              the median gap between consecutive tokens (CUDA events recorded as each token's
              logits arrive), so the prefill is excluded

Writes llm.csv (model, seqlen, impl, prefill_ms, tpot_ms, speedup_vs_eager: eager's prefill
time over this one's) and llm_prefill_speedup.png (bars per model x seqlen, one per impl) to
--out-dir, and prints a table.

Examples:
  python benchmarks/bench_llm.py
  python benchmarks/bench_llm.py --quick --models llama-3-8b
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
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
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated for tpot_ms (default: 128)")
    p.add_argument("--reps", type=int, default=None, help="timed prefill repetitions (default: 5)")
    p.add_argument("--quick", action="store_true",
                   help=f"seqlens {SEQLENS_QUICK}, 32 new tokens, 2 reps: a smoke run")
    args = p.parse_args(argv)
    args.seqlens = args.seqlens or (SEQLENS_QUICK if args.quick else SEQLENS)
    args.new_tokens = args.new_tokens or (32 if args.quick else 128)
    args.reps = args.reps or (2 if args.quick else 5)
    args.out_dir = args.out_dir or common.default_out_dir()
    return args


# --------------------------------------------------------------------------- models


def build_model(arch: str):
    """Random bf16 weights, allocated and initialised on the GPU (no CPU round trip)."""
    import transformers
    from transformers import AutoModelForCausalLM

    config_class, fields = ARCHS[arch]
    config = getattr(transformers, config_class)(**fields)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPE, attn_implementation="eager")
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


class StepClock:
    """A logits processor that records a CUDA event whenever generate() has a new token's
    logits; the gaps between consecutive events are the decode steps."""

    def __init__(self):
        self.events = []

    def __call__(self, input_ids, scores):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.events.append(event)
        return scores

    def median_gap_ms(self) -> float:
        torch.cuda.synchronize()
        gaps = [a.elapsed_time(b) for a, b in zip(self.events, self.events[1:])]
        return statistics.median(gaps) if gaps else math.nan


def time_prefill_ms(model, ids) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    model(input_ids=ids, use_cache=True, logits_to_keep=1)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def tpot_ms(model, ids, new_tokens: int) -> float:
    from transformers import LogitsProcessorList

    clock = StepClock()
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                   do_sample=False, use_cache=True, pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
    return clock.median_gap_ms()


def measure(model, impls: list[str], seqlen: int, args) -> dict[str, tuple[float, float]]:
    """{impl: (prefill_ms, tpot_ms)} at one prompt length; NaNs (logged) where an impl cannot
    run. The timed prefills go in rounds, one per impl per round, the order reversed every other
    round, so that the GPU's clock drift (it warms up over a run) falls on every impl alike."""
    ids = torch.randint(1, model.config.vocab_size, (1, seqlen), device="cuda")
    times = {impl: [] for impl in impls}
    tpot = {}

    def attempt(impl, fn):
        try:
            model.set_attn_implementation(impl)
            with torch.inference_mode():
                return fn()
        except (RuntimeError, ValueError, NotImplementedError) as e:  # OOM, unsupported shapes
            common.log_once(f"{impl}: cannot run at seqlen {seqlen}, recording NaN "
                            f"({type(e).__name__}: {common._first_line(e)})")
            torch.cuda.empty_cache()
            return math.nan

    for impl in impls:  # warm-up
        attempt(impl, lambda: time_prefill_ms(model, ids))
    for r in range(args.reps):
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            times[impl].append(attempt(impl, lambda: time_prefill_ms(model, ids)))
    for impl in impls:
        tpot[impl] = attempt(impl, lambda: tpot_ms(model, ids, args.new_tokens))
    return {impl: (statistics.median(times[impl]), tpot[impl]) for impl in impls}


def run(args) -> list[dict]:
    impls = available_impls(args.impls)
    rows = []
    with common.progress(len(args.models) * len(args.seqlens), "llm") as bar:
        for arch in args.models:
            model = build_model(arch)
            for seqlen in args.seqlens:
                bar.set_postfix_str(f"{arch} s{seqlen}")
                for impl, (prefill, tpot) in measure(model, impls, seqlen, args).items():
                    rows.append(dict(model=arch, seqlen=seqlen, impl=impl, prefill_ms=prefill, tpot_ms=tpot))
                bar.update()
            del model  # the next architecture needs the memory
            gc.collect()
            torch.cuda.empty_cache()
    eager = {(r["model"], r["seqlen"]): r["prefill_ms"] for r in rows if r["impl"] == "eager"}
    for r in rows:
        r["speedup_vs_eager"] = common.ratio(eager.get((r["model"], r["seqlen"]), math.nan), r["prefill_ms"])
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


def print_table(rows: list[dict], impls: list[str]):
    table = {}
    for r in rows:
        entry = table.setdefault((r["model"], r["seqlen"]), {"model": r["model"], "seqlen": r["seqlen"]})
        entry.update({f"{r['impl']}_{key}": r[key] for key in ("prefill_ms", "tpot_ms", "speedup_vs_eager")})
    columns = [("model", "model", "s"), ("seqlen", "seqlen", "d")]
    columns += [(f"prefill {i}", f"{i}_prefill_ms", ".1f") for i in impls]
    columns += [(f"tpot {i}", f"{i}_tpot_ms", ".2f") for i in impls]
    columns += [(f"x {i}", f"{i}_speedup_vs_eager", ".2f") for i in impls if i != "eager"]
    print(common.format_table(list(table.values()), columns))


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_llm.py needs a CUDA GPU")
    torch.manual_seed(0)
    rows = run(args)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    common.write_csv(args.out_dir / "llm.csv", rows,
                     ("model", "seqlen", "impl", "prefill_ms", "tpot_ms", "speedup_vs_eager"))
    plot_speedup_bars(args.out_dir / "llm_prefill_speedup.png", rows, impls,
                      f"Prefill speedup over eager attention, transformers, batch 1, bf16, random weights\n"
                      f"{common.device_name()}")
    print(f"\n== LLM prefill (ms), time per output token (ms, {args.new_tokens} new tokens), "
          f"prefill speedup over eager ==")
    print_table(rows, impls)


if __name__ == "__main__":
    main()
