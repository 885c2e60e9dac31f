"""The input rules of every entry point, in one place.

flash_attn_func and its variants, flash_attn_with_kvcache, the SDPA drop-in and the transformers
integration take their arguments through these checks. The public functions let them raise: a
TypeError or ValueError whose message names the argument. The drop-ins ask fallback_reason()
instead and, where a rule is broken, run PyTorch with the error's message as the reason.

Head dims are the build's: a positive multiple of 8 runs on the smallest compiled head dim at
least as large (the kernels pad it), so a build filtered to fewer head dims
(FLASH_ATTN_ROCM_HEAD_DIMS) serves up to its largest one and refuses the rest here, by name.
Other head dims are zero-padded to the next multiple of 8 here in Python (pad_head_dim), as
flash-attn does, and the output sliced back.

The values inside the index tensors (cu_seqlens, cache_seqlens, block_table, ...) live on the
device and are not read by default (no host sync, CUDA-graph capturable); check_metadata reads
and validates them when metadata checks are on (set_metadata_checks, metadata_checks, or
FLASH_ATTN_ROCM_CHECK_METADATA=1 in the environment).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from typing import Callable

import torch

from ._ops import compiled_head_dims

DTYPES = (torch.float16, torch.bfloat16)
# Read once: a build's head dims never change, and torch.compile traces a constant without a break.
COMPILED_HEAD_DIMS: tuple[int, ...] = tuple(compiled_head_dims())
DENSE_LAYOUT = "[batch, seqlen, nheads, head_dim]"
VARLEN_LAYOUT = "[total, nheads, head_dim]"


def kernel_head_dim(head_dim: int) -> int | None:
    """The compiled head dim that serves head_dim (> 0): the smallest one at least as large, or
    None when the build has none."""
    return next((d for d in COMPILED_HEAD_DIMS if d >= head_dim), None)


def padded_head_dim(head_dim: int) -> int:
    """head_dim rounded up to a multiple of 8, the granularity the kernels read rows in."""
    return -(-head_dim // 8) * 8


def pad_head_dim(*tensors):
    """The tensors zero-padded in their last dim to a multiple of 8 (a copy), or themselves when it
    already is one. Zero channels add nothing to q.k and give zero output channels, which the
    caller slices off; autograd slices the gradients back through the pad."""
    head_dim = tensors[0].shape[-1]
    extra = padded_head_dim(head_dim) - head_dim
    if extra == 0:
        return tensors
    return tuple(None if t is None else torch.nn.functional.pad(t, (0, extra)) for t in tensors)


def fallback_reason(check: Callable[[], object]) -> str | None:
    """None when check() passes, else the message of the TypeError or ValueError it raises: why a
    drop-in runs PyTorch instead of the kernels."""
    try:
        check()
    except (TypeError, ValueError) as e:
        return str(e)
    return None


# ---------------------------------------------------------------- tensors


def optional(name: str, t) -> tuple:
    """((name, t),) for the named-tensor checks, or nothing when the optional tensor is absent."""
    return () if t is None else ((name, t),)


def check_tensor(name: str, t, rank: int, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != rank:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")


def check_int32(name: str, t, rank: int, layout: str) -> None:
    """Index tensors (cu_seqlens, cache_seqlens, block_table, ...), read by the kernels as int32."""
    check_tensor(name, t, rank, layout)
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {t.dtype}")


def check_dtype(name: str, t: torch.Tensor, like: tuple[str, torch.Tensor] | None = None) -> None:
    """float16 or bfloat16; with like = (name, tensor), that tensor's dtype."""
    if like is None:
        if t.dtype not in DTYPES:
            raise TypeError(f"{name} must have dtype float16 or bfloat16, got {t.dtype}")
    elif t.dtype != like[1].dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {like[0]} has {like[1].dtype}: they must share one dtype")


def check_head_dim(head_dim: int, name: str = "q") -> None:
    """Any head dim from 1 to the build's largest; one that is not a multiple of 8 is padded to one."""
    if head_dim <= 0 or kernel_head_dim(padded_head_dim(head_dim)) is None:
        raise ValueError(f"head dim of {name} must be positive and at most {COMPILED_HEAD_DIMS[-1]} "
                         f"(the largest of this build's {list(COMPILED_HEAD_DIMS)}), got {head_dim}")


