"""Builds the AMD wavefront emulator's library for one target: the kernel library compiled as host
C++ for that target (csrc/kernels under FA_PLATFORM_EMU), the emulator (csrc/emu), and the
emulator's own check kernels (tests/emu_kernels), as build/emu/<target>/libfa_emu.so.

    python3 tools/emu_build.py gfx942            # prints the library's path
    FLASH_ATTN_ROCM_HEAD_DIMS=64 python3 tools/emu_build.py gfx90a

Head dims: FLASH_ATTN_ROCM_HEAD_DIMS as for the real build, default EMU_HEAD_DIMS (a development
filter: 32, 64 and 128, and 256 for the kernels' other tiles above 128; 40, 96 and 200 run
rounded up). Objects are cached under build/emu/objects by a hash of the compiler, the flags and
the preprocessed source, so targets whose preprocessed sources are equal (those of one
matrix-core family) share their objects; only the link is per target.

Needs clang++-19 and Boost.Context (Debian: clang-19, libboost-context-dev).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import generate_kernels  # noqa: E402

TARGETS = ("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1201")
EMU_HEAD_DIMS = "32,64,128,256"
BUILD_DIR = ROOT / "build" / "emu"
CLANG = os.environ.get("FA_EMU_CXX", "clang++-19")


def golden_layouts() -> Path:
    """AMD's register layouts (Matrix Instruction Calculator output): $FA_EMU_LAYOUT_DIR, else
    shared/amd_matrix_layouts inside the checkout or beside it (../shared), whichever exists."""
    env = os.environ.get("FA_EMU_LAYOUT_DIR")
    if env:
        return Path(env)
    candidates = [ROOT / "shared" / "amd_matrix_layouts", ROOT.parent / "shared" / "amd_matrix_layouts"]
    return next((c for c in candidates if c.is_dir()), candidates[-1])


GOLDEN_LAYOUTS = golden_layouts()

# -O1: the emulated kernels are bound by fiber switches, not arithmetic; -O2 costs compile time
# for nothing. Strict aliasing is off because the kernels read 16-bit tiles through uint4 and
# uint32_t pointers, which device compilers tolerate and host optimisers need not.
COMMON_FLAGS = ["-std=c++17", "-O1", "-g0", "-fPIC", "-fno-strict-aliasing", "-Wno-psabi",
                "-Wno-unused-command-line-argument"]
# The kernels' translation units: the HIP emulation, and ThreadSanitizer's instrumentation calling
# the emulator's own hooks (csrc/emu/lds.cpp) for the LDS race and overrun detector.
KERNEL_FLAGS = ["-DFA_PLATFORM_EMU", "-I", str(ROOT / "csrc" / "kernels"), "-fsanitize=thread",
                "-mllvm", "-tsan-instrument-func-entry-exit=0"]


def missing_tools() -> list[str]:
    """What the emulator build needs and this machine lacks."""
    missing = []
    if shutil.which(CLANG) is None:
        missing.append(f"{CLANG} (apt-get install clang-19)")
    if not Path("/usr/include/boost/context/detail/fcontext.hpp").exists() or not any(
            Path(d, "libboost_context.so").exists() for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                                             "/usr/lib", "/usr/local/lib")):
        missing.append("Boost.Context (apt-get install libboost-context-dev)")
    if not GOLDEN_LAYOUTS.is_dir():
        missing.append(f"AMD's register layouts at {GOLDEN_LAYOUTS} (../shared/amd_matrix_layouts beside the checkout, "
                       "or set FA_EMU_LAYOUT_DIR)")
    return missing


def target_define(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"unknown emulator target {target!r}; known: {', '.join(TARGETS)}")
    return f"-DFA_EMU_TARGET_{target.upper()}"


def _compiler_identity() -> str:
    return subprocess.run([CLANG, "--version"], capture_output=True, text=True, check=True).stdout


def _compile(source: Path, flags: list[str], objects: Path, identity: str, language: str = "c++") -> Path:
    """Compiles `source` (or reuses the object of an identical preprocessed source)."""
    preprocessed = subprocess.run([CLANG, "-x", language, *flags, "-E", str(source)], capture_output=True, check=True)
    # -D and -I flags act through the preprocessed text; the rest changes the object directly.
    codegen_flags = [f for f in flags if not f.startswith(("-D", "-I")) and f != str(ROOT / "csrc" / "kernels")]
    digest = hashlib.sha256("\0".join([identity, *codegen_flags]).encode() + preprocessed.stdout).hexdigest()[:24]
    obj = objects / f"{source.stem}-{digest}.o"
    if not obj.exists():
        tmp = obj.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([CLANG, "-x", language, *flags, "-c", str(source), "-o", str(tmp)], check=True)
        sections = subprocess.run(["readelf", "-S", "-W", str(tmp)], capture_output=True, text=True, check=True).stdout
        if "fa_emu_static_shared_is_unsupported" in sections:
            tmp.unlink()
            raise RuntimeError(f"{source}: a static __shared__ variable; the emulator has only the dynamic "
                               "`extern __shared__` buffer (csrc/emu/hip_emu.h)")
        tmp.replace(obj)
    return obj


def build(target: str, jobs: int | None = None, verbose: bool = False) -> Path:
    """Builds (or finds up to date) build/emu/<target>/libfa_emu.so and returns its path."""
    define = target_define(target)
    missing = missing_tools()
    if missing:
        raise RuntimeError("the AMD emulator needs " + " and ".join(missing))
    identity = _compiler_identity()
    out_dir = BUILD_DIR / target
    library = out_dir / "libfa_emu.so"
    fingerprint = out_dir / "libfa_emu.inputs"
    inputs = _inputs_digest(identity, target)
    if library.exists() and fingerprint.exists() and fingerprint.read_text() == inputs:
        return library  # nothing it is built from has changed: skip even the preprocessing
    objects = BUILD_DIR / "objects"
    objects.mkdir(parents=True, exist_ok=True)

    env_dims = os.environ.get("FLASH_ATTN_ROCM_HEAD_DIMS")
    os.environ["FLASH_ATTN_ROCM_HEAD_DIMS"] = env_dims or EMU_HEAD_DIMS
    try:
        families = generate_kernels.selected_families()
        generated_dir = BUILD_DIR / "generated" / "_".join(f"{d}{t}" for d, t in families)
        generated = generate_kernels.generate(generated_dir, amd_fp8=True)
    finally:
        if env_dims is None:
            del os.environ["FLASH_ATTN_ROCM_HEAD_DIMS"]

    layout_flags = [f'-DFA_EMU_DEFAULT_LAYOUT_DIR="{GOLDEN_LAYOUTS}"',
                    f'-DFA_EMU_OWN_LAYOUT_DIR="{ROOT / "csrc" / "emu" / "layouts"}"']
    emulator_flags = [*COMMON_FLAGS, define, *layout_flags]
    kernel_flags = [*COMMON_FLAGS, define, *KERNEL_FLAGS]
    entry_flags = [*COMMON_FLAGS, define, "-DFA_PLATFORM_EMU", "-I", str(ROOT / "csrc" / "kernels")]
    units = [(ROOT / "csrc" / "emu" / name, emulator_flags) for name in ("scheduler.cpp", "lds.cpp", "matrix.cpp")]
    units += [(ROOT / "csrc" / "emu" / "entry.cpp", entry_flags)]
    units += [(path, kernel_flags) for path in generated]
    units += [(path, kernel_flags) for path in sorted((ROOT / "tests" / "emu_kernels").glob("*.cpp"))]

    jobs = jobs or int(os.environ.get("MAX_JOBS", "0")) or min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        objs = list(pool.map(lambda unit: _compile(unit[0], unit[1], objects, identity), units))

    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / "libfa_emu.objects"
    listing = "\n".join(str(o) for o in objs)
    if not library.exists() or not stamp.exists() or stamp.read_text() != listing:
        with tempfile.NamedTemporaryFile(dir=out_dir, suffix=".so", delete=False) as tmp:
            pass
        subprocess.run([CLANG, "-shared", "-o", tmp.name, *map(str, objs), "-lboost_context", "-ldl"], check=True)
        _check_tsan_hooks(Path(tmp.name))
        os.replace(tmp.name, library)
        stamp.write_text(listing)
    fingerprint.write_text(inputs)
    if verbose:
        print(f"{target}: {len(units)} units, {len(set(objs))} objects", file=sys.stderr)
    return library


def _inputs_digest(identity: str, target: str) -> str:
    """A digest of everything the library is built from: sources, headers, layouts' paths, flags."""
    h = hashlib.sha256("\0".join([identity, target, os.environ.get("FLASH_ATTN_ROCM_HEAD_DIMS", EMU_HEAD_DIMS),
                                  os.environ.get("FLASH_ATTN_ROCM_DTYPES", ""), str(GOLDEN_LAYOUTS)]).encode())
    files = [ROOT / "tools" / "generate_kernels.py", Path(__file__).resolve()]
    for folder in ("csrc/kernels", "csrc/emu", "tests/emu_kernels"):
        files += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".h", ".cpp", ".cu"))
    for path in files:
        h.update(str(path).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def _check_tsan_hooks(library: Path) -> None:
    """Every __tsan_* symbol the instrumentation calls must be the emulator's (csrc/emu/lds.cpp): no
    TSan runtime is linked."""
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True,
                               check=True).stdout
    unresolved = sorted({line.split()[-1] for line in undefined.splitlines() if "__tsan_" in line})
    if unresolved:
        raise RuntimeError(f"{library}: the emulator does not define {', '.join(unresolved)} (csrc/emu/lds.cpp)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", default=list(TARGETS), help=f"default: {' '.join(TARGETS)}")
    parser.add_argument("-j", "--jobs", type=int, default=None)
    args = parser.parse_args()
    for t in args.targets:
        print(build(t, args.jobs, verbose=True))
