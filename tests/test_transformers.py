"""The transformers integration: attn_implementation="flash_attn_rocm" against transformers' own
attention implementations, on tiny random-weight models built from configs (no hub access).

CPU tests run the PyTorch fallback, which shares the routing (padding, packing, windows) with the
kernel path, against "eager" in float32: they pin the semantics. GPU tests run the kernels in
fp16/bf16 and hold them to the project's criterion: at most twice the error that transformers'
own low-precision attention ("sdpa"; "eager" for Gemma-2, since sdpa has no softcapping and
Gemma-2 sets _supports_sdpa = False) makes against a float32 model, plus one ulp.
"""

import contextlib
import copy
import inspect
import warnings

import pytest
import torch

from conftest import DTYPES, assert_within_eager_error, head_dim_params, requires_gpu, skip_unless_served

pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM, Gemma2Config, LlamaConfig, MistralConfig, PhiConfig, StaticCache)
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402
from transformers.modeling_utils import AttentionInterface  # noqa: E402

import flash_attn_rocm.integrations.transformers as hf  # noqa: E402

NAME = "flash_attn_rocm"
VOCAB = 512
ARCHS = ["llama", "mistral", "phi", "gemma2"]
PADDINGS = ["none", "left", "right"]
FALLBACK_WARNING = "flash_attn_rocm \\(transformers\\)"

# The CPU tests run the fallback on purpose; its one-time warning is checked once, below.
pytestmark = pytest.mark.filterwarnings(f"ignore:{FALLBACK_WARNING}")


def tiny_config(arch):
    """2 layers, hidden 256-320, every feature of the architecture that reaches the attention call."""
    common = dict(vocab_size=VOCAB, num_hidden_layers=2, initializer_range=0.02, attention_dropout=0.0,
                  pad_token_id=0)
    if arch == "llama":  # GQA 8:2, head dim 32
        return LlamaConfig(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
                           **common)
    if arch == "mistral":  # GQA, a sliding window shorter than the test sequences
        return MistralConfig(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
                             sliding_window=48, **common)
    if arch == "phi":  # Phi-2's shape: head dim 80 (no kernel of its own), rotary on 32 of the 80 dims
        return PhiConfig(hidden_size=320, intermediate_size=640, num_attention_heads=4, partial_rotary_factor=0.4,
                         resid_pdrop=0.0, embd_pdrop=0.0, **common)
    if arch == "gemma2":  # layers alternate sliding (48) and full; scale from query_pre_attn_scalar != head dim.
        # Larger weights and a small cap make the softcap bite (at 0.02 and 50 it changes nothing).
        return Gemma2Config(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=64, query_pre_attn_scalar=48, sliding_window=48, attn_logit_softcapping=2.0,
                            **{**common, "initializer_range": 0.05})
    raise ValueError(arch)


def low_precision_reference(arch):
    return "eager" if arch == "gemma2" else "sdpa"


def build(config, impl, like=None, dtype=torch.float32, device="cpu"):
    """A model of `config` with attention `impl`; with `like`, that model's weights. Skips the test
    where this build does not serve the model's head dim on the kernels."""
    if impl == NAME and device != "cpu":
        skip_unless_served(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=impl)
    if like is not None:
        model.load_state_dict(like.state_dict())
    return model.to(device=device, dtype=dtype).eval()


def attention_mask(padding, batch=2, seqlen=160, pads=37):
    """[batch, seqlen] ones; row 1 loses `pads` tokens at the left or right."""
    mask = torch.ones(batch, seqlen, dtype=torch.long)
    if padding == "left":
        mask[1, :pads] = 0
    elif padding == "right":
        mask[1, seqlen - pads:] = 0
    return mask


def token_ids(batch, seqlen, seed=1):
    return torch.randint(1, VOCAB, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def kernels_only():
    """Fails if any attention call inside falls back to PyTorch (the one-time warnings are re-armed)."""
    hf._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    fallbacks = [str(w.message) for w in caught if str(w.message).startswith("flash_attn_rocm (transformers)")]
    assert not fallbacks, fallbacks


def greedy(model, ids, mask, new_tokens=16):
    return model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, output_logits=True, return_dict_in_generate=True)


