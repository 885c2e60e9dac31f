"""Hugging Face transformers integration: `attn_implementation="flash_attn_rocm"`.

    import flash_attn_rocm.integrations.transformers      # registers on import; register() again is a no-op
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="flash_attn_rocm", dtype=torch.bfloat16)
    model.set_attn_implementation("flash_attn_rocm")     # or switch a model that is already built

Supported transformers: >= 4.53, the first release with both AttentionInterface and
AttentionMaskInterface (the only two entry points used); tested with 5.17 and 5.23 (GPU) and 5.25
(CPU: 5.24 renamed the cache keyword, see cache_keyword).

A call is served under the contract of transformers' own "flash_attention_2":
- The mask function (registered beside the attention function: without one, transformers passes
  no mask at all and causal masking would silently vanish) runs once per forward and decides for
  every layer: None when every key is a real token, else a 2-D [batch, kv_len] key-padding mask
  carrying its layout. Causality and windows are the kernels' job. Host syncs per forward: none
  without a 2-D mask (static caches included), one with a 2-D mask (as transformers' own flash
  path), plus one for the packed-sequence check of a batch-1 prefill with position_ids.
- No mask: flash_attn_func, causal from the call's is_causal or module.is_causal, K/V heads as
  they come (GQA without repeat_kv).
- Left padding and a static cache's unwritten slots (inference): flash_attn_with_kvcache over the
  keys as they are, with per-row key spans (cache_leftpad, cache_seqlens) computed on the device:
  no unpadding, no sync, capturable in CUDA graphs and traced by torch.compile without breaks.
- Other padding (right padding, holes), or training: the real tokens are packed, queries by the
  newest q_len written columns (a single query is never dropped), attended by
  flash_attn_varlen_func sequence by sequence, and scattered back; padded query rows are zeros.
  The first layer computes the unpadding indices (two syncs); the others reuse them.
- Sequences packed into one row (position_ids restarting, batch 1; DataCollatorWithFlattening)
  or precomputed cu_seq_lens_q/k kwargs: varlen, each sequence on its own.
- sliding_window=W: a query sees itself and the W - 1 keys before it (transformers' mask is
  kv_idx > q_idx - W), i.e. flash-attn window_size (W - 1, W - 1), the right side being cut to 0
  by causal. Non-causal windows follow transformers' flash path too (W - 1 each side).
- softcap (Gemma-2's attn_logit_softcapping) and scaling (e.g. query_pre_attn_scalar ** -0.5)
  go to the kernels as softcap and softmax_scale.
- float32 inputs on the GPU are cast like transformers' flash path does (to the autocast dtype,
  else to the layer's weight dtype) when that gives float16/bfloat16; the output stays in it.

Fallback: what the kernels cannot serve -- inputs that break flash_attn_func's rules
(flash_attn_rocm._inputs: CPU tensors, float32, head dims that are not a multiple of 8 or exceed
the build's largest, a negative scaling, ...), attention sinks (s_aux), a 4-D mask, and any
argument the kernels refuse with NotImplementedError -- runs the same computation (same routing,
same mask semantics) in plain PyTorch, with a one-time warning naming the reason.

Not supported, as with flash_attention_2: mask patterns beyond padding, causal, window and
packing (e.g. bidirectional image tokens via or_mask_function; chunked attention raises in
transformers), output_attentions (weights are None), continuous batching (raises).

The name contains "flash", and transformers >= 5.0 treats every such name as a flash-attn build:
selecting it preloads flash-attn functions through modeling_flash_attention_utils._lazy_imports,
which knows only the flash-attn packages and hub kernels and raises for any other name. register()
answers that lookup for "flash_attn_rocm" with this package's flash-attn-compatible functions.
"""

from __future__ import annotations

import functools
import inspect
import os
import weakref
import warnings
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

try:
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
except ImportError as e:  # transformers missing, or older than 4.53
    raise ImportError("flash_attn_rocm.integrations.transformers needs transformers >= 4.53 "
                      "(pip install 'flash_attn_rocm[transformers]')") from e

from .._inputs import DTYPES, check_servable, fallback_reason, resolve_dropout_p, resolve_softcap
from .._masks import window_visible
from ..bert_padding import index_first_axis, pad_input, unpad_indices, unpad_input
from ..interface import _checked_attention, _needs_grad, flash_attn_func, flash_attn_varlen_func
from ..kvcache import flash_attn_with_kvcache

__all__ = ["NAME", "flash_attn_rocm_attention", "padding_mask", "register"]