def check_same_head_dim(name: str, t: torch.Tensor, like_name: str, head_dim: int) -> None:
    if t.shape[-1] != head_dim:
        raise ValueError(f"{name} has head dim {t.shape[-1]} but {like_name} has {head_dim}")


def check_same_shape(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {a_name} {tuple(a.shape)} and "
                         f"{b_name} {tuple(b.shape)}")


def check_gqa(nheads: int, nheads_k: int, q_name: str, kv_names: str) -> None:
    """Query heads map onto key/value heads in contiguous groups of nheads / nheads_k."""
    if nheads_k == 0 or nheads % nheads_k != 0:
        raise ValueError(f"nheads of {q_name} ({nheads}) must be divisible by nheads of {kv_names} ({nheads_k})")


def check_last_dim_contiguous(*named) -> None:
    """named: (name, tensor) pairs; the kernels read rows in 16-byte chunks."""
    for name, t in named:
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension (stride(-1) == 1), got {t.stride(-1)}")


def check_devices(*named, allow_meta: bool = True) -> None:
    """named: (name, tensor) pairs, the first one q: all on q's device, a CUDA one. Meta tensors
    pass when allow_meta, so that the public functions trace shapes without a GPU; the drop-ins
    leave them to PyTorch."""
    (q_name, q), *others = named
    if q.device.type != "cuda" and not (allow_meta and q.device.type == "meta"):
        raise ValueError(f"{q_name} must be a CUDA tensor, got device {q.device}")
    for name, t in others:
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but {q_name} is on {q.device}: all must be on one device")


def check_qkv(q, k, v, *, varlen: bool = False, names: tuple[str, str, str] = ("q", "k", "v")) -> None:
    """q [b, sq, h, d] and k, v [b, sk, h_k, d] (varlen: [total, h, d]) as the kernels take them:
    float16/bfloat16, one dtype, one head dim this build serves, h % h_k == 0, the last dimension
    contiguous. Devices are checked apart (check_devices), after the rest, so that every other
    error shows without a GPU."""
    named = tuple(zip(names, (q, k, v)))
    (q_name, _), (k_name, _), (v_name, _) = named
    for name, t in named:
        check_tensor(name, t, 3 if varlen else 4, VARLEN_LAYOUT if varlen else DENSE_LAYOUT)
    for name, t in named:
        check_dtype(name, t)
    for name, t in named[1:]:
        check_dtype(name, t, like=(q_name, q))
    nheads, head_dim = q.shape[-2:]
    check_head_dim(head_dim, q_name)
    for name, t in named[1:]:
        check_same_head_dim(name, t, q_name, head_dim)
        if not varlen and t.shape[0] != q.shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]} but {q_name} has {q.shape[0]}")
    check_same_shape(k_name, k, v_name, v)
    check_gqa(nheads, k.shape[-2], q_name, f"{k_name} and {v_name}")
    check_last_dim_contiguous(*named)


def check_servable(q, k, v, softmax_scale, *, names: tuple[str, str, str] = ("query", "key", "value"),
                   scale_name: str = "scale") -> None:
    """What flash_attn_func requires of q, k, v [b, s, h, d] and the scale, for the drop-ins that
    fall back instead of raising: the device first (CUDA only), the reason a CPU caller most
    needs to hear."""
    named = tuple(zip(names, (q, k, v)))
    for name, t in named:
        check_tensor(name, t, 4, DENSE_LAYOUT)
    check_devices(*named, allow_meta=False)
    check_qkv(q, k, v, names=names)
    resolve_softmax_scale(softmax_scale, q.shape[-1], scale_name)


# ---------------------------------------------------------------- scalars and small tensors


def resolve_softmax_scale(softmax_scale, head_dim: int, name: str = "softmax_scale") -> float:
    """The scale itself, or 1 / sqrt(head_dim) for None."""
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
        raise TypeError(f"{name} must be a float or None, got {type(softmax_scale).__name__}")
    if not math.isfinite(softmax_scale) or softmax_scale < 0:
        # The kernels scale after taking the row max of the raw scores: with a negative scale
        # the exponents are distances from the wrong end of the row, and the fp16 P can overflow.
        raise ValueError(f"{name} must be finite and >= 0, got {softmax_scale}")
    return float(softmax_scale)


