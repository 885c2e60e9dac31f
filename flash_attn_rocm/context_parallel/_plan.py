r"""Which kernel calls one step of context-parallel attention makes: pure Python, no tensors.

A rank holds its queries (and, at a ring step, somebody's keys) as a few *segments*: runs of rows
that are contiguous both in the local buffer and in the global sequence. With the zigzag split a
rank holds two, global chunks r and 2·world − 1 − r. The attention mask is a *band* on global
positions, lo <= j − i <= hi (causal: hi = 0; window_size = (left, right): lo = −left, hi = right;
None is unbounded). Mapped into local rows, each (query segment, key segment) pair is again a band,
shifted by how far the pair's local and global offsets differ:

            keys (local)                 a pair is      when its band, cut to the diagonals
          ka      kb                                    j − i present in the pair, is
        +-------+-------+
    qa  | \  .  |       |   invisible:     empty
        |  \ .  |       |   full:          all of them
        +-------+-------+   diagonal:      a proper part (causal: the lower-left triangle)
    qb  | . . . | \     |
        | . . . |  \    |   (the diagonal step of a causal zigzag ring: rank r against itself)
        +-------+-------+

Pairs whose bands agree on the rows and columns present are fused into one call: the whole
rectangle, one query segment against all keys, or all queries against one key segment (the
classic three zigzag cases fall out of this: the diagonal step is one causal call over the whole
local square, an earlier rank's keys one full call of all queries against its first chunk, a later
rank's keys one full call of the second query chunk against all its keys). A call's band is then
trimmed to the rows that see a key and the keys some row sees, which makes it expressible as the
kernels' bottom-right aligned (causal, window_size) with both sides >= 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

Bound = Optional[int]  # None: unbounded


@dataclass(frozen=True)
class Segment:
    """Rows [local, local + length) of a buffer, holding global positions [start, start + length)."""

    local: int
    start: int
    length: int


@dataclass(frozen=True)
class BlockCall:
    """One kernel call: query rows q_rows and key rows k_rows (local [start, stop)) with the
    kernels' causal and window_size, which reproduce the global band exactly on that rectangle.
    aligned: the kernel's relative position (i + sk − sq − j) is the global i − j for every cell,
    so an ALiBi bias computed by the kernel is the global one. group: which rectangle of the
    grouping (the same for every sequence of a varlen batch planned at one level)."""

    q_rows: tuple[int, int]
    k_rows: tuple[int, int]
    causal: bool
    window: tuple[int, int]
    aligned: bool
    group: int


def _shift(bound: Bound, by: int) -> Bound:
    return None if bound is None else bound + by


def _clip(lo: Bound, hi: Bound, dmin: int, dmax: int) -> tuple[int, int] | None:
    """The band [lo, hi] restricted to the diagonals [dmin, dmax] a rectangle has, None if empty."""
    lo_c = dmin if lo is None else max(lo, dmin)
    hi_c = dmax if hi is None else min(hi, dmax)
    return (lo_c, hi_c) if lo_c <= hi_c else None


def _pair_band(q: Segment, k: Segment, lo: Bound, hi: Bound) -> tuple[Bound, Bound]:
    """The global band as a band on local diagonals j_local − i_local of this pair."""
    delta = (k.start - k.local) - (q.start - q.local)
    return _shift(lo, -delta), _shift(hi, -delta)


def _diagonals(q: Segment, k: Segment) -> tuple[int, int]:
    return k.local - (q.local + q.length - 1), k.local + k.length - 1 - q.local


def _common_band(qs: Sequence[Segment], ks: Sequence[Segment], lo: Bound, hi: Bound):
    """A local band that equals the global mask on every pair of the rectangle qs × ks, or
    False when there is none; ("empty",) when no cell of the rectangle is visible."""
    pairs = [(q, k) for q in qs for k in ks]
    wanted = [_clip(*_pair_band(q, k, lo, hi), *_diagonals(q, k)) for q, k in pairs]
    if all(w is None for w in wanted):
        return ("empty",)
    for cand in {_pair_band(q, k, lo, hi) for q, k in pairs}:
        if all(_clip(*cand, *_diagonals(q, k)) == w for (q, k), w in zip(pairs, wanted)):
            return cand
    return False


def _groupings(nq: int, nk: int):
    """Ways to cover the nq × nk pairs with rectangles, coarsest first; each rectangle is a pair of
    (first, stop) index ranges into the segment lists."""
    yield [((0, nq), (0, nk))]
    yield [((a, a + 1), (0, nk)) for a in range(nq)]
    yield [((0, nq), (b, b + 1)) for b in range(nk)]
    yield [((a, a + 1), (b, b + 1)) for a in range(nq) for b in range(nk)]


def _contiguous(segs: Sequence[Segment]) -> bool:
    return all(a.local + a.length == b.local for a, b in zip(segs, segs[1:]))


def _trim(m: int, n: int, lo: Bound, hi: Bound):
    """Rows [r0, r1) and columns [c0, c1) of an m × n rectangle with band lo <= j − i <= hi that
    see / are seen by something, and the kernels' (causal, window) for the trimmed rectangle."""
    r0 = 0 if hi is None else max(0, -hi)
    r1 = m if lo is None else min(m, n - lo)
    if r1 <= r0:
        return None
    c0 = 0 if lo is None else max(0, r0 + lo)
    c1 = n if hi is None else min(n, r1 - 1 + hi + 1)
    if c1 <= c0:
        return None
    rows, cols = r1 - r0, c1 - c0
    lo_t, hi_t = _shift(lo, r0 - c0), _shift(hi, r0 - c0)
    # Kernel: lo_t = (n − m) − left, hi_t = (n − m) + right. Trimming makes both sides >= 0
    # (the last row sees the last column's diagonal, the last column is seen by the last row).
    left = -1 if lo_t is None or lo_t <= -(rows - 1) else (cols - rows) - lo_t
    right = -1 if hi_t is None or hi_t >= cols - 1 else hi_t - (cols - rows)
    assert left >= 0 or lo_t is None or lo_t <= -(rows - 1)
    assert right >= 0 or hi_t is None or hi_t >= cols - 1
    return (r0, r1), (c0, c1), left, right


