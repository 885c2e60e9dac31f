"""The PyTorch Philox that S_dmask and the dropout tests rely on, without a GPU: Random123's
known-answer vectors, the keep rate, and the layout of the mask (csrc/kernels/dropout.h)."""

import pytest
import torch

from flash_attn_rocm._dropout import keep_mask, philox4x32_10

# Philox4x32-10 known-answer tests from Random123 (counter, key, output).
KNOWN_ANSWERS = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    words = philox4x32_10(*(torch.tensor([c]) for c in counter), *key)
    assert [int(w) for w in words] == expected


@pytest.mark.parametrize("dropout_p", [0.1, 0.3, 0.9])
def test_keep_rate_of_the_mask(dropout_p):
    mask = keep_mask(torch.tensor([1234, 8]), dropout_p, 2, 4, 500, 1000)
    assert abs(mask.float().mean().item() - (1 - dropout_p)) < 0.01 * (1 - dropout_p)


def test_mask_depends_on_seed_offset_batch_and_head():
    base = keep_mask(torch.tensor([1, 0]), 0.5, 2, 2, 64, 64)
    assert not torch.equal(base[0, 0], base[0, 1]) and not torch.equal(base[0, 0], base[1, 0])
    assert not torch.equal(base, keep_mask(torch.tensor([2, 0]), 0.5, 2, 2, 64, 64))
    assert not torch.equal(base, keep_mask(torch.tensor([1, 4]), 0.5, 2, 2, 64, 64))


def test_mask_of_a_prefix_is_the_prefix_of_the_mask():
    # The kernels draw by position only: a longer sequence must not change earlier entries, and a
    # single batch element (a varlen sequence) must match its slice of the whole batch.
    whole = keep_mask(torch.tensor([7, 12]), 0.4, 3, 2, 100, 130)
    assert torch.equal(keep_mask(torch.tensor([7, 12]), 0.4, 3, 2, 37, 61), whole[:, :, :37, :61])
    assert torch.equal(keep_mask(torch.tensor([7, 12]), 0.4, 3, 2, 100, 130, batch_index=2), whole[2:])


# ---------------------------------------------------------------- the kernels' own mask, bit by bit
# With k = 0 every score is 0, so a row's probabilities are 1 / sk; with v (or dout) the identity,
# each output element is one probability: out[b, i, h, j] = keep[b, h, i, j] / ((1 - p) sk) and
# dv[b, j, h, i] = out's probability times keep for key j, query i. So the forward's and the
# backward's masks read off exactly, and must equal the reference's bit for bit, on the portable
# and on the Hopper paths alike (the Hopper switch changes nothing for a dropout call today, which
# the portable kernels serve; the test holds whichever kernel serves it).


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("hopper_kernels", [True, False], ids=["hopper-on", "hopper-off"])
@pytest.mark.parametrize("head_dim", [128, 256])
def test_kernel_masks_are_the_reference_mask_bit_for_bit(head_dim, hopper_kernels):
    from conftest import hopper

    from flash_attn_rocm import flash_attn_func
    from flash_attn_rocm._ops import ops

    if head_dim not in __import__("flash_attn_rocm").compiled_head_dims():
        pytest.skip(f"head dim {head_dim} not compiled")
    batch, nheads, seqlen, dropout_p = 2, 3, head_dim, 0.3
    q = torch.randn(batch, seqlen, nheads, head_dim, device="cuda", dtype=torch.float16)
    k = torch.zeros_like(q)
    eye = torch.eye(head_dim, device="cuda", dtype=torch.float16)
    v = eye.view(1, seqlen, 1, head_dim).expand(batch, seqlen, nheads, head_dim).contiguous()
    with hopper(hopper_kernels):
        state = torch.cuda.get_rng_state()
        _, _, rng_state = ops.fwd(q, k, v, head_dim ** -0.5, False, -1, -1, 0.0, None, dropout_p)
        torch.cuda.set_rng_state(state)
        q_, k_, v_ = (t.detach().requires_grad_() for t in (q, k, v))
        out = flash_attn_func(q_, k_, v_, dropout_p)
        (dv,) = torch.autograd.grad(out, (v_,), v)  # dout = the identity too
    mask = keep_mask(rng_state, dropout_p, batch, nheads, seqlen, seqlen)  # [b, h, i, j]
    forward_mask = out.permute(0, 2, 1, 3) != 0                            # out[b, i, h, j]
    backward_mask = dv.permute(0, 2, 3, 1) != 0                            # dv[b, j, h, i] -> [b, h, i, j]
    assert 0.6 < mask.float().mean().item() < 0.8
    assert torch.equal(forward_mask, mask), "forward mask"
    assert torch.equal(backward_mask, mask), "backward mask"