def resolve_window(window_size) -> tuple[int, int]:
    """flash-attn's (left, right), -1 meaning unbounded: a pair of ints, or as flash-attn 2.8 also
    takes, an integer tensor of 2 elements (or a pair of 0-d ones). A tensor's values are read
    once, here; on a GPU that read is a device-to-host copy that synchronises (and cannot be
    captured in a CUDA graph): pass ints where that matters."""
    if isinstance(window_size, torch.Tensor):
        if window_size.shape != (2,) or window_size.is_floating_point() or window_size.is_complex() or \
                window_size.dtype == torch.bool:
            raise TypeError(f"window_size as a tensor must be an integer tensor of shape [2], got dtype "
                            f"{window_size.dtype} and shape {tuple(window_size.shape)}")
        window_size = tuple(window_size.tolist())
    if isinstance(window_size, (str, bytes)) or not hasattr(window_size, "__len__") or len(window_size) != 2:
        raise TypeError(f"window_size must be a pair (left, right), got {window_size!r}")
    entries = []
    for value in window_size:
        if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() and \
                not value.is_complex() and value.dtype != torch.bool:
            value = int(value.item())
        if isinstance(value, bool) or not isinstance(value, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"window_size entries must be ints, got {window_size!r}")
        if value < -1:
            raise ValueError(f"window_size entries must be >= -1 (-1: unbounded), got {window_size!r}")
        entries.append(int(value))
    return entries[0], entries[1]


def resolve_softcap(softcap) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap must be a float, got {type(softcap).__name__}")
    if not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap must be finite and >= 0 (0: off), got {softcap}")
    return float(softcap)


def resolve_dropout_p(dropout_p) -> float:
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return float(dropout_p)


def check_alibi_slopes(alibi_slopes, batch: int, nheads: int) -> None:
    """flash-attn's ALiBi: fp32 [nheads] or [batch, nheads]; the bias is -slope * |i + sk - sq - j|."""
    if alibi_slopes is None:
        return
    if not isinstance(alibi_slopes, torch.Tensor):
        raise TypeError(f"alibi_slopes must be a torch.Tensor or None, got {type(alibi_slopes).__name__}")
    if alibi_slopes.dtype != torch.float32:
        raise TypeError(f"alibi_slopes must be float32, got {alibi_slopes.dtype}")
    if tuple(alibi_slopes.shape) not in ((nheads,), (batch, nheads)):
        raise ValueError(f"alibi_slopes must have shape [nheads] = [{nheads}] or [batch, nheads] = "
                         f"[{batch}, {nheads}], got {tuple(alibi_slopes.shape)}")


def check_varlen_args(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) -> None:
    """What can be checked without reading device memory. The values of cu_seqlens (0 first,
    non-decreasing, last = total rows, lengths <= max_seqlen) are the caller's contract; the
    kernels clamp them, so bad values give wrong rows but never an out-of-bounds access."""
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        check_int32(name, cu, 1, "[batch + 1]")
        if cu.shape[0] < 1:
            raise ValueError(f"{name} must be 1-D [batch + 1], got shape {tuple(cu.shape)}")
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have the same length, got "
                         f"{cu_seqlens_q.shape[0]} and {cu_seqlens_k.shape[0]}")
    for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def check_packed(t, name: str, rank: int, pack_dim: int, count: int) -> None:
    """qkv or kv packed along pack_dim, e.g. qkv [b, s, 3, h, d]."""
    layout = f"with {count} at dim {pack_dim}"
    check_tensor(name, t, rank, layout)
    if t.shape[pack_dim] != count:
        raise ValueError(f"{name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")


# ---------------------------------------------------------------- metadata values (opt-in)

_metadata_checks = os.environ.get("FLASH_ATTN_ROCM_CHECK_METADATA", "0").strip() not in ("", "0")


