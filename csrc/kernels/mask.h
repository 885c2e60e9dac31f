// Which keys a query row may see. Causal attention with seqlen_q != seqlen_k aligns the
// diagonal to the bottom-right corner (flash-attn >= 2.1): row i sees keys j <= i + sk - sq.
//
//   sq = 3, sk = 5         sq = 5, sk = 2
//   x x x . .              . .    <- rows that see no key: O = 0, lse = -inf
//   x x x x .              . .
//   x x x x x              . .
//                          x .
//                          x x
#pragma once

#include "platform.h"

namespace flash {

template <bool Is_causal>
struct KeyLimit {
  int seqlen_q, seqlen_k;

  // One past the last key that query row `row` may see (may be <= 0).
  FA_DEVICE int operator()(int row) const {
    return Is_causal ? min(seqlen_k, row + 1 + seqlen_k - seqlen_q) : seqlen_k;
  }

  // Key blocks [0, n_block_end) hold every key that rows [row_begin, row_end) may see.
  FA_DEVICE int n_block_end(int row_end, int block_n) const {
    const int keys = (*this)(row_end - 1);
    return keys <= 0 ? 0 : (keys + block_n - 1) / block_n;
  }

  // Whether some row in [row_begin, ...) cannot see all keys [col_begin, col_end): only those
  // blocks pay for per-element masking.
  FA_DEVICE bool block_needs_mask(int row_begin, int col_end) const { return col_end > (*this)(row_begin); }
};

// Sets to -inf the scores whose key lies past the row's limit. Fragment element i of n8 tile nt
// in strip mt sits at row row0 + 16 mt + 8 (i / 2), column col0 + 8 nt + (i % 2).
template <bool Is_causal, int kMTiles, int kNTiles>
FA_DEVICE void apply_key_limit(float (&s)[kMTiles][kNTiles][4], const KeyLimit<Is_causal>& limit, int row0, int col0) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int keys = limit(row0 + 16 * mt + 8 * half);
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          if (col0 + 8 * nt + j >= keys) s[mt][nt][2 * half + j] = -INFINITY;
        }
      }
    }
  }
}

}  // namespace flash
