"""Shared helpers for the flash_attn_rocm benchmarks.

Inputs, FLOP counts, timing, the backends under comparison, running a list of
shapes against a list of backends, and writing results (CSV, text table, plot).
Kept free of benchmark-specific settings so decode / varlen / LLM benchmarks
can reuse it.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib
import math
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

MODES = ("fwd", "bwd", "fwdbwd")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# Our backend name -> torch.nn.attention.SDPBackend member.
SDPA_BACKENDS = {
    "sdpa_flash": "FLASH_ATTENTION",
    "sdpa_cudnn": "CUDNN_ATTENTION",
    "sdpa_efficient": "EFFICIENT_ATTENTION",
    "sdpa_math": "MATH",
}

# Backward runs 5 GEMMs of the forward's size against the forward's 2.
_FLOP_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}


# --------------------------------------------------------------------------- shapes, FLOPs


@dataclass(frozen=True)
class Shape:
    """One attention problem. Tensors are [batch, seqlen, heads, headdim] (flash-attn layout)."""

    batch: int
    heads: int
    seqlen: int
    headdim: int
    causal: bool
    seqlen_k: int | None = None  # None: same as seqlen
    heads_k: int | None = None  # None: same as heads (no GQA)

    @property
    def sk(self) -> int:
        return self.seqlen_k or self.seqlen

    @property
    def hk(self) -> int:
        return self.heads_k or self.heads

    def flops(self, mode: str = "fwd") -> float:
        return attn_flops(self.batch, self.heads, self.seqlen, self.sk, self.headdim, self.causal, mode)

    def label(self) -> str:
        c = " causal" if self.causal else ""
        return f"b{self.batch} h{self.heads} s{self.seqlen} d{self.headdim}{c}"


def attn_flops(b: int, h: int, sq: int, sk: int, d: int, causal: bool, mode: str = "fwd") -> float:
    """Matmul FLOPs: QK^T and PV are 2*sq*sk*d each per head; causal halves them."""
    flops = 4.0 * b * h * sq * sk * d * _FLOP_FACTOR[mode]
    return flops / 2 if causal else flops


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e9)


def make_inputs(shape: Shape, dtype: torch.dtype, requires_grad: bool = False):
    """Random (never zero) q, k, v in [b, s, h, d] on the current CUDA device."""

    def rand(s: int, h: int) -> torch.Tensor:
        t = torch.randn(shape.batch, s, h, shape.headdim, device="cuda", dtype=dtype)
        return t.requires_grad_(requires_grad)

    return rand(shape.seqlen, shape.heads), rand(shape.sk, shape.hk), rand(shape.sk, shape.hk)


# --------------------------------------------------------------------------- timing


def timer_name() -> str:
    try:
        import triton.testing  # noqa: F401
    except ImportError:
        return "CUDA events (own loop), median"
    return "triton.testing.do_bench, median"


def bench_ms(fn: Callable[[], object], quick: bool = False) -> float:
    """Median milliseconds of fn() after warm-up, with the L2 cache flushed before each call."""
    warmup, rep = (5, 20) if quick else (25, 100)
    try:
        from triton.testing import do_bench
    except ImportError:
        return _event_bench(fn, warmup, rep)
    return do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def _event_bench(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> float:
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # > any L2

    def event():
        return torch.cuda.Event(enable_timing=True)

    start, end = event(), event()
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    est_ms = max(start.elapsed_time(end) / 5, 1e-3)

    for _ in range(max(1, int(warmup_ms / est_ms))):
        fn()
    pairs = [(event(), event()) for _ in range(max(5, int(rep_ms / est_ms)))]
    for s, e in pairs:
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


# --------------------------------------------------------------------------- backends


class BackendUnavailable(RuntimeError):
    """The backend cannot run at all here (e.g. package not importable)."""


Prepared = tuple[Callable[[], torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class Backend:
    """prepare(q, k, v, causal) -> (forward closure, tensors to differentiate w.r.t.).

    q, k, v are [b, s, h, d]; setup done in prepare is not timed. context() is
    entered around both setup and timing (e.g. to force an SDPA backend)."""

    name: str
    prepare: Callable[..., Prepared]
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def sdpa_backends(*names: str) -> contextlib.AbstractContextManager:
    """Force SDPA onto the given backends: our names ("sdpa_cudnn") or SDPBackend names ("CUDNN_ATTENTION")."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS.get(n, n)) for n in names])