NAME = "flash_attn_rocm"
_VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
_warned: set[str] = set()


@dataclass(frozen=True)
class _Options:
    """What one attention call computes, beyond q, k, v and the token layout."""

    scale: float
    causal: bool
    window: tuple[int, int]  # flash-attn's (left, right), -1 = unbounded
    softcap: float  # 0 = off
    dropout: float
    deterministic: bool  # backward only
    sinks: torch.Tensor | None = None  # [h] per-head sink logits (gpt-oss), fallback only

    def kernel_kwargs(self) -> dict:
        return dict(dropout_p=self.dropout, softmax_scale=self.scale, causal=self.causal, window_size=self.window,
                    softcap=self.softcap, deterministic=self.deterministic)


class _KeyLayout(NamedTuple):
    """What the mask function learnt about the key mask it returns, kept on that tensor (an
    attribute, which torch.compile traces) so that no layer has to read the mask on the host.

    filled: keys 0 .. filled - 1 have been written, this call's included; the queries are the last
        seqlen_q of them (int, or a 0-d device tensor under a static cache).
    leftpad: int32 [batch], row i's real keys are leftpad[i] .. filled - 1 (left padding only), or
        None when the mask has other padding and takes varlen."""

    filled: int | torch.Tensor
    leftpad: torch.Tensor | None


_LAYOUT_ATTR = "_flash_attn_rocm_layout"
_UNPAD_ATTR = "_flash_attn_rocm_unpad"


def _with_layout(mask: torch.Tensor, layout: _KeyLayout) -> torch.Tensor:
    setattr(mask, _LAYOUT_ATTR, layout)
    return mask


def _layout(mask: torch.Tensor) -> _KeyLayout | None:
    return getattr(mask, _LAYOUT_ATTR, None)


# --------------------------------------------------------------------------- the two registered functions


def padding_mask(*, kv_length: int, attention_mask: torch.Tensor | None = None, q_length: int | None = None,
                 q_offset: int | torch.Tensor = 0, kv_offset: int = 0, batch_size: int | None = None,
                 device: torch.device | None = None, **unused) -> torch.Tensor | None:
    """AttentionMaskInterface entry, called once per forward (per mask kind) and handed to every
    layer: None when every key is a real token (the layers run the plain kernels), else a 2-D
    [batch, kv_length] bool key mask (True = a real token) that carries its layout (_KeyLayout).

    What is decided here, once, is what the layers would otherwise each find out with host syncs:
    - no 2-D mask and no unfilled cache slots: None, no sync;
    - no 2-D mask under a static cache (its slots past q_offset + q_length hold no token yet):
      the keys 0 .. filled - 1 are real, built on the device, no sync (CUDA graphs, torch.compile);
    - a 2-D mask: one host sync, which answers both "anything padded?" and "only left padding
      (plus a static cache's unfilled slots)?". Left padding goes to the KV-cache kernels with
      per-row key spans (no unpadding); other padding (right padding followed by real queries,
      holes) goes to varlen, its unpadding indices computed by the first layer and kept for the rest.
    The mask_function pattern (causal, window, packing) is left to the attention function, as for
    transformers' flash_attention_2."""
    if attention_mask is not None and _layout(attention_mask) is not None and attention_mask.shape[1] == kv_length:
        return attention_mask  # ours already (generate() feeds a static cache's mask back into forward)
    if q_length is None:  # transformers < 5 passes cache_position instead: the mask's width says what is filled
        return _legacy_padding_mask(kv_length, attention_mask)
    filled = q_offset + q_length - kv_offset  # keys written so far, this call's included (a tensor: static cache)
    has_unfilled = not isinstance(filled, int) or filled < kv_length
    if attention_mask is None:
        if not has_unfilled:
            return None
        device = filled.device if isinstance(filled, torch.Tensor) else device
        mask = (torch.arange(kv_length, device=device) < filled).expand(batch_size, kv_length)
        return _with_layout(mask, _KeyLayout(filled, mask.new_zeros(batch_size, dtype=torch.int32)))
    mask = attention_mask[:, -kv_length:].bool()  # sliding-window caches keep only the newest kv_length keys
    if mask.shape[1] < kv_length:  # a static cache: the slots past the mask hold no token yet
        mask = F.pad(mask, (0, kv_length - mask.shape[1]), value=False)
    columns = torch.arange(kv_length, device=mask.device)
    leftpad = mask.int().argmax(dim=1).to(torch.int32)  # the first real key of each row
    spans = (columns >= leftpad[:, None]) & (columns < filled)
    all_real, left_padded = torch.stack([mask.all(), (mask == spans).all()]).tolist()  # the one host sync
    if all_real and not has_unfilled:
        return None
    if not left_padded or torch.is_grad_enabled():  # training takes varlen: the KV-cache kernels have no backward
        leftpad = None
    return _with_layout(mask, _KeyLayout(filled, leftpad))


