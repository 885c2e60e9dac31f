// Dropout on the attention probabilities, regenerated (never stored) by the forward and the
// backward from a counter-based RNG: Philox4x32-10 keyed by PyTorch's CUDA generator seed.
//
// One Philox call decides the four scores {q, q+8} x {k, k+8} (q % 16 < 8, k % 16 < 8) of one
// (batch, head), by position only, so every kernel on every vendor drops the same scores. In
// NVIDIA's fragments each orientation (the forward's queries x keys, the backward's keys x
// queries) holds such a group in one thread, so neither pass draws numbers it throws away; a
// layout that holds one row of the pair uses half of each word, or a quarter
// (for_each_dropout_word). Counter: (k, q, batch * h + head, offset / 4); key: the seed. A score
// is kept when its 32-bit draw is below keep_threshold = (1 - p) * 2^32.
// flash_attn_rocm/_dropout.py is the same function in PyTorch, for tests and return_attn_probs.
#pragma once

#include <cstdint>

#include "fragment.h"
#include "params.h"
#include "platform.h"

namespace flash {

#if defined(__CUDACC__) || defined(__HIPCC__)

FA_DEVICE uint4 philox4x32_10(uint4 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;   // round multipliers
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // key schedule increments
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kMul0, counter.x), lo0 = kMul0 * counter.x;
    const uint32_t hi1 = __umulhi(kMul1, counter.z), lo1 = kMul1 * counter.z;
    counter = make_uint4(hi1 ^ counter.y ^ key0, lo1, hi0 ^ counter.w ^ key1, lo0);
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

struct Dropout {
  uint32_t seed_lo, seed_hi, offset_quads;
  uint32_t head_index;  // batch * h + head
  uint32_t keep_threshold;

  FA_DEVICE Dropout(const FwdParams& params, uint64_t seed, uint64_t offset, int batch, int head)
      : seed_lo(static_cast<uint32_t>(seed)),
        seed_hi(static_cast<uint32_t>(seed >> 32)),
        offset_quads(static_cast<uint32_t>(offset / 4)),
        head_index(static_cast<uint32_t>(batch * params.h + head)),
        keep_threshold(params.keep_threshold) {}

  // Keep bits of (q0, k0), (q0, k0 + 8), (q0 + 8, k0), (q0 + 8, k0 + 8) in bits 0..3;
  // q0 % 16 < 8 and k0 % 16 < 8, positions inside the sequence.
  FA_DEVICE uint32_t keep4(int q0, int k0) const {
    const uint4 r = philox4x32_10(make_uint4(k0, q0, head_index, offset_quads), seed_lo, seed_hi);
    return uint32_t(r.x < keep_threshold) | uint32_t(r.y < keep_threshold) << 1 |
           uint32_t(r.z < keep_threshold) << 2 | uint32_t(r.w < keep_threshold) << 3;
  }
};

// The generator's (seed, offset): values, or under CUDA graph capture read at replay from the
// generator's device memory (PyTorch's graph-safe RNG).
FA_DEVICE void philox_seed_offset(const FwdParams& params, uint64_t& seed, uint64_t& offset) {
  if (params.philox_seed_ptr != nullptr) {
    seed = static_cast<uint64_t>(*params.philox_seed_ptr);
    offset = static_cast<uint64_t>(*params.philox_offset_ptr) + params.philox_offset;
  } else {
    seed = params.philox_seed;
    offset = params.philox_offset;
  }
}

// Where a tile's values meet the Philox words: calls visit(keep, at0, at1, at2, at3) once per
// word the lane needs (the layout names the elements that start one: word_start), where keep =
// Dropout::keep4 of the word and at<i> is the element (mt, nt, e) of the tile that bit i of keep
// decides, or {-1, -1, -1} where another lane holds that position. (By value, not as an array: nvcc then keeps the indices out of local memory.)
// row_of(mt) is the row of strip mt that the lane's row slot 0 holds, col_of(nt, e) element
// (mt, nt, e)'s column, both in the sequence. A word starts in row slot 0 of its tile. The
// tile's rows are queries and its columns keys, or the other way round with kRowsAreKeys (the
// backward's S^T). Where the layout holds columns c and c + 8 in one lane, a word starts at a
// column c with c % 16 < 8 (so must the lane's first column); where it holds rows r and r + 8,
// likewise at a row r with r % 16 < 8.
struct FragmentIndex {
  int mt, nt, e;
};

template <bool kRowsAreKeys, class Tile, class RowOf, class ColOf, class Visit>
FA_DEVICE void for_each_dropout_word(const Dropout& dropout, RowOf&& row_of, ColOf&& col_of, Visit&& visit) {
  using L = typename Tile::Layout;
  static_assert(L::row_slot(L::word_start(0)) == 0, "words start in row slot 0");
#pragma unroll
  for (int mt = 0; mt < Tile::kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < Tile::kNT; nt += L::kWordTileStep) {
#pragma unroll
      for (int i = 0; i < L::kWordStarts; ++i) {
        const int e = L::word_start(i);  // the element at (row, col) of its word
        const FragmentIndex here{mt, nt, e}, col8{mt, L::col_plus_8_tile(nt), L::col_plus_8_element(e)};
        if constexpr (L::kHoldsRowPlus8) {
          const FragmentIndex row8{mt, nt, L::row_plus_8(e)}, both8{mt, col8.nt, L::row_plus_8(col8.e)};
          // keep4's bits: (q, k), (q, k + 8), (q + 8, k), (q + 8, k + 8).
          if constexpr (kRowsAreKeys) {
            visit(dropout.keep4(col_of(nt, e), row_of(mt)), here, row8, col8, both8);
          } else {
            visit(dropout.keep4(row_of(mt), col_of(nt, e)), here, col8, row8, both8);
          }
        } else if constexpr (L::kHoldsColPlus8) {
          // This lane holds row r or r + 8 of the word, never both: shift its two bits down.
          constexpr FragmentIndex kNone{-1, -1, -1};
          const int r = row_of(mt), c = col_of(nt, e), high = (r >> 3) & 1;
          if constexpr (kRowsAreKeys) {
            visit(dropout.keep4(c, r & ~8) >> high, here, kNone, col8, kNone);
          } else {
            visit(dropout.keep4(r & ~8, c) >> (2 * high), here, col8, kNone, kNone);
          }
        } else {
          // One value of the word here: shift its bit down.
          constexpr FragmentIndex kNone{-1, -1, -1};
          const int r = row_of(mt), c = col_of(nt, e);
          const int q = kRowsAreKeys ? c : r, k = kRowsAreKeys ? r : c;
          visit(dropout.keep4(q & ~8, k & ~8) >> (2 * ((q >> 3) & 1) + ((k >> 3) & 1)), here, kNone, kNone, kNone);
        }
      }
    }
  }
}