def import_rocm(name: str = "flash_attn_func"):
    """flash_attn_rocm.<name>, or None (with a warning) if the package is not importable."""
    try:
        return getattr(importlib.import_module("flash_attn_rocm"), name)
    except (ImportError, AttributeError) as e:
        print(f"WARNING: flash_attn_rocm.{name} not available ({e}); its results will be NaN", flush=True)
        return None


def _rocm_prepare(flash_attn_func, q, k, v, causal):
    if flash_attn_func is None:
        raise BackendUnavailable("flash_attn_rocm is not importable")
    return (lambda: flash_attn_func(q, k, v, causal=causal)), (q, k, v)


def _sdpa_prepare(q, k, v, causal):
    # [b, h, s, d] views of the same [b, s, h, d] storage, as Hugging Face passes them.
    # Note: SDPA's is_causal is top-left aligned; it matches flash-attn only when sq == sk.
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    kwargs = {"enable_gqa": True} if q.shape[2] != k.shape[2] else {}
    return (lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, **kwargs)), (q, k, v)


def _eager_prepare(q, k, v, causal):
    # Textbook attention on its own contiguous [b, h, s, d] copies (made here, untimed),
    # with the causal mask built once: the baseline is not charged for layout or mask setup.
    qh, kh, vh = (t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad) for t in (q, k, v))
    sq, sk, groups = qh.shape[2], kh.shape[2], qh.shape[1] // kh.shape[1]
    mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).triu(sk - sq + 1) if causal else None
    scale = qh.shape[-1] ** -0.5

    def fwd():
        keys, values = (t.repeat_interleave(groups, dim=1) if groups > 1 else t for t in (kh, vh))
        scores = (qh @ keys.transpose(-2, -1)) * scale
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(qh.dtype)
        return probs @ values

    return fwd, (qh, kh, vh)


def make_backends(names: Iterable[str], flash_attn_func=None) -> list[Backend]:
    """Backends by name: "flash_attn_rocm", "eager", or any key of SDPA_BACKENDS."""
    backends = []
    for name in names:
        if name == "flash_attn_rocm":
            backends.append(Backend(name, functools.partial(_rocm_prepare, flash_attn_func)))
        elif name == "eager":
            backends.append(Backend(name, _eager_prepare))
        elif name in SDPA_BACKENDS:
            backends.append(Backend(name, _sdpa_prepare, functools.partial(sdpa_backends, name)))
        else:
            raise ValueError(f"unknown backend {name!r}")
    return backends


# --------------------------------------------------------------------------- measuring


def make_step(fwd: Callable[[], torch.Tensor], inputs: Sequence[torch.Tensor], mode: str):
    """The zero-arg callable that is timed for `mode`.

    fwd: the forward. bwd: backward only, replayed on a retained graph.
    fwdbwd: forward then backward. Raises NotImplementedError if the backend
    has no backward yet."""
    if mode == "fwd":
        return fwd
    out = fwd()
    if not out.requires_grad:
        raise NotImplementedError("forward output carries no autograd graph")
    dout = torch.randn_like(out)
    if mode == "bwd":
        return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)
    return lambda: torch.autograd.grad(fwd(), inputs, dout)


