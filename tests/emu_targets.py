"""What the emulator tests share: the targets, the fixture that hands a test its target's library,
and the table of kernels today's tiles cannot launch on a target (issue 21's bar).

Outside CI the emulator tests skip when clang++-19, Boost.Context or AMD's register layouts
(../shared/amd_matrix_layouts) are missing; in CI (CI=true) that is a failure.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import pytest

import emu_library

TARGETS = emu_library.targets_from_environment()
# A target's LDS per workgroup, from AMD's documentation (KERNELS.md); the emulator reports its own.
TARGET_LDS = {"gfx90a": 64 * 1024, "gfx942": 64 * 1024, "gfx950": 160 * 1024, "gfx1100": 64 * 1024,
              "gfx1201": 64 * 1024}
SMALL_LDS = ("gfx90a", "gfx942", "gfx1100", "gfx1201")
ALL = ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201")

# Kernel family x head dim -> the targets whose LDS its tiles (tile_config.h) exceed: the launch is
# refused there. The MFMA kernels of issue 21 replace these; their bar is to delete the entries.
REPLACED_BY_ISSUE_21: dict[tuple[str, int], tuple[str, ...]] = {}

_reason = emu_library.unavailable_reason()
if _reason is not None and os.environ.get("CI") != "true":
    pytest.skip(_reason, allow_module_level=True)


def compiled_head_dim(head_dim: int) -> int:
    """The head dim the emulator's build rounds `head_dim` up to (tools/emu_build.py EMU_HEAD_DIMS)."""
    dims = sorted(int(d) for d in os.environ.get("FLASH_ATTN_ROCM_HEAD_DIMS", emu_library.emu_build.EMU_HEAD_DIMS)
                  .split(","))
    return min(d for d in dims if d >= head_dim)


def launch_marks(target: str, *families: tuple[str, int]):
    """The expected-failure mark of a case that launches these (kernel, head dim) families on
    `target`, if one of them cannot launch there: it must fail with LaunchRefused, strictly."""
    for kernel, head_dim in families:
        d = compiled_head_dim(head_dim)
        if target in REPLACED_BY_ISSUE_21.get((kernel, d), ()):
            return [pytest.mark.xfail(raises=emu_library.LaunchRefused, strict=True,
                                      reason=f"replaced by issue 21: {kernel} d{d} needs more LDS than {target} has")]
    return []


def target_params(*families: tuple[str, int]):
    """pytest params over the targets, each with its issue-21 mark for these families."""
    return [pytest.param(t, id=t, marks=launch_marks(t, *families)) for t in TARGETS]


def target_head_dim_params(kernel: str, head_dims):
    """pytest params (target, head_dim), each with the issue-21 mark of `kernel` at that head dim."""
    return [pytest.param(t, d, id=f"{t}-d{d}", marks=launch_marks(t, (kernel, d))) for t in TARGETS for d in head_dims]


@pytest.fixture
def emu(target, seed):
    """The library of the test's `target` (parametrized; built on first use), its block and thread
    order seeded from the test's id: each case runs its own interleaving, the same on every run."""
    if _reason is not None:  # only in CI, where .ci/run provides everything
        pytest.fail(_reason)
    library = emu_library.library(target)
    library.set_seed(seed)
    yield library
    library.set_layout_dir(None)


def dropout_module():
    """flash_attn_rocm._dropout (the mask in PyTorch) without importing the package, whose
    __init__ loads the CUDA extension."""
    name = "_fa_pure"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(emu_library.ROOT / "flash_attn_rocm")]
        sys.modules[name] = package
    return importlib.import_module(f"{name}._dropout")
