// Where NVIDIA's matrix instruction leaves its results: the fp32 accumulators of mma.sync
// m16n8k16 (and of wgmma, whose per-warp layout is the same). A 32-lane group holds a 16 x 8
// tile, four values a lane; with g = lane / 4 and t = lane % 4:
//
//          cols 2t  2t+1
//   row g     c[0]  c[1]
//   row g+8   c[2]  c[3]
//
// A row's 8 columns sit in one quad (lanes 4g .. 4g + 3).
#pragma once

#include "../platform.h"

namespace flash {

struct MmaAccLayout {
  static constexpr int kWaveSize = kGroupSize;           // lanes that share one tile
  static constexpr int kTileRows = 16, kTileCols = 8;    // one instruction's output
  static constexpr int kElems = 4;                       // values a lane holds per tile
  static constexpr int kRowSlots = 2;                    // rows a lane holds per tile: g, g + 8
  static constexpr int kRowSlotStride = 8;               // row slot s is row g + kRowSlotStride s
  static constexpr int kColRun = 2;                      // a row's values in a tile: adjacent columns

  // Element e of the lane's tile sits at (lane_row + row_offset(e), lane_col + col_offset(e)).
  static FA_DEVICE int lane_row(int lane) { return lane / 4; }
  static FA_DEVICE int lane_col(int lane) { return 2 * (lane % 4); }
  static FA_HOST_DEVICE constexpr int row_slot(int e) { return e / 2; }
  static FA_HOST_DEVICE constexpr int row_offset(int e) { return 8 * (e / 2); }
  static FA_HOST_DEVICE constexpr int col_offset(int e) { return e % 2; }
  // The j-th value (left to right) of row slot `slot`.
  static FA_HOST_DEVICE constexpr int element(int slot, int j) { return 2 * slot + j; }

  // Dropout draws one Philox word per {row, row + 8} x {col, col + 8} (dropout.h): a lane's rows
  // g and g + 8 are both here (element e + 2), and column c + 8 is the same element of the next
  // tile. So the words start at elements 0 and 1 of every second tile.
  static constexpr int kWordTileStep = 2, kWordStarts = 2;
  static FA_HOST_DEVICE constexpr int word_start(int i) { return i; }
  static constexpr bool kHoldsRowPlus8 = true, kHoldsColPlus8 = true;
  static FA_HOST_DEVICE constexpr int row_plus_8(int e) { return e + 2; }
  static FA_HOST_DEVICE constexpr int col_plus_8_tile(int nt) { return nt + 1; }
  static FA_HOST_DEVICE constexpr int col_plus_8_element(int e) { return e; }

  // Max and sum over the lanes that hold one row (the quad), and the lane that speaks for it.
  static FA_DEVICE float row_max(float v) {
    v = fmaxf(v, shfl_xor(v, 1));
    return fmaxf(v, shfl_xor(v, 2));
  }
  static FA_DEVICE float row_sum(float v) {
    v += shfl_xor(v, 1);
    return v + shfl_xor(v, 2);
  }
  static FA_DEVICE bool row_leader(int lane) { return lane % 4 == 0; }
};

}  // namespace flash
