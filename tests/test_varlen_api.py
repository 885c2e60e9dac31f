"""The varlen API without a GPU: argument validation of flash_attn_varlen_func, the varlen ops'
schemas, and their fake (meta) implementations, reached through the ops, the Python functions
(packed variants included) and autograd.

Written against the spec before the API landed: its names are looked up at call time
(conftest.api), so this module always collects. Validation must not read device memory (no
.item() on cu_seqlens), which the meta-tensor tests enforce: meta tensors have no values.
"""

from itertools import accumulate

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from conftest import DTYPES, api, assert_functional

import flash_attn_rocm  # registers torch.ops.flash_attn_rocm

Q_LENS, K_LENS = [3, 0, 5], [4, 2, 6]
NHEADS, HEAD_DIM = 4, 64


def tokens(total, nheads=NHEADS, head_dim=HEAD_DIM, dtype=torch.float16, device="cpu"):
    """Packed [total, nheads, head_dim] tokens."""
    return torch.zeros(total, nheads, head_dim, dtype=dtype, device=device)


def cu_seqlens(lengths, dtype=torch.int32, device="cpu"):
    return torch.tensor([0, *accumulate(lengths)], dtype=dtype, device=device)


TOTAL_Q, TOTAL_K = sum(Q_LENS), sum(K_LENS)


def qkv_tokens(**kwargs):
    """{"q": ..., "k": ..., "v": ...} packed as Q_LENS and K_LENS say; kwargs go to tokens()."""
    return {"q": tokens(TOTAL_Q, **kwargs), "k": tokens(TOTAL_K, **kwargs), "v": tokens(TOTAL_K, **kwargs)}


def call_with(**overrides):
    """flash_attn_varlen_func on valid CPU arguments (which on their own only fail the CUDA
    check), with some of them replaced."""
    kwargs = qkv_tokens() | dict(cu_seqlens_q=cu_seqlens(Q_LENS), cu_seqlens_k=cu_seqlens(K_LENS),
                                 max_seqlen_q=max(Q_LENS), max_seqlen_k=max(K_LENS))
    return api("flash_attn_varlen_func")(**(kwargs | overrides))


ARG_Q, ARG_K, ARG_V, ANY_QKV, ANY_CU_SEQLENS = r"\bq\b", r"\bk\b", r"\bv\b", r"\b[qkv]\b", r"\bcu_seqlens_[qk]\b"
BAD_TYPE = (TypeError, ValueError)

