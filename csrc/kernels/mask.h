// Which keys a query row may see. Row i sees keys j with
//   i + sk - sq - left <= j <= i + sk - sq + right
// (flash-attn's window_size = (left, right); causal is right = 0), the diagonal aligned to the
// bottom-right corner when seqlen_q != seqlen_k (flash-attn >= 2.1). Unbounded sides hold
// kUnboundedWindow; the right side is applied only by the Has_right_edge instantiations (causal,
// or a window with a finite right side).
//
//   causal, sq = 3, sk = 5      causal, sq = 5, sk = 2      window (1, 0), sq = sk = 4
//   x x x . .                   . .    <- no key: O = 0,    x . . .
//   x x x x .                   . .       lse = -inf        x x . .
//   x x x x x                   . .                         . x x .
//                               x .                         . . x x
//                               x x
#pragma once

#include "fragment.h"
#include "params.h"
#include "platform.h"

namespace flash {

template <bool Has_right_edge>
struct KeyWindow {
  int seqlen_q, seqlen_k;
  int left, right;  // window sizes; kUnboundedWindow where absent

  // First key, and one past the last key, that query row `row` sees (begin >= end: none).
  FA_DEVICE int begin(int row) const { return max(0, row + seqlen_k - seqlen_q - left); }
  FA_DEVICE int end(int row) const {
    return Has_right_edge ? min(seqlen_k, row + 1 + seqlen_k - seqlen_q + right) : seqlen_k;
  }

  // Key blocks [n_block_begin, n_block_end) hold every key that rows [row_begin, row_end) see.
  FA_DEVICE int n_block_begin(int row_begin, int block_n) const { return begin(row_begin) / block_n; }
  FA_DEVICE int n_block_end(int row_end, int block_n) const {
    const int keys = end(row_end - 1);
    return keys <= 0 ? 0 : (keys + block_n - 1) / block_n;
  }

  // Whether some row in [row_begin, row_end) misses some key in [col_begin, col_end): only those
  // blocks pay for per-element masking.
  FA_DEVICE bool block_needs_mask(int row_begin, int row_end, int col_begin, int col_end) const {
    return col_end > end(row_begin) || col_begin < begin(row_end - 1);
  }

  FA_DEVICE bool visible(int row, int col) const { return col >= begin(row) && col < end(row); }
};

// Sets to -inf the scores of keys outside the row's window; rows are queries, columns keys, and
// the lane's element 0 of tile (0, 0) sits at (row0, col0) (fragment.h).
template <bool Has_right_edge, class Tile>
FA_DEVICE void apply_key_window(Tile& s, const KeyWindow<Has_right_edge>& window, int row0, int col0) {
  using L = typename Tile::Layout;
#pragma unroll
  for (int mt = 0; mt < Tile::kMT; ++mt) {
#pragma unroll
    for (int slot = 0; slot < L::kRowSlots; ++slot) {
      const int row = Tile::row(row0, mt, L::element(slot, 0));
      const int first = window.begin(row), last = window.end(row);
#pragma unroll
      for (int nt = 0; nt < Tile::kNT; ++nt) {
#pragma unroll
        for (int j = 0; j < Tile::kRowElems; ++j) {
          const int e = L::element(slot, j);
          const int col = Tile::col(col0, nt, e);
          if (col < first || col >= last) s(mt, nt, e) = -INFINITY;
        }
      }
    }
  }
}

}  // namespace flash