def _legacy_padding_mask(kv_length: int, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    if attention_mask is None:
        return None
    mask = attention_mask[:, -kv_length:]
    if mask.shape[1] == kv_length and bool(mask.all()):
        return None
    return mask  # narrower than kv_length only under a static cache: its unused slots get dropped


def _is_paged_cache(cache) -> bool:
    """Continuous batching hands the attention function its PagedAttentionCache as `cache`; before
    5.24 (which renamed past_key_values to cache) a caller's `cache=` keyword also travels down
    here, as an ordinary cache the layer never used."""
    return cache is not None and any(c.__name__ == "PagedAttentionCache" for c in type(cache).__mro__)


def cache_keyword(model: torch.nn.Module) -> str:
    """The keyword a model's forward takes its KV cache by: "cache" from transformers 5.24 on,
    "past_key_values" before (for tests and benchmarks that run on either)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def flash_attn_rocm_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                              sliding_window: int | None = None, softcap: float | None = None,
                              is_causal: bool | None = None, s_aux: torch.Tensor | None = None, **kwargs):
    """AttentionInterface entry. query [b, h, sq, d], key/value [b, h_k, sk, d] with K/V heads not
    repeated; returns (attn_output [b, sq, h, d_v], None)."""
    if _is_paged_cache(kwargs.get("cache")):
        raise NotImplementedError("flash_attn_rocm does not support continuous batching (a paged KV cache) yet")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # views: [b, s, heads, d]
    dtype = _compute_dtype(q, module)
    q, k, v = (_last_dim_contiguous(t.to(dtype)) for t in (q, k, v))
    head_dim, v_head_dim = q.shape[-1], v.shape[-1]
    if v_head_dim < head_dim:  # e.g. MLA: the kernels need one head dim for q, k and v
        v = F.pad(v, (0, head_dim - v_head_dim))

    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    deterministic = kwargs.get("deterministic")
    if deterministic is None:  # the switch transformers' flash path reads
        deterministic = os.environ.get("FLASH_ATTENTION_DETERMINISTIC", "0") == "1"
    opts = _Options(scale=head_dim ** -0.5 if scaling is None else float(scaling), causal=causal,
                    window=_window(sliding_window), softcap=float(softcap or 0.0), dropout=float(dropout),
                    deterministic=bool(deterministic), sinks=s_aux)
    out = _attend(q, k, v, attention_mask, opts, kwargs)
    return out[..., :v_head_dim], None


def register() -> None:
    """Registers "flash_attn_rocm" in transformers' attention and mask interfaces; idempotent."""
    AttentionInterface.register(NAME, flash_attn_rocm_attention)
    AttentionMaskInterface.register(NAME, padding_mask)
    _answer_flash_preload()


# --------------------------------------------------------------------------- routing


def _window(sliding_window: int | None) -> tuple[int, int]:
    if sliding_window is None or sliding_window <= 0:
        return (-1, -1)
    return (sliding_window - 1, sliding_window - 1)  # causal cuts the right side to 0


def _attend(q, k, v, attention_mask, opts: _Options, kwargs: dict) -> torch.Tensor:
    """The kernels when they can serve the call, else the same routing on the PyTorch backend."""
    reason = _fallback_reason(q, k, v, attention_mask, opts)
    if reason is None:
        try:
            return _route(q, k, v, attention_mask, opts, kwargs, _KERNELS)
        except NotImplementedError as e:  # refused before any launch, e.g. dropout_p > 0
            reason = str(e)
    _warn_once(reason)
    if attention_mask is not None and attention_mask.dim() == 4:
        # A prepared or custom mask already holds causality and windows, as eager/sdpa read it.
        return _reference_dense(q, k, v, replace(opts, causal=False, window=(-1, -1)), mask=attention_mask)
    return _route(q, k, v, attention_mask, opts, kwargs, _PYTORCH)


def _fallback_reason(q, k, v, attention_mask, opts: _Options) -> str | None:
    reason = fallback_reason(lambda: check_servable(q, k, v, opts.scale, scale_name="scaling"))
    if reason is not None:
        return reason
    if opts.sinks is not None:
        return "attention sinks (s_aux)"
    if attention_mask is not None and attention_mask.dim() != 2:
        return f"a {attention_mask.dim()}-D attention mask (the kernels take a 2-D padding mask)"
    return None


class _Backend(NamedTuple):
    """dense(q, k, v, opts): q [b, sq, h, d], k/v [b, sk, h_k, d] -> [b, sq, h, d].
    varlen(q, k, v, cu_q, cu_k, max_q, max_k, opts): packed [total, heads, d] -> [total_q, h, d].
    spans(q, k, v, leftpad, seqlens, opts): dense layout, row i's keys leftpad[i] .. seqlens[i] - 1
    (int32 [b] each), the queries its last sq (inference only) -> [b, sq, h, d]."""

    dense: Callable
    varlen: Callable
    spans: Callable


def _route(q, k, v, attention_mask, opts: _Options, kwargs: dict, backend: _Backend) -> torch.Tensor:
    """Padded, packed and plain batches, each onto the backend's dense, spans or varlen attention."""
    if attention_mask is not None:
        mask, layout = attention_mask.bool(), _layout(attention_mask)
        if layout is not None and layout.leftpad is not None and opts.causal and opts.dropout == 0 \
                and not _needs_grad(q, k, v):
            return backend.spans(q, k, v, layout.leftpad, _seqlens(layout.filled, q.shape[0], q.device), opts)
        return _padded(q, k, v, mask, layout, opts, backend)
    cu_seqlens = _given_cu_seqlens(kwargs) or _packed_cu_seqlens(kwargs.get("position_ids"), q, k)
    if cu_seqlens is None:
        return backend.dense(q, k, v, opts)
    (cu_q, cu_k), (max_q, max_k) = cu_seqlens
    batch, seqlen_q = q.shape[:2]
    out = backend.varlen(*(t.reshape(-1, *t.shape[2:]) for t in (q, k, v)), cu_q, cu_k, max_q, max_k, opts)
    return out.reshape(batch, seqlen_q, *out.shape[1:])


def _seqlens(filled: int | torch.Tensor, batch: int, device) -> torch.Tensor:
    """int32 [batch], every row `filled`: computed on the device, never read back."""
    if isinstance(filled, torch.Tensor):
        return filled.to(torch.int32).reshape(1).expand(batch).contiguous()
    return torch.full((batch,), filled, dtype=torch.int32, device=device)


def _padded(q, k, v, key_mask, layout: _KeyLayout | None, opts: _Options, backend: _Backend) -> torch.Tensor:
    """Drops the padding, attends sequence by sequence (bottom-right aligned within each), scatters
    the result back with zeros at padded queries."""
    batch, seqlen_q = q.shape[:2]
    if k.shape[1] > key_mask.shape[1]:  # transformers < 5 under a static cache: the slots past the mask are unused
        k, v = k[:, : key_mask.shape[1]], v[:, : key_mask.shape[1]]
    q_indices, k_indices, (cu_q, cu_k), (max_q, max_k) = _unpadding(key_mask, layout, seqlen_q)
    q_unpad = index_first_axis(q.reshape(-1, *q.shape[2:]), q_indices)
    k_unpad, v_unpad = (index_first_axis(t.reshape(-1, *t.shape[2:]), k_indices) for t in (k, v))
    out = backend.varlen(q_unpad, k_unpad, v_unpad, cu_q, cu_k, max_q, max_k, opts)
    return pad_input(out, q_indices, batch, seqlen_q)


def _unpadding(key_mask, layout: _KeyLayout | None, seqlen_q: int):
    """(q_indices, k_indices, (cu_q, cu_k), (max_q, max_k)) of a padded batch: two host syncs
    (nonzero, the longest sequence). Every layer of a forward gets the same mask, so the answer is
    kept on the mask tensor (with its version counter) and the later layers pay nothing."""
    memo = getattr(key_mask, _UNPAD_ATTR, None)
    version = _version(key_mask)
    if memo is not None and memo[0] == version and seqlen_q in memo[1]:
        return memo[1][seqlen_q]
    query_mask = _query_mask(key_mask, layout, seqlen_q)
    q_indices, cu_q, max_q = unpad_indices(query_mask)
    k_indices, cu_k, max_k = (q_indices, cu_q, max_q) if query_mask is key_mask else unpad_indices(key_mask)
    result = q_indices, k_indices, (cu_q, cu_k), (max_q, max_k)
    if not torch.compiler.is_compiling():
        plans = memo[1] if memo is not None and memo[0] == version else {}
        plans[seqlen_q] = result
        setattr(key_mask, _UNPAD_ATTR, (version, plans))
    return result


def _query_mask(key_mask, layout: _KeyLayout | None, seqlen_q: int) -> torch.Tensor:
    """[batch, seqlen_q] bool, True for a real query: the queries are the newest tokens."""
    filled = key_mask.shape[1] if layout is None else layout.filled
    if isinstance(filled, int):
        if seqlen_q == filled == key_mask.shape[1]:
            return key_mask
        if seqlen_q == 1 and layout is None:
            return torch.ones_like(key_mask[:, :1])  # decoding: every row has its new token
        return key_mask[:, filled - seqlen_q: filled]
    columns = filled - seqlen_q + torch.arange(seqlen_q, device=key_mask.device)
    return key_mask.gather(1, columns.expand(key_mask.shape[0], seqlen_q))


def _given_cu_seqlens(kwargs: dict):
    """((cu_q, cu_k), (max_q, max_k)) when the caller passed all four varlen kwargs (padding-free
    training with precomputed lengths), else None."""
    if any(kwargs.get(name) is None for name in _VARLEN_KWARGS):
        return None
    cu_q, cu_k, max_q, max_k = (kwargs[name] for name in _VARLEN_KWARGS)
    return (cu_q.to(torch.int32), cu_k.to(torch.int32)), (int(max_q), int(max_k))


# The last position_ids inspected (weakly held), its version counter and the answer: every layer
# of one forward gets the same tensor, so the check (a host sync) runs once per forward, not once
# per layer as in transformers' own flash path.
_packed_memo: tuple = (None, -1, None)


def _packed_cu_seqlens(position_ids, q, k):
    """The cu_seqlens of sequences packed into one row, told apart by position_ids restarting at
    their minimum, or None when the row is one sequence (the rule of transformers' flash path)."""
    global _packed_memo
    batch, seqlen = q.shape[:2]
    if position_ids is None or batch != 1 or seqlen == 1 or k.shape[1] != seqlen or position_ids.numel() != seqlen:
        return None
    version = _version(position_ids)
    memo_ref, memo_version, memo_result = _packed_memo
    if memo_ref is not None and memo_ref() is position_ids and memo_version == version:
        return memo_result
    result = _find_packed(position_ids, seqlen)
    _packed_memo = (weakref.ref(position_ids), version, result)
    return result


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # an inference tensor: no version counter (and no in-place edit between layers)
        return -1


def _find_packed(position_ids, seqlen: int):
    positions = position_ids.reshape(-1)
    first = positions.min()
    if bool((positions == first + torch.arange(seqlen, device=positions.device)).all()):
        return None
    starts = (positions == first).nonzero().flatten()
    cu_seqlens = torch.cat([starts, starts.new_tensor([seqlen])]).to(torch.int32)
    max_seqlen = int(cu_seqlens.diff().max())
    return (cu_seqlens, cu_seqlens), (max_seqlen, max_seqlen)


# --------------------------------------------------------------------------- backends


def _kernel_dense(q, k, v, opts: _Options):
    # check_servable has checked q, k, v and the scale (_fallback_reason): skip flash_attn_func's
    # second pass over them, a tenth of a layer's host time at short prompts.
    return _checked_attention(q, k, v, resolve_dropout_p(opts.dropout), opts.scale, opts.causal, opts.window,
                              resolve_softcap(opts.softcap), None, opts.deterministic)


def _kernel_varlen(q, k, v, cu_q, cu_k, max_q, max_k, opts: _Options):
    return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, **opts.kernel_kwargs())


