"""flash_attn_varlen_func with block_table: varlen queries against a paged KV cache (chunked
prefill), flash-attn 2.8's call, on a CUDA GPU.

k and v are pages [num_pages, page_size, h_k, d]; sequence i's cu_seqlens_k[i + 1] -
cu_seqlens_k[i] keys are its rows 0, 1, ..., row r in page block_table[i, r // page_size]. The
tests put the pages in shuffled order with spare pages of noise between them (a kernel that
reads a wrong page or past a sequence's keys picks up noise), then hold every sequence to
conftest's 2x-eager criterion against eager attention over its own keys gathered from the pages,
and to bitwise equality with flash_attn_varlen_func over the same keys packed contiguously when
both run the portable kernels (paged calls always do: dispatch.cu says why Hopper does not).

Run them with and without the Hopper kernels: FLASH_ATTN_ROCM_HOPPER=0 sends the contiguous
comparison calls to the portable kernels too.
"""

import pytest
import torch

from conftest import (DTYPES, assert_within_eager_error, attention_ref, cu_seqlens, hopper, poison_allocator_cache,
                      requires_gpu, requires_hopper, skip_unless_served)

PAGE_SIZES = [pytest.param(16, id="page16"), pytest.param(64, id="page64"), pytest.param(256, id="page256")]
# (query lengths, key lengths): odd lengths, an empty sequence, queries without keys, keys without
# queries, a sequence longer than any page, chunked prefill's short chunks against long caches.
LENGTHS = {
    "odd": ([37, 0, 130, 1, 5], [50, 3, 300, 0, 77]),
    "chunks": ([16, 33, 1], [529, 33, 1000]),
    "one": ([1], [17]),
}