def set_metadata_checks(enabled: bool) -> bool:
    """Turns the metadata value checks on or off for every later call (the default comes from
    FLASH_ATTN_ROCM_CHECK_METADATA, off unless set to something other than 0). Returns the
    previous setting. On, each call reads its cu_seqlens / cache_seqlens / block_table /
    cache_batch_idx values with one device-to-host copy (a sync; not capturable in a CUDA graph)
    and raises ValueError at the first bad one."""
    global _metadata_checks
    previous, _metadata_checks = _metadata_checks, bool(enabled)
    return previous


def metadata_checks_enabled() -> bool:
    return _metadata_checks


@contextlib.contextmanager
def metadata_checks(enabled: bool = True):
    """`with metadata_checks(): ...` checks the metadata values of the calls inside the block."""
    previous = set_metadata_checks(enabled)
    try:
        yield
    finally:
        set_metadata_checks(previous)


def _host_values(named: dict) -> dict:
    """{name: list of ints} for the named int tensors, read with one device-to-host copy."""
    tensors = [t for t in named.values()]
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("metadata checks (set_metadata_checks / FLASH_ATTN_ROCM_CHECK_METADATA) read the index "
                           "tensors on the host, which a CUDA graph capture cannot do: turn them off while capturing")
    flat = torch.cat([t.reshape(-1).to(device=tensors[0].device, dtype=torch.int64) for t in tensors]).tolist()
    values, start = {}, 0
    for name, t in named.items():
        values[name] = flat[start:start + t.numel()]
        start += t.numel()
    return values