def assert_same_greedy_tokens(ours, ref, prompt_len, tol):
    """Generated tokens must match the reference's step for step, each step's logits within `tol`.
    The first step where they differ ends the comparison for that row: it is allowed only when the
    logits there are within `tol` too (a near-tie that low precision may break either way; random
    weights make many), and the continuations after it are not comparable."""
    for row in range(ref.sequences.shape[0]):
        for step, (logits, ref_logits) in enumerate(zip(ours.logits, ref.logits)):
            diff = (logits[row].float() - ref_logits[row].float()).abs().max().item()
            assert diff <= tol, f"row {row} step {step}: logits differ by {diff:.3g} > {tol:.3g}"
            if ours.sequences[row, prompt_len + step] != ref.sequences[row, prompt_len + step]:
                break


# ---------------------------------------------------------------- registration (CPU)


def test_register_is_idempotent():
    from transformers import modeling_flash_attention_utils as fa_utils

    lazy_imports = getattr(fa_utils, "_lazy_imports", None)
    hf.register()
    hf.register()
    assert AttentionInterface._global_mapping[NAME] is hf.flash_attn_rocm_attention
    assert AttentionMaskInterface._global_mapping[NAME] is hf.padding_mask
    assert getattr(fa_utils, "_lazy_imports", None) is lazy_imports  # wrapped once, not once per call


def test_both_interfaces_hold_the_name():
    assert NAME in AttentionInterface() and NAME in AttentionMaskInterface()


def test_flash_preload_answers_with_our_functions():
    """transformers >= 5.0 preloads every implementation with "flash" in its name as a flash-attn build."""
    from transformers import modeling_flash_attention_utils as fa_utils

    if not hasattr(fa_utils, "lazy_import_flash_attention"):
        pytest.skip("this transformers does not preload flash implementations")
    (functions, *_) = fa_utils.lazy_import_flash_attention(NAME)
    assert functions[0] is hf.flash_attn_func and functions[1] is hf.flash_attn_varlen_func


def test_models_accept_the_name():
    model = build(tiny_config("llama"), NAME)
    assert model.config._attn_implementation == NAME
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
        model.set_attn_implementation(NAME)
        assert model.config._attn_implementation == NAME


def test_padding_mask_function():
    ones, mask = torch.ones(2, 6, dtype=torch.bool), torch.ones(2, 6, dtype=torch.bool)
    mask[1, 0] = False
    assert hf.padding_mask(kv_length=6, attention_mask=None) is None
    assert hf.padding_mask(kv_length=6, attention_mask=ones) is None  # nothing padded: plain causal kernels
    assert torch.equal(hf.padding_mask(kv_length=6, attention_mask=mask), mask)
    assert hf.padding_mask(kv_length=5, attention_mask=mask) is None  # a sliding cache keeps the newest 5
    assert torch.equal(hf.padding_mask(kv_length=8, attention_mask=ones), ones)  # static cache: 2 unused slots


def test_fallback_warns_once_naming_the_reason():
    q, k, v = torch.randn(1, 4, 8, 32), torch.randn(1, 2, 8, 32), torch.randn(1, 2, 8, 32)
    hf._warned.clear()
    with pytest.warns(UserWarning, match="plain PyTorch.*query must be a CUDA tensor, got device cpu"):
        hf.flash_attn_rocm_attention(torch.nn.Module(), q, k, v, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hf.flash_attn_rocm_attention(torch.nn.Module(), q, k, v, None)


def test_kernel_dense_path_traces_on_meta_tensors():
    """The dense kernel path skips flash_attn_func's checks (check_servable ran them): it must still
    pad an odd head dim and return the call's shape (meta tensors: the ops' fake kernels)."""
    opts = hf._Options(scale=0.1, causal=True, window=(-1, -1), softcap=0.0, dropout=0.0, deterministic=False,
                       sinks=None)
    for head_dim in (128, 59):
        q = torch.empty(2, 64, 8, head_dim, device="meta", dtype=torch.bfloat16)
        k = torch.empty(2, 64, 2, head_dim, device="meta", dtype=torch.bfloat16)
        out = hf._kernel_dense(q, k, k, opts)
        assert out.shape == q.shape and out.dtype == q.dtype
    with pytest.raises(ValueError, match="dropout"):
        hf._kernel_dense(q, k, k, hf.replace(opts, dropout=1.5))


def test_continuous_batching_is_refused():
    class PagedAttentionCache:  # transformers' continuous-batching cache, by name
        pass

    q = torch.randn(1, 4, 8, 32)
    with pytest.raises(NotImplementedError, match="continuous batching"):
        hf.flash_attn_rocm_attention(torch.nn.Module(), q, q, q, None, cache=PagedAttentionCache())


def test_an_ordinary_cache_keyword_passes_through():
    """Before transformers 5.24 a caller's cache= keyword reaches the attention function unused."""
    q = torch.randn(1, 4, 8, 32, dtype=torch.float64)
    out, _ = hf.flash_attn_rocm_attention(torch.nn.Module(), q, q, q, None, is_causal=True, cache=object())
    assert out.shape == (1, 8, 4, 32)


def test_cache_keyword_follows_the_forward_signature():
    model = build(tiny_config("llama"), NAME)
    assert hf.cache_keyword(model) in inspect.signature(model.forward).parameters


# ---------------------------------------------------------------- semantics through the fallback (CPU, float32)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])
def test_logits_match_eager_cpu(arch, padding):
    """Mistral and Gemma-2 at seqlen 160 > window 48: the window's convention is checked too."""
    config = tiny_config(arch)
    eager = build(config, "eager")
    ours = build(config, NAME, like=eager)
    ids, mask = token_ids(2, 160), attention_mask(padding)
    keep = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits[keep],
                                   eager(ids, attention_mask=mask).logits[keep], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])
