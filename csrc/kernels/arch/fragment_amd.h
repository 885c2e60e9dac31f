// Where AMD's matrix instructions leave their results, as the AMD kernels read them: transposed.
// Those kernels compute S^T = K Q^T and O^T = V^T P^T (keys, or head-dim channels, along the
// instruction's M; queries along its N), so a lane holds one query row and a run of columns of it,
// a row's statistics stay in one lane and its partner lanes, and S^T's accumulators are already
// the B operand of the product with V (arch/wave_gemm_amd.h). These layouts describe the
// accumulators in the logical orientation the shared code wants (fragment.h): rows are queries,
// columns keys (for S) or head-dim channels (for O). Golden data: ../shared/amd_matrix_layouts.
//
//   CDNA, v_mfma_f32_32x32x8 (and gfx950's 32x32x16), wave64: D[m][n] sits in lane
//   n + 32 ((m / 4) % 2), register 4 (m / 8) + m % 4. Transposed: lane l holds query l % 32 and,
//   in register r, column 8 (r / 4) + 4 (l / 32) + r % 4 -- runs of 4 adjacent columns.
//
//   RDNA3, v_wmma_f32_16x16x16 (wave32): D[m][n] in lane n + 16 (m % 2), register m / 2.
//   Transposed: lane l holds query l % 16 and, in register r, column 2 r + l / 16.
//
//   RDNA4, v_wmma_f32_16x16x16 (wave32): D[m][n] in lane n + 16 (m / 8), register m % 8.
//   Transposed: lane l holds query l % 16 and, in register r, column 8 (l / 16) + r.
#pragma once

#include "../platform.h"
#include "amd_wave.h"

#if defined(FA_PLATFORM_HIP)

namespace flash {

// What the three share: one row slot (a lane holds one row of a tile), rows split over lanes
// l and l + kWaveSize / 2, whose values a row reduction combines.
template <int kWaveSize_, int kTileRows_, int kTileCols_, int kElems_>
struct AmdTransposedAccLayout {
  static constexpr int kWaveSize = kWaveSize_;
  static constexpr int kTileRows = kTileRows_, kTileCols = kTileCols_;
  static constexpr int kElems = kElems_;
  static constexpr int kRowSlots = 1, kRowSlotStride = 0;
  static FA_DEVICE int lane_row(int lane) { return lane % kTileRows; }
  static FA_HOST_DEVICE constexpr int row_slot(int) { return 0; }
  static FA_HOST_DEVICE constexpr int row_offset(int) { return 0; }
  static FA_HOST_DEVICE constexpr int element(int, int j) { return j; }
  static constexpr bool kHoldsRowPlus8 = false;

  // A row's columns sit in lanes l and l + kWaveSize / 2 (the two halves of the wave).
  static FA_DEVICE float row_max(float v) { return fmaxf(v, other_half(v)); }
  static FA_DEVICE float row_sum(float v) { return v + other_half(v); }
  static FA_DEVICE bool row_leader(int lane) { return lane < kWaveSize / 2; }

 private:
  static FA_DEVICE float other_half(float v) {
    return __uint_as_float(amd::wave_shuffle_xor(__float_as_uint(v), kWaveSize / 2));
  }
};

struct CdnaAccLayout : AmdTransposedAccLayout<64, 32, 32, 16> {
  static constexpr int kColRun = 4;
  static FA_DEVICE int lane_col(int lane) { return 4 * (lane / 32); }
  static FA_HOST_DEVICE constexpr int col_offset(int e) { return 8 * (e / 4) + e % 4; }
  // Dropout's words (dropout.h): column c + 8 is element e + 4 of the same tile; words start at
  // elements 0-3 and 8-11.
  static constexpr bool kHoldsColPlus8 = true;
  static constexpr int kWordTileStep = 1, kWordStarts = 8;
  static FA_HOST_DEVICE constexpr int word_start(int i) { return 8 * (i / 4) + i % 4; }
  static FA_HOST_DEVICE constexpr int col_plus_8_tile(int nt) { return nt; }
  static FA_HOST_DEVICE constexpr int col_plus_8_element(int e) { return e + 4; }
};

struct Rdna3AccLayout : AmdTransposedAccLayout<32, 16, 16, 8> {
  static constexpr int kColRun = 1;
  static FA_DEVICE int lane_col(int lane) { return lane / 16; }
  static FA_HOST_DEVICE constexpr int col_offset(int e) { return 2 * e; }
  // Column c + 8 is element e + 4; words start at elements 0-3.
  static constexpr bool kHoldsColPlus8 = true;
  static constexpr int kWordTileStep = 1, kWordStarts = 4;
  static FA_HOST_DEVICE constexpr int word_start(int i) { return i; }
  static FA_HOST_DEVICE constexpr int col_plus_8_tile(int nt) { return nt; }
  static FA_HOST_DEVICE constexpr int col_plus_8_element(int e) { return e + 4; }
};

struct Rdna4AccLayout : AmdTransposedAccLayout<32, 16, 16, 8> {
  static constexpr int kColRun = 8;
  static FA_DEVICE int lane_col(int lane) { return 8 * (lane / 16); }
  static FA_HOST_DEVICE constexpr int col_offset(int e) { return e; }
  // Columns c and c + 8 sit in lanes l and l + 16: each value is its own word's only one here.
  static constexpr bool kHoldsColPlus8 = false;
  static constexpr int kWordTileStep = 1, kWordStarts = 8;
  static FA_HOST_DEVICE constexpr int word_start(int i) { return i; }
  static FA_HOST_DEVICE constexpr int col_plus_8_tile(int nt) { return nt; }
  static FA_HOST_DEVICE constexpr int col_plus_8_element(int e) { return e; }
};

}  // namespace flash

#endif  // FA_PLATFORM_HIP