# (overrides, expected exception(s), regex the message must match)
INVALID_ARGUMENTS = {
    "q-list": ({"q": [[0.0]]}, TypeError, ARG_Q),
    "q-2d": ({"q": tokens(TOTAL_Q)[0]}, ValueError, ARG_Q),
    "q-4d-dense-layout": ({"q": tokens(TOTAL_Q)[None]}, ValueError, ARG_Q),
    "k-4d": ({"k": tokens(TOTAL_K)[None]}, ValueError, ARG_K),
    "v-2d": ({"v": tokens(TOTAL_K)[0]}, ValueError, ARG_V),
    "q-fp32": ({"q": tokens(TOTAL_Q, dtype=torch.float32)}, TypeError, ARG_Q),
    "kv-bf16-q-fp16": (qkv_tokens(dtype=torch.bfloat16) | {"q": tokens(TOTAL_Q)}, TypeError, ANY_QKV),
    "head-dim-above-the-largest": (qkv_tokens(head_dim=257), ValueError, r"(?i)head.?dim"),
    "v-head-dim-differs": ({"v": tokens(TOTAL_K, head_dim=32)}, ValueError, ANY_QKV),
    "kv-total-mismatch": ({"v": tokens(TOTAL_K + 1)}, ValueError, r"\b[kv]\b"),
    "nheads-not-divisible": ({"q": tokens(TOTAL_Q, nheads=6)}, ValueError, r"(?i)n_?heads"),
    "q-last-dim-strided": ({"q": tokens(TOTAL_Q, head_dim=2 * HEAD_DIM)[..., ::2]}, ValueError, "contiguous"),
    "cu_seqlens_q-int64": ({"cu_seqlens_q": cu_seqlens(Q_LENS, torch.int64)}, BAD_TYPE, r"\bcu_seqlens_q\b"),
    "cu_seqlens_k-float32": ({"cu_seqlens_k": cu_seqlens(K_LENS, torch.float32)}, BAD_TYPE, r"\bcu_seqlens_k\b"),
    "cu_seqlens_q-list": ({"cu_seqlens_q": [0, 3, 3, 8]}, TypeError, r"\bcu_seqlens_q\b"),
    "cu_seqlens_q-2d": ({"cu_seqlens_q": cu_seqlens(Q_LENS)[None]}, ValueError, r"\bcu_seqlens_q\b"),
    "cu_seqlens_k-0d": ({"cu_seqlens_k": torch.tensor(0, dtype=torch.int32)}, ValueError, r"\bcu_seqlens_k\b"),
    "cu_seqlens-empty": ({"cu_seqlens_q": torch.zeros(0, dtype=torch.int32),
                          "cu_seqlens_k": torch.zeros(0, dtype=torch.int32)}, ValueError, ANY_CU_SEQLENS),
    "cu_seqlens-batch-mismatch": ({"cu_seqlens_k": cu_seqlens(K_LENS + [1])}, ValueError, ANY_CU_SEQLENS),
    # 0 is valid: an all-padding batch has no token (unpad_input gives max_seqlen 0).
    "max_seqlen_q-negative": ({"max_seqlen_q": -3}, ValueError, r"\bmax_seqlen_q\b"),
    "max_seqlen_k-negative": ({"max_seqlen_k": -1}, ValueError, r"\bmax_seqlen_k\b"),
    "max_seqlen_q-float": ({"max_seqlen_q": 5.0}, BAD_TYPE, r"\bmax_seqlen_q\b"),
    "max_seqlen_k-str": ({"max_seqlen_k": "6"}, BAD_TYPE, r"\bmax_seqlen_k\b"),
    "softmax_scale-str": ({"softmax_scale": "0.125"}, TypeError, "softmax_scale"),
    "window_size-below-minus-1": ({"window_size": (-2, 0)}, ValueError, "window_size"),
    "window_size-not-a-pair": ({"window_size": (4,)}, TypeError, "window_size"),
    "dropout_p-one": ({"dropout_p": 1.0}, ValueError, "dropout_p"),
    "softcap-negative": ({"softcap": -1.0}, ValueError, "softcap"),
    "softcap-str": ({"softcap": "30"}, TypeError, "softcap"),
    "alibi_slopes-fp16": ({"alibi_slopes": torch.ones(NHEADS, dtype=torch.float16)}, TypeError, "alibi_slopes"),
    "alibi_slopes-wrong-heads": ({"alibi_slopes": torch.ones(NHEADS + 1)}, ValueError, "alibi_slopes"),
    "alibi_slopes-list": ({"alibi_slopes": [1.0] * NHEADS}, TypeError, "alibi_slopes"),
    "cpu-tensors": ({}, ValueError, "CUDA"),
    "cu_seqlens-not-on-q-device": (qkv_tokens(device="meta"), ValueError, rf"(?i){ANY_CU_SEQLENS}|device"),
}


@pytest.mark.parametrize("overrides, error, message", INVALID_ARGUMENTS.values(), ids=INVALID_ARGUMENTS.keys())
def test_rejects_invalid_arguments(overrides, error, message):
    with pytest.raises(error, match=message):
        call_with(**overrides)


# ---------------------------------------------------------------- paged K/V (block_table)

PAGE = 16


def pages(num_pages=5, page_size=PAGE, nheads=NHEADS, head_dim=HEAD_DIM, dtype=torch.float16, device="cpu"):
    """Paged K or V [num_pages, page_size, nheads_k, head_dim]."""
    return torch.zeros(num_pages, page_size, nheads, head_dim, dtype=dtype, device=device)


def paged(page_size=PAGE, width=2, dtype=torch.int32, **kwargs):
    """Overrides that make call_with's K/V paged: pages and a [batch, width] block table."""
    return {"k": pages(page_size=page_size, **kwargs), "v": pages(page_size=page_size, **kwargs),
            "block_table": torch.zeros(len(Q_LENS), width, dtype=dtype)}


