"""Counts the SASS instructions of a kernel's main loop, offline (no GPU needed).

Compiles one generated instantiation file for sm_90a with nvcc, disassembles it with cuobjdump,
finds in each kernel the smallest loop (a predicated backward branch) that holds at least
--min-hgmma wgmma instructions, and prints the loop's length and its opcode histogram. Cold
paths inside the loop (masking, deterministic dQ) are counted too: compare versions of the same
kernel, not absolute figures.

Needs cuobjdump and nvdisasm on PATH (not in the CUDA image here; PyPI has them:
`pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm`, binaries under
site-packages/nvidia/cu13/bin).

    python tools/sass_loop.py bwd_sm90_hdim128_fp16.cu --kernel Lb0E --min-hgmma 20
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_kernels import generate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
BACK_BRANCH = re.compile(r"BRA\s+0x([0-9a-f]+)")


def opcode(text: str) -> str:
    words = text.split()
    return (words[1] if words[0].startswith("@") else words[0]).split(".")[0]


def main_loop(function: str, min_hgmma: int) -> list[str] | None:
    instructions = [(int(m.group(1), 16), m.group(2).strip()) for m in INSTRUCTION.finditer(function)]
    index = {address: i for i, (address, _) in enumerate(instructions)}
    best = None
    for i, (address, text) in enumerate(instructions):
        branch = BACK_BRANCH.search(text)
        if not branch or not text.startswith("@"):
            continue
        target = int(branch.group(1), 16)
        if target >= address or target not in index:
            continue
        body = [t for _, t in instructions[index[target]:i + 1]]
        if sum("HGMMA" in t for t in body) >= min_hgmma and (best is None or len(body) < len(best)):
            best = body
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="a generated file name, e.g. bwd_sm90_hdim128_fp16.cu")
    parser.add_argument("--kernel", default="", help="substring of the mangled kernel name (Lb0E: not causal)")
    parser.add_argument("--min-hgmma", type=int, default=12, help="wgmma instructions the loop must hold")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp) / "generated"
        generate(generated, sm90=True)
        source = generated / args.file
        if not source.exists():
            sys.exit(f"no generated file {args.file}")
        # The generated files include "../kernels/...": give them a kernels folder beside them.
        (Path(tmp) / "kernels").symlink_to(ROOT / "csrc" / "kernels")
        cubin = Path(tmp) / "kernel.cubin"
        subprocess.run(["nvcc", "-std=c++17", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-cubin",
                        f"-I{tmp}", str(source), "-o", str(cubin)], check=True)
        sass = subprocess.run(["cuobjdump", "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout

    for function in re.split(r"\n\s+Function : ", sass)[1:]:
        name = function.split("\n")[0]
        if args.kernel not in name or "preprocess" in name:
            continue
        loop = main_loop(function, args.min_hgmma)
        if loop is None:
            print(f"{name}: no loop with {args.min_hgmma} wgmma instructions")
            continue
        histogram = collections.Counter(opcode(t) for t in loop)
        print(f"{name}\n  loop: {len(loop)} instructions")
        print("  " + ", ".join(f"{op} {n}" for op, n in histogram.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
