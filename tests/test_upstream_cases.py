"""Shapes on which flash-attn 2.8.3's own tests/test_flash_attn.py (tools/run_flash_attn_tests.py,
H100, 2026-12-08) failed here, kept as our own tests on both kernel families:
- test_flash_attn_race_condition[0.0-200-200-40-True]: b60 h4 s200 d40 causal; the forward's
  output differed from the first call's after a backward had run in between.
- test_flash_attn_splitkv[16-100000-True-59-...]: 100,000 queries against 16 keys, d59 (padded
  to 64), not causal; output off by 0.87 (checked after the backward had run).
Either the forward itself or the backward writing outside its outputs fits both; these tests tell
which, and the small cases run under compute-sanitizer (scripts/gpu_check.sh, caching allocator
off so that a write past a tensor lands outside any allocation)."""

import pytest
import torch

from conftest import assert_within_eager_error, attention_ref, hopper, hopper_available, make_qkv, requires_gpu
from test_bwd import check_grads, random_dout

from flash_attn_rocm import flash_attn_func

pytestmark = requires_gpu

PATHS = [pytest.param(True, id="sm90", marks=pytest.mark.skipif(not hopper_available(), reason="no Hopper kernels")),
         pytest.param(False, id="portable")]


def forward_backward_forward(q, k, v, causal, reps):
    """The forward's output, checked to survive a backward and to repeat bitwise."""
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = flash_attn_func(q, k, v, causal=causal)
    first = out.detach().clone()
    dout = random_dout(q)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    changed = (out.detach() != first).sum().item()
    assert changed == 0, f"the backward changed {changed} elements of the forward's output"
    for rep in range(reps):
        again = flash_attn_func(q, k, v, causal=causal)
        diff = (again.detach().float() - first.float()).abs()
        assert torch.equal(again.detach(), first), (
            f"repeat {rep}: {(diff > 0).sum().item()} elements differ, up to {diff.max().item():.3g}")
    return first, dout, grads


@pytest.mark.parametrize("head_dim", [40, 64])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("use_hopper", PATHS)
def test_forward_repeats_bitwise_around_a_backward(use_hopper, causal, head_dim):
    q, k, v = make_qkv(batch=60, seqlen_q=200, nheads=4, head_dim=head_dim)
    with hopper(use_hopper):
        out, dout, grads = forward_backward_forward(q, k, v, causal, reps=20)
    out_ref, _ = attention_ref(q, k, v, causal)
    out_pt, _ = attention_ref(q, k, v, causal, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
    check_grads(q.detach(), k.detach(), v.detach(), dout, grads, causal)


@pytest.mark.parametrize("head_dim", [59, 64])
@pytest.mark.parametrize("use_hopper", PATHS)
def test_many_query_tiles_against_few_keys(use_hopper, head_dim):
    q, k, v = make_qkv(batch=1, seqlen_q=100_000, seqlen_k=16, nheads=12, head_dim=head_dim)
    with hopper(use_hopper):
        out, dout, grads = forward_backward_forward(q, k, v, causal=False, reps=2)
    out_ref, _ = attention_ref(q, k, v)
    out_pt, _ = attention_ref(q, k, v, upcast=False)
    assert_within_eager_error(out, out_ref, out_pt)
    check_grads(q.detach(), k.detach(), v.detach(), dout, grads)


@pytest.mark.sanitizer
@pytest.mark.parametrize("shape", [(8, 200, 200, 4, 40, True), (1, 3000, 16, 4, 59, False)],
                         ids=["b8-s200-d40-causal", "sq3000-sk16-d59"])
@pytest.mark.parametrize("use_hopper", PATHS)
def test_sanitizer_upstream_shapes(use_hopper, shape):
    batch, seqlen_q, seqlen_k, nheads, head_dim, causal = shape
    q, k, v = make_qkv(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=nheads, head_dim=head_dim)
    with hopper(use_hopper):
        forward_backward_forward(q, k, v, causal, reps=1)
