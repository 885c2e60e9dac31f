// Warp-level GEMMs over shared-memory tiles (SmemTile layout) on the m16n8k16 instruction
// (mma.h: mma.sync), into register tiles of its
// accumulator layout (fragment_mma.h).
//
// A warp computes acc (kMT strips of 16 rows, kNT tiles of 8 columns) over a k range
// of kK. Operands come from shared memory in one of two orientations:
//   A "rows" : stored [m][k]  (e.g. Q for S = Q K^T)         A "cols" : stored [k][m]  (read transposed)
//   B "rows" : stored [n][k]  (e.g. K for S = Q K^T)         B "cols" : stored [k][n]  (e.g. V for O = P V)
// or, for A, from registers: the fp32 accumulators of a previous GEMM (P for O = P V).
#pragma once

#include "../fragment.h"
#include "../mma.h"
#include "../platform.h"
#include "../smem_tile.h"
#include "fragment_mma.h"

namespace flash {

enum class Major { kRows, kCols };

// Per-lane part of a load_matrix_x4 address for each orientation (see mma.h for what lane l
// supplies): A rows, A cols, B rows, B cols.
template <class Tile, bool Is_A, Major M>
FA_DEVICE auto fragment_lane_offsets(int lane) {
  if constexpr (Is_A && M == Major::kRows) return Tile::lane_offsets(lane % 16, lane / 16);
  else if constexpr (M == Major::kCols && !Is_A) return Tile::lane_offsets(8 * ((lane / 8) % 2) + lane % 8, lane / 16);
  else return Tile::lane_offsets(8 * (lane / 16) + lane % 8, (lane / 8) % 2);
}

// A fragments for strip mt at k step ks, where the warp's rows start at m0 (a multiple of 16).
template <Major M, class Tile, class T>
FA_DEVICE void load_a(uint32_t (&a)[4], const T* s, const typename Tile::LaneOffsets& off, int m0, int ks) {
  if constexpr (M == Major::kRows) load_matrix_x4(a, s + off.at(m0, 2 * ks));
  else load_matrix_x4_trans(a, s + off.at(16 * ks, m0 / 8));
}

// B fragments for the n8 tile pair (nt, nt+1) starting at column n0 (a multiple of 16).
template <Major M, class Tile, class T>
FA_DEVICE void load_b_pair(uint32_t (&b)[4], const T* s, const typename Tile::LaneOffsets& off, int n0, int ks) {
  if constexpr (M == Major::kRows) load_matrix_x4(b, s + off.at(n0, 2 * ks));
  else load_matrix_x4_trans(b, s + off.at(16 * ks, n0 / 8));
}

// One k16 step: acc[mt][nt] += a[mt] x B(k step ks, n8 tile nt) for every strip and tile.
template <int kMT, int kNT>
using MmaTile = AccTile<MmaAccLayout, kMT, kNT>;

template <Major MB, class BTile, int kMT, int kNT, class T>
FA_DEVICE void mma_b_row(MmaTile<kMT, kNT>& acc, const uint32_t (&a)[kMT][4], const T* sB,
                         const typename BTile::LaneOffsets& b_off, int n0, int ks) {
#pragma unroll
  for (int nt = 0; nt < kNT; nt += 2) {
    uint32_t b[4];
    load_b_pair<MB, BTile>(b, sB, b_off, n0 + 8 * nt, ks);
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
      mma_16816<T>(acc.v[mt][nt], a[mt], b[0], b[1]);
      mma_16816<T>(acc.v[mt][nt + 1], a[mt], b[2], b[3]);
    }
  }
}

// acc += A[m0 .. m0 + 16 kMT) x B[.., n0 .. n0 + 8 kNT) over k in [0, kK).
template <int kK, Major MA, Major MB, class ATile, class BTile, int kMT, int kNT, class T>
FA_DEVICE void gemm_smem(MmaTile<kMT, kNT>& acc, const T* sA, int m0, const T* sB, int n0, int lane) {
  static_assert(kNT % 2 == 0 && kK % 16 == 0, "whole x4 loads");
  const auto a_off = fragment_lane_offsets<ATile, true, MA>(lane);
  const auto b_off = fragment_lane_offsets<BTile, false, MB>(lane);
#pragma unroll
  for (int ks = 0; ks < kK / 16; ++ks) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) load_a<MA, ATile>(a[mt], sA, a_off, m0 + 16 * mt, ks);
    mma_b_row<MB, BTile>(acc, a, sB, b_off, n0, ks);
  }
}

// The A fragment of k16 step ks for strip mt, made of two adjacent n8 accumulator tiles of an
// earlier product rounded to T: P goes from S's accumulators to the operand of P V without
// touching shared memory (the wgmma kernels feed these to their register-A products too).
template <class T, int kMT, int kKT>
FA_DEVICE void a_fragment_of(const MmaTile<kMT, kKT>& acc, int mt, int ks, uint32_t (&a)[4]) {
  a[0] = pack2<T>(acc(mt, 2 * ks, 0), acc(mt, 2 * ks, 1));
  a[1] = pack2<T>(acc(mt, 2 * ks, 2), acc(mt, 2 * ks, 3));
  a[2] = pack2<T>(acc(mt, 2 * ks + 1, 0), acc(mt, 2 * ks + 1, 1));
  a[3] = pack2<T>(acc(mt, 2 * ks + 1, 2), acc(mt, 2 * ks + 1, 3));
}

// acc += A x B[.., n0 .. n0 + 8 kNT), A given as the fp32 accumulators of an earlier product
// (kMT strips x kKT n8 tiles, k = 8 kKT): two adjacent n8 accumulator tiles are one k16 A fragment.
template <Major MB, class BTile, int kMT, int kNT, int kKT, class T>
FA_DEVICE void gemm_regs(MmaTile<kMT, kNT>& acc, const MmaTile<kMT, kKT>& a_acc, const T* sB, int n0, int lane) {
  constexpr int kK = 8 * kKT;
  static_assert(kNT % 2 == 0 && kK % 16 == 0, "whole x4 loads");
  const auto b_off = fragment_lane_offsets<BTile, false, MB>(lane);
#pragma unroll
  for (int ks = 0; ks < kK / 16; ++ks) {
    uint32_t a[kMT][4];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) a_fragment_of<T>(a_acc, mt, ks, a[mt]);
    mma_b_row<MB, BTile>(acc, a, sB, b_off, n0, ks);
  }
}

}  // namespace flash