def test_generate_left_padded_matches_eager_cpu(arch):
    """Decoding with a KV cache: one query over a longer, left-padded key range; Mistral's window
    and Gemma-2's sliding cache layers are crossed (53 real prompt tokens > 48)."""
    config = tiny_config(arch)
    eager = build(config, "eager")
    ours = build(config, NAME, like=eager)
    ids, mask = token_ids(2, 64), attention_mask("left", seqlen=64, pads=11)
    assert_same_greedy_tokens(greedy(ours, ids, mask), greedy(eager, ids, mask), prompt_len=64, tol=1e-4)


def test_packed_sequences_match_separate_sequences_cpu():
    """Padding-free training: sequences packed into one row, told apart by position_ids restarting,
    or by the cu_seq_lens_* kwargs; each must see only itself."""
    config = tiny_config("mistral")
    eager = build(config, "eager")
    ours = build(config, NAME, like=eager)
    lengths = [13, 70, 25]
    ids = token_ids(1, sum(lengths))
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    with torch.no_grad():
        separate = torch.cat([eager(part).logits for part in ids.split(lengths, dim=1)], dim=1)
        packed = ours(ids, position_ids=position_ids).logits
        given = ours(ids, position_ids=position_ids, cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                     max_length_q=max(lengths), max_length_k=max(lengths)).logits
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(given, separate, atol=1e-4, rtol=1e-4)


