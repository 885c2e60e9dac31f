"""The kernels outside csrc/kernels/arch/ are written against the register-tile layer
(csrc/kernels/fragment.h): which lane holds which element of a matrix instruction's tile is the
per-vendor layout's business (arch/fragment_mma.h for NVIDIA), so an AMD layout can slot in. This
greps the vendor-neutral sources for the NVIDIA lane arithmetic that used to be written out
there: lane / 4, lane % 4 and their shift forms, ldmatrix's lane / 8 and lane % 16, the quad
shuffles, and the hard-coded + 8 of the second row a lane holds."""

import re
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "csrc" / "kernels"

FORBIDDEN = {
    "lane arithmetic of a fixed layout (lane / 4, lane % 4, lane >> 2, lane & 3, lane / 8, lane % 16...)":
        re.compile(r"\blane\s*(/|%|>>|&)\s*\d+"),
    "quad shuffle (shfl_xor by 1 or 2)": re.compile(r"shfl_xor\s*\([^,()]+,\s*[12]\s*\)"),
    "hard-coded row offset of a fragment's second row (8 * half)": re.compile(r"\b8\s*\*\s*half\b"),
}


def code_lines(path: Path):
    """(line number, text) of the source with // and /* */ comments removed."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), path.read_text(), flags=re.S)
    for number, line in enumerate(text.splitlines(), 1):
        yield number, line.split("//", 1)[0]


def vendor_neutral_sources():
    return sorted(p for p in KERNELS.iterdir() if p.suffix in (".h", ".cu", ".cuh"))


def test_the_sources_exist():
    names = {p.name for p in vendor_neutral_sources()}
    assert {"fragment.h", "softmax.h", "mask.h", "dropout.h", "epilogue.h", "fwd_kernel.h", "bwd_kernel.h"} <= names


@pytest.mark.parametrize("path", vendor_neutral_sources(), ids=lambda p: p.name)
def test_no_nvidia_lane_arithmetic_outside_arch(path):
    found = [f"{path.name}:{n}: {what}: {line.strip()}"
             for n, line in code_lines(path) for what, pattern in FORBIDDEN.items() if pattern.search(line)]
    assert not found, "\n".join(found)


def test_the_check_catches_what_it_forbids(tmp_path):
    sample = tmp_path / "sample.h"
    sample.write_text("const int row = row0 + lane / 4 + 8 * half;  // g\nv = fmaxf(v, shfl_xor(v, 2));\n"
                      "/* lane % 4 in a comment is fine */ int t = lane & 3;\n")
    hits = [line for _, line in code_lines(sample) for pattern in FORBIDDEN.values() if pattern.search(line)]
    assert len(hits) == 4