ARG_BLOCK_TABLE = r"\bblock_table\b"
INVALID_PAGED_ARGUMENTS = {
    "block_table-int64": (paged(dtype=torch.int64), BAD_TYPE, ARG_BLOCK_TABLE),
    "block_table-list": (paged() | {"block_table": [[0, 1]] * len(Q_LENS)}, TypeError, ARG_BLOCK_TABLE),
    "block_table-1d": (paged() | {"block_table": torch.zeros(len(Q_LENS), dtype=torch.int32)}, ValueError,
                       ARG_BLOCK_TABLE),
    "block_table-batch-differs": (paged() | {"block_table": torch.zeros(len(Q_LENS) + 1, 2, dtype=torch.int32)},
                                  ValueError, ARG_BLOCK_TABLE),
    "block_table-no-pages": (paged(width=0), ValueError, ARG_BLOCK_TABLE),
    "block_table-last-dim-strided": (paged() | {"block_table": torch.zeros(len(Q_LENS), 4, dtype=torch.int32)[:, ::2]},
                                     ValueError, ARG_BLOCK_TABLE),
    "page-size-24": (paged(page_size=24), ValueError, r"(?i)page size"),
    "page-size-8": (paged(page_size=8), ValueError, r"(?i)page size"),
    "k-packed-with-block_table": (paged() | {"k": tokens(TOTAL_K)}, ValueError, ARG_K),
    "v-pages-differ": (paged() | {"v": pages(num_pages=6)}, ValueError, r"\b[kv]\b"),
    "k-no-pages": (paged(num_pages=0), ValueError, ARG_K),
    "pages-fp32": (paged() | {"k": pages(dtype=torch.float32), "v": pages(dtype=torch.float32)},
                   TypeError, r"\b[kv]\b"),
    "pages-nheads-not-divisor": (paged(nheads=3), ValueError, r"(?i)n_?heads"),
    "q-dense-with-block_table": (paged() | {"q": tokens(TOTAL_Q)[None]}, ValueError, ARG_Q),
}


@pytest.mark.parametrize("overrides, error, message", INVALID_PAGED_ARGUMENTS.values(),
                         ids=INVALID_PAGED_ARGUMENTS.keys())
def test_rejects_invalid_paged_arguments(overrides, error, message):
    with pytest.raises(error, match=message):
        call_with(**overrides)


@pytest.mark.parametrize("page_size", [16, 64, 256])
def test_valid_paged_arguments_pass_every_check_before_the_device(page_size):
    with pytest.raises(ValueError, match="CUDA"):
        call_with(**paged(page_size=page_size), causal=True, window_size=(7, 0))


def test_block_table_must_be_on_the_device_of_q():
    overrides = paged(device="meta") | {"q": tokens(TOTAL_Q, device="meta"),
                                        "cu_seqlens_q": cu_seqlens(Q_LENS, device="meta"),
                                        "cu_seqlens_k": cu_seqlens(K_LENS, device="meta")}
    with pytest.raises(ValueError, match=ARG_BLOCK_TABLE):
        call_with(**overrides)


def test_fake_impl_of_paged_varlen_fwd_on_meta():
    q, k, v = tokens(TOTAL_Q, device="meta"), pages(device="meta"), pages(device="meta")
    block_table = torch.zeros(len(Q_LENS), 2, dtype=torch.int32, device="meta")
    cu_q, cu_k = cu_seqlens(Q_LENS, device="meta"), cu_seqlens(K_LENS, device="meta")
    out, lse, _ = torch.ops.flash_attn_rocm.varlen_fwd(q, k, v, cu_q, cu_k, max(Q_LENS), max(K_LENS), 0.125, True,
                                                       block_table=block_table)
    assert_output_metadata(q, out, lse)


def test_kernel_family_of_paged_calls():
    """Paged K/V runs the portable forward; there is no paged backward."""
    block_table = torch.zeros(1, 1, dtype=torch.int32)
    family, reason = flash_attn_rocm.kernel_family(HEAD_DIM, block_table=block_table, explain=True)
    assert family.startswith("sm80:") and reason
    with pytest.raises(ValueError, match="block_table"):
        flash_attn_rocm.kernel_family(HEAD_DIM, backward=True, block_table=block_table)


def test_valid_optional_arguments_pass_every_check_before_the_device():
    with pytest.raises(ValueError, match="CUDA"):  # i.e. every check before the device passed
        call_with(dropout_p=0.0, softmax_scale=0.5, causal=True, window_size=(64, 0), softcap=0.0,
                  alibi_slopes=None, deterministic=True, return_attn_probs=True, block_table=None)


def test_strided_but_last_dim_contiguous_is_accepted():
    k, v = torch.zeros(TOTAL_K, 2, NHEADS, HEAD_DIM, dtype=torch.float16).unbind(1)
    with pytest.raises(ValueError, match="CUDA"):
        call_with(k=k, v=v)


# ---------------------------------------------------------------- op schemas

COMMON_ARGUMENTS = [("cu_seqlens_q", "Tensor"), ("cu_seqlens_k", "Tensor"), ("max_seqlen_q", "int"),
                    ("max_seqlen_k", "int"), ("softmax_scale", "float"), ("is_causal", "bool")]
