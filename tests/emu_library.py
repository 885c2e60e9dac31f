"""The AMD wavefront emulator's library from Python (ctypes): flash_attn_rocm's ops on CPU tensors,
run by the kernel library compiled for an emulated AMD target (tools/emu_build.py). Tests import
it as `emu_library`; `library(target)` builds on first use and caches.

The ops mirror flash_attn_rocm's (csrc/api): fwd, bwd, varlen_fwd, varlen_bwd and fwd_kvcache,
with dropout's (seed, offset) passed in instead of drawn from a CUDA generator. A launch the
target cannot take (its LDS or thread limit) raises LaunchRefused; any other emulator failure (a
race, an LDS overrun, a deadlock) raises EmulatorError with the emulator's report.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import emu_build  # noqa: E402

TARGETS = emu_build.TARGETS
_LAUNCH_REFUSED = (701, 9)  # hipErrorOutOfResources, hipErrorInvalidConfiguration


class EmulatorError(RuntimeError):
    def __init__(self, op: str, code: int, message: str):
        super().__init__(f"{op} failed (hip error {code}): {message}")
        self.code, self.message = code, message


class LaunchRefused(EmulatorError):
    """The target cannot launch the kernel: more LDS or threads than it has."""


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("batch_stride", ctypes.c_int64), ("row_stride", ctypes.c_int64),
                ("head_stride", ctypes.c_int64)]


class _Attention(ctypes.Structure):
    _fields_ = [("q", _Tensor), ("k", _Tensor), ("v", _Tensor), ("out", _Tensor),
                ("softmax_lse", ctypes.c_void_p), ("lse_batch_stride", ctypes.c_int64),
                ("lse_head_stride", ctypes.c_int64),
                ("batch", ctypes.c_int), ("seqlen_q", ctypes.c_int), ("seqlen_k", ctypes.c_int),
                ("heads", ctypes.c_int), ("heads_k", ctypes.c_int), ("head_dim", ctypes.c_int),
                ("is_bf16", ctypes.c_int), ("softmax_scale", ctypes.c_double),
                ("is_causal", ctypes.c_int), ("window_left", ctypes.c_int), ("window_right", ctypes.c_int),
                ("softcap", ctypes.c_double), ("alibi_slopes", ctypes.c_void_p), ("alibi_batch_stride", ctypes.c_int64),
                ("dropout_p", ctypes.c_double), ("philox_seed", ctypes.c_uint64), ("philox_offset", ctypes.c_uint64),
                ("rng_state", ctypes.c_void_p), ("cu_seqlens_q", ctypes.c_void_p), ("cu_seqlens_k", ctypes.c_void_p),
                ("total_q", ctypes.c_int), ("total_k", ctypes.c_int),
                ("block_table", ctypes.c_void_p), ("block_table_batch_stride", ctypes.c_int64),
                ("block_table_width", ctypes.c_int), ("num_pages", ctypes.c_int), ("page_size", ctypes.c_int),
                ("is_fp8", ctypes.c_int), ("q_descale", ctypes.c_void_p), ("k_descale", ctypes.c_void_p),
                ("v_descale", ctypes.c_void_p), ("descale_batch_stride", ctypes.c_int64),
                ("descale_per_head", ctypes.c_int)]


class _Backward(ctypes.Structure):
    _fields_ = [("dout", _Tensor), ("dk", _Tensor), ("dv", _Tensor), ("dq_accum", ctypes.c_void_p),
                ("deterministic", ctypes.c_int)]


class _KvCache(ctypes.Structure):
    _fields_ = [("cache_seqlens", ctypes.c_void_p), ("cache_leftpad", ctypes.c_void_p),
                ("cache_batch_idx", ctypes.c_void_p), ("block_table", ctypes.c_void_p),
                ("block_table_batch_stride", ctypes.c_int64), ("block_table_width", ctypes.c_int),
                ("num_pages", ctypes.c_int), ("page_size", ctypes.c_int), ("capacity", ctypes.c_int),
                ("k_new", _Tensor), ("v_new", _Tensor), ("seqlen_new", ctypes.c_int),
                ("rotary_cos", ctypes.c_void_p), ("rotary_sin", ctypes.c_void_p), ("rotary_dim", ctypes.c_int),
                ("seqlen_ro", ctypes.c_int), ("rotary_interleaved", ctypes.c_int), ("q_rotated", ctypes.c_void_p),
                ("num_splits", ctypes.c_int)]


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _view(t: torch.Tensor | None) -> _Tensor:
    """A [b, s, h, d] (or varlen [total, h, d]) tensor as the library's strided view."""
    if t is None:
        return _Tensor(None, 0, 0, 0)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    assert t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in t.stride()[:-1]), \
        "the kernels move 16-byte chunks: contiguous last dim, 16-byte aligned rows"
    return _Tensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def _check_inputs(*tensors, fp8=False):
    dtypes = FP8 if fp8 else (torch.float16, torch.bfloat16)
    for t in tensors:
        assert t.device.type == "cpu" and t.dtype in dtypes, f"CPU {dtypes} tensors"