def _kernel_spans(q, k, v, leftpad, seqlens, opts: _Options):
    return flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens, cache_leftpad=leftpad, softmax_scale=opts.scale,
                                   causal=opts.causal, window_size=opts.window, softcap=opts.softcap)


def _reference_dense(q, k, v, opts: _Options, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention the plain way, with the kernels' semantics: causal and window aligned to the
    bottom-right corner, softcap on the scaled scores, zeros for a query that sees no key.
    mask: optional 4-D bool (True = attend) or additive float mask, broadcast to [b, h, sq, sk]."""
    group = q.shape[2] // k.shape[2]
    qh = q.transpose(1, 2)
    kh, vh = (t.transpose(1, 2).repeat_interleave(group, dim=1) for t in (k, v))
    scores = torch.matmul(qh, kh.transpose(-1, -2)).float() * opts.scale  # [b, h, sq, sk]
    if opts.softcap > 0:
        scores = opts.softcap * torch.tanh(scores / opts.softcap)
    visible = window_visible(scores.shape[-2], scores.shape[-1], opts.window, opts.causal, q.device)
    if mask is not None and mask.dtype == torch.bool:
        visible = mask if visible is None else visible & mask
    elif mask is not None:
        scores = scores + mask.float()
    if visible is not None:
        blind_rows = ~visible.any(dim=-1, keepdim=True)
        # Finite scores in rows that see nothing keep softmax (and its gradient) free of NaN.
        scores = scores.masked_fill(~visible, float("-inf")).masked_fill(blind_rows, 0.0)
    if opts.sinks is not None:  # one extra logit per head that takes probability mass but adds no value
        sinks = opts.sinks.float().reshape(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        probs = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    if visible is not None:
        probs = probs.masked_fill(blind_rows, 0.0)
    if opts.dropout > 0:
        probs = F.dropout(probs, p=opts.dropout)
    return torch.matmul(probs.to(vh.dtype), vh).transpose(1, 2)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, opts: _Options) -> torch.Tensor:
    """One _reference_dense call per packed sequence."""
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    pieces = [_reference_dense(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], opts)[0]
              for q0, q1, k0, k1 in zip(bounds_q, bounds_q[1:], bounds_k, bounds_k[1:])]
    return torch.cat(pieces)


def _reference_spans(q, k, v, leftpad, seqlens, opts: _Options) -> torch.Tensor:
    """The KV-cache kernels' masking spelled out: row i's keys are leftpad[i] .. seqlens[i] - 1, its
    queries the last sq of them; causal and window count from those positions."""
    seqlen_q, seqlen_k = q.shape[1], k.shape[1]
    keys = torch.arange(seqlen_k, device=q.device)
    queries = (seqlens[:, None] - seqlen_q + torch.arange(seqlen_q, device=q.device))[..., None]  # [b, sq, 1]
    visible = (keys >= leftpad[:, None, None]) & (keys < seqlens[:, None, None])
    left, right = opts.window
    if opts.causal or right >= 0:
        visible = visible & (keys <= queries + (0 if opts.causal else right))
    if left >= 0:
        visible = visible & (keys >= queries - left)
    return _reference_dense(q, k, v, replace(opts, causal=False, window=(-1, -1)), mask=visible[:, None])


_KERNELS = _Backend(_kernel_dense, _kernel_varlen, _kernel_spans)
_PYTORCH = _Backend(_reference_dense, _reference_varlen, _reference_spans)


# --------------------------------------------------------------------------- helpers


def _compute_dtype(q: torch.Tensor, module) -> torch.dtype:
    """The half dtype transformers' flash path casts float32 GPU inputs to (they arise from fp32
    layer norms, e.g. under PEFT, or autocast): the autocast dtype, else the layer's weight dtype.
    Anything else keeps its dtype (and, if not half, takes the fallback)."""
    if q.dtype != torch.float32 or q.device.type != "cuda":
        return q.dtype
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    modules = module.modules() if isinstance(module, torch.nn.Module) else ()
    weight_dtype = next((m.weight.dtype for m in modules if isinstance(m, torch.nn.Linear)), q.dtype)
    return weight_dtype if weight_dtype in DTYPES else q.dtype


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"flash_attn_rocm (transformers): running attention in plain PyTorch, not the kernels: {reason}",
                      stacklevel=4)


def _answer_flash_preload() -> None:
    """Makes transformers' flash-attn preload (see the module docstring) return our functions for
    NAME; other names go to the original. Wraps once, whatever the number of register() calls."""
    try:
        from transformers import modeling_flash_attention_utils as fa_utils
    except ImportError:
        return
    original = getattr(fa_utils, "_lazy_imports", None)
    if original is None or getattr(original, "_answers_flash_attn_rocm", False):
        return
    # 5.0 returns (func, varlen_func, pad, unpad); later releases add a kvcache function third.
    kvcache = (None,) if hasattr(fa_utils, "_flash_with_kvcache_fn") else ()

    @functools.wraps(original)
    def lazy_imports(implementation, *args, **kwargs):
        if implementation != NAME:
            return original(implementation, *args, **kwargs)
        return (flash_attn_func, flash_attn_varlen_func, *kvcache, pad_input, unpad_input)

    lazy_imports._answers_flash_attn_rocm = True
    fa_utils._lazy_imports = lazy_imports


register()
