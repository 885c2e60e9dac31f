"""Compiles the kernel library to AMD device assembly and reports each kernel's resources.

Compile only: nothing here runs on an AMD GPU. For each target the generated instantiation files
(`generate_kernels.generate()`, development filter included) go through Debian's toolchain at
-O3 to a device-only `.s`, and each kernel's metadata and body are read back:

- registers: arch VGPRs, AGPRs (CDNA), SGPRs, VGPR/SGPR spills, scratch bytes per lane;
- LDS: static (`.group_segment_fixed_size`) plus the dynamic bytes its launch asks for, read
  from the kernel traits compiled for the same target (a small generated probe file);
- occupancy (waves per SIMD) by the rules in `HARDWARE`, wavefront size;
- matrix instructions (`v_mfma*`, `v_wmma*`, ...) in the body and in the steady-state loop
  (the loop with the most matrix instructions, else the largest), with a roofline estimate.

Each file instantiates the AMD kernels of every matrix-core family (tile_config.h's AmdFamily);
a target's device pass compiles only its own family's bodies, so the report keeps those.

Targets and toolchains (`../shared/KERNELS.md`): hipcc 5.2 for gfx90a and gfx940; clang-19 for
gfx942, gfx1100 and gfx1201; clang-22 for gfx950. The clang builds link Debian's device library
bitcode (ROCm 5.2) from a prepared copy under the build directory, which adds the ISA-version
files ROCm 5.2 lacks; without it `threadIdx` and the math functions become calls to missing
functions and the resource numbers are meaningless.

Compiled `.s` files are cached under build/amd-isa/ by a hash of the source, every kernel
header, the compiler's version and the command line.

    python3 tools/amd_isa_report.py                         # d128 fp16, every target
    python3 tools/amd_isa_report.py --targets gfx942 --head-dims 64,128 --dtypes all
    python3 tools/amd_isa_report.py --head-dims all --dtypes all --out docs/amd_isa_report.md  # make amd-isa
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNEL_DIR = ROOT / "csrc" / "kernels"
BUILD_DIR = ROOT / "build" / "amd-isa"
DEBIAN_BITCODE = Path("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode")
HIP_HEADER = Path("/usr/include/hip/hip_runtime.h")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generate_kernels  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Hardware rules and the cycle model
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatrixOp:
    m: int
    n: int
    k: int
    cycles: int  # cycles the SIMD's matrix unit is busy with one wave's instruction

    @property
    def flops(self) -> int:
        return 2 * self.m * self.n * self.k


# CDNA: cycles = 4 x the pass count of LLVM's AMDGPU scheduling model (what AMD's Matrix
# Instruction Calculator lists as cycles; tests/test_amd_isa.py checks them against llvm-mca).
# RDNA: derived from the published dense fp16 peak (peak = flops / cycles x SIMDs x CUs x clock):
# RX 7900 XTX 122.8 TFLOP/s -> 32 cycles per 16x16x16 WMMA, RX 9070 XT 195 TFLOP/s -> 16.
CDNA2_MATRIX = {
    "v_mfma_f32_32x32x8f16": MatrixOp(32, 32, 8, 64), "v_mfma_f32_16x16x16f16": MatrixOp(16, 16, 16, 32),
    "v_mfma_f32_32x32x8bf16_1k": MatrixOp(32, 32, 8, 64), "v_mfma_f32_16x16x16bf16_1k": MatrixOp(16, 16, 16, 32),
}
CDNA3_MATRIX = {
    "v_mfma_f32_32x32x8_f16": MatrixOp(32, 32, 8, 32), "v_mfma_f32_16x16x16_f16": MatrixOp(16, 16, 16, 16),
    "v_mfma_f32_32x32x8_bf16": MatrixOp(32, 32, 8, 32), "v_mfma_f32_16x16x16_bf16": MatrixOp(16, 16, 16, 16),
    "v_mfma_f32_32x32x16_fp8_fp8": MatrixOp(32, 32, 16, 32), "v_mfma_f32_16x16x32_fp8_fp8": MatrixOp(16, 16, 32, 16),
}
CDNA4_MATRIX = {
    **CDNA3_MATRIX,
    "v_mfma_f32_32x32x16_f16": MatrixOp(32, 32, 16, 32), "v_mfma_f32_16x16x32_f16": MatrixOp(16, 16, 32, 16),
    "v_mfma_f32_32x32x16_bf16": MatrixOp(32, 32, 16, 32), "v_mfma_f32_16x16x32_bf16": MatrixOp(16, 16, 32, 16),
}
RDNA3_MATRIX = {
    "v_wmma_f32_16x16x16_f16": MatrixOp(16, 16, 16, 32), "v_wmma_f32_16x16x16_bf16": MatrixOp(16, 16, 16, 32),
}
RDNA4_MATRIX = {
    "v_wmma_f32_16x16x16_f16": MatrixOp(16, 16, 16, 16), "v_wmma_f32_16x16x16_bf16": MatrixOp(16, 16, 16, 16),
}

MATRIX_MNEMONIC = re.compile(r"^(v_mfma|v_smfmac|v_wmma|v_swmmac)\w*")


@dataclass(frozen=True)
class Hardware:
    """What occupancy and the cycle model need to know about one target.

    Occupancy (waves per SIMD) is the smallest of these limits, as LLVM's AMDGPU backend
    computes it (Utils/AMDGPUBaseInfo.cpp, IsaInfo: getTotalNumVGPRs, getVGPRAllocGranule,
    getMaxWavesPerEU, getOccupancyWithNumSGPRs; AMDGPUSubtarget: occupancy with LDS):
    - registers: vgpr_file // round_up(VGPRs + AGPRs, vgpr_granule). CDNA2/3/4 hold 512
      registers a lane per SIMD, arch VGPRs and AGPRs in one file, granule 8; RDNA3/4 (gfx1100,
      gfx1201) 1536 at wave32, granule 24;
    - SGPRs (GFX9 only): at most 100 of them keep 8 waves;
    - LDS: a workgroup over lds_per_workgroup cannot launch (0 waves); otherwise
      lds_per_cu // LDS workgroups share one CU (RDNA: one WGP in WGP mode), their waves spread
      over its simds_per_cu SIMDs (the busiest SIMD's count: rounded up). 64 KiB a workgroup
      and a CU on CDNA2/3, 160 KiB on CDNA4; 64 KiB a workgroup and 128 KiB a WGP on RDNA3/4;
    - max_waves per SIMD: 8 on CDNA2/3/4 (gfx90a and later), 16 on RDNA3/4.
    """

    family: str
    wavefront: int
    vgpr_file: int
    vgpr_granule: int
    max_waves: int
    simds_per_cu: int
    lds_per_workgroup: int
    lds_per_cu: int
    sgpr_limited: bool
    issue_cycles: int  # cycles one non-matrix instruction occupies the wave's issue slot
    chip: str
    compute_units: int
    clock_ghz: float
    matrix: dict = field(repr=False)

    def peak_tflops(self, dtype: str = "fp16") -> float:
        """Dense fp16 peak: the fastest fp16 matrix instruction on every SIMD every cycle (dtype
        "fp8": the fastest fp8 one the cycle model knows)."""
        wanted = (lambda name: "fp8" in name) if dtype == "fp8" else (lambda name: "f16" in name and "bf16" not in name)
        rate = max(op.flops / op.cycles for name, op in self.matrix.items() if wanted(name))
        return rate * self.simds_per_cu * self.compute_units * self.clock_ghz / 1e3


KIB = 1024
CDNA = dict(wavefront=64, vgpr_file=512, vgpr_granule=8, max_waves=8, simds_per_cu=4, sgpr_limited=True,
            issue_cycles=4, lds_per_workgroup=64 * KIB, lds_per_cu=64 * KIB)
RDNA = dict(wavefront=32, vgpr_file=1536, vgpr_granule=24, max_waves=16, simds_per_cu=4, sgpr_limited=False,
            issue_cycles=1, lds_per_workgroup=64 * KIB, lds_per_cu=128 * KIB)
# Chips: MI210 (104 CUs, 1.7 GHz), MI300X (304 CUs, 2.1 GHz; gfx940 is hipcc 5.2's name for the
# first CDNA3 parts), MI355X (256 CUs, 2.4 GHz), RX 7900 XTX (96 CUs, 2.5 GHz), RX 9070 XT (64
# CUs, 2.97 GHz). On RDNA compute_units counts WGPs (two CUs, four SIMDs, one LDS) instead.
HARDWARE = {
    "gfx90a": Hardware("CDNA2", **CDNA, chip="MI210", compute_units=104, clock_ghz=1.7, matrix=CDNA2_MATRIX),
    "gfx940": Hardware("CDNA3", **CDNA, chip="MI300X", compute_units=304, clock_ghz=2.1, matrix=CDNA3_MATRIX),
    "gfx942": Hardware("CDNA3", **CDNA, chip="MI300X", compute_units=304, clock_ghz=2.1, matrix=CDNA3_MATRIX),
    "gfx950": Hardware("CDNA4", **{**CDNA, "lds_per_workgroup": 160 * KIB, "lds_per_cu": 160 * KIB},
                       chip="MI355X", compute_units=256, clock_ghz=2.4, matrix=CDNA4_MATRIX),
    "gfx1100": Hardware("RDNA3", **RDNA, chip="RX 7900 XTX", compute_units=48, clock_ghz=2.5, matrix=RDNA3_MATRIX),
    "gfx1201": Hardware("RDNA4", **RDNA, chip="RX 9070 XT", compute_units=32, clock_ghz=2.97, matrix=RDNA4_MATRIX),
}


# ---------------------------------------------------------------------------------------------
# Toolchains
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Toolchain:
    compiler: str       # executable on PATH
    llvm_suffix: str    # "-19": llvm-dis-19 etc. prepare the device libraries; "" for hipcc
    flags: tuple = ()
    link_hip_bitcode: bool = False  # link hip.bc ourselves (HIP 5.2's __syncthreads calls into it)

    @property
    def uses_hipcc(self) -> bool:
        return not self.llvm_suffix


TOOLCHAINS = {
    "gfx90a": Toolchain("hipcc", ""),
    "gfx940": Toolchain("hipcc", ""),
    "gfx942": Toolchain("clang++-19", "-19"),
    # clang 22 defaults to code object v6, which ROCm 5.2's device library predates, and no
    # longer links hip.bc by itself.
    "gfx950": Toolchain("clang++-22", "-22", ("-mcode-object-version=5",), link_hip_bitcode=True),
    "gfx1100": Toolchain("clang++-19", "-19"),
    "gfx1201": Toolchain("clang++-19", "-19"),
}
TARGETS = tuple(TOOLCHAINS)

# Common flags. -Wno-error=pass-failed: clang reports "loop not unrolled" for unroll pragmas it
# could not honour (a performance hint, kept visible); hipcc passes link flags that -S ignores.
COMMON_FLAGS = ("-x", "hip", "-std=c++17", "-O3", "--cuda-device-only", "-S", "-Werror",
                "-Wno-error=pass-failed", "-Wno-unused-command-line-argument")


def missing_tools(target: str) -> list[str]:
    """What this machine lacks to compile for `target` (empty when it can)."""
    chain = TOOLCHAINS[target]
    tools = [chain.compiler]
    if not chain.uses_hipcc:
        tools += [f"llvm-dis{chain.llvm_suffix}", f"llvm-as{chain.llvm_suffix}"]
    missing = [t for t in tools if shutil.which(t) is None]
    if not chain.uses_hipcc:
        missing += [str(p) for p in (HIP_HEADER, DEBIAN_BITCODE / "ocml.bc") if not p.exists()]
    return missing


# ISA version numbers the device library reads (__oclc_ISA_version): major * 1000 + minor * 100 +
# stepping. ROCm 5.2 ships files up to gfx940 and gfx1036; the others are written here.
ISA_VERSION = {"gfx942": 9402, "gfx950": 9500, "gfx1100": 11000, "gfx1201": 12001}


def device_lib_dir(chain: Toolchain, build_dir: Path) -> Path:
    """Debian's device library bitcode plus the ISA-version files it lacks, for one LLVM version."""
    out = build_dir / f"device-libs{chain.llvm_suffix}"
    if (out / "complete").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for bitcode in DEBIAN_BITCODE.glob("*.bc"):
        link = out / bitcode.name
        if not link.exists():
            link.symlink_to(bitcode)
    gfx940 = DEBIAN_BITCODE / "oclc_isa_version_940.bc"
    template = subprocess.run([f"llvm-dis{chain.llvm_suffix}", str(gfx940), "-o", "-"],
                              check=True, capture_output=True, text=True).stdout
    for target, version in ISA_VERSION.items():
        name = f"oclc_isa_version_{target[3:]}.bc"
        if (DEBIAN_BITCODE / name).exists():  # a newer package ships it: linked above
            continue
        text = re.sub(r"constant i32 9400\b", f"constant i32 {version}", template)
        assert text != template, "unexpected layout of oclc_isa_version_940.bc"
        partial = out / f"{name}.partial"
        subprocess.run([f"llvm-as{chain.llvm_suffix}", "-", "-o", str(partial)], input=text, check=True, text=True)
        partial.replace(out / name)
    (out / "complete").write_text("")
    return out


def compile_command(source: Path, target: str, output: Path, build_dir: Path) -> list[str]:
    chain = TOOLCHAINS[target]
    cmd = [chain.compiler, *COMMON_FLAGS, f"--offload-arch={target}", *chain.flags]
    if not chain.uses_hipcc:
        libs = device_lib_dir(chain, build_dir)
        cmd.append(f"--rocm-device-lib-path={libs}")
        if chain.link_hip_bitcode:
            cmd += ["-Xclang", "-mlink-builtin-bitcode", "-Xclang", str(libs / "hip.bc")]
    return cmd + ["-I", str(KERNEL_DIR), str(source), "-o", str(output)]


_compiler_versions: dict[str, str] = {}


def compiler_version(compiler: str) -> str:
    if compiler not in _compiler_versions:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
        _compiler_versions[compiler] = result.stdout
    return _compiler_versions[compiler]


def kernel_headers_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(KERNEL_DIR.rglob("*.h")):
        digest.update(str(path.relative_to(KERNEL_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass
class Compiled:
    source: Path
    target: str
    asm: Path
    cpu_seconds: float  # the compiler's CPU time (user + system) when it produced asm, cached or not
    cached: bool
    returncode: int
    log: str


def run_timed(cmd: list[str]) -> tuple[int, str, float]:
    """Exit status, stderr and CPU seconds of the command and its children (immune to other
    processes sharing the cores, unlike wall time)."""
    with open(os.devnull, "wb") as devnull, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=devnull, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read().decode(errors="replace"), usage.ru_utime + usage.ru_stime


def compile_to_asm(source: Path, target: str, build_dir: Path = BUILD_DIR,
                   headers_digest: str | None = None) -> Compiled:
    """Device assembly of `source` for `target`, from the cache when nothing it depends on changed."""
    cache = build_dir / "cache" / target
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256()
    for part in (source.read_text(), headers_digest or kernel_headers_digest(),
                 compiler_version(TOOLCHAINS[target].compiler),
                 " ".join(compile_command(source, target, cache / "out.s", build_dir)[:-3])):
        key.update(part.encode() + b"\0")
    stem = f"{source.stem}.{key.hexdigest()[:16]}"
    asm, record = cache / f"{stem}.s", cache / f"{stem}.json"
    if asm.exists() and record.exists():
        saved = json.loads(record.read_text())
        return Compiled(source, target, asm, saved["cpu_seconds"], True, 0, saved["log"])
    partial = cache / f"{stem}.partial.s"
    returncode, log, cpu_seconds = run_timed(compile_command(source, target, partial, build_dir))
    if returncode != 0:
        return Compiled(source, target, asm, cpu_seconds, False, returncode, log)
    partial.replace(asm)
    record.write_text(json.dumps({"cpu_seconds": round(cpu_seconds, 1), "log": log}))
    return Compiled(source, target, asm, cpu_seconds, False, 0, log)


# ---------------------------------------------------------------------------------------------
# Kernel roles: which kernels multiply matrices and what dynamic LDS their launches request
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelKind:
    short: str
    matrix_product: bool        # gated on having matrix instructions
    dynamic_lds_traits: str     # the launch passes <this>::kSmemBytes of dynamic LDS; "" for none
    flags: tuple = ()           # names of the trailing bool template arguments


# Keyed by the kernel template's name. A kernel missing here stops the report: say whether it
# multiplies matrices and what its launch (csrc/kernels/*launch*.h) passes as dynamic LDS.
KERNEL_KINDS = {
    "flash_fwd_amd_kernel": KernelKind("fwd", True, "FwdTraitsAmd", ("right_edge", "extras")),
    "flash_bwd_amd_kernel": KernelKind("bwd", True, "BwdTraitsAmd", ("right_edge", "extras")),
    "bwd_preprocess_kernel": KernelKind("bwd_preprocess", False, ""),
    "flash_fwd_kvcache_amd_kernel": KernelKind("fwd_kvcache", True, "KvCacheTraitsAmd"),
    "flash_kvcache_combine_kernel": KernelKind("kvcache_combine", False, ""),
    "kvcache_prepare_kernel": KernelKind("kvcache_prepare", False, ""),
}
# Element types as the demangler spells them, and as generate_kernels names them.
DEMANGLED_DTYPES = {"__half": "fp16", "hip_bfloat16": "bf16", "flash::fp8_e4m3_t": "fp8"}
# The fp8 forward: instantiated for the CDNA families only, with a body only where the device pass
# has the fp8 instructions (FA_AMD_DEVICE_HAS_FP8, which the probe reports).
FP8_FAMILIES = ("kCdna", "kCdna4")


def amd_families() -> tuple[str, ...]:
    """tile_config.h's AmdFamily in declaration order (the demangler prints "(flash::AmdFamily)N").

    Each file instantiates the kernels of every family; a device pass compiles only its own
    family's bodies (FA_AMD_DEVICE_FAMILY, arch/matrix_core_amd.h), which the probe file reports."""
    enum = re.search(r"enum class AmdFamily\s*\{([^}]*)\}", (KERNEL_DIR / "tile_config.h").read_text())
    return tuple(name.strip() for name in enum.group(1).split(",") if name.strip())


DEMANGLED_KERNEL = re.compile(r"^(?:void )?flash::(\w+)(?:<(.*)>)?\(")
DEMANGLED_FAMILY = re.compile(r"^\(flash::AmdFamily\)(\d+)$")


def split_template_args(args: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in args:
        depth += (ch == "<") - (ch == ">")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return parts + [current.strip()] if current.strip() else parts


@dataclass(frozen=True)
class KernelName:
    template: str       # flash_fwd_amd_kernel
    short: str          # "fwd d128 fp16 right_edge"
    dtype: str
    head_dim: int | None
    family: str         # "kCdna", or "" for a kernel every family shares
    matrix_product: bool


def describe_kernel(demangled: str, kinds: dict[str, KernelKind] = KERNEL_KINDS) -> KernelName:
    match = DEMANGLED_KERNEL.match(demangled)
    if not match or match.group(1) not in kinds:
        raise KeyError(f"unknown kernel {demangled!r}: add its template to KERNEL_KINDS in {Path(__file__).name}")
    template, args = match.group(1), split_template_args(match.group(2) or "")
    kind = kinds[template]
    # The traits (first argument) carry the element type, the family and the head dim; kernels
    # without traits take the type and head dim directly.
    nested = re.match(r"flash::\w+<(.*)>$", args[0]) if args else None
    inner, bools = (split_template_args(nested.group(1)), args[1:]) if nested else (args, args[2:])
    dtype = DEMANGLED_DTYPES.get(inner[0], inner[0]) if inner else ""
    families = [amd_families()[int(m.group(1))] for m in map(DEMANGLED_FAMILY.match, inner) if m]
    head_dim = next((int(a) for a in inner[1:] if a.isdigit()), None)
    words = [kind.short] + ([f"d{head_dim}"] if head_dim else []) + ([dtype] if dtype else [])
    words += [flag for flag, value in zip(kind.flags, bools) if value == "true"]
    return KernelName(template, " ".join(words), dtype, head_dim, families[0] if families else "", kind.matrix_product)


def demangle(symbols: list[str]) -> list[str]:
    tool = next((t for t in ("llvm-cxxfilt-22", "llvm-cxxfilt-19", "llvm-cxxfilt", "c++filt") if shutil.which(t)), None)
    if tool is None or not symbols:
        return list(symbols)
    out = subprocess.run([tool], input="\n".join(symbols) + "\n", capture_output=True, text=True, check=True).stdout
    return out.splitlines()


# ---------------------------------------------------------------------------------------------
# Reading the assembly
# ---------------------------------------------------------------------------------------------

@dataclass
class KernelMetadata:
    symbol: str
    fields: dict  # the scalar fields of the kernel's entry in amdhsa.kernels, e.g. "vgpr_count"

    def number(self, name: str) -> int:
        return int(self.fields.get(name, 0))


def parse_metadata(asm: str) -> list[KernelMetadata]:
    """Each kernel's scalar fields of the amdhsa.kernels list (code object v4/v5 YAML)."""
    block = re.search(r"^\s*\.amdgpu_metadata\s*$(.*?)^\s*\.end_amdgpu_metadata", asm, re.M | re.S)
    if not block:
        return []
    kernels, current = [], None
    in_kernels = False
    for line in block.group(1).splitlines():
        if re.match(r"^amdhsa\.kernels:", line):
            in_kernels = True
            continue
        if re.match(r"^\S", line):
            in_kernels = False
        if not in_kernels:
            continue
        entry = re.match(r"^  - \.(\w+):\s*(.*)$", line)
        scalar = re.match(r"^    \.(\w+):\s*(\S.*)$", line)
        if entry:
            current = {}
            kernels.append(current)
            if entry.group(2):
                current[entry.group(1)] = entry.group(2).strip()
        elif scalar and current is not None:
            current[scalar.group(1)] = scalar.group(2).strip()
    return [KernelMetadata(k["name"], k) for k in kernels if "name" in k]


INSTRUCTION = re.compile(r"^\s+([a-z_][a-z0-9_]*)\b(.*)$")
LABEL = re.compile(r"^([.\w$]+):")
BRANCH_TARGET = re.compile(r"(\.LBB\w+)")


@dataclass
class Block:
    label: str
    instructions: list = field(default_factory=list)  # (mnemonic, operands)
    successors: list = field(default_factory=list)


def function_body(asm: str, symbol: str) -> list[str]:
    """The lines of `symbol`'s code, from its label to the end-of-function marker."""
    start = re.search(rf"^{re.escape(symbol)}:", asm, re.M)
    if not start:
        return []
    end = re.compile(r"^\.Lfunc_end\d+:", re.M).search(asm, start.end())
    return asm[start.end():end.start() if end else len(asm)].splitlines()


def basic_blocks(lines: list[str]) -> list[Block]:
    blocks = [Block("entry")]
    for line in lines:
        label = LABEL.match(line)
        if label:
            # Long branches put a label between s_getpc and the add that reads it; it is no target.
            if not label.group(1).startswith(".Lpost_getpc"):
                blocks.append(Block(label.group(1)))
            continue
        code = line.split(";", 1)[0]
        ins = INSTRUCTION.match(code)
        if not ins or code.lstrip().startswith("."):
            continue
        if blocks[-1].instructions and is_terminator(blocks[-1].instructions[-1][0]):
            blocks.append(Block(f"{blocks[-1].label}+"))
        blocks[-1].instructions.append((ins.group(1), ins.group(2).strip()))
    labels = {b.label: i for i, b in enumerate(blocks)}
    for i, block in enumerate(blocks):
        last = block.instructions[-1][0] if block.instructions else ""
        if last == "s_branch":
            block.successors = [labels[t] for t in BRANCH_TARGET.findall(block.instructions[-1][1]) if t in labels]
        elif last == "s_setpc_b64":  # long branch: the target is in the adds before it
            block.successors = [labels[t] for _, ops in block.instructions for t in BRANCH_TARGET.findall(ops)
                                if t in labels]
        elif last == "s_endpgm":
            block.successors = []
        elif last.startswith("s_cbranch_"):
            block.successors = [labels[t] for t in BRANCH_TARGET.findall(block.instructions[-1][1]) if t in labels]
            block.successors += [i + 1] if i + 1 < len(blocks) else []
        else:
            block.successors = [i + 1] if i + 1 < len(blocks) else []
    return blocks


def is_terminator(mnemonic: str) -> bool:
    return mnemonic in ("s_branch", "s_setpc_b64", "s_endpgm") or mnemonic.startswith("s_cbranch_")


def natural_loops(blocks: list[Block]) -> list[set[int]]:
    """One set of block indices per loop header (back edges to the same header merged)."""
    count = len(blocks)
    predecessors = [[] for _ in range(count)]
    for i, block in enumerate(blocks):
        for s in block.successors:
            predecessors[s].append(i)
    reachable, stack = {0}, [0]
    while stack:
        for s in blocks[stack.pop()].successors:
            if s not in reachable:
                reachable.add(s)
                stack.append(s)
    order = sorted(reachable)
    everything = sum(1 << i for i in order)
    dominators = {i: everything for i in order}
    dominators[0] = 1
    changed = True
    while changed:
        changed = False
        for i in order[1:]:
            new = everything
            for p in predecessors[i]:
                if p in reachable:
                    new &= dominators[p]
            new |= 1 << i
            if new != dominators[i]:
                dominators[i], changed = new, True
    loops: dict[int, set[int]] = {}
    for tail in order:
        for header in blocks[tail].successors:
            if dominators[tail] >> header & 1:
                body = loops.setdefault(header, {header})
                stack = [tail]
                while stack:
                    node = stack.pop()
                    if node not in body:
                        body.add(node)
                        stack.extend(p for p in predecessors[node] if p in reachable)
    return list(loops.values())


@dataclass
class LoopSummary:
    instructions: int = 0
    matrix_instructions: int = 0
    matrix_cycles: int = 0
    matrix_flops: int = 0
    unknown_matrix: tuple = ()  # matrix mnemonics missing from the cycle table

    @property
    def has_matrix(self) -> bool:
        return self.matrix_instructions > 0


def summarise(instructions: list[tuple[str, str]], hardware: Hardware) -> LoopSummary:
    summary = LoopSummary(instructions=len(instructions))
    unknown = set()
    for mnemonic, _ in instructions:
        if MATRIX_MNEMONIC.match(mnemonic):
            summary.matrix_instructions += 1
            op = hardware.matrix.get(mnemonic)
            if op is None:
                unknown.add(mnemonic)
            else:
                summary.matrix_cycles += op.cycles
                summary.matrix_flops += op.flops
    summary.unknown_matrix = tuple(sorted(unknown))
    return summary


def steady_state_loop(blocks: list[Block], hardware: Hardware) -> LoopSummary | None:
    """The loop with the most matrix instructions (the innermost of equals), else the largest."""
    best, best_key = None, None
    for body in natural_loops(blocks):
        summary = summarise([ins for i in sorted(body) for ins in blocks[i].instructions], hardware)
        key = (summary.matrix_instructions, -summary.instructions) if summary.has_matrix else (0, summary.instructions)
        if best_key is None or key > best_key:
            best, best_key = summary, key
    return best


@dataclass
class LoopEstimate:
    """Cycle model of one iteration of the steady-state loop on one SIMD (an estimate).

    The matrix unit is busy `matrix_cycles` (table cycles of each matrix instruction); every
    instruction takes one issue slot of `issue_cycles` (4 on CDNA: a wave64 instruction on a
    16-lane SIMD; 1 on RDNA's 32-lane SIMD); issue and matrix work overlap perfectly and
    nothing else stalls. An iteration then takes max(matrix cycles, issue cycles): the share of
    it the matrix unit is busy, and flops / cycles on every SIMD of the chip, are upper bounds.
    """

    cycles: int
    matrix_busy: float
    tflops: float


def estimate(loop: LoopSummary, hardware: Hardware) -> LoopEstimate | None:
    if loop.unknown_matrix:
        return None
    cycles = max(loop.matrix_cycles, loop.instructions * hardware.issue_cycles)
    if cycles == 0:
        return LoopEstimate(0, 0.0, 0.0)
    per_simd = loop.matrix_flops / cycles
    tflops = per_simd * hardware.simds_per_cu * hardware.compute_units * hardware.clock_ghz / 1e3
    return LoopEstimate(cycles, loop.matrix_cycles / cycles, tflops)


# ---------------------------------------------------------------------------------------------
# Per-kernel report
# ---------------------------------------------------------------------------------------------

@dataclass
class KernelReport:
    name: KernelName
    target: str
    symbol: str
    vgprs: int            # arch VGPRs (with AGPRs in use: rounded up to 4, where AGPRs start)
    agprs: int
    total_vgprs: int      # what occupancy counts: arch VGPRs + AGPRs on CDNA
    sgprs: int
    vgpr_spills: int
    sgpr_spills: int
    scratch: int          # private segment bytes per lane
    dynamic_stack: bool
    static_lds: int
    dynamic_lds: int
    workgroup_size: int
    wavefront: int
    matrix_instructions: int
    instructions: int
    calls: int            # s_swappc: a callee's registers are not in the numbers above
    loop: LoopSummary | None
    compiler_occupancy: int | None  # the compiler's own figure (registers and static LDS only)

    @property
    def hardware(self) -> Hardware:
        return HARDWARE[self.target]

    @property
    def lds(self) -> int:
        return self.static_lds + self.dynamic_lds

    @property
    def register_occupancy(self) -> int:
        hw = self.hardware
        waves = hw.max_waves
        if self.total_vgprs >= hw.vgpr_granule:
            rounded = -(-self.total_vgprs // hw.vgpr_granule) * hw.vgpr_granule
            waves = min(waves, max(hw.vgpr_file // rounded, 1))
        if hw.sgpr_limited:
            waves = min(waves, 8 if self.sgprs <= 100 else 7)
        return waves

    @property
    def occupancy(self) -> int:
        """Waves per SIMD (0: the workgroup's LDS is over the limit, it cannot launch)."""
        hw = self.hardware
        if self.lds > hw.lds_per_workgroup:
            return 0
        waves = self.register_occupancy
        if self.lds:
            waves_per_group = -(-self.workgroup_size // self.wavefront)
            groups = hw.lds_per_cu // self.lds
            waves = min(waves, -(-groups * waves_per_group // hw.simds_per_cu))
        return waves

    def gate_failures(self) -> list[str]:
        """The ISA gates this kernel fails: spills, scratch, lds, matrix."""
        failures = []
        if self.vgpr_spills or self.sgpr_spills:
            failures.append("spills")
        if self.scratch or self.dynamic_stack:
            failures.append("scratch")
        if self.lds > self.hardware.lds_per_workgroup:
            failures.append("lds")
        if self.name.matrix_product and self.matrix_instructions == 0:
            failures.append("matrix")
        return failures


def read_probe(asm: str) -> dict[str, int]:
    """The probe's constants: symbol -> value (.long N, or .zero 4 for 0)."""
    values = {}
    for match in re.finditer(r"^(fa_\w+):\s*\n\s*\.(long|zero)\s+(\d+)", asm, re.M):
        values[match.group(1)] = int(match.group(3)) if match.group(2) == "long" else 0
    return values


DEVICE_FAMILY_SYMBOL = "fa_device_family"
DEVICE_HAS_FP8_SYMBOL = "fa_device_has_fp8"


def dynamic_lds_symbol(traits: str, family: str, dtype: str, head_dim: int) -> str:
    return f"fa_dynamic_lds_{traits}_{family}_{dtype}_d{head_dim}"


def write_probe(out_dir: Path, families: list[tuple[int, str]]) -> Path:
    """A file whose device constants, compiled per target like the kernels, are the target's
    matrix-core family and each traits' dynamic shared memory (what the launches pass)."""
    traits_names = sorted({kind.dynamic_lds_traits for kind in KERNEL_KINDS.values() if kind.dynamic_lds_traits})
    lines = ["// Generated by tools/amd_isa_report.py: the device's family and the dynamic LDS of each launch.",
             '#include "arch/matrix_core_amd.h"', '#include "tile_config.h"', "",
             f'extern "C" __device__ const int {DEVICE_FAMILY_SYMBOL} = static_cast<int>(FA_AMD_DEVICE_FAMILY);',
             f'extern "C" __device__ const int {DEVICE_HAS_FP8_SYMBOL} = FA_AMD_DEVICE_HAS_FP8 ? 1 : 0;']
    fp8 = [(d, "fp8") for d in sorted({d for d, _ in families if d in generate_kernels.FP8_HEAD_DIMS})]
    for head_dim, dtype in families + fp8:
        ctype = "fp8_e4m3_t" if dtype == "fp8" else generate_kernels.DTYPES[dtype][0]
        for traits in traits_names:
            for family in amd_families():
                lines.append(f'extern "C" __device__ const int {dynamic_lds_symbol(traits, family, dtype, head_dim)} = '
                             f"flash::{traits}<flash::{ctype}, flash::AmdFamily::{family}, {head_dim}>::kSmemBytes;")
    path = out_dir / "probe.cu"
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# The compiler's own occupancy after each kernel (clang 22 writes an expression instead of a number).
OCCUPANCY_COMMENT = re.compile(r"^; Occupancy: (.*?)\s*$", re.M)


def kernel_reports(asm_text: str, target: str, probe: dict[str, int],
                   kinds: dict[str, KernelKind] = KERNEL_KINDS, other_families: bool = False) -> list[KernelReport]:
    """The kernels of one `.s` file for `target`, given the probe's constants for it (with
    other_families, also the instantiations for the other matrix-core families, whose bodies
    this target compiles out)."""
    metadata = parse_metadata(asm_text)
    names = demangle([m.symbol for m in metadata])
    hardware = HARDWARE[target]
    reports = []
    for meta, demangled in zip(metadata, names):
        name = describe_kernel(demangled, kinds)
        if name.family and name.family != amd_families()[probe[DEVICE_FAMILY_SYMBOL]] and not other_families:
            continue
        if name.dtype == "fp8" and not probe.get(DEVICE_HAS_FP8_SYMBOL, 0) and not other_families:
            continue  # compiled out where the device has no fp8 instructions
        kind = kinds[name.template]
        dynamic = 0
        if kind.dynamic_lds_traits:
            symbol = dynamic_lds_symbol(kind.dynamic_lds_traits, name.family, name.dtype, name.head_dim)
            if symbol not in probe:
                raise KeyError(f"{name.short}: the probe has no {symbol}")
            dynamic = probe[symbol]
        blocks = basic_blocks(function_body(asm_text, meta.symbol))
        body = summarise([ins for b in blocks for ins in b.instructions], hardware)
        label = re.search(rf"^{re.escape(meta.symbol)}:", asm_text, re.M)
        occupancy = OCCUPANCY_COMMENT.search(asm_text, label.end()) if label else None
        agprs, total = meta.number("agpr_count"), meta.number("vgpr_count")
        reports.append(KernelReport(
            name=name, target=target, symbol=meta.symbol,
            vgprs=total - agprs if agprs else total, agprs=agprs, total_vgprs=total,
            sgprs=meta.number("sgpr_count"), vgpr_spills=meta.number("vgpr_spill_count"),
            sgpr_spills=meta.number("sgpr_spill_count"), scratch=meta.number("private_segment_fixed_size"),
            dynamic_stack=str(meta.fields.get("uses_dynamic_stack", "false")) == "true",
            static_lds=meta.number("group_segment_fixed_size"), dynamic_lds=dynamic,
            workgroup_size=meta.number("max_flat_workgroup_size"), wavefront=meta.number("wavefront_size"),
            matrix_instructions=body.matrix_instructions, instructions=body.instructions,
            calls=sum(mnemonic == "s_swappc_b64" for b in blocks for mnemonic, _ in b.instructions),
            loop=steady_state_loop(blocks, hardware),
            compiler_occupancy=int(occupancy.group(1)) if occupancy and occupancy.group(1).isdigit() else None))
    return reports


# ---------------------------------------------------------------------------------------------
# Driving it
# ---------------------------------------------------------------------------------------------

@dataclass
class TargetResult:
    target: str
    compiled: list[Compiled]
    reports: list[KernelReport]
    probe: dict = field(default_factory=dict)  # the probe file's constants (family, dynamic LDS)


def sources_for(head_dims: list[int] | None, dtypes: list[str] | None, out_dir: Path) -> tuple[list[Path], list]:
    """The instantiation files (and the dispatch) under the filter, and their (head dim, dtype) families."""
    saved = {k: os.environ.get(k) for k in ("FLASH_ATTN_ROCM_HEAD_DIMS", "FLASH_ATTN_ROCM_DTYPES")}
    try:
        if head_dims:
            os.environ["FLASH_ATTN_ROCM_HEAD_DIMS"] = ",".join(str(d) for d in head_dims)
        if dtypes:
            os.environ["FLASH_ATTN_ROCM_DTYPES"] = ",".join(dtypes)
        families = generate_kernels.selected_families()
        files = generate_kernels.generate(out_dir, amd_fp8=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return files, families


SLOWEST_FIRST = ("gfx942", "gfx90a", "gfx940", "gfx950", "gfx1100", "gfx1201")


def compile_order(source: Path, target: str) -> tuple:
    """Family by family, so that a sweep stopped early covers whole families; within one the
    longest first (the backward, then the slowest toolchains), which keeps parallel jobs busy."""
    family = re.search(r"hdim(\d+)_(\w+)$", source.stem)
    key = (int(family.group(1)), family.group(2)) if family else (0, "")
    kind = 0 if source.name.startswith("bwd") else 1 if source.name.startswith("fwd_hdim") else 2
    return key, kind, SLOWEST_FIRST.index(target) if target in SLOWEST_FIRST else len(SLOWEST_FIRST)


def build(targets: list[str], head_dims: list[int] | None = None, dtypes: list[str] | None = None,
          build_dir: Path = BUILD_DIR, jobs: int | None = None) -> dict[str, TargetResult]:
    """Compiles (or takes from the cache) every file for every target and reads the kernels."""
    # One directory per filter: generate() removes the files it did not write.
    selection = [",".join(map(str, head_dims or ["all"])), ",".join(dtypes or ["all"])]
    generated = build_dir / "generated" / "-".join(selection)
    files, families = sources_for(head_dims, dtypes, generated)
    files.append(write_probe(generated, families))
    digest = kernel_headers_digest()
    for target in targets:
        chain = TOOLCHAINS[target]
        if not chain.uses_hipcc:
            device_lib_dir(chain, build_dir)
    work = sorted(((f, t) for t in targets for f in files), key=lambda ft: compile_order(*ft))
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 2) as pool:
        compiled = list(pool.map(lambda ft: compile_to_asm(ft[0], ft[1], build_dir, digest), work))
    results = {}
    for target in targets:
        mine = [c for c in compiled if c.target == target]
        reports: list[KernelReport] = []
        probe: dict[str, int] = {}
        if all(c.returncode == 0 for c in mine):
            texts = {c.source.name: c.asm.read_text() for c in mine}
            probe = read_probe(texts.pop("probe.cu"))
            seen = set()
            for name in sorted(texts, key=lambda n: [f.name for f in files].index(n)):
                for report in kernel_reports(texts[name], target, probe):
                    if report.symbol not in seen:  # kvcache_prepare<T> is in every kvcache file of T
                        seen.add(report.symbol)
                        reports.append(report)
        results[target] = TargetResult(target, mine, reports, probe)
    return results


def format_kib(n: int) -> str:
    return f"{n / KIB:.0f}K" if n % KIB == 0 else f"{n / KIB:.1f}K"


def markdown(results: dict[str, TargetResult]) -> str:
    lines = [
        "| kernel | target | VGPR | AGPR | SGPR | spills V/S | scratch | LDS static+dyn | occ. | wave "
        "| matrix instr | loop instr | loop matrix | matrix busy* | TFLOP/s* | gates failed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    reports = [r for result in results.values() for r in result.reports]
    kernel_order = list(dict.fromkeys(r.name.short for r in reports))
    target_order = list(results)
    for r in sorted(reports, key=lambda r: (kernel_order.index(r.name.short), target_order.index(r.target))):
        loop, est = r.loop, estimate(r.loop, r.hardware) if r.loop else None
        busy, tflops = "-", "-"
        if r.name.matrix_product:
            busy = f"{est.matrix_busy:.0%}" if est else "n/a"
            peak = r.hardware.peak_tflops("fp8" if r.name.dtype == "fp8" else "fp16")
            tflops = f"{est.tflops:.0f} / {peak:.0f}" if est else "n/a"
        lds = f"{format_kib(r.static_lds)}+{format_kib(r.dynamic_lds)}"
        lines.append(
            f"| {r.name.short} | {r.target} | {r.vgprs} | {r.agprs} | {r.sgprs} | {r.vgpr_spills}/{r.sgpr_spills} "
            f"| {r.scratch} | {lds} | {r.occupancy} | {r.wavefront} | {r.matrix_instructions} "
            f"| {loop.instructions if loop else '-'} | {loop.matrix_instructions if loop else '-'} | {busy} | {tflops} "
            f"| {', '.join(r.gate_failures()) or 'none'} |")
    return "\n".join(lines) + "\n"


HEADER = """# AMD ISA report

Generated by `{command}`.

Each kernel is compiled to device assembly (-O3) with Debian's toolchains: **compiled, not run
on AMD hardware**. A file instantiates the kernels of every matrix-core family (CDNA, RDNA3,
RDNA4); each target compiles only its own family's bodies, and only those are listed. The gates
(`tests/test_amd_isa.py`) fail on spills, scratch, LDS over the target's limit and
matrix-product kernels without matrix instructions; their expected failures there list what
issue 21 still has to remove.

Columns: VGPR = arch VGPRs (rounded up to 4 where AGPRs follow them), AGPR = accumulation
registers (CDNA; the compiler also spills into them), spills = VGPR/SGPR spill counts, scratch =
private bytes per lane, LDS = static + the dynamic bytes the launch requests (from the kernel
traits compiled for the target), loop = the steady-state loop (the loop with the most matrix
instructions, else the largest), its instructions counted statically over its blocks.

Occupancy (occ., waves per SIMD) is the smallest of: the register file over the kernel's
VGPRs + AGPRs rounded up to the allocation granule; on CDNA 8 waves up to 100 SGPRs, 7 above;
the LDS limit (over the workgroup limit: 0, the launch fails; otherwise the workgroups that fit
the CU's LDS (RDNA: the WGP's, in WGP mode), their waves spread over its 4 SIMDs, rounded up);
the hardware maximum. The rules are LLVM's (AMDGPU `IsaInfo`: getTotalNumVGPRs,
getVGPRAllocGranule, getMaxWavesPerEU, getOccupancyWithNumSGPRs; the tests check the register
part against the compiler's own figure).

\\* **Estimates**, not measurements: one SIMD's matrix unit is busy for each matrix
instruction's cycles; every instruction takes one issue slot (4 cycles on CDNA, 1 on RDNA) and
issue overlaps matrix work perfectly, so an iteration takes max(matrix cycles, issue cycles).
Matrix busy = matrix cycles / iteration cycles; TFLOP/s = loop flops / iteration cycles on every
SIMD of the chip, against the chip's dense fp16 peak (fp8 kernels: the dense peak of the fp8
instruction they run, v_mfma_f32_32x32x16_fp8_fp8, by the same cycle model).

| target | toolchain | chip | CUs x SIMDs | clock | dense fp16 peak | LDS limit (workgroup / CU) | registers |
|---|---|---|---|---|---|---|---|
{hardware}

Matrix-instruction cycles (one SIMD, one wave): CDNA from LLVM's AMDGPU scheduling model (4 x
passes; AMD's Matrix Instruction Calculator lists the same), RDNA derived from the chips'
published dense fp16 peaks.

| family | instruction | cycles |
|---|---|---:|
{cycles}

{compile_times}
"""


def hardware_table(targets: list[str]) -> str:
    rows = []
    for target in targets:
        hw, chain = HARDWARE[target], TOOLCHAINS[target]
        simds = f"{hw.compute_units} x {hw.simds_per_cu}" if hw.family.startswith("CDNA") else \
            f"{hw.compute_units} WGPs x {hw.simds_per_cu}"
        rows.append(f"| {target} ({hw.family}) | {chain.compiler} | {hw.chip} | {simds} | {hw.clock_ghz} GHz "
                    f"| {hw.peak_tflops():.0f} TFLOP/s "
                    f"| {format_kib(hw.lds_per_workgroup)} / {format_kib(hw.lds_per_cu)} "
                    f"| {hw.vgpr_file} a lane, granule {hw.vgpr_granule}, ≤ {hw.max_waves} waves |")
    return "\n".join(rows)


def cycles_table() -> str:
    rows, seen = [], set()
    for hw in HARDWARE.values():
        for name, op in hw.matrix.items():
            if (hw.family, name) not in seen:
                seen.add((hw.family, name))
                rows.append(f"| {hw.family} | {name} | {op.cycles} |")
    return "\n".join(rows)


def compile_time_table(results: dict[str, TargetResult]) -> str:
    rows = ["Compile time (CPU seconds of the compiler when each `.s` was produced):", "",
            "| file | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    names = list(dict.fromkeys(c.source.name for r in results.values() for c in r.compiled))
    for name in names:
        cells = []
        for result in results.values():
            c = next((c for c in result.compiled if c.source.name == name), None)
            cells.append(f"{c.cpu_seconds:.0f}" if c else "-")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [sum(c.cpu_seconds for c in r.compiled) for r in results.values()]
    rows.append("| total | " + " | ".join(f"{t:.0f}" for t in totals) + " |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {','.join(TARGETS)}")
    parser.add_argument("--head-dims", default="128", help="comma-separated, or 'all'")
    parser.add_argument("--dtypes", default="fp16", help="comma-separated, or 'all'")
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPU count)")
    parser.add_argument("--build-dir", type=Path, default=BUILD_DIR)
    parser.add_argument("--out", type=Path, help="also write the report (markdown) here")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TOOLCHAINS]
    if unknown:
        parser.error(f"unknown targets {unknown}")
    missing = {t: missing_tools(t) for t in targets if missing_tools(t)}
    if missing:
        print("missing toolchains: " + "; ".join(f"{t}: {', '.join(m)}" for t, m in missing.items()), file=sys.stderr)
        return 2
    head_dims = None if args.head_dims == "all" else [int(d) for d in args.head_dims.split(",")]
    dtypes = None if args.dtypes == "all" else args.dtypes.split(",")
    start = time.monotonic()
    results = build(targets, head_dims, dtypes, args.build_dir, args.jobs)
    failed = [c for r in results.values() for c in r.compiled if c.returncode != 0]
    for c in failed:
        print(f"{c.target} {c.source.name}: compile failed\n{c.log[-3000:]}", file=sys.stderr)
    table = markdown(results)
    print(table)
    print(f"{len(targets)} targets in {time.monotonic() - start:.0f} s", file=sys.stderr)
    if args.out:
        command = "python3 tools/amd_isa_report.py " + " ".join(
            f"--{k} {v}" for k, v in (("head-dims", args.head_dims), ("dtypes", args.dtypes)))
        text = HEADER.format(command=command, hardware=hardware_table(targets), cycles=cycles_table(),
                             compile_times=compile_time_table(results)) + "\n" + table
        args.out.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