def measure(backend: Backend, q, k, v, causal: bool, mode: str, quick: bool = False) -> float:
    """Median ms of `backend` on (q, k, v) in `mode`; NaN (with a one-time note) if it cannot run."""
    try:
        with backend.context():
            fwd, inputs = backend.prepare(q, k, v, causal)
            step = make_step(fwd, inputs, mode)
            step()
            torch.cuda.synchronize()
            return bench_ms(step, quick)
    except NotImplementedError as e:
        log_once(f"skip: {backend.name} --mode {mode} not available yet ({_first_line(e)})")
    except (RuntimeError, ValueError) as e:  # unsupported shape/dtype, OOM, BackendUnavailable
        log_once(f"{backend.name}: cannot run, recording NaN ({type(e).__name__}: {_first_line(e)})")
    torch.cuda.empty_cache()
    return math.nan


def run_cases(shapes: Sequence[Shape], backends: Sequence[Backend], mode: str, dtype: torch.dtype,
              quick: bool = False, desc: str = "bench") -> list[dict]:
    """Time every backend on every shape (same inputs for all backends of a shape).

    Returns one row per (shape, backend): the Shape fields, backend, ms, tflops."""
    rows = []
    with progress(len(shapes) * len(backends), desc) as bar:
        for shape in shapes:
            q, k, v = make_inputs(shape, dtype, requires_grad=mode != "fwd")
            for backend in backends:
                bar.set_postfix_str(f"{backend.name} {shape.label()}")
                ms = measure(backend, q, k, v, shape.causal, mode, quick)
                rows.append({**asdict(shape), "backend": backend.name, "ms": ms,
                             "tflops": tflops(shape.flops(mode), ms)})
                bar.update()
            del q, k, v
    return rows


# --------------------------------------------------------------------------- progress, logging


class _PlainProgress:
    """Minimal stand-in for tqdm: prints a line about every 10%."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.postfix = total, desc, 0, ""
        self.step = max(1, total // 10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_postfix_str(self, s: str):
        self.postfix = s

    def update(self, n: int = 1):
        self.n += n
        if self.n % self.step == 0 or self.n == self.total:
            print(f"[{self.desc}] {self.n}/{self.total} {self.postfix}", flush=True)


def progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    # When stderr is captured to a file, refresh rarely so the log tail stays readable.
    return tqdm(total=total, desc=desc, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)


def log(msg: str):
    try:
        from tqdm import tqdm
    except ImportError:
        print(msg, flush=True)
    else:
        tqdm.write(msg)


_logged: set[str] = set()


def log_once(msg: str):
    key = msg[:100]
    if key not in _logged:
        _logged.add(key)
        log(msg)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else ""


# --------------------------------------------------------------------------- output


def default_out_dir() -> Path:
    """$OUT/bench on the GPU machine, else benchmarks/results."""
    out = os.environ.get("OUT")
    return Path(out) / "bench" if out else Path(__file__).resolve().parent / "results"


def device_name() -> str:
    return torch.cuda.get_device_name()


def pivot(rows: Iterable[dict], keys: Sequence[str], values: Sequence[str]) -> list[dict]:
    """Long rows -> one row per distinct `keys`, with columns "<backend>_<value>" for each of `values`."""
    table: dict[tuple, dict] = {}
    for r in rows:
        entry = table.setdefault(tuple(r[k] for k in keys), {k: r[k] for k in keys})
        entry.update({f"{r['backend']}_{v}": r[v] for v in values})
    return list(table.values())


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str] | None = None):
    columns = list(columns or rows[0].keys())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}", flush=True)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """columns: (header, key, format spec). NaN and missing values print as '-'."""

    def cell(value, fmt):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return format(value, fmt)

    cells = [[cell(r.get(key), fmt) for _, key, fmt in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _, _) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (h, _, _), w in zip(columns, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def plot_lines(path: Path, series: dict[str, tuple[list, list]], title: str, xlabel: str, ylabel: str):
    """Line plot of {label: (xs, ys)} to a PNG; skipped with a message if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed: skipping plot {path}", flush=True)
        return
    fig, ax = plt.subplots(figsize=(10, 6))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, marker=".")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}", flush=True)
