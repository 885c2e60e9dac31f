"""flash_attn_rocm.bert_padding on CPU tensors: the packed layout that unpad_input builds (tokens,
indices, cu_seqlens, max_seqlen, seqused), the pad_input round trip, gradients, unused_mask."""

import pytest
import torch

from flash_attn_rocm.bert_padding import index_first_axis, index_put_first_axis, pad_input, unpad_input

# A partly padded row, an empty row, a full row, and a row with a hole in the middle.
MASK = torch.tensor([[1, 1, 0, 0],
                     [0, 0, 0, 0],
                     [1, 1, 1, 1],
                     [1, 0, 1, 0]], dtype=torch.bool)
MASK_INDICES = [0, 1, 8, 9, 10, 11, 12, 14]  # positions of the kept tokens in the flattened mask
MASK_CU_SEQLENS = [0, 2, 2, 6, 8]
MASK_SEQLENS = [2, 0, 4, 2]

TRAILING_SHAPES = [pytest.param((), id="tokens"), pytest.param((5,), id="features"),
                   pytest.param((3, 2), id="heads-dims")]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def hidden_states(mask, trailing_shape=(3, 2), dtype=torch.float32):
    return torch.randn(*mask.shape, *trailing_shape).to(dtype)


def broadcast_mask(mask, like):
    """[b, s] mask -> like's shape and dtype."""
    return mask.reshape(*mask.shape, *(1,) * (like.dim() - 2)).expand_as(like).to(like.dtype)


def test_layout_of_hand_made_mask():
    x = hidden_states(MASK)
    unpadded, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, MASK)
    assert indices.dtype == torch.int64 and indices.tolist() == MASK_INDICES
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.tolist() == MASK_CU_SEQLENS
    assert type(max_seqlen) is int and max_seqlen == 4
    assert seqused.dtype == torch.int32 and seqused.tolist() == MASK_SEQLENS
    assert torch.equal(unpadded, x.flatten(0, 1)[MASK_INDICES])


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int32, torch.int64], ids=str)
def test_integer_masks_give_the_same_layout(mask_dtype):
    x = hidden_states(MASK)
    for got, want in zip(unpad_input(x, MASK.to(mask_dtype)), unpad_input(x, MASK)):
        assert got == want if isinstance(want, int) else torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("trailing_shape", TRAILING_SHAPES)
def test_pad_of_unpad_is_the_masked_input(trailing_shape, dtype):
    mask = torch.rand(6, 9) < 0.6
    x = hidden_states(mask, trailing_shape, dtype)
    unpadded, indices, *_ = unpad_input(x, mask)
    assert torch.equal(unpadded, x[mask]), "tokens must be packed in row-major order of the mask"
    assert torch.equal(pad_input(unpadded, indices, *mask.shape), x * broadcast_mask(mask, x))


def test_all_padding_gives_an_empty_batch():
    mask = torch.zeros(3, 5, dtype=torch.bool)
    x = hidden_states(mask)
    unpadded, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, mask)
    assert unpadded.shape == (0, *x.shape[2:]) and indices.numel() == 0
    assert cu_seqlens.tolist() == [0, 0, 0, 0] and max_seqlen == 0 and seqused.tolist() == [0, 0, 0]
    assert torch.equal(pad_input(unpadded, indices, 3, 5), torch.zeros_like(x))


def test_gradients_flow_through_unpad_and_pad():
    """d/dx of sum(w * pad(unpad(x))) is w at kept tokens and 0 at padding."""
    x = hidden_states(MASK).requires_grad_()
    weights = torch.randn_like(x)
    unpadded, indices, *_ = unpad_input(x, MASK)
    (weights * pad_input(unpadded, indices, *MASK.shape)).sum().backward()
    assert torch.equal(x.grad, weights * broadcast_mask(MASK, x))


def test_unit_gradient_is_the_mask():
    x = hidden_states(MASK).requires_grad_()
    unpadded, indices, *_ = unpad_input(x, MASK)
    pad_input(unpadded, indices, *MASK.shape).sum().backward()
    assert torch.equal(x.grad, broadcast_mask(MASK, x))


def test_index_helpers_pass_gradcheck():
    indices = torch.tensor([4, 0, 2])
    rows = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    values = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: index_first_axis(t, indices), (rows,))
    assert torch.autograd.gradcheck(lambda t: index_put_first_axis(t, indices, 5), (values,))


def test_unused_tokens_are_packed_but_not_counted_as_used():
    attention_mask = torch.tensor([[1, 1, 0, 0],
                                   [1, 0, 0, 0]], dtype=torch.bool)
    unused_mask = torch.tensor([[0, 0, 1, 0],
                                [0, 1, 1, 0]], dtype=torch.bool)
    x = hidden_states(attention_mask)
    unpadded, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, attention_mask, unused_mask)
    assert indices.tolist() == [0, 1, 2, 4, 5, 6]
    assert cu_seqlens.tolist() == [0, 3, 6] and max_seqlen == 3
    assert seqused.tolist() == [2, 1]
    assert torch.equal(unpadded, x[attention_mask | unused_mask])


def test_unused_mask_overlapping_the_attention_mask_counts_once():
    unpadded, indices, cu_seqlens, max_seqlen, seqused = unpad_input(hidden_states(MASK), MASK, unused_mask=MASK)
    assert indices.tolist() == MASK_INDICES and cu_seqlens.tolist() == MASK_CU_SEQLENS
    assert seqused.tolist() == MASK_SEQLENS


def test_mask_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="attention_mask"):
        unpad_input(hidden_states(MASK), MASK[:, :-1])
