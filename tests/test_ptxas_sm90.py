"""The Hopper kernels' compile-time performance guards, checked without a GPU: ptxas must not
serialise their wgmma instructions (C7515: a register the asynchronous product owns is touched
before its wait, typically an accumulator kept in flight across a loop's back edge) and must
honour setmaxnreg (C7508: ignored when the register count at entry is unknown). Both cost far
more than any tuning gains and show nowhere but in ptxas's report. The forward's consumers also
fit their registers (no spills at any head dim, 256 included).

Compiles every sm_90a instantiation file (nvcc only, no torch headers); skips where nvcc is
missing.
"""

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

nvcc = shutil.which("nvcc")
if nvcc is None:
    pytest.skip("nvcc not installed", allow_module_level=True)


def sm90_sources(out_dir: Path) -> list[Path]:
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    from generate_kernels import generate

    generated = out_dir / "generated"
    files = [f for f in generate(generated, sm90=True) if "_sm90_" in f.name]
    # The generated files include "../kernels/...".
    (out_dir / "kernels").symlink_to(ROOT / "csrc" / "kernels")
    return files


def ptxas_report(source: Path, out_dir: Path) -> str:
    cmd = [nvcc, "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "-Xptxas", "-v",
           f"-I{out_dir}", str(source), "-o", str(out_dir / (source.stem + ".cubin"))]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr[-4000:]}"
    return result.stdout + result.stderr


def test_hopper_kernels_keep_wgmma_asynchronous_and_setmaxnreg(tmp_path):
    sources = sm90_sources(tmp_path)
    assert {f.name for f in sources} >= {"fwd_sm90_hdim128_fp16.cu", "bwd_sm90_hdim128_fp16.cu"}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        reports = dict(zip((f.name for f in sources), pool.map(lambda f: ptxas_report(f, tmp_path), sources)))
    for name, report in reports.items():
        for code in ("C7515", "C7508"):
            lines = [line for line in report.splitlines() if code in line]
            assert not lines, f"{name}: ptxas {code}\n" + "\n".join(lines)
        # Every kernel of the file was compiled (the report names each entry function).
        assert re.search(r"Compiling entry function '_ZN5flash\d+flash_(fwd|bwd)_sm90_kernel", report), name
        if name.startswith("fwd_"):
            spills = re.findall(r"(\d+) bytes spill stores", report)
            assert spills and all(n == "0" for n in spills), f"{name}: spills {spills}"
