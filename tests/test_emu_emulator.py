"""The AMD wavefront emulator itself, on each target: its wavefront collectives follow HIP's rules,
its matrix instructions compute A B + C through AMD's register layouts, and it fails what a GPU
would get wrong or refuse. The proofs that it can fail:

- a wrong matrix layout (two 4-row groups of the D layout swapped) makes the product test fail;
- a missing barrier, and a same-wave exchange with nothing in between, are reported as LDS races;
- an LDS overrun (past the end, before the start) is reported;
- a launch over the target's LDS or 1024 threads is refused;
- a collective half a wavefront never reaches is reported as a deadlock, not hung on.

The matrix layouts come from ../shared/amd_matrix_layouts (AMD's Matrix Instruction Calculator)
except CDNA4's (gfx950's v_mfma_f32_32x32x16 and 16x16x32 f16/bf16), which are not in the
calculator and were written from AMD's CDNA4 ISA descriptions into csrc/emu/layouts (see its
README). This module reads the CSVs with its own parser, independently of the emulator's.
"""

import csv
import ctypes
import re
import shutil
from pathlib import Path

import pytest
import torch

import emu_library
from emu_targets import TARGETS, TARGET_LDS, emu  # noqa: F401  (emu is a fixture)

GOLDEN = emu_library.emu_build.GOLDEN_LAYOUTS
OWN = emu_library.ROOT / "csrc" / "emu" / "layouts"
ARCHS = {"gfx90a": ["CDNA2"], "gfx942": ["CDNA3"], "gfx950": ["CDNA4", "CDNA3"], "gfx1100": ["RDNA3"],
         "gfx1201": ["RDNA4"]}
INSTRUCTIONS = {
    "gfx90a": ["v_mfma_f32_32x32x8f16", "v_mfma_f32_32x32x8bf16_1k", "v_mfma_f32_16x16x16f16",
               "v_mfma_f32_16x16x16bf16_1k"],
    "gfx942": ["v_mfma_f32_32x32x8_f16", "v_mfma_f32_32x32x8_bf16", "v_mfma_f32_16x16x16_f16",
               "v_mfma_f32_16x16x16_bf16", "v_mfma_f32_32x32x16_fp8_fp8", "v_mfma_f32_16x16x32_fp8_fp8"],
    "gfx1100": ["v_wmma_f32_16x16x16_f16", "v_wmma_f32_16x16x16_bf16"],
    "gfx1201": ["v_wmma_f32_16x16x16_f16", "v_wmma_f32_16x16x16_bf16"],
}
INSTRUCTIONS["gfx950"] = INSTRUCTIONS["gfx942"] + ["v_mfma_f32_32x32x16_f16", "v_mfma_f32_32x32x16_bf16",
                                                   "v_mfma_f32_16x16x32_f16", "v_mfma_f32_16x16x32_bf16"]
# The fp8 each CDNA target reads: MI300 (gfx942) e4m3fnuz, MI350 (gfx950) OCP e4m3fn.
FP8 = {"gfx942": torch.float8_e4m3fnuz, "gfx950": torch.float8_e4m3fn}


