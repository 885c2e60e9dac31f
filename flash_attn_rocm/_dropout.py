"""The kernels' dropout mask, recomputed in PyTorch (csrc/kernels/dropout.h is the spec).

Used by return_attn_probs (S_dmask, in flash-attn's blockwise convention) and by the tests, which check the kernels against this
independent implementation. Memory and time are O(batch * heads * seqlen_q * seqlen_k): for
testing, not for training.
"""

from __future__ import annotations

import torch

from ._masks import window_visible

_MASK32 = 0xFFFFFFFF
_MUL = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * b for uint32 values held in int64 (split so nothing overflows)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    low = a_lo * b + ((a_hi * b) & 0xFFFF) * 65536  # < 2^49
    hi = (a_hi * b >> 16) + (low >> 32)
    return hi & _MASK32, low & _MASK32


def philox4x32_10(c0, c1, c2, c3, key0: int, key1: int):
    """Philox4x32-10 on int64 tensors holding uint32 values; returns the four output words."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _MUL[0])
        hi1, lo1 = _mulhilo(c2, _MUL[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
        key0, key1 = (key0 + _WEYL[0]) & _MASK32, (key1 + _WEYL[1]) & _MASK32
    return c0, c1, c2, c3


def keep_mask(rng_state: torch.Tensor, dropout_p: float, batch: int, nheads: int, seqlen_q: int,
              seqlen_k: int, batch_index: int | None = None) -> torch.Tensor:
    """bool [batch, nheads, seqlen_q, seqlen_k]: True where the kernels keep the probability.
    rng_state: the int64 [2] (seed, offset) the forward returned. batch_index: compute one batch
    element (a varlen sequence) only, as [1, nheads, seqlen_q, seqlen_k]."""
    seed, offset = (int(x) for x in rng_state.tolist())
    seed &= (1 << 64) - 1
    key0, key1 = seed & _MASK32, seed >> 32
    threshold = min(int((1.0 - dropout_p) * 4294967296.0), _MASK32)
    device = rng_state.device
    batches = range(batch) if batch_index is None else [batch_index]
    # Group (q0, k0): q0 % 16 < 8, k0 % 16 < 8; its words go to (q0, k0), (q0, k0+8), (q0+8, k0), (q0+8, k0+8).
    pad_q, pad_k = -(-seqlen_q // 16) * 16, -(-seqlen_k // 16) * 16
    q0 = torch.arange(pad_q, device=device).view(-1, 16)[:, :8].reshape(-1)
    k0 = torch.arange(pad_k, device=device).view(-1, 16)[:, :8].reshape(-1)
    heads = torch.tensor([b * nheads + h for b in batches for h in range(nheads)], device=device, dtype=torch.int64)
    c0 = k0.view(1, 1, -1).expand(len(heads), len(q0), -1)
    c1 = q0.view(1, -1, 1).expand_as(c0)
    c2 = heads.view(-1, 1, 1).expand_as(c0)
    c3 = torch.full_like(c0, (offset // 4) & _MASK32)
    words = philox4x32_10(c0, c1, c2, c3, key0, key1)
    keep = torch.empty(len(heads), pad_q, pad_k, dtype=torch.bool, device=device)
    view = keep.view(len(heads), pad_q // 16, 2, 8, pad_k // 16, 2, 8)  # [h, q16, q+8?, q%8, k16, k+8?, k%8]
    shape = (len(heads), pad_q // 16, 8, pad_k // 16, 8)
    for word, (dq, dk) in zip(words, ((0, 0), (0, 1), (1, 0), (1, 1))):
        view[:, :, dq, :, :, dk, :] = (word < threshold).view(shape)
    return keep[:, :seqlen_q, :seqlen_k].reshape(len(batches), nheads, seqlen_q, seqlen_k)


def block_size_n(device, head_dim: int, is_dropout: bool, is_causal: bool) -> int:
    """The key-block width of S_dmask's convention (flash-attn 2's `_get_block_size_n`, same
    arguments and values, so that tests written for flash-attn normalise our S_dmask with it).
    It describes flash-attn 2's tiles, which S_dmask reproduces, not necessarily ours. head_dim is
    the caller's (before padding to a multiple of 8)."""
    if head_dim > 256:
        raise ValueError(f"head_dim must be at most 256, got {head_dim}")
    device = torch.device(device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    if head_dim <= 32:
        return 128
    if head_dim <= 64:
        return 64 if is_dropout else 128
    if head_dim <= 96:
        return 64
    if head_dim <= 128:
        if is_dropout:
            return 32
        # flash-attn's sm86/sm89 tiles (less shared memory than sm80) narrow the non-causal blocks.
        return 32 if capability[0] == 8 and capability[1] > 0 and not is_causal else 64
    return 64


def masked_scores(q, k, softmax_scale: float, causal: bool, window: tuple[int, int], softcap: float,
                  alibi_slopes) -> torch.Tensor:
    """The logits the kernels compute, float32 [b, h, sq, sk], -inf where the mask hides a key:
    q [b, sq, h, d], k [b, sk, h_k, d]."""
    seqlen_q, seqlen_k, nheads = q.shape[1], k.shape[1], q.shape[2]
    k = k.float().repeat_interleave(nheads // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k) * softmax_scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if alibi_slopes is not None:
        rows = torch.arange(seqlen_q, device=q.device)[:, None] + seqlen_k - seqlen_q
        cols = torch.arange(seqlen_k, device=q.device)[None, :]
        scores = scores - alibi_slopes.float().reshape(-1, nheads, 1, 1) * (rows - cols).abs()
    visible = window_visible(seqlen_q, seqlen_k, window, causal, q.device)
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))
    return scores


