"""kernel_family: which kernels a call runs, as the dispatch decides it. Without a GPU (or on one
that is not sm_90) every call runs the portable kernels; on an sm_90 GPU with an sm_90a build the
plain variants at the Hopper head dims run the wgmma kernels."""

import pytest
import torch

from conftest import hopper, requires_hopper

from flash_attn_rocm import compiled_head_dims, kernel_family


def portable_expected() -> bool:
    return not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0)


@pytest.mark.skipif(not portable_expected(), reason="an sm_90 GPU may pick the Hopper kernels")
@pytest.mark.parametrize("backward", [False, True])
def test_portable_everywhere_but_hopper(backward):
    for d in compiled_head_dims():
        assert kernel_family(d, backward=backward) == f"sm80:hdim{d}"
        assert kernel_family(d, torch.bfloat16, backward=backward, softcap=30.0) == f"sm80:hdim{d}"


def test_head_dims_round_up_to_a_compiled_one():
    dims = compiled_head_dims()
    for d in range(8, dims[-1] + 1, 8):
        rounded = min(c for c in dims if c >= d)
        assert kernel_family(d).endswith(f":hdim{rounded}")


@pytest.mark.parametrize("kwargs, match", [
    (dict(head_dim=64, dtype=torch.float32), "dtype"),
    (dict(head_dim=60), "head_dim"),
    (dict(head_dim=0), "head_dim"),
    (dict(head_dim=4096), "head_dim 4096"),
])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kernel_family(**kwargs)


@requires_hopper
def test_hopper_families():
    for dtype in (torch.float16, torch.bfloat16):
        for d, fwd, bwd in ((40, "sm90:hdim64", "sm90:hdim64"), (128, "sm90:hdim128", "sm90:hdim128"),
                            (256, "sm90:hdim256", "sm90:hdim256"), (200, "sm90:hdim256", "sm90:hdim256"),
                            (96, "sm80:hdim96", "sm80:hdim96")):
            assert kernel_family(d, dtype) == fwd, (d, dtype)
            assert kernel_family(d, dtype, backward=True) == bwd, (d, dtype)
        # The extras run on the Hopper kernels, but the d256 forward's dropout.
        assert kernel_family(128, dtype, softcap=30.0) == "sm90:hdim128"
        assert kernel_family(64, dtype, dropout_p=0.1) == "sm90:hdim64"
        assert kernel_family(256, dtype, softcap=30.0) == "sm90:hdim256"
        assert kernel_family(256, dtype, dropout_p=0.1) == "sm80:hdim256"  # it spills there
        assert kernel_family(128, dtype, alibi_slopes=torch.ones(4), backward=True) == "sm90:hdim128"
        assert kernel_family(64, dtype, dropout_p=0.1, backward=True) == "sm90:hdim64"
        assert kernel_family(256, dtype, softcap=30.0, backward=True) == "sm90:hdim256"
        assert kernel_family(256, dtype, dropout_p=0.1, backward=True) == "sm90:hdim256"
    with hopper(False):
        assert kernel_family(128) == "sm80:hdim128"
        assert kernel_family(64, backward=True) == "sm80:hdim64"


def test_explain_gives_the_reason_for_the_portable_kernels():
    family, reason = kernel_family(256, explain=True, dropout_p=0.1)
    assert family.startswith("sm80:") and reason  # the extras, or a build/device without Hopper kernels
    with pytest.raises(ValueError, match="q, k, v"):
        kernel_family(128, q=torch.empty(1, 8, 2, 128, dtype=torch.float16))


@requires_hopper
def test_tma_fallback_is_reported():
    # k and v broadcast over the heads (stride 0 on a dimension of 4): TMA cannot describe them,
    # so the call runs the portable kernels, and kernel_family says so when given the tensors.
    q = torch.randn(2, 256, 4, 128, device="cuda", dtype=torch.float16)
    kv = torch.randn(2, 256, 1, 128, device="cuda", dtype=torch.float16).expand(2, 256, 4, 128)
    assert kernel_family(128) == "sm90:hdim128"
    assert kernel_family(128, q=q, k=q, v=q) == "sm90:hdim128"
    family, reason = kernel_family(128, q=q, k=kv, v=kv, explain=True)
    assert family == "sm80:hdim128" and "TMA" in reason
    family, reason = kernel_family(128, backward=True, q=q, k=q, v=q, dout=kv, explain=True)
    assert family == "sm80:hdim128" and "TMA" in reason
    with hopper(False):
        assert "switched off" in kernel_family(128, explain=True)[1]


def test_unverified_kernels_switch_round_trips():
    from flash_attn_rocm._ops import set_unverified_kernels

    previous = set_unverified_kernels(False)
    try:
        assert set_unverified_kernels(True) is False
        assert set_unverified_kernels(False) is True
    finally:
        set_unverified_kernels(previous)


@requires_hopper
def test_unverified_kernels_take_calls_only_when_asked():
    """The Hopper kernels not yet run on a GPU (the fp8 forward, the d256 backward, the extras
    variants) are off for users by default, with the reason; the tests turn them on (conftest)."""
    from flash_attn_rocm._ops import set_unverified_kernels

    previous = set_unverified_kernels(False)
    try:
        family, reason = kernel_family(256, backward=True, explain=True)
        assert family == "sm80:hdim256" and "not run on a GPU" in reason
        assert kernel_family(128, softcap=30.0) == "sm80:hdim128"
        assert kernel_family(128) == "sm90:hdim128"
        assert kernel_family(256, backward=False) == "sm90:hdim256"
    finally:
        set_unverified_kernels(previous)