class Library:
    """One emulated target's library: build/emu/<target>/libfa_emu.so."""

    def __init__(self, path: Path):
        self.path = path
        lib = self._lib = ctypes.CDLL(str(path))
        lib.fa_emu_target.restype = ctypes.c_char_p
        lib.fa_emu_last_error.restype = ctypes.c_char_p
        lib.fa_emu_set_seed.argtypes = [ctypes.c_uint64]
        lib.fa_emu_set_layout_dir.argtypes = [ctypes.c_char_p]
        lib.fa_emu_lds_of.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.fa_emu_check_lds.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
        lib.fa_emu_check_launch.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_size_t]
        lib.fa_emu_check_matrix.argtypes = [ctypes.c_char_p] + [ctypes.c_void_p] * 4
        self.target = lib.fa_emu_target().decode()
        self.wave_size = lib.fa_emu_wave_size()
        self.lds_bytes = lib.fa_emu_lds_bytes()
        dims = (ctypes.c_int * 16)()
        self.head_dims = list(dims[:lib.fa_emu_compiled_head_dims(dims, 16)])

    # ------------------------------------------------------------ emulator controls

    def set_seed(self, seed: int) -> None:
        """Seeds the block and thread order of the launches that follow."""
        self._lib.fa_emu_set_seed(seed)

    def set_layout_dir(self, path: str | None) -> None:
        """Reads the golden matrix layouts from `path` (None: the default)."""
        self._lib.fa_emu_set_layout_dir(None if path is None else str(path).encode())

    def lds_of(self, kernel: str, head_dim: int) -> int:
        """Dynamic LDS bytes of kernel family `kernel` (fwd, bwd, kvcache) at a compiled head dim."""
        return self._lib.fa_emu_lds_of(kernel.encode(), head_dim)

    def kernel_head_dim(self, head_dim: int) -> int:
        return min((d for d in self.head_dims if d >= head_dim), default=0)

    def call(self, op: str, fn, *args) -> None:
        """Runs one C entry point; raises with the emulator's report when it fails."""
        code = fn(*args)
        if code != 0:
            message = self._lib.fa_emu_last_error().decode()
            raise (LaunchRefused if code in _LAUNCH_REFUSED else EmulatorError)(op, code, message)

    @property
    def raw(self):
        return self._lib

    # ------------------------------------------------------------ attention

    def _attention(self, q, k, v, out, lse, causal, softmax_scale, window_size, softcap, alibi_slopes, dropout_p,
                   seed, offset, rng_state, lse_strides) -> _Attention:
        scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
        a = _Attention()
        a.q, a.k, a.v, a.out = _view(q), _view(k), _view(v), _view(out)
        a.softmax_lse = lse.data_ptr()
        a.lse_batch_stride, a.lse_head_stride = lse_strides
        q4, k4 = (q, k) if q.dim() == 4 else (q.unsqueeze(0), k.unsqueeze(0))
        a.batch, a.seqlen_q, a.heads, a.head_dim = q4.shape
        a.seqlen_k, a.heads_k = k4.shape[1], k4.shape[2]
        a.is_bf16 = int(q.dtype == torch.bfloat16)
        a.softmax_scale = scale
        a.is_causal = int(causal)
        a.window_left, a.window_right = window_size
        a.softcap = softcap
        if alibi_slopes is not None:
            assert alibi_slopes.dtype == torch.float32 and alibi_slopes.stride(-1) == 1
            a.alibi_slopes = alibi_slopes.data_ptr()
            a.alibi_batch_stride = alibi_slopes.stride(0) if alibi_slopes.dim() == 2 else 0
        a.dropout_p = dropout_p
        a.philox_seed, a.philox_offset = seed, offset
        a.rng_state = _ptr(rng_state)
        return a

    def fwd(self, q, k, v, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
            dropout_p=0.0, seed=0, offset=0):
        """flash_attn_rocm::fwd: q [b, sq, h, d], k, v [b, sk, h_k, d] -> out, softmax_lse [b, h, sq], rng_state."""
        _check_inputs(q, k, v)
        batch, seqlen_q, heads, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32)
        rng_state = torch.empty(2 if dropout_p > 0 else 0, dtype=torch.int64)
        a = self._attention(q, k, v, out, lse, causal, softmax_scale, window_size, softcap, alibi_slopes, dropout_p,
                            seed, offset, rng_state, (heads * seqlen_q, seqlen_q))
        self.call("fwd", self._lib.fa_emu_fwd, ctypes.byref(a))
        return out, lse, rng_state

    def fwd_fp8(self, q, k, v, q_descale=None, k_descale=None, v_descale=None, causal=False, softmax_scale=None,
                window_size=(-1, -1), cu_seqlens=None):
        """The fp8 forward (gfx942: float8_e4m3fnuz, gfx950: float8_e4m3fn): q [b, sq, h, d], k, v
        [b, sk, h_k, d] with fp32 descales [b, h_k] or of one element -> out (bf16), softmax_lse.
        With cu_seqlens = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k): varlen, q
        [total_q, h, d], k, v [total_k, h_k, d], lse [h, total_q]."""
        _check_inputs(q, k, v, fp8=True)
        heads = q.shape[-2]
        out = torch.empty(q.shape, dtype=torch.bfloat16)
        if cu_seqlens is None:
            batch, seqlen_q = q.shape[:2]
            lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32)
            lse_strides = (heads * seqlen_q, seqlen_q)
        else:
            lse = torch.empty(heads, q.shape[0], dtype=torch.float32)
            lse_strides = (0, q.shape[0])
        a = self._attention(q, k, v, out, lse, causal, softmax_scale, window_size, 0.0, None, 0.0, 0, 0,
                            torch.empty(0, dtype=torch.int64), lse_strides)
        if cu_seqlens is not None:
            self._varlen(a, q, k, *cu_seqlens)
        a.is_fp8 = 1
        given = [d for d in (q_descale, k_descale, v_descale) if d is not None]
        assert all(d.dtype == torch.float32 and d.is_contiguous() and d.shape == given[0].shape for d in given)
        a.q_descale, a.k_descale, a.v_descale = (_ptr(d) for d in (q_descale, k_descale, v_descale))
        if given and given[0].numel() > 1:
            a.descale_batch_stride, a.descale_per_head = given[0].stride(0), 1
        self.call("fwd_fp8", self._lib.fa_emu_fwd, ctypes.byref(a))
        return out, lse

    def varlen_fwd(self, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False,
                   softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None, dropout_p=0.0, seed=0,
                   offset=0, block_table=None):
        """flash_attn_rocm::varlen_fwd: q [total_q, h, d] -> out, softmax_lse [h, total_q], rng_state. With
        block_table (int32 [batch, max_pages]) k, v are paged [num_pages, page_size, h_k, d]."""
        _check_inputs(q, k, v)
        total_q, heads, _ = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(heads, total_q, dtype=torch.float32)
        rng_state = torch.empty(2 if dropout_p > 0 else 0, dtype=torch.int64)
        a = self._attention(q, k if block_table is None else k[0], v if block_table is None else v[0], out, lse,
                            causal, softmax_scale, window_size, softcap, alibi_slopes, dropout_p, seed, offset,
                            rng_state, (0, total_q))
        self._varlen(a, q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        if block_table is not None:  # varlen_fwd.cpp: set_paged_kv_params
            assert block_table.dtype == torch.int32 and block_table.stride(1) == 1 and k.dim() == 4
            a.k, a.v = _view(k), _view(v)  # batch_stride: one page
            a.total_k = 2 ** 31 - 1  # cu_seqlens_k count keys and index no tensor
            a.block_table, a.block_table_batch_stride = block_table.data_ptr(), block_table.stride(0)
            a.block_table_width, a.num_pages, a.page_size = block_table.shape[1], k.shape[0], k.shape[1]
        self.call("varlen_fwd", self._lib.fa_emu_fwd, ctypes.byref(a))
        return out, lse, rng_state

    @staticmethod
    def _varlen(a, q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_k.dtype == torch.int32
        a.total_q, a.total_k = q.shape[0], k.shape[0]
        a.batch = cu_seqlens_q.numel() - 1
        a.seqlen_q, a.seqlen_k = max_seqlen_q, max_seqlen_k
        a.q.batch_stride = a.k.batch_stride = a.v.batch_stride = a.out.batch_stride = 0
        a.cu_seqlens_q, a.cu_seqlens_k = cu_seqlens_q.data_ptr(), cu_seqlens_k.data_ptr()

    def _backward(self, op, a, q, dout, dk, dv, dq_accum, deterministic):
        g = _Backward()
        g.dout, g.dk, g.dv = _view(dout), _view(dk), _view(dv)
        if q.dim() == 3:
            g.dout.batch_stride = g.dk.batch_stride = g.dv.batch_stride = 0
        g.dq_accum = dq_accum.data_ptr()
        g.deterministic = int(deterministic)
        self.call(op, self._lib.fa_emu_bwd, ctypes.byref(a), ctypes.byref(g))

    def bwd(self, dout, q, k, v, out, softmax_lse, causal=False, softmax_scale=None, window_size=(-1, -1),
            softcap=0.0, alibi_slopes=None, dropout_p=0.0, rng_state=None, deterministic=False):
        """flash_attn_rocm::bwd -> dq, dk, dv (dk, dv summed over each kv head's query heads)."""
        _check_inputs(dout, q, k, v, out)
        batch, seqlen_q, heads, _ = q.shape
        dq_accum = torch.zeros(q.shape, dtype=torch.float32)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        a = self._attention(q, k, v, out, softmax_lse, causal, softmax_scale, window_size, softcap, alibi_slopes,
                            dropout_p, 0, 0, rng_state, (heads * seqlen_q, seqlen_q))
        self._backward("bwd", a, q, dout, dk, dv, dq_accum, deterministic)
        return (dq_accum * a.softmax_scale).to(q.dtype), dk, dv

    def varlen_bwd(self, dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                   causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                   dropout_p=0.0, rng_state=None, deterministic=False):
        _check_inputs(dout, q, k, v, out)
        total_q = q.shape[0]
        dq_accum = torch.zeros(q.shape, dtype=torch.float32)
        dk, dv = torch.zeros_like(k), torch.zeros_like(v)
        a = self._attention(q, k, v, out, softmax_lse, causal, softmax_scale, window_size, softcap, alibi_slopes,
                            dropout_p, 0, 0, rng_state, (0, total_q))
        self._varlen(a, q, k, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        self._backward("varlen_bwd", a, q, dout, dk, dv, dq_accum, deterministic)
        return (dq_accum * a.softmax_scale).to(q.dtype), dk, dv

    def fwd_kvcache(self, q, k_cache, v_cache, k=None, v=None, rotary_cos=None, rotary_sin=None, cache_seqlens=None,
                    cache_batch_idx=None, cache_leftpad=None, block_table=None, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, rotary_interleaved=True, alibi_slopes=None, num_splits=1):
        """flash_attn_with_kvcache: appends k, v (rotated) to the caches in place -> out, softmax_lse."""
        _check_inputs(q, k_cache, v_cache)
        batch, seqlen_q, heads, head_dim = q.shape
        out = torch.empty_like(q)
        lse = torch.empty(batch, heads, seqlen_q, dtype=torch.float32)
        a = self._attention(q, k_cache, v_cache, out, lse, causal, softmax_scale, window_size, softcap, alibi_slopes,
                            0.0, 0, 0, None, (heads * seqlen_q, seqlen_q))
        c = _KvCache()
        keep = []  # tensors whose memory the call reads
        for name, t in (("cache_seqlens", cache_seqlens), ("cache_leftpad", cache_leftpad),
                        ("cache_batch_idx", cache_batch_idx)):
            if t is not None:
                t = t.to(torch.int32).contiguous()
                keep.append(t)
                setattr(c, name, t.data_ptr())
        page_size = k_cache.shape[1]
        if block_table is not None:
            assert block_table.dtype == torch.int32 and block_table.stride(1) == 1
            c.block_table = block_table.data_ptr()
            c.block_table_batch_stride = block_table.stride(0)
            c.block_table_width = block_table.shape[1]
            c.num_pages = k_cache.shape[0]
            c.page_size = page_size
            c.capacity = block_table.shape[1] * page_size
        else:
            c.capacity = k_cache.shape[1]
        if k is not None:
            c.k_new, c.v_new, c.seqlen_new = _view(k), _view(v), k.shape[1]
        q_rotated = None
        if rotary_cos is not None:
            cos, sin = rotary_cos.float().contiguous(), rotary_sin.float().contiguous()
            keep += [cos, sin]
            c.rotary_cos, c.rotary_sin = cos.data_ptr(), sin.data_ptr()
            c.rotary_dim, c.seqlen_ro = 2 * cos.shape[1], cos.shape[0]
            c.rotary_interleaved = int(rotary_interleaved)
            q_rotated = torch.empty(batch, seqlen_q, heads, head_dim, dtype=q.dtype)
            c.q_rotated = q_rotated.data_ptr()
        c.num_splits = num_splits
        self.call("fwd_kvcache", self._lib.fa_emu_fwd_kvcache, ctypes.byref(a), ctypes.byref(c))
        return out, lse


def unavailable_reason() -> str | None:
    """Why the emulator cannot build here (None: it can)."""
    missing = emu_build.missing_tools()
    return "the AMD emulator needs " + " and ".join(missing) if missing else None


@functools.lru_cache(maxsize=None)
def library(target: str) -> Library:
    return Library(emu_build.build(target))


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def targets_from_environment() -> tuple[str, ...]:
    """FA_EMU_TARGETS=gfx942,gfx1100 narrows the suite to those targets (default: all five)."""
    value = os.environ.get("FA_EMU_TARGETS", "").strip()
    return tuple(t.strip() for t in value.split(",") if t.strip()) or TARGETS