def attention_probs(q, k, softmax_lse, softmax_scale: float, causal: bool, window: tuple[int, int], softcap: float,
                    alibi_slopes) -> torch.Tensor:
    """The probabilities the kernels computed (before dropout), float32 [b, h, sq, sk], from the
    forward's softmax_lse: q [b, sq, h, d], k [b, sk, h_k, d]."""
    scores = masked_scores(q, k, softmax_scale, causal, window, softcap, alibi_slopes)
    probs = torch.exp(scores - softmax_lse.float()[..., None])
    return probs.masked_fill(scores.isneginf() | softmax_lse.isneginf()[..., None], 0.0)


def blockwise_unnormalized_probs(scores: torch.Tensor, block_n: int) -> torch.Tensor:
    """exp(s - m) per key, m being the running row max when the key's block is reached: the max
    over that block and every block to its right (flash-attn walks the key blocks from the last
    one down). 0 where s is -inf. scores: float32 [..., sk]."""
    blocks = scores.split(block_n, dim=-1)
    block_max = torch.stack([b.amax(dim=-1) for b in blocks], dim=-1)
    running_max = block_max.flip(-1).cummax(dim=-1).values.flip(-1)
    running_max = running_max.masked_fill(running_max.isneginf(), 0.0)  # fully hidden so far: exp(-inf) = 0
    widths = [b.shape[-1] for b in blocks]
    per_key_max = running_max.repeat_interleave(torch.tensor(widths, device=scores.device), dim=-1)
    return torch.exp(scores - per_key_max)


def s_dmask(q, k, rng_state, dropout_p: float, softmax_scale: float, causal: bool,
            window: tuple[int, int], softcap: float, alibi_slopes, batch_index: int | None = None,
            head_dim: int | None = None) -> torch.Tensor:
    """flash-attn's S_dmask, [b, h, sq, sk] in q's dtype: per key block of block_size_n(...)
    keys, exp(s - m) with m the running row max when that block is reached (the unnormalised
    probability the kernel holds; times exp(m - lse) it is the probability, which is what
    flash-attn's tests' normalize_flash_attn_S recovers), 0 where the mask hides the key, and
    negated where dropout dropped it. batch_index: q, k are one varlen sequence ([1, s, h, d]).
    head_dim: the caller's head dim, before padding (default q's)."""
    scores = masked_scores(q, k, softmax_scale, causal, window, softcap, alibi_slopes)
    block_n = block_size_n(q.device, q.shape[-1] if head_dim is None else head_dim, True, causal)
    values = blockwise_unnormalized_probs(scores, block_n)
    batch, nheads, seqlen_q, seqlen_k = values.shape
    keep = keep_mask(rng_state, dropout_p, batch, nheads, seqlen_q, seqlen_k, batch_index)
    return torch.where(keep, values, -values).to(q.dtype)