def plan(q_segs: Sequence[Segment], k_segs: Sequence[Segment], lo: Bound, hi: Bound,
         level: int | None = None) -> list[BlockCall]:
    """The kernel calls that compute the band lo <= j − i <= hi (global positions) of queries
    q_segs against keys k_segs, each cell exactly once. level picks the grouping (0: whole
    rectangle, 1: per query segment, 2: per key segment, 3: per pair); None: the coarsest that
    works. Segments of each list must be adjacent in the local buffer, in order."""
    if not (_contiguous(q_segs) and _contiguous(k_segs)):
        raise ValueError("segments must be adjacent in the local buffer, in order")
    groupings = list(_groupings(len(q_segs), len(k_segs)))
    for lvl in range(len(groupings)) if level is None else [level]:
        bands = [_common_band(q_segs[qa:qb], k_segs[ka:kb], lo, hi) for (qa, qb), (ka, kb) in groupings[lvl]]
        if any(b is False for b in bands):
            continue
        calls = []
        for group, (((qa, qb), (ka, kb)), band) in enumerate(zip(groupings[lvl], bands)):
            if band == ("empty",):
                continue
            qs, ks = q_segs[qa:qb], k_segs[ka:kb]
            q0, k0 = qs[0].local, ks[0].local
            m, n = sum(s.length for s in qs), sum(s.length for s in ks)
            # The band relative to the rectangle's own corner.
            trimmed = _trim(m, n, _shift(band[0], q0 - k0), _shift(band[1], q0 - k0))
            if trimmed is None:
                continue
            (r0, r1), (c0, c1), left, right = trimmed
            # ALiBi: the kernel's i' − j' + (sk − sq) must be the global i − j on every pair.
            skew = (c1 - c0) - (r1 - r0)
            aligned = all((q0 + r0 - q.local + q.start) - (k0 + c0 - k.local + k.start) == skew
                          for q in qs for k in ks)
            calls.append(BlockCall((q0 + r0, q0 + r1), (k0 + c0, k0 + c1), right == 0, (left, right), aligned,
                                   group))
        return calls
    raise ValueError(f"no grouping at level {level}")


def acceptable(q_segs, k_segs, lo: Bound, hi: Bound, level: int) -> bool:
    """Whether plan(..., level=level) can represent the mask (used to pick one level for every
    sequence of a varlen batch)."""
    groupings = list(_groupings(len(q_segs), len(k_segs)))
    return all(_common_band(q_segs[qa:qb], k_segs[ka:kb], lo, hi) is not False for (qa, qb), (ka, kb) in
               groupings[level])


def zigzag_segments(rank: int, world_size: int, chunk: int, local_offset: int = 0) -> list[Segment]:
    """Rank's two zigzag chunks of size chunk: global chunks rank and 2·world − 1 − rank."""
    return [Segment(local_offset, rank * chunk, chunk),
            Segment(local_offset + chunk, (2 * world_size - 1 - rank) * chunk, chunk)]


def contiguous_segments(rank: int, local_len: int, local_offset: int = 0) -> list[Segment]:
    """Rank's single run of local_len rows (the plain split: rank r holds [r·len, (r + 1)·len))."""
    return [Segment(local_offset, rank * local_len, local_len)]


def band(causal: bool, window: tuple[int, int]) -> tuple[Bound, Bound]:
    """flash-attn's (causal, window_size) as a band on global j − i."""
    left, right = window
    hi = 0 if causal else (None if right < 0 else right)
    return (None if left < 0 else -left), hi
