"""Exact FlashAttention for PyTorch, call-compatible with flash-attn 2.8."""

from importlib.metadata import PackageNotFoundError, version

from ._inputs import metadata_checks, metadata_checks_enabled, set_metadata_checks
from . import context_parallel  # noqa: F401  (flash_attn_rocm.context_parallel: attention across ranks)
from ._ops import compiled_head_dims, kernel_family
from .kvcache import flash_attn_with_kvcache
from .sdpa import patch_sdpa, scaled_dot_product_attention, sdpa_patched, unpatch_sdpa
from .interface import (
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
)

try:
    __version__ = version("flash_attn_rocm")
except PackageNotFoundError:  # running from a source tree that was built in place, not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
    "scaled_dot_product_attention",
    "patch_sdpa",
    "unpatch_sdpa",
    "sdpa_patched",
    "compiled_head_dims",
    "kernel_family",
    "set_metadata_checks",
    "metadata_checks",
    "metadata_checks_enabled",
    "__version__",
]
