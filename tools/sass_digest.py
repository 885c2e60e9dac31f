"""Compiles the kernel instantiation files with nvcc (no torch, no GPU) and writes each kernel's
SASS, so that a refactoring can be shown to leave the machine code unchanged:

    python tools/sass_digest.py --out /tmp/sass_new            # this tree
    python tools/sass_digest.py --tree /tmp/old --out /tmp/sass_old
    python tools/sass_digest.py --compare /tmp/sass_old /tmp/sass_new

Each kernel's SASS goes to OUT/<arch>/<file>.sass (addresses and encodings stripped); --compare
lists the kernels whose instructions differ. FLASH_ATTN_ROCM_HEAD_DIMS / _DTYPES filter as in the
build. The flags are setup.py's device flags.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ARCHS = {"sm_80": "-gencode=arch=compute_80,code=sm_80", "sm_90a": "-gencode=arch=compute_90a,code=sm_90a"}
FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr"]


def generated_sources(tree: Path, work: Path) -> list[Path]:
    spec = importlib.util.spec_from_file_location("generate_kernels_" + str(abs(hash(tree))),
                                                  tree / "tools" / "generate_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (work / "kernels").symlink_to(tree / "csrc" / "kernels")
    return [f for f in module.generate(work / "generated", sm90=True) if f.name not in ("dispatch.cu", "kernel_table.cu")]


def cuobjdump() -> str:
    """cuobjdump from the CUDA toolkit, else the copy Triton's wheel carries."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
    except ImportError:
        raise SystemExit("cuobjdump not found (CUDA toolkit or `pip install triton`)")
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def sass_of(cubin: Path) -> str:
    text = subprocess.run([cuobjdump(), "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    lines = []
    for line in text.splitlines():
        if re.match(r"\s*/\* 0x[0-9a-f]+ \*/\s*$", line):
            continue  # the second half of an instruction's encoding
        line = re.sub(r"/\*[0-9a-f]{4,}\*/", "", line)      # address
        line = re.sub(r"/\* 0x[0-9a-f]+ \*/", "", line)      # encoding
        if line.strip():
            lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def compile_one(source: Path, arch: str, work: Path, out: Path) -> str:
    if "_sm90_" in source.name and arch != "sm_90a":
        return ""
    cubin = work / f"{source.stem}.{arch}.cubin"
    cmd = ["nvcc", *FLAGS, ARCHS[arch], "-cubin", f"-I{work}", str(source), "-o", str(cubin)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(" ".join(cmd) + "\n" + result.stderr[-4000:])
    (out / arch).mkdir(parents=True, exist_ok=True)
    (out / arch / f"{source.stem}.sass").write_text(sass_of(cubin))
    return f"{arch} {source.name}"


def functions(sass: str) -> dict[str, str]:
    """Function name -> its instructions."""
    parts = re.split(r"^\s*Function : (\S+)\s*$", sass, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def compare(old: Path, new: Path) -> int:
    differ = same = 0
    for old_file in sorted(old.glob("*/*.sass")):
        new_file = new / old_file.parent.name / old_file.name
        if not new_file.exists():
            print(f"missing in {new}: {old_file.parent.name}/{old_file.name}")
            differ += 1
            continue
        a, b = functions(old_file.read_text()), functions(new_file.read_text())
        # Kernel names may change with a renamed template parameter type: pair them in order.
        if len(a) != len(b):
            print(f"{old_file.parent.name}/{old_file.name}: {len(a)} kernels before, {len(b)} after")
            differ += 1
            continue
        for (name_a, body_a), (name_b, body_b) in zip(sorted(a.items()), sorted(b.items())):
            if body_a == body_b:
                same += 1
            else:
                differ += 1
                n_a, n_b = body_a.count("\n"), body_b.count("\n")
                print(f"DIFFERS {old_file.parent.name}/{old_file.name} {name_a} ({n_a} -> {n_b} lines)")
    print(f"{same} kernels identical, {differ} differ")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--archs", default="sm_80,sm_90a")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if shutil.which("nvcc") is None:
        print("nvcc not found", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sources = generated_sources(args.tree.resolve(), work)
        jobs = [(s, a) for s in sources for a in args.archs.split(",")]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for done in pool.map(lambda job: compile_one(job[0], job[1], work, args.out), jobs):
                if done:
                    print(done, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
