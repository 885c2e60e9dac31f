"""The benchmark scripts' command lines, checked without a GPU (only their timing needs one)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_decode = pytest.importorskip("bench_decode")


def test_decode_lists_forced_splits_and_probes_when_asked():
    args = bench_decode.parse_args(["--splits", "8", "16", "--probe", "--page-sizes", "16"])
    assert bench_decode.backend_names(args) == [
        "rocm", "rocm_splits8", "rocm_splits16", "rocm_bhsd", "rocm_paged16",
        "sdpa_flash", "sdpa_cudnn", "copy", "read",
    ]


def test_decode_default_run_has_no_probes():
    names = bench_decode.backend_names(bench_decode.parse_args([]))
    assert names[0] == "rocm" and "copy" in names
    assert not {"read", "rocm_bhsd"} & set(names)
    assert not any(n.startswith("rocm_splits") for n in names)


def test_bench_extras_defaults_are_issue_22s_bar():
    bench_extras = pytest.importorskip("bench_extras")
    args = bench_extras.parse_args([])
    assert (args.headdims, args.seqlens, args.modes) == ([128], [16384], ["fwd", "fwdbwd"])
    assert set(bench_extras.VARIANTS) == {"plain", "softcap", "alibi", "dropout", "all"}


def test_bench_fp8_defaults_cover_issue_24s_bar():
    bench_fp8 = pytest.importorskip("bench_fp8")
    args = bench_fp8.parse_args([])
    assert args.headdims == [128, 256] and 16384 in args.seqlens
