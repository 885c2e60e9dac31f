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
