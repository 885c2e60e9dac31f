"""Loads the compiled ops and registers their fake (meta) implementations for torch.compile."""

from __future__ import annotations

import functools
import os

import torch

from . import _C  # noqa: F401  (loading the library registers torch.ops.flash_attn_rocm.*)

ops = torch.ops.flash_attn_rocm


@torch.library.register_fake("flash_attn_rocm::fwd")
def _fwd_fake(q, k, v, softmax_scale, is_causal, window_size_left=-1, window_size_right=-1, softcap=0.0,
              alibi_slopes=None, dropout_p=0.0):
    batch, seqlen_q, nheads, head_dim = q.shape
    out = q.new_empty((batch, seqlen_q, nheads, head_dim))
    softmax_lse = q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)
    return out, softmax_lse, _rng_state_like(q, dropout_p)


@torch.library.register_fake("flash_attn_rocm::fwd_fp8")
def _fwd_fp8_fake(q, k, v, q_descale, k_descale, v_descale, softmax_scale, is_causal, window_size_left=-1,
                  window_size_right=-1):
    batch, seqlen_q, nheads, head_dim = q.shape
    out = q.new_empty((batch, seqlen_q, nheads, head_dim), dtype=torch.bfloat16)
    return out, q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)


def _rng_state_like(q, dropout_p):
    # (seed, offset) with dropout, nothing without.
    return q.new_empty((2 if dropout_p > 0 else 0,), dtype=torch.int64)


@torch.library.register_fake("flash_attn_rocm::bwd")
def _bwd_fake(dout, q, k, v, out, softmax_lse, softmax_scale, is_causal, deterministic, window_size_left=-1,
              window_size_right=-1, softcap=0.0, alibi_slopes=None, dropout_p=0.0, rng_state=None):
    # The op returns contiguous gradients whatever the inputs' strides; so must the fake.
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("flash_attn_rocm::varlen_fwd")
def _varlen_fwd_fake(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, is_causal,
                     window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None, dropout_p=0.0,
                     block_table=None):
    total_q, nheads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((nheads, total_q), dtype=torch.float32), _rng_state_like(q, dropout_p)


@torch.library.register_fake("flash_attn_rocm::varlen_bwd")
def _varlen_bwd_fake(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     softmax_scale, is_causal, deterministic, window_size_left=-1, window_size_right=-1, softcap=0.0,
                     alibi_slopes=None, dropout_p=0.0, rng_state=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("flash_attn_rocm::fwd_kvcache")
def _fwd_kvcache_fake(q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                      cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=1.0, is_causal=False,
                      window_size_left=-1, window_size_right=-1, softcap=0.0, rotary_interleaved=True,
                      alibi_slopes=None, num_splits=0):
    # The caches are mutated in place (the schema says so); the outputs are fresh.
    batch, seqlen_q, nheads, head_dim = q.shape
    return q.new_empty((batch, seqlen_q, nheads, head_dim)), q.new_empty((batch, nheads, seqlen_q), dtype=torch.float32)


def compiled_head_dims() -> list[int]:
    """Head dims with a kernel in this build; other multiples of 8 round up to the next one."""
    return list(ops.compiled_head_dims())


def set_hopper_kernels(enabled: bool) -> bool:
    """Whether the forward and backward may use the Hopper (sm_90a) kernels where they apply
    (default: yes, when built for sm_90; FLASH_ATTN_ROCM_HOPPER=0 in the environment turns them off
    at import). Returns the previous setting; always False in builds without them."""
    fp8_forward_available.cache_clear()  # the Hopper fp8 forward comes and goes with them
    return bool(ops.set_hopper_kernels(enabled))


def set_unverified_kernels(enabled: bool) -> bool:
    """Whether the Hopper kernels that have not yet run on a GPU -- the fp8 forward, the d256
    backward, the softcap/ALiBi/dropout variants -- may take calls (default: no; the portable
    kernels, or fp8's dequantizing path, serve those calls; FLASH_ATTN_ROCM_UNVERIFIED=1 in the
    environment turns them on at import). Returns the previous setting."""
    fp8_forward_available.cache_clear()
    return bool(ops.set_unverified_kernels(enabled))


@functools.lru_cache(maxsize=None)
def fp8_forward_available(device_index: int, head_dim: int) -> bool:
    """Whether the fp8 forward has a kernel for head_dim on the device (asked once per pair: a
    call through the dispatcher costs microseconds a layer)."""
    with torch.cuda.device(device_index):
        return bool(ops.fp8_forward_available(head_dim))


def kernel_family(head_dim: int, dtype: torch.dtype = torch.float16, *, backward: bool = False, softcap: float = 0.0,
                  alibi_slopes=None, dropout_p: float = 0.0, q=None, k=None, v=None, dout=None, block_table=None,
                  explain: bool = False):
    """Which kernels flash_attn_func (and the varlen and packed variants) run for these arguments
    on the current device: "sm90" (the Hopper wgmma kernels) or "sm80" (the portable mma.sync
    ones), with the compiled head dim the call rounds up to, e.g. "sm90:hdim128". The forward
    (backward=False) and the backward may differ. The decision is the dispatch's own
    (csrc/kernels/dispatch.cu). Pass the call's q, k, v (and dout for the backward), dense
    [b, s, h, d] or varlen [total, h, d], for an answer that covers their strides too: operands
    TMA cannot describe (a dimension of more than one index broadcast with stride 0) run the
    portable kernels. block_table: flash_attn_varlen_func's paged K/V (forward only; k, v are then the
    pages), which runs on the portable kernels. explain=True returns (family, reason): why the
    portable kernels run, or ""."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    if backward and block_table is not None:
        raise ValueError("kernel_family: block_table (paged K/V) has no backward")
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 8 != 0:
        raise ValueError(f"head_dim must be a positive multiple of 8, got {head_dim!r}")
    operands = [q, k, v] + ([dout] if backward else [])
    given = [t is not None for t in operands]
    if any(given) and not all(given):
        raise ValueError("kernel_family: pass all of q, k, v" + (" and dout" if backward else "") + ", or none")
    if all(given):
        operands = [t.unsqueeze(0) if t.dim() == 3 else t for t in operands]
    else:
        operands = [None] * 4
    extras = softcap != 0.0 or alibi_slopes is not None or dropout_p > 0.0
    family, reason = ops.kernel_family(backward, head_dim, dtype == torch.bfloat16, extras, *operands[:3],
                                       operands[3] if backward else None, block_table is not None, dropout_p > 0.0)
    if family == "none":
        raise ValueError(f"head_dim {head_dim} is larger than any compiled head dim {compiled_head_dims()}")
    return (family, reason) if explain else family


if os.environ.get("FLASH_ATTN_ROCM_HOPPER", "1").strip() == "0":
    set_hopper_kernels(False)
if os.environ.get("FLASH_ATTN_ROCM_UNVERIFIED", "0").strip() == "1":
    set_unverified_kernels(True)
