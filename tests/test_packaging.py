"""What gets installed: the package imports, exports its API, ships the compiled
extension, and reports the version pyproject.toml declares."""

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

import flash_attn_rocm

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_exports_flash_attn_func():
    from flash_attn_rocm import flash_attn_func

    assert callable(flash_attn_func)


def test_version_matches_pyproject():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    with PYPROJECT.open("rb") as f:
        declared = tomllib.load(f)["project"]["version"]
    try:
        version("flash_attn_rocm")
    except PackageNotFoundError:
        pytest.skip("flash_attn_rocm is not installed (a source tree on PYTHONPATH has no metadata)")
    assert flash_attn_rocm.__version__ == declared


def test_compiled_extension_is_installed():
    package_dir = Path(flash_attn_rocm.__file__).parent
    assert list(package_dir.glob("_C*.so")), f"no _C*.so in {package_dir}"
    from flash_attn_rocm import _C

    assert Path(_C.__file__).parent == package_dir and Path(_C.__file__).suffix == ".so"
