"""Builds flash_attn_rocm._C from csrc/ (kernel instantiations come from tools/generate_kernels.py).

Environment:
  FLASH_ATTN_ROCM_ARCHS      NVIDIA targets, e.g. "sm_80;sm_90" (default: the visible GPU's arch,
                             else sm_80;sm_90; sm_90 builds as sm_90a and adds the Hopper forward).
                             On ROCm: gfx targets, e.g. "gfx90a;gfx942".
  FLASH_ATTN_ROCM_HEAD_DIMS  development filter, e.g. "128" (default: all compiled head dims)
  FLASH_ATTN_ROCM_DTYPES     development filter, e.g. "fp16"
  FLASH_ATTN_ROCM_VERBOSE=1  print ptxas register/spill reports
  MAX_JOBS                   parallel compile jobs (ninja)
"""

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tools"))
import generate_kernels  # noqa: E402


def nvidia_arch_flags() -> list[str]:
    import torch

    archs = os.environ.get("FLASH_ATTN_ROCM_ARCHS", "").replace(",", ";")
    if not archs:
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            archs = f"sm_{major}{minor}"
        else:
            archs = "sm_80;sm_90"
    flags = []
    for arch in filter(None, (a.strip() for a in archs.split(";"))):
        number = arch.removeprefix("sm_").replace(".", "")
        if not number.rstrip("a").isdigit() or int(number.rstrip("a")) < 80:
            raise ValueError(f"FLASH_ATTN_ROCM_ARCHS: {arch!r} is not an NVIDIA arch >= sm_80 (mma.sync m16n8k16 needs it)")
        # sm_90 builds as sm_90a: the Hopper forward's wgmma exists only there.
        number = "90a" if number == "90" else number
        flags.append(f"-gencode=arch=compute_{number},code=sm_{number}")
    return flags


def rocm_arch_flags() -> list[str]:
    archs = os.environ.get("FLASH_ATTN_ROCM_ARCHS", "gfx90a;gfx942").replace(",", ";")
    return [f"--offload-arch={a.strip()}" for a in archs.split(";") if a.strip()]


def extension():
    import torch
    from torch.utils.cpp_extension import CUDAExtension

    is_rocm = torch.version.hip is not None
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "api").glob("*.cpp"))
    arch_flags = rocm_arch_flags() if is_rocm else nvidia_arch_flags()
    sm90 = any("sm_90a" in flag for flag in arch_flags)
    sources += [str(p.relative_to(ROOT)) for p in generate_kernels.generate(sm90=sm90, amd_fp8=is_rocm)]
    device_flags = ["-O3", "-std=c++17"] + arch_flags
    if not is_rocm:
        device_flags += ["-lineinfo", "--expt-relaxed-constexpr"]
        if os.environ.get("FLASH_ATTN_ROCM_VERBOSE") == "1":
            device_flags += ["-Xptxas=-v"]
    return CUDAExtension(
        name="flash_attn_rocm._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": device_flags},
    )


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(ext_modules=[extension()], cmdclass={"build_ext": build_ext_class()})