# Both window sides default to -1, softcap to 0, alibi_slopes to None.
TRAILING_ARGUMENTS = [("window_size_left", "int"), ("window_size_right", "int"), ("softcap", "float"),
                    ("alibi_slopes", "Optional[Tensor]")]


def test_varlen_fwd_schema():
    schema = torch.ops.flash_attn_rocm.varlen_fwd.default._schema
    assert [(arg.name, str(arg.type)) for arg in schema.arguments] == [
        ("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), *COMMON_ARGUMENTS, *TRAILING_ARGUMENTS,
        ("dropout_p", "float"), ("block_table", "Optional[Tensor]")]
    assert [str(ret.type) for ret in schema.returns] == ["Tensor", "Tensor", "Tensor"]
    assert_functional(schema)


def test_varlen_bwd_schema():
    schema = torch.ops.flash_attn_rocm.varlen_bwd.default._schema
    assert [(arg.name, str(arg.type)) for arg in schema.arguments] == [
        ("dout", "Tensor"), ("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("out", "Tensor"),
        ("softmax_lse", "Tensor"), *COMMON_ARGUMENTS, ("deterministic", "bool"), *TRAILING_ARGUMENTS,
        ("dropout_p", "float"), ("rng_state", "Optional[Tensor]")]
    assert [(ret.name, str(ret.type)) for ret in schema.returns] == [("dq", "Tensor"), ("dk", "Tensor"),
                                                                      ("dv", "Tensor")]
    assert_functional(schema)


# ---------------------------------------------------------------- fake impls on meta tensors

# q lens, k lens, nheads, nheads_k, head_dim (the last one: this build's largest)
GQA_SHAPE = ([1, 0, 1, 0, 1, 1, 0, 1], [4, 2, 1, 0, 3, 1, 9, 1], 8, 2, 40)
SHAPES = [
    pytest.param(([3, 0, 5], [4, 2, 6], 4, 4, 64), id="mha-empty-sequence"),
    pytest.param(GQA_SHAPE, id="gqa-fewer-tokens-than-sequences"),
    pytest.param(([300], [5], 6, 1, flash_attn_rocm.compiled_head_dims()[-1]), id="mqa-one-sequence"),
]


def meta_varlen(q_lens, k_lens, nheads, nheads_k, head_dim, dtype):
    """q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k on the meta device."""
    q = tokens(sum(q_lens), nheads, head_dim, dtype, "meta")
    k, v = (tokens(sum(k_lens), nheads_k, head_dim, dtype, "meta") for _ in range(2))
    cu_q, cu_k = (cu_seqlens(lens, device="meta") for lens in (q_lens, k_lens))
    return q, k, v, cu_q, cu_k, max(q_lens), max(k_lens)


def assert_output_metadata(q, out, lse):
    """out like q [total_q, h, d]; lse [h, total_q] float32."""
    total_q, nheads, _ = q.shape
    assert (out.shape, out.dtype, out.device) == (q.shape, q.dtype, q.device)
    assert (lse.shape, lse.dtype, lse.device) == ((nheads, total_q), torch.float32, q.device)


def assert_grad_metadata(grads, inputs):
    for grad, like in zip(grads, inputs, strict=True):
        assert (grad.shape, grad.dtype, grad.device) == (like.shape, like.dtype, like.device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_impl_of_varlen_fwd_on_meta(shape, dtype):
    args = meta_varlen(*shape, dtype)
    out, lse, _ = torch.ops.flash_attn_rocm.varlen_fwd(*args, 0.125, True)
    assert_output_metadata(args[0], out, lse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_impl_of_varlen_bwd_on_meta(shape, dtype):
    q, k, v, *lengths = meta_varlen(*shape, dtype)
    out, lse, _ = torch.ops.flash_attn_rocm.varlen_fwd(q, k, v, *lengths, 0.125, True)
    grads = torch.ops.flash_attn_rocm.varlen_bwd(torch.empty_like(out), q, k, v, out, lse, *lengths, 0.125, True,
                                                 False)
    assert_grad_metadata(grads, (q, k, v))


def varlen_attention(q, k, v, *lengths):
    out, lse, s_dmask = api("flash_attn_varlen_func")(q, k, v, *lengths, causal=True, return_attn_probs=True)
    assert s_dmask.numel() == 0
    return out, lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_flash_attn_varlen_func_and_its_backward_on_meta(shape, dtype):
    q, k, v, *lengths = meta_varlen(*shape, dtype)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out, lse = varlen_attention(q, k, v, *lengths)
    assert_output_metadata(q, out, lse)
    assert_grad_metadata(torch.autograd.grad(out, (q, k, v), torch.empty_like(out)), (q, k, v))


def test_make_fx_of_varlen_forward_and_backward_on_meta():
    """The joint forward-backward graph holds both varlen ops."""
    q, k, v, *lengths = meta_varlen(*GQA_SHAPE, torch.float16)

    def attention_grads(q, k, v, dout):
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        out, _ = varlen_attention(q, k, v, *lengths)
        return torch.autograd.grad(out, (q, k, v), dout)

    graph_module = make_fx(attention_grads)(q, k, v, torch.empty_like(q))
    targets = {node.target for node in graph_module.graph.nodes if node.op == "call_function"}
    assert {torch.ops.flash_attn_rocm.varlen_fwd.default, torch.ops.flash_attn_rocm.varlen_bwd.default} <= targets


def test_torch_compile_fullgraph_on_meta():
    """Dynamo traces flash_attn_varlen_func's checks without graph breaks (a check that reads
    cu_seqlens would break the graph, and sync the GPU)."""
    from torch._dynamo.utils import counters

    args = meta_varlen(*GQA_SHAPE, torch.float16)
    torch._dynamo.reset()
    counters.clear()
    out, lse = torch.compile(varlen_attention, fullgraph=True)(*args)
    assert not counters["graph_break"]
    assert_output_metadata(args[0], out, lse)


# ---------------------------------------------------------------- packed variants on meta
# Each builds (packed inputs, a call returning (out, lse, S_dmask), expected out shape, lse shape).

BATCH, SEQLEN_Q, SEQLEN_K, NHEADS_K = 2, 5, 7, 2


def meta_tensor(*shape):
    return torch.empty(*shape, dtype=torch.float16, device="meta")


def qkvpacked():
    qkv = meta_tensor(BATCH, SEQLEN_Q, 3, NHEADS, HEAD_DIM)
    return ((qkv,), lambda qkv: api("flash_attn_qkvpacked_func")(qkv, causal=True, return_attn_probs=True),
            (BATCH, SEQLEN_Q, NHEADS, HEAD_DIM), (BATCH, NHEADS, SEQLEN_Q))


def kvpacked():
    q, kv = meta_tensor(BATCH, SEQLEN_Q, NHEADS, HEAD_DIM), meta_tensor(BATCH, SEQLEN_K, 2, NHEADS_K, HEAD_DIM)
    return ((q, kv), lambda q, kv: api("flash_attn_kvpacked_func")(q, kv, causal=True, return_attn_probs=True),
            q.shape, (BATCH, NHEADS, SEQLEN_Q))


def varlen_qkvpacked():
    qkv, cu = meta_tensor(TOTAL_Q, 3, NHEADS, HEAD_DIM), cu_seqlens(Q_LENS, device="meta")
    call = api("flash_attn_varlen_qkvpacked_func")
    return ((qkv,), lambda qkv: call(qkv, cu, max(Q_LENS), causal=True, return_attn_probs=True),
            (TOTAL_Q, NHEADS, HEAD_DIM), (NHEADS, TOTAL_Q))


def varlen_kvpacked():
    q, kv = meta_tensor(TOTAL_Q, NHEADS, HEAD_DIM), meta_tensor(TOTAL_K, 2, NHEADS_K, HEAD_DIM)
    cu_q, cu_k = (cu_seqlens(lens, device="meta") for lens in (Q_LENS, K_LENS))
    call = api("flash_attn_varlen_kvpacked_func")
    return ((q, kv), lambda q, kv: call(q, kv, cu_q, cu_k, max(Q_LENS), max(K_LENS), causal=True,
                                        return_attn_probs=True),
            q.shape, (NHEADS, TOTAL_Q))


@pytest.mark.parametrize("variant", [qkvpacked, kvpacked, varlen_qkvpacked, varlen_kvpacked],
                         ids=lambda f: f.__name__)
def test_packed_variant_and_its_backward_on_meta(variant):
    inputs, call, out_shape, lse_shape = variant()
    inputs = tuple(t.requires_grad_() for t in inputs)
    out, lse, s_dmask = call(*inputs)
    assert (out.shape, out.dtype) == (out_shape, torch.float16)
    assert (lse.shape, lse.dtype) == (lse_shape, torch.float32)
    assert s_dmask.numel() == 0
    assert_grad_metadata(torch.autograd.grad(out, inputs, torch.empty_like(out)), inputs)
