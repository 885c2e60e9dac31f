// Epilogues: a wave's finished register tile to global memory, a run of adjacent columns per
// store (fragment.h). The forward's O and lse (portable and Hopper kernels), the backward's dK
// and dV, and its dQ partials added into the fp32 accumulator.
#pragma once

#include "fragment.h"
#include "params.h"
#include "platform.h"
#include "seq_bounds.h"

namespace flash {

// O's rows are queries: the lane's element 0 of tile (0, 0) is row thread_row0 of the sequence.
template <class T, class Tile>
FA_DEVICE void store_output(const FwdParams& params, const SeqBounds& seq, int batch, int head, int thread_row0,
                            int lane, const Tile& acc_o, const float (&lse)[Tile::kRows]) {
  using L = typename Tile::Layout;
  T* o = static_cast<T*>(params.o) + batch * params.o_batch_stride + head * params.o_head_stride +
         seq.q_start * params.o_row_stride;
#pragma unroll
  for (int mt = 0; mt < Tile::kMT; ++mt) {
#pragma unroll
    for (int slot = 0; slot < L::kRowSlots; ++slot) {
      const int row = Tile::row(thread_row0, mt, L::element(slot, 0));
      if (row >= seq.seqlen_q) continue;
      T* o_row = o + row * params.o_row_stride;
#pragma unroll
      for (int dt = 0; dt < Tile::kNT; ++dt) {
#pragma unroll
        for (int run = 0; run < Tile::kRowElems / L::kColRun; ++run) {
          const int col = Tile::col_offset(dt, L::element(slot, run * L::kColRun)) + L::lane_col(lane);
          if (col < params.d) {
            const int e0 = L::element(slot, run * L::kColRun);
            if constexpr (L::kColRun == 1) {
              store_one(o_row + col, acc_o(mt, dt, e0));
            } else {
#pragma unroll
              for (int i = 0; i < L::kColRun; i += 2) {
                *pair_at<T>(o_row + col + i) = pack_pair<T>(acc_o(mt, dt, e0 + i), acc_o(mt, dt, e0 + i + 1));
              }
            }
          }
        }
      }
      if (L::row_leader(lane)) {
        params.softmax_lse[seq.lse_index(params, batch, head, row)] = lse[Tile::row_index(mt, L::element(slot, 0))];
      }
    }
  }
}

// Writes a wave's fp32 tile, whose instruction tile (0, 0) starts at (row0, col0), to a [rows, d]
// tensor, scaled and rounded to T, skipping rows >= rows_valid and columns >= head_dim.
template <class T, class Tile>
FA_DEVICE void store_tile(T* dst, int64_t row_stride, const Tile& acc, int row0, int col0, int rows_valid,
                          int head_dim, float scale, int lane) {
  using L = typename Tile::Layout;
#pragma unroll
  for (int mt = 0; mt < Tile::kMT; ++mt) {
#pragma unroll
    for (int slot = 0; slot < L::kRowSlots; ++slot) {
      const int row = row0 + L::kTileRows * mt + L::lane_row(lane) + L::kRowSlotStride * slot;
      if (row >= rows_valid) continue;
#pragma unroll
      for (int nt = 0; nt < Tile::kNT; ++nt) {
#pragma unroll
        for (int run = 0; run < Tile::kRowElems / L::kColRun; ++run) {
          const int col =
              col0 + L::kTileCols * nt + L::lane_col(lane) + L::col_offset(L::element(slot, run * L::kColRun));
          if (col < head_dim) {
            const int e0 = L::element(slot, run * L::kColRun);
            if constexpr (L::kColRun == 1) {
              store_one(dst + row * row_stride + col, acc(mt, nt, e0) * scale);
            } else {
#pragma unroll
              for (int i = 0; i < L::kColRun; i += 2) {
                *pair_at<T>(dst + row * row_stride + col + i) =
                    pack_pair<T>(acc(mt, nt, e0 + i) * scale, acc(mt, nt, e0 + i + 1) * scale);
              }
            }
          }
        }
      }
    }
  }
}

// Adds a wave's fp32 tile, whose instruction tile (0, 0) starts at (row0, col0), into an fp32
// [rows, d] tensor with atomics. Row r of dst is row first_row + r of its sequence: rows at or
// past row_end are skipped, and so are columns >= head_dim.
template <class Tile>
FA_DEVICE void atomic_add_tile(float* dst, int64_t row_stride, const Tile& acc, int row0, int col0, int first_row,
                               int row_end, int head_dim, int lane) {
  using L = typename Tile::Layout;
#pragma unroll
  for (int mt = 0; mt < Tile::kMT; ++mt) {
#pragma unroll
    for (int slot = 0; slot < L::kRowSlots; ++slot) {
      const int row = row0 + L::kTileRows * mt + L::lane_row(lane) + L::kRowSlotStride * slot;
      if (first_row + row >= row_end) continue;
#pragma unroll
      for (int nt = 0; nt < Tile::kNT; ++nt) {
#pragma unroll
        for (int run = 0; run < Tile::kRowElems / L::kColRun; ++run) {
          const int col =
              col0 + L::kTileCols * nt + L::lane_col(lane) + L::col_offset(L::element(slot, run * L::kColRun));
          if (col < head_dim) {
            const int e0 = L::element(slot, run * L::kColRun);
            if constexpr (L::kColRun == 1) {
              atomicAdd(dst + row * row_stride + col, acc(mt, nt, e0));
            } else {
#pragma unroll
              for (int i = 0; i < L::kColRun; i += 2) {
                atomic_add2(dst + row * row_stride + col + i, acc(mt, nt, e0 + i), acc(mt, nt, e0 + i + 1));
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace flash
