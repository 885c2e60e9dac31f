"""tools/run_flash_attn_tests.py, the harness that runs flash-attn's own test file against this
package, on a small stand-in file (flash-attn's is not in this repository): its shim imports
what that file imports, it samples deterministically, and it groups failures by their first
error line. CPU only."""

import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import run_flash_attn_tests as harness  # noqa: E402

STAND_IN = '''
import pytest
import torch
from einops import rearrange, repeat
from flash_attn import (flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func, flash_attn_varlen_func,
                        flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func, flash_attn_with_kvcache)
from flash_attn.bert_padding import pad_input, unpad_input
from flash_attn.flash_attn_interface import _get_block_size_n
from flash_attn.layers.rotary import apply_rotary_emb

is_sm90 = torch.cuda.get_device_capability("cuda") == (9, 0)


@pytest.mark.parametrize("a", range(40))
@pytest.mark.parametrize("b", range(25))
def test_grid(a, b):
    assert rearrange(torch.zeros(2, 3), "b s -> s b").shape == (3, 2)
    assert _get_block_size_n("cpu", 64, True, False) == 64
    if a % 3 == 0:
        assert a * 0.5 <= -1.0 - b
    if a % 3 == 1:
        raise ValueError(f"head dim {a} is odd")
'''


def run(tmp_path, *args, env=None):
    test_file = tmp_path / "test_flash_attn.py"
    test_file.write_text(textwrap.dedent(STAND_IN))
    return subprocess.run([sys.executable, str(REPO / "tools" / "run_flash_attn_tests.py"), str(test_file),
                           "--keep", str(tmp_path / "work"), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_collects_through_the_shim_and_samples_by_hash(tmp_path):
    result = run(tmp_path, "--every", "10", "--collect-only")
    assert result.returncode == 0, result.stdout + result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("collected ")][-1]
    collected, sampled = int(line.split()[1].rstrip(",")), int(line.split()[3])
    assert collected == 1000 and 60 <= sampled <= 140  # about a tenth, by crc32 of the test id
    again = run(tmp_path, "--every", "10", "--collect-only")
    assert [l for l in again.stdout.splitlines() if l.startswith("collected ")][-1] == line  # deterministic


def test_groups_failures_by_their_first_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FA_RUN_WITHOUT_GPU", "1")
    result = run(tmp_path, "--every", "4")
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "failures by first error line (" in out and "in 2 groups" in out
    assert "test_flash_attn.py:22: ValueError: head dim # is odd" in out
    assert "test_flash_attn.py:20: assert (# * #) <= (# - #)" in out
    assert "in test_grid (" in out


@pytest.mark.parametrize("shape, pattern, sizes, expected", [
    ((2, 3, 4, 8), "b s h d -> (b s) h d", {}, lambda x: x.reshape(6, 4, 8)),
    ((6, 4, 8), "(b s) h d -> b s h d", {"b": 2}, lambda x: x.reshape(2, 3, 4, 8)),
    ((2, 3), "b s -> b 1 s 1", {}, lambda x: x[:, None, :, None]),
    ((2, 3, 4, 5), "b s ... -> s b ...", {}, lambda x: x.transpose(0, 1)),
    ((2, 3, 4, 8), "b s h d -> b 1 (s h) d", {}, lambda x: x.reshape(2, 1, 12, 8)),
])
def test_minimal_einops_rearrange(shape, pattern, sizes, expected):
    einops = types.ModuleType("mini_einops")
    exec(textwrap.dedent(harness.MINI_EINOPS), einops.__dict__)
    x = torch.randn(shape)
    assert torch.equal(einops.rearrange(x, pattern, **sizes), expected(x))


def test_minimal_einops_repeat():
    einops = types.ModuleType("mini_einops")
    exec(textwrap.dedent(harness.MINI_EINOPS), einops.__dict__)
    x = torch.randn(2, 3, 2, 8)
    assert torch.equal(einops.repeat(x, "b s h d -> b s (h g) d", g=3), x.repeat_interleave(3, dim=2))
    m = torch.tensor([[True, False], [False, True]])
    assert torch.equal(einops.repeat(m, "a b -> (a 2) (b 3)"), m.repeat_interleave(2, 0).repeat_interleave(3, 1))
    assert torch.equal(einops.repeat(torch.arange(4), "s -> b 1 1 s", b=2), torch.arange(4).expand(2, 1, 1, 4))