def ptr(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


# ---------------------------------------------------------------- layouts, read here independently


def layout_file(target, instruction, matrix, golden=GOLDEN):
    for arch in ARCHS[target]:
        for folder in (Path(golden), OWN):
            path = folder / f"{arch}_{instruction}_{matrix}.csv"
            if path.exists():
                return path
    raise FileNotFoundError(f"{instruction} {matrix} for {target}")


def read_layout(path):
    """[(lane, slot, row, col)] and the element width in bits."""
    with open(path) as f:
        rows = list(csv.reader(f))
    slots, bits = [], None
    for cell in rows[0][1:]:
        m = re.fullmatch(r"v(\d+)(?:\.\[(\d+):(\d+)\])?", cell)
        hi, lo = (int(m.group(2)), int(m.group(3))) if m.group(2) else (31, 0)
        bits = hi - lo + 1
        slots.append(int(m.group(1)) * (32 // bits) + lo // bits)
    entries = []
    for row in rows[1:]:
        for slot, cell in zip(slots, row[1:]):
            i, j = map(int, re.fullmatch(r"[ABD]\[(\d+)\]\[(\d+)\]", cell).groups())
            entries.append((int(row[0]), slot, i, j))
    return entries, bits


def shape_of(instruction):
    return tuple(map(int, re.search(r"(\d+)x(\d+)x(\d+)", instruction).groups()))


def element_type(instruction, target):
    if "fp8" in instruction:
        return FP8[target]
    return torch.bfloat16 if "bf16" in instruction else torch.float16


def run_product(emu, target, instruction, golden=GOLDEN):
    """Lays random A, B, C out in the lanes' registers by the layout files, runs the instruction in
    the emulator and gathers D. Returns (D, A B + C in float64)."""
    m, n, k = shape_of(instruction)
    dtype = element_type(instruction, target)
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    c = torch.randn(m, n)
    lanes = emu.wave_size
    regs = {}
    for name, matrix in (("A", a), ("B", b)):
        entries, bits = read_layout(layout_file(target, instruction, name, golden))
        slots = max(e[1] for e in entries) + 1
        raw = matrix.view(torch.uint8 if bits == 8 else torch.int16)
        out = torch.zeros(lanes, slots, dtype=raw.dtype)
        for lane, slot, i, j in entries:
            out[lane, slot] = raw[i, j]
        regs[name] = out.contiguous()
    d_entries, _ = read_layout(layout_file(target, instruction, "D", golden))
    d_slots = max(e[1] for e in d_entries) + 1
    c_regs = torch.zeros(lanes, d_slots)
    for lane, slot, i, j in d_entries:
        c_regs[lane, slot] = c[i, j]
    d_regs = torch.full((lanes, d_slots), float("nan"))
    emu.call(instruction, emu.raw.fa_emu_check_matrix, instruction.encode(), ptr(regs["A"]), ptr(regs["B"]),
             ptr(c_regs), ptr(d_regs))
    d = torch.full((m, n), float("nan"))
    for lane, slot, i, j in d_entries:
        d[i, j] = d_regs[lane, slot]
    return d, a.double() @ b.double() + c.double()


def assert_product_matches(d, expected):
    # fp32 accumulation of exact products: a few ulps of the largest partial sum.
    assert torch.allclose(d.double(), expected, rtol=0, atol=1e-5 * max(1.0, expected.abs().max().item()))


@pytest.mark.parametrize("target, instruction",
                         [pytest.param(t, i, id=f"{t}-{i}") for t in TARGETS for i in INSTRUCTIONS[t]])
def test_matrix_instruction_computes_the_product(emu, target, instruction):
    d, expected = run_product(emu, target, instruction)
    assert_product_matches(d, expected)


def swapped_d_layouts(tmp_path, target, instruction):
    """A copy of the layouts in which rows 0-3 and 4-7 of `instruction`'s D trade places: two
    4-row groups of the D layout swapped."""
    shutil.copytree(GOLDEN, tmp_path, dirs_exist_ok=True)
    source = layout_file(target, instruction, "D")

    def swap(match):
        row = int(match.group(1))
        return f"D[{row ^ 4 if row < 8 else row}][{match.group(2)}]"

    (tmp_path / source.name).write_text(re.sub(r"D\[(\d+)\]\[(\d+)\]", swap, source.read_text()))
    return tmp_path


@pytest.mark.parametrize("target", TARGETS)
def test_a_wrong_layout_fails_the_product_test(emu, target, tmp_path):
    """With two 4-row groups of the (32x32 on CDNA, 16x16 on RDNA) D layout swapped in the files the
    emulator reads, the instruction writes those rows to the wrong registers: the product test,
    which lays out and gathers by the true layout, must fail."""
    instruction = INSTRUCTIONS[target][0]
    emu.set_layout_dir(swapped_d_layouts(tmp_path, target, instruction))
    d, expected = run_product(emu, target, instruction)
    with pytest.raises(AssertionError):
        assert_product_matches(d, expected)
    emu.set_layout_dir(None)
    d, expected = run_product(emu, target, instruction)
    assert_product_matches(d, expected)


def test_cdna4_result_layouts_are_cdna3s():
    """gfx950's 32x32x16 and 16x16x32 keep the D layouts of CDNA3's 32x32x8 and 16x16x16."""
    for new, old in (("32x32x16", "32x32x8"), ("16x16x32", "16x16x16")):
        for t in ("f16", "bf16"):
            mine = (OWN / f"CDNA4_v_mfma_f32_{new}_{t}_D.csv").read_text()
            assert mine == (Path(GOLDEN) / f"CDNA3_v_mfma_f32_{old}_{t}_D.csv").read_text()


# ---------------------------------------------------------------- collectives


def hip_shuffle_sources(lane, wave):
    """Where each of collectives_kernel's shuffles reads, by HIP 5.2's amd_warp_functions.h."""
    def shfl(src, width):
        return src + (lane & ~(width - 1))

    def xor(mask, width):
        index = lane ^ mask
        return lane if index >= ((lane + width) & ~(width - 1)) else index

    def up(delta, width):
        return lane if lane - delta < (lane & ~(width - 1)) else lane - delta

    def down(delta, width):
        return lane if (lane & (width - 1)) + delta >= width else lane + delta

    return [shfl(5, 16), xor(3, 8), up(2, 16), down(3, 16), xor(32, wave)]


@pytest.mark.parametrize("exit_above", [1000, 100], ids=["all", "exited"])
@pytest.mark.parametrize("target", TARGETS)
def test_collectives_follow_hip(emu, exit_above):
    """__shfl, __shfl_xor, __shfl_up, __shfl_down with widths, __ballot, __any, __all and
    readfirstlane over 2 (CDNA) or 4 (RDNA) wavefronts; in `exited`, threads above 100 have
    returned: reading their lane gives 0 and they vote no."""
    threads, wave = 128, emu.wave_size
    out = torch.full((threads, 8), -1, dtype=torch.int64).to(torch.int32)
    emu.call("collectives", emu.raw.fa_emu_check_collectives, threads, exit_above, ptr(out))
    live = lambda t: t <= exit_above  # noqa: E731
    for tid in range(min(threads, exit_above + 1)):
        base, lane = tid - tid % wave, tid % wave
        got = [int(x) & 0xFFFFFFFF for x in out[tid]]
        for i, src in enumerate(hip_shuffle_sources(lane, wave)):
            src_tid = base + src % wave
            assert got[i] == (1000 + src_tid if live(src_tid) else 0), f"thread {tid}, shuffle {i}"
        ballot = sum(1 << l for l in range(wave) if l % 2 and live(base + l))
        assert got[5] | got[6] << 32 == ballot
        lanes_alive = [l for l in range(wave) if live(base + l)]
        any_, all_ = any(l < 40 for l in lanes_alive), all(l < 40 for l in lanes_alive)
        assert got[7] == int(any_) | int(all_) << 1 | (1000 + base) << 2


# ---------------------------------------------------------------- what must fail

LDS_CASES = {  # lds_kernel's cases: (which, what the emulator must say, or None: it must pass)
    "barrier": (0, None),
    "missing-barrier": (1, "LDS race"),
    "same-wave-no-sync": (2, "LDS race"),
    "same-wave-barrier": (3, None),
    "write-after-read": (4, "LDS race"),
    "overrun": (5, "LDS overrun"),
    "underrun": (6, "LDS overrun"),
}


@pytest.mark.parametrize("case", LDS_CASES)
@pytest.mark.parametrize("target", TARGETS)
def test_lds_races_and_overruns_fail_the_launch(emu, case):
    which, expected = LDS_CASES[case]
    out = torch.zeros(128)
    if expected is None:
        emu.call(case, emu.raw.fa_emu_check_lds, which, 128, 128 * 4, ptr(out))
        return
    with pytest.raises(emu_library.EmulatorError, match=expected) as failure:
        emu.call(case, emu.raw.fa_emu_check_lds, which, 128, 128 * 4, ptr(out))
    assert "lds_kernel" in failure.value.message and "block (0, 0, 0)" in failure.value.message


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("target", TARGETS)
def test_the_race_is_caught_in_every_schedule(emu, seed):
    emu.set_seed(seed)
    out = torch.zeros(256)
    with pytest.raises(emu_library.EmulatorError, match="LDS race"):
        emu.call("missing-barrier", emu.raw.fa_emu_check_lds, 1, 256, 256 * 4, ptr(out))


@pytest.mark.parametrize("target", TARGETS)
def test_launches_over_the_targets_limits_are_refused(emu, target):
    lds = TARGET_LDS[target]
    assert emu.lds_bytes == lds
    emu.call("at the limit", emu.raw.fa_emu_check_launch, 1024, 1, lds)
    with pytest.raises(emu_library.LaunchRefused, match=f"{lds + 16} bytes of dynamic LDS exceed the target's {lds}"):
        emu.call("lds", emu.raw.fa_emu_check_launch, 64, 1, lds + 16)
    with pytest.raises(emu_library.LaunchRefused, match="1088 threads; at most 1024"):
        emu.call("threads", emu.raw.fa_emu_check_launch, 64, 17, 0)


@pytest.mark.parametrize("target", TARGETS)
def test_a_collective_half_a_wave_skips_is_a_deadlock(emu):
    out = torch.zeros(128, dtype=torch.int32)
    with pytest.raises(emu_library.EmulatorError, match="deadlock.*wave collective"):
        emu.call("divergent", emu.raw.fa_emu_check_divergent, 128, 16, ptr(out))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("target", TARGETS)
def test_blocks_that_wait_for_each_other_make_way(emu, seed):
    """Block b spins until every block after it has run: whatever the start order, the emulator
    sets spinning blocks aside and the blocks finish in reverse order."""
    emu.set_seed(seed)
    counter, turns = torch.zeros(1, dtype=torch.int32), torch.full((12,), -1, dtype=torch.int32)
    emu.call("reverse order", emu.raw.fa_emu_check_reverse_order, 12, ptr(counter), ptr(turns))
    assert turns.tolist() == list(range(11, -1, -1))
    assert emu.raw.fa_emu_last_launch_resumed_blocks() > 0


def test_a_static_shared_variable_is_rejected_at_build(tmp_path):
    """The emulator emulates the dynamic `extern __shared__` buffer only: a `static __shared__`
    variable must stop the build, not silently become memory that every block shares."""
    build = emu_library.emu_build
    source = tmp_path / "static_shared.cpp"
    source.write_text('#include "platform.h"\n'
                      "__global__ void k(float* out) { static __shared__ float tile[64]; tile[threadIdx.x] = 1.f;"
                      " __syncthreads(); out[threadIdx.x] = tile[63 - threadIdx.x]; }\n")
    flags = [*build.COMMON_FLAGS, build.target_define("gfx942"), *build.KERNEL_FLAGS]
    with pytest.raises(RuntimeError, match="static __shared__"):
        build._compile(source, flags, tmp_path, "identity")
