"""The Python API without a GPU: argument validation, the op schema, and the fake
(meta) implementation that torch.compile and export trace through.

flash_attn_rocm is imported unguarded on purpose: if the extension did not build,
this module must error in CI, not skip.
"""

import pytest
import torch
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from conftest import DTYPES, assert_functional, make_qkv

import flash_attn_rocm  # registers torch.ops.flash_attn_rocm
from flash_attn_rocm import flash_attn_func

BATCH, SEQLEN, NHEADS, HEAD_DIM = 2, 8, 4, 64


def tensor(batch=BATCH, seqlen=SEQLEN, nheads=NHEADS, head_dim=HEAD_DIM, dtype=torch.float16,
           device="cpu"):
    return torch.zeros(batch, seqlen, nheads, head_dim, dtype=dtype, device=device)


def strided_last_dim():
    """Every other channel of wider rows: stride(-1) == 2."""
    return tensor(head_dim=2 * HEAD_DIM)[..., ::2]


def call_with(**overrides):
    """flash_attn_func on valid CPU q, k, v (which on their own only fail the CUDA check),
    with some arguments replaced."""
    kwargs = dict(q=tensor(), k=tensor(), v=tensor()) | overrides
    return flash_attn_func(**kwargs)


ARG_Q, ARG_K, ARG_V, ANY_QKV = r"\bq\b", r"\bk\b", r"\bv\b", r"\b[qkv]\b"
HEAD_DIM_MSG = r"(?i)head.?dim"