def _check_cu_seqlens(name: str, cu: list[int], total, max_seqlen) -> list[int]:
    """cu_seqlens: 0 first, non-decreasing, the last one at most the rows there are, every length at
    most max_seqlen. Returns the lengths."""
    if cu[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {cu[0]}")
    for i in range(1, len(cu)):
        if cu[i] < cu[i - 1]:
            raise ValueError(f"{name} must be non-decreasing, got {name}[{i}] = {cu[i]} < {name}[{i - 1}] = "
                             f"{cu[i - 1]}")
        if total is not None and cu[i] > total:
            raise ValueError(f"{name}[{i}] = {cu[i]} is past the {total} rows of the packed tensor")
        if max_seqlen is not None and cu[i] - cu[i - 1] > max_seqlen:
            raise ValueError(f"sequence {i - 1} of {name} has {cu[i] - cu[i - 1]} rows, more than its max_seqlen "
                             f"({max_seqlen}): {name}[{i}] - {name}[{i - 1}]")
    return [cu[i + 1] - cu[i] for i in range(len(cu) - 1)]


def check_metadata(*, cu_seqlens_q=None, cu_seqlens_k=None, total_q=None, total_k=None, max_seqlen_q=None,
                   max_seqlen_k=None, cache_seqlens=None, seqlen_new: int = 0, capacity=None, cache_batch_idx=None,
                   batch_cache=None, block_table=None, num_pages=None, page_size=None) -> None:
    """When metadata checks are on (set_metadata_checks), the values of the index tensors given,
    read with one device-to-host copy; otherwise nothing (the kernels clamp bad values: wrong
    rows, never an out-of-bounds access). Raises ValueError naming the argument and the first
    bad index. Meta and fake tensors are skipped (no values).

    cu_seqlens_q / cu_seqlens_k (int32 [batch + 1]): 0 first, non-decreasing, at most total_q /
      total_k (the packed rows; None: unchecked, e.g. paged keys), lengths <= max_seqlen_q / _k.
    cache_seqlens (int32 [batch]): >= 0, and + seqlen_new (the rows appended) <= capacity.
    cache_batch_idx (int32 [batch]): in [0, batch_cache).
    block_table (int32 [batch, max_pages]): the entries a sequence uses, in [0, num_pages). A
      sequence of n keys uses its first ceil(n / page_size) entries, n being cache_seqlens +
      seqlen_new, else the cu_seqlens_k length, else every entry; the rest may hold anything
      (vLLM-style tables pad with -1).
    """
    if not _metadata_checks:
        return
    named = {name: t for name, t in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k),
                                     ("cache_seqlens", cache_seqlens), ("cache_batch_idx", cache_batch_idx),
                                     ("block_table", block_table))
             if isinstance(t, torch.Tensor) and t.numel() > 0}
    if not named or any(t.device.type == "meta" or isinstance(t, torch._subclasses.FakeTensor)
                        for t in named.values()):
        return
    values = _host_values(named)
    lengths_k = None
    if "cu_seqlens_q" in values:
        _check_cu_seqlens("cu_seqlens_q", values["cu_seqlens_q"], total_q, max_seqlen_q)
    if "cu_seqlens_k" in values:
        lengths_k = _check_cu_seqlens("cu_seqlens_k", values["cu_seqlens_k"], total_k, max_seqlen_k)
    if "cache_seqlens" in values:
        lengths_k = []
        for i, n in enumerate(values["cache_seqlens"]):
            if n < 0:
                raise ValueError(f"cache_seqlens[{i}] = {n} must be >= 0")
            if capacity is not None and n + seqlen_new > capacity:
                raise ValueError(f"cache_seqlens[{i}] = {n} plus the {seqlen_new} new rows is past the cache capacity "
                                 f"of {capacity} rows per sequence (rows past it would be dropped)")
            lengths_k.append(n + seqlen_new)
    if "cache_batch_idx" in values and batch_cache is not None:
        for i, n in enumerate(values["cache_batch_idx"]):
            if not 0 <= n < batch_cache:
                raise ValueError(f"cache_batch_idx[{i}] = {n} is not a row of the cache: must be in [0, {batch_cache})")
    if "block_table" in values and num_pages is not None:
        batch, max_pages = block_table.shape
        table = values["block_table"]
        for b in range(batch):
            used = max_pages if lengths_k is None or page_size is None else min(max_pages, -(-lengths_k[b] // page_size))
            for p in range(used):
                page = table[b * max_pages + p]
                if not 0 <= page < num_pages:
                    raise ValueError(f"block_table[{b}, {p}] = {page} is not a page of the cache: must be in "
                                     f"[0, {num_pages}) (k_cache.shape[0])")

# ---------------------------------------------------------------- paged K/V


PAGED_LAYOUT = "[num_pages, page_size, nheads_k, head_dim]"


def check_block_table(block_table, batch: int, page_size: int, pages_name: str) -> None:
    """block_table int32 [batch, max_pages_per_sequence] (at least one page) over pages of
    page_size rows (pages_name.shape[1]): a power of two >= 16, vLLM's 16 included (flash-attn 2.8
    asks for multiples of 256). Row r of sequence i lives in page block_table[i, r // page_size];
    the page numbers are the caller's contract (the kernels clamp them to the pages)."""
    check_int32("block_table", block_table, 2, f"[batch, max_pages_per_sequence] = [{batch}, ...]")
    if block_table.shape[0] != batch or block_table.shape[1] == 0:
        raise ValueError(f"block_table must have shape [batch, max_pages_per_sequence] with batch = {batch} and at "
                         f"least one page, got {tuple(block_table.shape)}")
    if block_table.stride(1) != 1:
        raise ValueError("block_table must be contiguous in its last dimension")
    if page_size < 16 or page_size & (page_size - 1):
        raise ValueError(f"the page size ({pages_name}.shape[1] with block_table) must be a power of two >= 16, got "
                         f"{page_size}")


def check_paged_qkv(q, k, v, block_table, batch: int) -> None:
    """flash_attn_varlen_func with block_table (chunked prefill over a paged KV cache): q
    [total_q, h, d] and k, v [num_pages, page_size, h_k, d] with check_qkv's rules otherwise, and
    check_block_table's block_table [batch, max_pages_per_sequence]."""
    check_tensor("q", q, 3, VARLEN_LAYOUT)
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, 4, PAGED_LAYOUT + " with block_table")
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_dtype(name, t)
    for name, t in (("k", k), ("v", v)):
        check_dtype(name, t, like=("q", q))
    nheads, head_dim = q.shape[-2:]
    check_head_dim(head_dim)
    for name, t in (("k", k), ("v", v)):
        check_same_head_dim(name, t, "q", head_dim)
    check_same_shape("k", k, "v", v)
    check_gqa(nheads, k.shape[2], "q", "k and v")
    check_last_dim_contiguous(("q", q), ("k", k), ("v", v))
    if k.shape[0] == 0:
        raise ValueError("k must hold at least one page with block_table")
    check_block_table(block_table, batch, k.shape[1], "k")
