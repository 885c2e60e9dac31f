"""FP8 inputs (float8_e4m3fn, and float8_e4m3fnuz as MI300 stores it) with FlashAttention-3's
descale arguments: q_descale, k_descale, v_descale, float32 [batch, nheads_k] (or one value for
the whole tensor), each multiplying its tensor's values (query head h takes its kv head's). The
result is attention over q * q_descale, k * k_descale, v * v_descale, in bfloat16 as
FlashAttention-3 returns it. Forward only: fp8 inputs that require gradients are refused, as
FlashAttention-3 has no fp8 backward either.

Two ways to run it:
- an fp8 kernel (torch.ops.flash_attn_rocm.fwd_fp8) for dense calls at head dims that are
  multiples of 16 up to 256, without softcap, ALiBi or dropout, in the format the device's fp8
  instructions read: on AMD gfx942 float8_e4m3fnuz, on gfx950 float8_e4m3fn (fwd_kernel_amd.h:
  compiled and emulated, not run on AMD hardware), on Hopper float8_e4m3fn (fwd_kernel_sm90.h).
  Both products on fp8, P rounded to e4m3;
- everywhere else, dequantized here into bfloat16 for the bfloat16 kernels (every e4m3 value is
  exact in bfloat16; the descale products are rounded to it once): correct, not faster than
  bfloat16 inputs."""

from __future__ import annotations

import torch

from ._inputs import (DENSE_LAYOUT, VARLEN_LAYOUT, check_gqa, check_head_dim, check_same_head_dim,
                      check_same_shape, check_tensor)
from ._ops import fp8_forward_available

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
DESCALE_NAMES = ("q_descale", "k_descale", "v_descale")


def is_fp8(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in FP8_DTYPES


def requested(q, k, v, descales) -> bool:
    """Whether the call is an fp8 one: an fp8 tensor among q, k, v, or a descale passed."""
    return any(is_fp8(t) for t in (q, k, v)) or any(d is not None for d in descales)


def check(q, k, v, descales, *, batch: int, varlen: bool = False, names=("q", "k", "v")) -> None:
    """Raises TypeError/ValueError/NotImplementedError naming the argument, for fp8 q, k, v [b, s,
    heads, d] (varlen: [total, heads, d]) and their descales."""
    tensors = (q, k, v)
    for name, t in zip(names, tensors):
        check_tensor(name, t, 3 if varlen else 4, VARLEN_LAYOUT if varlen else DENSE_LAYOUT)
    check_head_dim(q.shape[-1], names[0])
    for name, t in zip(names[1:], tensors[1:]):
        check_same_head_dim(name, t, names[0], q.shape[-1])
        if not varlen and t.shape[0] != q.shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]} but {names[0]} has {q.shape[0]}")
    check_same_shape(names[1], k, names[2], v)
    check_gqa(q.shape[-2], k.shape[-2], names[0], f"{names[1]} and {names[2]}")
    fp8 = [name for name, t in zip(names, tensors) if is_fp8(t)]
    if not fp8:
        given = next(n for n, d in zip(DESCALE_NAMES, descales) if d is not None)
        raise ValueError(f"{given} applies to float8 q, k, v only (got {q.dtype}): leave it None")
    if len(fp8) < 3 or len({t.dtype for t in tensors}) > 1:
        odd = next(name for name, t in zip(names, tensors) if t.dtype != q.dtype or not is_fp8(t))
        raise TypeError(f"{odd} must have the dtype of the others: float8 q, k and v go together (FlashAttention-3's "
                        f"rule), got {', '.join(f'{n} {t.dtype}' for n, t in zip(names, tensors))}")
    for name, t in zip(names, tensors):
        if t.requires_grad:
            raise NotImplementedError(f"{name} is float8 and requires grad: there is no fp8 backward yet (nor in "
                                      "FlashAttention-3); pass detached tensors, or bfloat16 ones to train")
    for descale_name, descale in zip(DESCALE_NAMES, descales):
        if descale is not None:
            _check_descale(descale_name, descale, batch, k.shape[-2], q.device)


def dequantize(q, k, v, descales, *, batch_of_row=None, names=("q", "k", "v")):
    """q, k, v in bfloat16, each times its descale; the caller has run check(). q, k, v [b, s,
    heads, d] (dense) or [total, heads, d] with batch_of_row (varlen: a callable giving q's or
    k's rows' batch indices, int64 on the device, for per-batch descales)."""
    varlen = batch_of_row is not None
    nheads_k = k.shape[-2]
    out = []
    for name, t, descale in zip(names, (q, k, v), descales):
        x = t.to(torch.float32)
        if descale is not None:
            d = descale
            heads = t.shape[-2]
            if d.numel() > 1:
                d = d.repeat_interleave(heads // nheads_k, dim=1)  # [b, heads]: a query head takes its kv head's
                d = d[batch_of_row(name)][:, :, None] if varlen else d[:, None, :, None]
            x = x * d.reshape(()) if d.numel() == 1 else x * d
        out.append(x.to(torch.bfloat16))
    return tuple(out)


def _check_descale(name: str, d, batch: int, nheads_k: int, device) -> torch.Tensor:
    if not isinstance(d, torch.Tensor):
        raise TypeError(f"{name} must be a float32 tensor [batch, nheads_k] (or of one element), got "
                        f"{type(d).__name__}")
    if d.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {d.dtype}")
    if d.numel() != 1 and tuple(d.shape) != (batch, nheads_k):
        raise ValueError(f"{name} must have shape [batch, nheads_k] = [{batch}, {nheads_k}] or one element, got "
                         f"{list(d.shape)}")
    if d.device != device:
        raise ValueError(f"{name} must be on the device of the tensor it scales ({device}), got {d.device}")
    return d


# The fp8 format each AMD architecture's fp8 MFMA reads (arch/amd_matrix.h); NVIDIA's is OCP's.
NATIVE_FORMAT = {"gfx94": torch.float8_e4m3fnuz, "gfx95": torch.float8_e4m3fn}


def native_format(device) -> torch.dtype:
    if torch.version.hip is None:
        return torch.float8_e4m3fn
    return NATIVE_FORMAT.get(torch.cuda.get_device_properties(device).gcnArchName[:5])


def runs_natively(q, softcap, alibi_slopes, dropout_p) -> bool:
    """Whether a checked dense fp8 call can take the fp8 kernel (module docstring)."""
    if not q.is_cuda or softcap or alibi_slopes is not None or dropout_p:
        return False
    if q.shape[-1] % 16 != 0 or native_format(q.device) != q.dtype:
        return False
    return fp8_forward_available(q.device.index if q.device.index is not None else torch.cuda.current_device(),
                                 q.shape[-1])


def varlen_batch_of_row(cu_seqlens_q, cu_seqlens_k, total_q: int, total_k: int):
    """For dequantize() on varlen tensors: each row's sequence, from cu_seqlens on the device
    (repeat_interleave with a known output size: no host sync)."""
    def batch_of_row(name: str) -> torch.Tensor:
        cu, total = (cu_seqlens_q, total_q) if name == "q" else (cu_seqlens_k, total_k)
        lengths = (cu[1:] - cu[:-1]).to(torch.int64)
        return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu.device), lengths, output_size=total)
    return batch_of_row