# (overrides, expected exception, regex the message must match), in validation order.
INVALID_ARGUMENTS = {
    "q-list": ({"q": [[0.0]]}, TypeError, ARG_Q),
    "k-none": ({"k": None}, TypeError, ARG_K),
    "v-float": ({"v": 1.0}, TypeError, ARG_V),
    "softmax_scale-str": ({"softmax_scale": "0.125"}, TypeError, "softmax_scale"),
    "softmax_scale-negative": ({"softmax_scale": -0.125}, ValueError, "softmax_scale"),
    "q-3d": ({"q": tensor()[0]}, ValueError, ARG_Q),
    "k-5d": ({"k": tensor()[None]}, ValueError, ARG_K),
    "v-3d": ({"v": tensor()[0]}, ValueError, ARG_V),
    "q-fp32": ({"q": tensor(dtype=torch.float32)}, TypeError, ARG_Q),
    "k-int32": ({"k": tensor(dtype=torch.int32)}, TypeError, ARG_K),
    "v-fp64": ({"v": tensor(dtype=torch.float64)}, TypeError, ARG_V),
    "all-fp32": ({name: tensor(dtype=torch.float32) for name in "qkv"}, TypeError, ANY_QKV),
    "mixed-fp16-bf16": ({"k": tensor(dtype=torch.bfloat16), "v": tensor(dtype=torch.bfloat16)},
                        TypeError, ANY_QKV),
    "head-dim-over-256": ({name: tensor(head_dim=264) for name in "qkv"}, ValueError, HEAD_DIM_MSG),
    "head-dim-zero": ({name: tensor(head_dim=0) for name in "qkv"}, ValueError, HEAD_DIM_MSG),
    "head-dim-just-over-256": ({name: tensor(head_dim=257) for name in "qkv"}, ValueError, HEAD_DIM_MSG),
    "kv-head-dim-differs-from-q": ({"k": tensor(head_dim=128), "v": tensor(head_dim=128)}, ValueError,
                                   ANY_QKV),
    "v-head-dim-differs": ({"v": tensor(head_dim=32)}, ValueError, ANY_QKV),
    "batch-mismatch": ({"k": tensor(batch=1), "v": tensor(batch=1)}, ValueError, ANY_QKV),
    "kv-seqlen-mismatch": ({"v": tensor(seqlen=SEQLEN + 1)}, ValueError, r"\b[kv]\b"),
    "kv-nheads-mismatch": ({"v": tensor(nheads=NHEADS // 2)}, ValueError, r"\b[kv]\b"),
    "nheads-not-divisible": ({"q": tensor(nheads=6)}, ValueError, r"(?i)n_?heads"),
    "nheads-k-above-q": ({"q": tensor(nheads=2)}, ValueError, r"(?i)n_?heads"),
    "q-last-dim-strided": ({"q": strided_last_dim()}, ValueError, "contiguous"),
    "v-last-dim-strided": ({"v": strided_last_dim()}, ValueError, "contiguous"),
    "dropout_p-one": ({"dropout_p": 1.0}, ValueError, "dropout_p"),
    "dropout_p-negative": ({"dropout_p": -0.1}, ValueError, "dropout_p"),
    "dropout_p-str": ({"dropout_p": "0.1"}, TypeError, "dropout_p"),
    "softcap-negative": ({"softcap": -1.0}, ValueError, "softcap"),
    "softcap-str": ({"softcap": "30"}, TypeError, "softcap"),
    "alibi_slopes-fp16": ({"alibi_slopes": torch.ones(NHEADS, dtype=torch.float16)}, TypeError, "alibi_slopes"),
    "alibi_slopes-wrong-heads": ({"alibi_slopes": torch.ones(NHEADS + 1)}, ValueError, "alibi_slopes"),
    "alibi_slopes-list": ({"alibi_slopes": [1.0] * NHEADS}, TypeError, "alibi_slopes"),
    "cpu-tensors": ({}, ValueError, "CUDA"),
    "meta-and-cpu": ({"q": tensor(device="meta")}, ValueError, r"(?i)cuda|device"),
}


@pytest.mark.parametrize("overrides, error, message", INVALID_ARGUMENTS.values(),
                         ids=INVALID_ARGUMENTS.keys())
def test_rejects_invalid_arguments(overrides, error, message):
    with pytest.raises(error, match=message):
        call_with(**overrides)


@pytest.mark.parametrize("window_size, error", [((-2, 0), ValueError), ((4,), TypeError), ("16", TypeError),
                                                ((1.5, 0), TypeError)])
def test_rejects_invalid_window_size(window_size, error):
    with pytest.raises(error, match="window_size"):
        call_with(window_size=window_size)


def test_default_valued_arguments_are_accepted():
    """Passing the defaults explicitly must not trip the not-implemented checks."""
    with pytest.raises(ValueError, match="CUDA"):
        call_with(dropout_p=0.0, softmax_scale=0.5, causal=True, window_size=(-1, -1), softcap=0.0,
                  alibi_slopes=None, deterministic=True, return_attn_probs=True)


def test_strided_but_last_dim_contiguous_is_accepted():
    q, k, v = torch.zeros(BATCH, SEQLEN, 3, NHEADS, HEAD_DIM, dtype=torch.float16).unbind(2)
    with pytest.raises(ValueError, match="CUDA"):  # i.e. every check before the device passed
        flash_attn_func(q, k, v)


# ---------------------------------------------------------------- op schema and fake impl


def test_fwd_schema():
    schema = torch.ops.flash_attn_rocm.fwd.default._schema
    assert [(arg.name, str(arg.type)) for arg in schema.arguments] == [
        ("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("softmax_scale", "float"), ("is_causal", "bool"),
        ("window_size_left", "int"), ("window_size_right", "int"), ("softcap", "float"), ("alibi_slopes", "Optional[Tensor]"),
        ("dropout_p", "float"),
    ]
    assert [str(ret.type) for ret in schema.returns] == ["Tensor", "Tensor", "Tensor"]
    assert_functional(schema)


def test_bwd_schema():
    schema = torch.ops.flash_attn_rocm.bwd.default._schema
    assert [(arg.name, str(arg.type)) for arg in schema.arguments] == [
        ("dout", "Tensor"), ("q", "Tensor"), ("k", "Tensor"), ("v", "Tensor"), ("out", "Tensor"),
        ("softmax_lse", "Tensor"), ("softmax_scale", "float"), ("is_causal", "bool"), ("deterministic", "bool"),
        ("window_size_left", "int"), ("window_size_right", "int"), ("softcap", "float"), ("alibi_slopes", "Optional[Tensor]"),
        ("dropout_p", "float"), ("rng_state", "Optional[Tensor]"),
    ]
    assert [(ret.name, str(ret.type)) for ret in schema.returns] == [("dq", "Tensor"), ("dk", "Tensor"),
                                                                      ("dv", "Tensor")]
    assert_functional(schema)


def lse_like(q):
    batch, seqlen_q, nheads, _ = q.shape
    return torch.zeros(batch, nheads, seqlen_q, device=q.device)


# The raw ops on well-formed arguments (the out of q's shape and dtype, and dout, are stand-ins).
OP_CALLS = {
    "fwd": lambda q, k, v: torch.ops.flash_attn_rocm.fwd(q, k, v, 0.125, True),
    "bwd": lambda q, k, v: torch.ops.flash_attn_rocm.bwd(torch.ones_like(q), q, k, v, torch.ones_like(q),
                                                         lse_like(q), 0.125, True, False),
}


@pytest.mark.parametrize("call_op", OP_CALLS.values(), ids=OP_CALLS.keys())
def test_ops_on_cpu_tensors_raise(call_op):
    """The ops have CUDA kernels only: CPU tensors must get an exception, not a crash."""
    with pytest.raises(RuntimeError):
        call_op(*make_qkv(device="cpu"))


GQA_SHAPE = (1, 5, 300, 8, 2, 40)
SHAPES = [  # batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim (mqa: this build's largest)
    pytest.param((2, 8, 8, 4, 4, 64), id="mha"),
    pytest.param(GQA_SHAPE, id="gqa-sq<sk"),
    pytest.param((3, 300, 5, 6, 1, flash_attn_rocm.compiled_head_dims()[-1]), id="mqa-sq>sk"),
    pytest.param((1, 1, 1, 1, 1, 8), id="minimal"),
]


def meta_qkv(batch, seqlen_q, seqlen_k, nheads, nheads_k, head_dim, dtype):
    return make_qkv(batch=batch, seqlen_q=seqlen_q, seqlen_k=seqlen_k, nheads=nheads, nheads_k=nheads_k,
                    head_dim=head_dim, dtype=dtype, device="meta")


def assert_output_metadata(q, out, lse):
    batch, seqlen_q, nheads, _ = q.shape
    assert (out.shape, out.dtype, out.device) == (q.shape, q.dtype, q.device)
    assert (lse.shape, lse.dtype, lse.device) == ((batch, nheads, seqlen_q), torch.float32, q.device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_impl_of_op_on_meta(shape, dtype):
    q, k, v = meta_qkv(*shape, dtype)
    out, lse, _ = torch.ops.flash_attn_rocm.fwd(q, k, v, 0.125, True)
    assert_output_metadata(q, out, lse)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_flash_attn_func_on_meta(shape, dtype):
    q, k, v = meta_qkv(*shape, dtype)
    out, lse, s_dmask = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    assert_output_metadata(q, out, lse)
    assert s_dmask.numel() == 0


def attention_block(q, k, v):
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    return out * 2, lse  # something after the op for the compiler to handle


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_fullgraph_on_meta(dynamic):
    """Dynamo must trace flash_attn_func's Python checks without graph breaks, and the
    compiled graph must get its output shapes from the fake impl (symbolic if dynamic)."""
    q, k, v = meta_qkv(*GQA_SHAPE, torch.float16)
    torch._dynamo.reset()
    counters.clear()
    out, lse = torch.compile(attention_block, fullgraph=True, dynamic=dynamic)(q, k, v)
    assert not counters["graph_break"]
    assert_output_metadata(q, out, lse)


def test_make_fx_with_fake_cuda_tensors():
    """Fake CUDA tensors need no GPU: this traces the real CUDA-device path of
    flash_attn_func (device checks included) into a graph holding the op."""
    with FakeTensorMode():
        q, k, v = make_qkv(batch=2, seqlen_q=16, seqlen_k=48, nheads=8, nheads_k=2, device="cuda")
        graph_module = make_fx(attention_block)(q, k, v)
        out, lse = graph_module(q, k, v)
    assert_output_metadata(q, out, lse)
    targets = [node.target for node in graph_module.graph.nodes if node.op == "call_function"]
    assert torch.ops.flash_attn_rocm.fwd.default in targets


# ---------------------------------------------------------------- backward


def assert_grad_metadata(grads, q, k, v):
    for name, grad, like in zip(("dq", "dk", "dv"), grads, (q, k, v), strict=True):
        assert (grad.shape, grad.dtype, grad.device) == (like.shape, like.dtype, like.device), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fake_impl_of_bwd_on_meta(shape, dtype):
    q, k, v = meta_qkv(*shape, dtype)
    out, lse, _ = torch.ops.flash_attn_rocm.fwd(q, k, v, 0.125, True)
    grads = torch.ops.flash_attn_rocm.bwd(torch.empty_like(out), q, k, v, out, lse, 0.125, True, False)
    assert_grad_metadata(grads, q, k, v)


def attention_grads(q, k, v, dout):
    """A training step's attention part: forward, then dq, dk, dv by autograd."""
    out, _ = attention_block(q, k, v)
    return torch.autograd.grad(out, (q, k, v), dout)


def requiring_grad(q, k, v):
    return tuple(t.requires_grad_() for t in (q, k, v))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_of_flash_attn_func_on_meta(shape, dtype):
    """Autograd reaches the bwd op through flash_attn_func with grad-requiring inputs."""
    q, k, v = requiring_grad(*meta_qkv(*shape, dtype))
    assert_grad_metadata(attention_grads(q, k, v, torch.empty_like(q)), q, k, v)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_fullgraph_backward_on_meta(dynamic):
    """With grad-requiring inputs AOTAutograd traces the backward at compile time, through
    FlashAttnFunc.backward and the bwd op's fake impl; running it gives the grads' metadata.
    aot_eager, not inductor: inductor cannot compile a meta-device backward graph (it emits
    meta constants after their use), a limitation of meta tensors, not of the op."""
    q, k, v = requiring_grad(*meta_qkv(*GQA_SHAPE, torch.float16))
    torch._dynamo.reset()
    counters.clear()
    out, _ = torch.compile(attention_block, fullgraph=True, dynamic=dynamic, backend="aot_eager")(q, k, v)
    assert not counters["graph_break"]
    assert_grad_metadata(torch.autograd.grad(out, (q, k, v), torch.empty_like(out)), q, k, v)


def test_make_fx_of_forward_and_backward_on_meta():
    """The joint forward-backward graph holds both ops. Meta, not fake CUDA tensors: the
    autograd engine wants a CUDA context for CUDA-device backward, which needs a GPU."""
    q, k, v = requiring_grad(*meta_qkv(*GQA_SHAPE, torch.float16))
    dout = torch.empty_like(q)
    graph_module = make_fx(attention_grads)(q, k, v, dout)
    assert_grad_metadata(graph_module(q, k, v, dout), q, k, v)
    targets = [node.target for node in graph_module.graph.nodes if node.op == "call_function"]
    assert torch.ops.flash_attn_rocm.fwd.default in targets
    assert torch.ops.flash_attn_rocm.bwd.default in targets
