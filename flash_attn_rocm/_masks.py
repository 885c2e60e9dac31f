"""Which keys each query sees, as PyTorch code: the one rule the kernels apply (mask.h), for the
places that recompute attention in PyTorch (S_dmask, the transformers fallback)."""

from __future__ import annotations

import torch


def window_visible(seqlen_q: int, seqlen_k: int, window: tuple[int, int], causal: bool, device) -> torch.Tensor | None:
    """[sq, sk] bool, True where query i sees key j: i + sk - sq - left <= j <= i + sk - sq + right
    (flash-attn's window_size, -1 unbounded; causal: right = 0); None when every key is visible."""
    left, right = window
    right = 0 if causal else right
    if left < 0 and right < 0:
        return None
    offset = (torch.arange(seqlen_k, device=device)[None, :] - torch.arange(seqlen_q, device=device)[:, None]
              - (seqlen_k - seqlen_q))  # j - (i + sk - sq)
    visible = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if left >= 0:
        visible &= offset >= -left
    if right >= 0:
        visible &= offset <= right
    return visible