// The forward's (seed, offset) for a call with dropout (else zeros): drawn, and recorded in
// rng_state for the backward by thread 0 of the grid's first block (blockIdx.x 0 of head 0, batch 0).
FA_DEVICE void forward_dropout_seed(const FwdParams& params, int head, int batch, int tid, uint64_t& seed,
                                    uint64_t& offset) {
  if (params.has_dropout) {
    philox_seed_offset(params, seed, offset);
    if (blockIdx.x == 0 && head == 0 && batch == 0 && tid == 0) {
      params.rng_state[0] = static_cast<int64_t>(seed);
      params.rng_state[1] = static_cast<int64_t>(offset);
    }
  }
}

// The backward's: the forward's, read back from rng_state.
FA_DEVICE void backward_dropout_seed(const FwdParams& params, uint64_t& seed, uint64_t& offset) {
  seed = static_cast<uint64_t>(params.rng_state[0]);
  offset = static_cast<uint64_t>(params.rng_state[1]);
}

// The forward's orientation (rows are queries): calls drop(at) for each dropped element `at` of a
// tile whose lane origin is (row0, col0).
template <class Tile, class Drop>
FA_DEVICE void for_each_dropped(const Dropout& dropout, int row0, int col0, Drop&& drop) {
  auto visit = [&](bool kept, const FragmentIndex& at) {
    if (at.e >= 0 && !kept) drop(at);
  };
  for_each_dropout_word<false, Tile>(
      dropout, [&](int mt) { return Tile::row(row0, mt, 0); }, [&](int nt, int e) { return Tile::col(col0, nt, e); },
      [&](uint32_t keep, FragmentIndex at0, FragmentIndex at1, FragmentIndex at2, FragmentIndex at3) {
        visit(keep & 1, at0);
        visit(keep & 2, at1);
        visit(keep & 4, at2);
        visit(keep & 8, at3);
      });
}

// Zeroes the dropped probabilities of a tile whose lane origin is (row0, col0).
template <class Tile>
FA_DEVICE void apply_dropout(Tile& p, const Dropout& dropout, int row0, int col0) {
  for_each_dropped<Tile>(dropout, row0, col0, [&](const FragmentIndex& at) { p(at.mt, at.nt, at.e) = 0.f; });
}

// apply_dropout on P already packed as k16 A fragments (a_fragment_of: element (0, nt, e) of the
// accumulator tile is half e % 2 of register 2 (nt % 2) + e / 2 of fragment nt / 2): the fp32
// tile is dead by then, which leaves the Philox rounds its registers (the Hopper forward).
template <class Tile, int kKSteps>
FA_DEVICE void apply_dropout_packed(uint32_t (&p)[kKSteps][4], const Dropout& dropout, int row0, int col0) {
  static_assert(Tile::kMT == 1 && Tile::kNT == 2 * kKSteps && Tile::kElems == 4, "one strip of k16 fragments");
  for_each_dropped<Tile>(dropout, row0, col0, [&](const FragmentIndex& at) {
    p[at.nt / 2][2 * (at.nt % 2) + at.e / 2] &= at.e % 2 ? 0x0000ffffu : 0xffff0000u;
  });
}

#endif  // __CUDACC__ || __HIPCC__

}  // namespace flash