def paged_kv(k_lens, heads_k, head_dim, page_size, dtype, device="cuda", spare=3):
    """Pages holding sequences of k_lens keys, shuffled, with `spare` pages of noise among them.
    Returns k_pages, v_pages [num_pages, page_size, h_k, d], block_table int32 [batch, width] and
    each sequence's keys and values gathered from the pages (dense [len, h_k, d] lists)."""
    width = max(1, max(-(-n // page_size) for n in k_lens))
    num_pages = len(k_lens) * width + spare
    k_pages = torch.randn(num_pages, page_size, heads_k, head_dim, dtype=dtype, device=device)
    v_pages = torch.randn_like(k_pages)
    order = torch.randperm(num_pages, device=device)[:len(k_lens) * width]
    block_table = order.to(torch.int32).view(len(k_lens), width).contiguous()

    def gather(pages):
        return [pages[block_table[i].long()].flatten(0, 1)[:n] for i, n in enumerate(k_lens)]

    return k_pages, v_pages, block_table, gather(k_pages), gather(v_pages)


def make_case(q_lens, k_lens, page_size, *, heads=6, heads_k=2, head_dim=128, dtype=torch.float16):
    skip_unless_served(head_dim)
    q = torch.randn(sum(q_lens), heads, head_dim, dtype=dtype, device="cuda")
    k_pages, v_pages, block_table, ks, vs = paged_kv(k_lens, heads_k, head_dim, page_size, dtype)
    return q, k_pages, v_pages, block_table, ks, vs


def varlen_args(q_lens, k_lens):
    return cu_seqlens(q_lens), cu_seqlens(k_lens), max(q_lens), max(k_lens)


def check_against_reference(q, out, lse, q_lens, ks, vs, **kwargs):
    """Each sequence against eager attention over its own keys (2x-eager), lse to 1e-3; rows
    without a visible key output 0 with lse -inf."""
    starts = cu_seqlens(q_lens).tolist()
    for i, (k_i, v_i) in enumerate(zip(ks, vs)):
        rows = slice(starts[i], starts[i + 1])
        if rows.stop == rows.start:
            continue
        if len(k_i) == 0:
            assert (out[rows] == 0).all() and lse[:, rows].isneginf().all(), f"sequence {i} has no key"
            continue
        slopes = kwargs.get("alibi_slopes")
        options = dict(kwargs, alibi_slopes=slopes if slopes is None or slopes.dim() == 1 else slopes[i])
        args = (q[rows][None], k_i[None], v_i[None])
        ref, lse_ref = attention_ref(*args, **options)
        eager, _ = attention_ref(*args, upcast=False, **options)
        assert_within_eager_error(out[rows][None], ref, eager, f"out of sequence {i}")
        hidden = lse_ref[0].isneginf()
        lse_i = lse[:, rows]
        assert (lse_i[hidden] == float("-inf")).all() and (out[rows].transpose(0, 1)[hidden] == 0).all()
        torch.testing.assert_close(lse_i[~hidden], lse_ref[0][~hidden], atol=1e-3, rtol=1e-3)


def run_paged(q, k_pages, v_pages, block_table, q_lens, k_lens, **kwargs):
    from flash_attn_rocm import flash_attn_varlen_func

    poison_allocator_cache((q.shape, q.dtype), ((q.shape[1], q.shape[0]), torch.float32))
    out, lse, _ = flash_attn_varlen_func(q, k_pages, v_pages, *varlen_args(q_lens, k_lens), return_attn_probs=True,
                                         block_table=block_table, **kwargs)
    return out, lse


def run_contiguous(q, ks, vs, q_lens, k_lens, **kwargs):
    """The same attention with the keys packed contiguously, on the portable kernels."""
    from flash_attn_rocm import flash_attn_varlen_func

    with hopper(False):
        out, lse, _ = flash_attn_varlen_func(q, torch.cat(ks), torch.cat(vs), *varlen_args(q_lens, k_lens),
                                             return_attn_probs=True, **kwargs)
    return out, lse


OPTIONS = {
    "full": {},
    "causal": {"causal": True},
    "window": {"window_size": (45, 7)},
    "causal-window": {"causal": True, "window_size": (100, -1)},
}


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_paged_varlen_matches_reference(page_size, lengths, options, dtype):
    q_lens, k_lens = lengths
    q, k_pages, v_pages, block_table, ks, vs = make_case(q_lens, k_lens, page_size, dtype=dtype)
    out, lse = run_paged(q, k_pages, v_pages, block_table, q_lens, k_lens, **options)
    check_against_reference(q, out, lse, q_lens, ks, vs, **options)
    out_contiguous, lse_contiguous = run_contiguous(q, ks, vs, q_lens, k_lens, **options)
    assert torch.equal(out, out_contiguous) and torch.equal(lse, lse_contiguous), \
        "paged and contiguous keys must give the same bits on the portable kernels"


@requires_gpu
@pytest.mark.parametrize("head_dim", [64, 96, 256])
@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_paged_varlen_head_dims(page_size, head_dim):
    """Other key-block widths (128 keys at d64, 64 above): pages smaller and larger than a block."""
    q_lens, k_lens = LENGTHS["odd"]
    q, k_pages, v_pages, block_table, ks, vs = make_case(q_lens, k_lens, page_size, heads=4, heads_k=4,
                                                         head_dim=head_dim)
    out, lse = run_paged(q, k_pages, v_pages, block_table, q_lens, k_lens, causal=True)
    check_against_reference(q, out, lse, q_lens, ks, vs, causal=True)


@requires_gpu
@pytest.mark.parametrize("page_size", [16, 256])
def test_paged_varlen_extras(page_size):
    """softcap, ALiBi ([b, h]) and dropout (the same Philox stream as the contiguous call: same
    bits, and S_dmask reads the keys back from the pages)."""
    q_lens, k_lens = LENGTHS["odd"]
    q, k_pages, v_pages, block_table, ks, vs = make_case(q_lens, k_lens, page_size)
    slopes = torch.rand(len(q_lens), q.shape[1], device="cuda") * 0.3
    options = dict(causal=True, softcap=20.0, alibi_slopes=slopes)
    out, lse = run_paged(q, k_pages, v_pages, block_table, q_lens, k_lens, **options)
    check_against_reference(q, out, lse, q_lens, ks, vs, **options)

    from flash_attn_rocm import flash_attn_varlen_func

    torch.manual_seed(7)
    paged = flash_attn_varlen_func(q, k_pages, v_pages, *varlen_args(q_lens, k_lens), dropout_p=0.2,
                                   return_attn_probs=True, block_table=block_table, **options)
    torch.manual_seed(7)
    with hopper(False):
        contiguous = flash_attn_varlen_func(q, torch.cat(ks), torch.cat(vs), *varlen_args(q_lens, k_lens),
                                            dropout_p=0.2, return_attn_probs=True, **options)
    for name, a, b in zip(("out", "lse", "S_dmask"), paged, contiguous):
        assert torch.equal(a, b), name


@requires_gpu
def test_paged_varlen_forward_with_grad_inputs_then_backward_raises():
    """As flash-attn 2.8's tests use it: q requires grad, the forward runs; the backward has no paged
    variant (flash-attn's has none either) and says so."""
    from flash_attn_rocm import flash_attn_varlen_func

    q_lens, k_lens = LENGTHS["chunks"]
    q, k_pages, v_pages, block_table, ks, vs = make_case(q_lens, k_lens, 64)
    q.requires_grad_()
    out, lse, _ = flash_attn_varlen_func(q, k_pages, v_pages, *varlen_args(q_lens, k_lens), causal=True,
                                         return_attn_probs=True, block_table=block_table)
    check_against_reference(q.detach(), out.detach(), lse, q_lens, ks, vs, causal=True)
    with pytest.raises(NotImplementedError, match="block_table"):
        out.sum().backward()


@requires_gpu
def test_paged_varlen_clamps_bad_page_numbers():
    """Page numbers outside the pages (the caller's contract) read some page, never outside."""
    q_lens, k_lens = [3, 4], [40, 40]
    q, k_pages, v_pages, block_table, ks, vs = make_case(q_lens, k_lens, 16)
    block_table[0, 0] = 1 << 30
    block_table[1, 1] = -5
    out, lse = run_paged(q, k_pages, v_pages, block_table, q_lens, k_lens)
    torch.cuda.synchronize()
    assert out.isfinite().all() and lse.isfinite().all()


@requires_hopper
def test_paged_varlen_runs_the_portable_kernels_on_hopper():
    import flash_attn_rocm

    q_lens, k_lens = LENGTHS["chunks"]
    q, k_pages, v_pages, block_table, _, _ = make_case(q_lens, k_lens, 256)
    family, reason = flash_attn_rocm.kernel_family(128, q=q, k=k_pages, v=v_pages, block_table=block_table,
                                                   explain=True)
    assert family == "sm80:hdim128" and "paged" in reason
    assert flash_attn_rocm.kernel_family(128, q=q, k=q, v=q) == "sm90:hdim128"