def test_packed_check_is_remembered_across_layers_and_calls_cpu():
    """The packed-sequence check syncs with the device: it runs once per position_ids tensor (every
    layer of a forward shares one), also for inference tensors, which carry no version counter;
    a new packing in the next call is seen."""
    config = tiny_config("llama")
    eager = build(config, "eager")
    ours = build(config, NAME, like=eager)
    ids = token_ids(1, 96)
    lengths = [40, 56]
    with torch.inference_mode():
        plain = ours(ids).logits
        torch.testing.assert_close(plain, eager(ids).logits, atol=1e-4, rtol=1e-4)
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
        packed = ours(ids, position_ids=position_ids).logits
        separate = torch.cat([eager(part).logits for part in ids.split(lengths, dim=1)], dim=1)
    torch.testing.assert_close(packed, separate, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the padding decision, once per forward (CPU)


@contextlib.contextmanager
def counting_routes(monkeypatch):
    """Counts the attention calls per route (dense / varlen / spans of the PyTorch backend the CPU
    tests run), the unpadding index computations (two host syncs each) and the mask function's calls."""
    counts = {"dense": 0, "varlen": 0, "spans": 0, "unpad": 0, "mask": 0}

    def counted(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(hf, "_PYTORCH", hf._Backend(*(counted(name, fn) for name, fn in
                                                      zip(hf._Backend._fields, hf._PYTORCH))))
    monkeypatch.setattr(hf, "unpad_indices", counted("unpad", hf.unpad_indices))
    AttentionMaskInterface.register(NAME, counted("mask", hf.padding_mask))
    try:
        yield counts
    finally:
        AttentionMaskInterface.register(NAME, hf.padding_mask)


@pytest.mark.parametrize("padding", PADDINGS)
def test_padding_is_decided_once_per_forward_cpu(padding, monkeypatch):
    """A forward decides once (the mask function) what every layer runs: nothing padded -> dense;
    left padding -> the KV-cache kernels' key spans, no unpadding at all; right padding -> varlen,
    unpadded by the first layer only (the indices stay on the mask for the others)."""
    config = tiny_config("llama")
    config.num_hidden_layers = 3
    eager = build(config, "eager")
    ours = build(config, NAME, like=eager)
    ids, mask = token_ids(2, 40), attention_mask(padding, seqlen=40, pads=9)
    with counting_routes(monkeypatch) as counts, torch.no_grad():
        logits = ours(ids, attention_mask=mask).logits
    expected = {"none": dict(dense=3, varlen=0, spans=0, unpad=0), "left": dict(dense=0, varlen=0, spans=3, unpad=0),
                "right": dict(dense=0, varlen=3, spans=0, unpad=1)}[padding]
    assert counts == {**expected, "mask": 1}
    keep = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(logits[keep], eager(ids, attention_mask=mask).logits[keep], atol=1e-4, rtol=1e-4)


def test_padding_decision_host_syncs_cpu(monkeypatch):
    """The mask function reads the mask on the host once (a single tolist), and a static cache
    without a mask not at all; the layers never do."""
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or original(self))
    mask = attention_mask("left", seqlen=12, pads=3).bool()
    assert hf.padding_mask(batch_size=2, q_length=12, kv_length=12, attention_mask=mask) is not None
    assert len(reads) == 1
    assert hf.padding_mask(batch_size=2, q_length=12, kv_length=12, attention_mask=torch.ones_like(mask)) is None
    assert len(reads) == 2
    static = hf.padding_mask(batch_size=2, q_length=1, kv_length=16, q_offset=torch.tensor(11))
    assert len(reads) == 2
    assert torch.equal(static, (torch.arange(16) < 12).expand(2, 16))
    assert hf._layout(static).leftpad.tolist() == [0, 0]


def test_padding_mask_layouts():
    """What the layers are told: key spans for left padding and a static cache's unfilled slots,
    a plain mask (varlen) for other padding and for training, and the mask handed back by
    generate() kept as is."""
    mask = attention_mask("left", batch=2, seqlen=6, pads=2).bool()
    with torch.enable_grad():  # training: varlen, the KV-cache kernels have no backward
        assert hf._layout(hf.padding_mask(batch_size=2, q_length=6, kv_length=6, attention_mask=mask)).leftpad is None
    with torch.no_grad():
        left = hf.padding_mask(batch_size=2, q_length=6, kv_length=6, attention_mask=mask)
        right = hf.padding_mask(batch_size=2, q_length=6, kv_length=6, attention_mask=mask.flip(1))
        # A static cache of 9 slots, 5 filled before this 1-token step: the mask covers the 6 written.
        static = hf.padding_mask(batch_size=2, q_length=1, kv_length=9, q_offset=torch.tensor(5),
                                 attention_mask=mask)
        again = hf.padding_mask(batch_size=2, q_length=1, kv_length=9, q_offset=torch.tensor(5),
                                attention_mask=static)
    assert hf._layout(left).leftpad.tolist() == [0, 2] and hf._layout(left).filled == 6
    assert torch.equal(right, mask.flip(1)) and hf._layout(right).leftpad is None
    assert static.shape == (2, 9) and not static[:, 6:].any()
    assert hf._layout(static).leftpad.tolist() == [0, 2]
    assert again is static  # generate() feeds it back into forward


@pytest.mark.parametrize("arch", ["llama", "mistral", "gemma2"])
@pytest.mark.parametrize("padding", ["none", "left"])
def test_static_cache_matches_eager_cpu(arch, padding):
    """A StaticCache hands every layer all its slots, most of them unwritten: without a mask (a
    plain forward) or with one (generate), only the written ones count; prefill, then decoding."""
    config = tiny_config(arch)
    eager = build(config, "eager")
    ours = build(config, NAME, like=eager)
    ids = token_ids(2, 40)
    mask = attention_mask(padding, seqlen=40, pads=7) if padding == "left" else None

    def run(model):
        cache = StaticCache(config=model.config, max_cache_len=64)
        with torch.no_grad():
            logits = [model(ids, attention_mask=mask, **{hf.cache_keyword(model): cache}).logits[:, -1]]
            token, step_mask = ids[:, -1:], mask
            for position in range(40, 44):
                if step_mask is not None:
                    step_mask = torch.cat([step_mask, step_mask.new_ones(2, 1)], dim=1)
                positions = None if mask is None else step_mask.cumsum(-1)[:, -1:] - 1
                logits.append(model(token, attention_mask=step_mask, **{hf.cache_keyword(model): cache},
                                    position_ids=positions if positions is not None else
                                    torch.full((2, 1), position)).logits[:, -1])
        return torch.stack(logits)

    torch.testing.assert_close(run(ours), run(eager), atol=1e-4, rtol=1e-4)


def test_static_cache_generate_matches_eager_cpu():
    config = tiny_config("llama")
    eager = build(config, "eager")
    ours = build(config, NAME, like=eager)
    ids, mask = token_ids(2, 32), attention_mask("left", seqlen=32, pads=5)

    def generate(model):
        return model.generate(ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              cache_implementation="static", output_logits=True, return_dict_in_generate=True)

    assert_same_greedy_tokens(generate(ours), generate(eager), prompt_len=32, tol=1e-4)


def test_static_cache_decode_step_traces_without_breaks_cpu():
    """torch.compile(fullgraph=True) fails on any graph break, hence on any host sync: a decode step
    over a StaticCache must have none (the bench captures it as a CUDA graph)."""
    ours = build(tiny_config("llama"), NAME)
    ids = token_ids(1, 16)
    cache = StaticCache(config=ours.config, max_cache_len=24)
    with torch.no_grad():
        ours(ids, **{hf.cache_keyword(ours): cache})
        step = torch.compile(ours, backend="eager", fullgraph=True)
        step(ids[:, -1:], position_ids=torch.tensor([[16]]), **{hf.cache_keyword(ours): cache})


# ---------------------------------------------------------------- the kernels (GPU)


CALLS = {  # name: (seqlen_q, seqlen_k, padding of the keys)
    "plain": (200, 200, "none"),
    "left-padded": (200, 200, "left"),
    "right-padded": (200, 200, "right"),
    "chunk-after-cache": (17, 200, "left"),
    "decode": (1, 200, "left"),
}


@requires_gpu
@pytest.mark.parametrize("features", ["plain", "window-softcap"])
@pytest.mark.parametrize("head_dim", head_dim_params(64, 80))
@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_function_on_kernels(dtype, call, head_dim, features, monkeypatch):
    """The registered function on random [b, h, s, d] inputs (GQA 8:2), forward and backward,
    against its own float32 PyTorch path."""
    seqlen_q, seqlen_k, padding = CALLS[call]
    module = torch.nn.Module()
    module.is_causal = True
    kwargs = dict(scaling=0.1, sliding_window=48, softcap=2.0) if features == "window-softcap" else {}
    mask = attention_mask(padding, seqlen=seqlen_k).bool().cuda()
    mask = hf.padding_mask(kv_length=seqlen_k, attention_mask=mask)
    inputs = [torch.randn(2, heads, s, head_dim, device="cuda") for heads, s in ((8, seqlen_q), (2, seqlen_k),
                                                                                  (2, seqlen_k))]
    dout = torch.randn(2, seqlen_q, 8, head_dim, device="cuda")

    def run(dtype):
        q, k, v = (t.to(dtype, copy=True).requires_grad_() for t in inputs)
        out, weights = hf.flash_attn_rocm_attention(module, q, k, v, mask, **kwargs)
        assert weights is None and out.shape == (2, seqlen_q, 8, head_dim)
        out.backward(dout.to(out.dtype))
        return out, q.grad, k.grad, v.grad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = run(torch.float32)  # float32 takes the PyTorch path
    with kernels_only():
        results = run(dtype)
    monkeypatch.setattr(hf, "_KERNELS", hf._PYTORCH)  # the yardstick: the PyTorch path in the same dtype
    yardstick = run(dtype)
    for name, value, ref, eager in zip(("out", "dq", "dk", "dv"), results, reference, yardstick):
        assert_within_eager_error(value, ref, eager, name=name)


@requires_gpu
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers_gpu(arch, dtype, padding):
    config = tiny_config(arch)
    reference = build(config, "eager", device="cuda")
    low_precision = build(config, low_precision_reference(arch), like=reference, dtype=dtype, device="cuda")
    ours = build(config, NAME, like=reference, dtype=dtype, device="cuda")
    ids, mask = token_ids(2, 300).cuda(), attention_mask(padding, seqlen=300, pads=71).cuda()
    keep = mask.bool()
    with torch.no_grad():
        ref_logits = reference(ids, attention_mask=mask).logits[keep]
        eager_logits = low_precision(ids, attention_mask=mask).logits[keep]
        with kernels_only():
            logits = ours(ids, attention_mask=mask).logits[keep]
    assert_within_eager_error(logits, ref_logits, eager_logits, name="logits")


@requires_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_matches_transformers_gpu(arch, dtype):
    """Greedy decoding, batch 2, left padding: the prefill runs varlen, every new token one query
    over the cache; windows (48) are crossed in the prompt already."""
    config = tiny_config(arch)
    reference = build(config, "eager", device="cuda")
    low_precision = build(config, low_precision_reference(arch), like=reference, dtype=dtype, device="cuda")
    ours = build(config, NAME, like=reference, dtype=dtype, device="cuda")
    ids, mask = token_ids(2, 64).cuda(), attention_mask("left", seqlen=64, pads=11).cuda()
    keep = mask.bool()
    with torch.no_grad():
        ref_logits = reference(ids, attention_mask=mask).logits[keep]
        eager_error = (low_precision(ids, attention_mask=mask).logits[keep].float() - ref_logits).abs().max().item()
    # Ours within 2x of the yardstick's error (the criterion) and the yardstick within 1x: 3x apart at most.
    tol = 3 * eager_error + torch.finfo(dtype).eps * ref_logits.abs().max().item()
    expected = greedy(low_precision, ids, mask)
    with kernels_only():
        generated = greedy(ours, ids, mask)
    assert_same_greedy_tokens(generated, expected, prompt_len=64, tol=tol)


@requires_gpu
@pytest.mark.parametrize("padding", ["none", "right"])
@pytest.mark.parametrize("arch", ARCHS)
def test_training_gradients_match_transformers_gpu(arch, padding):
    """One training step in bf16 (dropout 0): every parameter's gradient within the criterion."""
    config = tiny_config(arch)
    ids, mask = token_ids(2, 200).cuda(), attention_mask(padding, seqlen=200, pads=53).cuda()
    labels = ids.masked_fill(mask == 0, -100)

    def gradients(model):
        model.train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    reference = build(config, "eager", device="cuda")
    low_precision = build(config, low_precision_reference(arch), like=reference, dtype=torch.bfloat16, device="cuda")
    ours = build(config, NAME, like=reference, dtype=torch.bfloat16, device="cuda")
    ref_grads, eager_grads = gradients(reference), gradients(low_precision)
    with kernels_only():
        grads = gradients(ours)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_within_eager_error(grads[name], ref_grads[name], eager_grads[name], name=name)


@requires_gpu
@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("arch", ["llama", "mistral", "phi"])
def test_static_cache_decode_in_cuda_graph_gpu(arch, padding):
    """A decode step over a StaticCache runs the KV-cache kernels with no host sync (sync debug mode
    "error"), captures into a CUDA graph, and its replays give the eager step's logits, within the
    criterion against the float32 model."""
    config = tiny_config(arch)
    reference = build(config, "eager", device="cuda")
    low_precision = build(config, "sdpa", like=reference, dtype=torch.bfloat16, device="cuda")
    ours = build(config, NAME, like=reference, dtype=torch.bfloat16, device="cuda")
    ids = token_ids(2, 64).cuda()
    mask = attention_mask("left", seqlen=64, pads=11).cuda() if padding == "left" else None

    def decode_logits(model, graph=False):
        cache = {hf.cache_keyword(model): StaticCache(config=model.config, max_cache_len=80)}
        token = ids[:, -1:].clone()
        step_mask = None if mask is None else torch.cat([mask, mask.new_ones(2, 1)], dim=1)
        position = torch.full((2, 1), 64, device="cuda") if mask is None else step_mask.sum(-1, keepdim=True) - 1
        with torch.no_grad():
            model(ids, attention_mask=mask, **cache)
            if not graph:
                return model(token, attention_mask=step_mask, position_ids=position, **cache).logits[:, -1].float()
            model(token, attention_mask=step_mask, position_ids=position, **cache)  # warm-up, then undone:
            for layer in next(iter(cache.values())).layers:  # the replay writes the same slot again
                layer.cumulative_length.fill_(64)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    logits = model(token, attention_mask=step_mask, position_ids=position, **cache).logits
            finally:
                torch.cuda.set_sync_debug_mode("default")
            g.replay()
            return logits[:, -1].float()

    ref = decode_logits(reference)
    eager = decode_logits(low_precision)
    with kernels_only():
        eager_step = decode_logits(ours)
        replayed = decode_logits(ours, graph=True)
    assert_within_eager_error(eager_step, ref, eager, name="logits")
    torch.testing.assert_close(replayed, eager_step, atol=0, rtol=0)
