"""The real-hardware side of arch/amd_matrix.h and arch/amd_wave.h: compiled for each AMD target by
a real device compiler (clang 19 with Debian's HIP 5.2 headers; clang 22 for gfx950), every
wrapper becomes the instruction its name promises. The emulator runs the other side (FA_PLATFORM_EMU).
Compile only. Skips where a compiler or the HIP headers are missing, except clang 19 and the
headers in CI (CI=true), which .ci/run installs.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from emu_library import targets_from_environment

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "amd_headers" / "every_wrapper.hip"

# target: (compiler, extra flags, matrix instructions the wrappers must produce)
CDNA3 = ["v_mfma_f32_32x32x8_f16", "v_mfma_f32_32x32x8_bf16", "v_mfma_f32_16x16x16_f16", "v_mfma_f32_16x16x16_bf16",
         "v_mfma_f32_32x32x16_fp8_fp8", "v_mfma_f32_16x16x32_fp8_fp8"]
TARGETS = {
    "gfx90a": ("clang++-19", [], ["v_mfma_f32_32x32x8f16", "v_mfma_f32_32x32x8bf16_1k", "v_mfma_f32_16x16x16f16",
                                  "v_mfma_f32_16x16x16bf16_1k"]),
    "gfx942": ("clang++-19", [], CDNA3),
    "gfx950": ("clang++-22", ["-D__AMDGCN_WAVEFRONT_SIZE=64", "-include",
                              str(ROOT / "tests" / "amd_headers" / "hip_fp16_clang22_shim.h")],
               CDNA3 + ["v_mfma_f32_32x32x16_f16", "v_mfma_f32_32x32x16_bf16", "v_mfma_f32_16x16x32_f16",
                        "v_mfma_f32_16x16x32_bf16"]),
    "gfx1100": ("clang++-19", [], ["v_wmma_f32_16x16x16_f16", "v_wmma_f32_16x16x16_bf16"]),
    "gfx1201": ("clang++-19", [], ["v_wmma_f32_16x16x16_f16", "v_wmma_f32_16x16x16_bf16"]),
}


@pytest.mark.parametrize("target", [t for t in TARGETS if t in targets_from_environment()])
def test_every_wrapper_is_its_instruction(target, tmp_path):
    compiler, flags, expected = TARGETS[target]
    have_headers = Path("/usr/include/hip/hip_runtime.h").exists()
    if shutil.which(compiler) is None or not have_headers:
        required = compiler == "clang++-19" and os.environ.get("CI") == "true"
        assert not required, f"CI must have {compiler} and the HIP headers (.ci/run installs them)"
        pytest.skip(f"needs {compiler} and Debian's HIP headers (apt-get install hipcc {compiler.replace('++', '')})")
    asm = tmp_path / f"{target}.s"
    cmd = [compiler, "-x", "hip", "-std=c++17", "-O1", "-nogpulib", "--cuda-device-only", f"--offload-arch={target}",
           *flags, "-I", str(ROOT / "csrc" / "kernels"), "-S", str(SOURCE), "-o", str(asm)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-3000:]}"
    text = asm.read_text()
    found = sorted(set(re.findall(r"\b(v_(?:mfma|wmma)_\w+)", text)))
    assert found == sorted(expected)
    assert "ds_bpermute_b32" in text
