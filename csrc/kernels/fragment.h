// Register tiles: a wave's fp32 accumulators of one product, with the layout that says which
// (row, column) each value a lane holds is. The matrix instruction decides that layout; it lives
// in a per-vendor file under arch/ (arch/fragment_mma.h for NVIDIA's mma.sync and wgmma), and
// everything written against AccTile -- the online softmax, the masks, the score modifiers,
// dropout, the epilogues -- reads coordinates from it, never from the lane index.
//
// A Layout provides:
//   kWaveSize                     lanes that share one instruction tile
//   kTileRows, kTileCols          the instruction's output tile
//   kElems                        values a lane holds per tile
//   kRowSlots, kColRun            rows a lane holds per tile; adjacent columns per row and tile
//   lane_row(lane), lane_col(lane)          where the lane's element 0 of tile (0, 0) sits
//   row_offset(e), col_offset(e)            element e's offset from there (compile-time)
//   row_slot(e), element(slot, j)           element e's row slot; the j-th value of a slot
//   kRowSlotStride                          row slot s sits kRowSlotStride s rows below slot 0
//   row_max(v), row_sum(v), row_leader(lane) reductions over the lanes that share a row
//   kHoldsRowPlus8, row_plus_8(e), col_plus_8_tile(nt), col_plus_8_element(e): dropout.h
#pragma once

#include <type_traits>

#include "arch/fragment_mma.h"
#include "platform.h"

namespace flash {

// kMT x kNT instruction tiles of Layout: kMT along the rows, kNT along the columns. An aggregate,
// so `AccTile<...> acc = {};` is a zeroed accumulator.
template <class Layout_, int kMT_, int kNT_>
struct AccTile {
  using Layout = Layout_;
  static constexpr int kMT = kMT_, kNT = kNT_, kElems = Layout::kElems;
  static constexpr int kRows = kMT * Layout::kRowSlots;         // rows a lane holds
  static constexpr int kRowElems = kElems / Layout::kRowSlots;  // values per row, tile and lane

  float v[kMT][kNT][kElems];

  FA_DEVICE float& operator()(int mt, int nt, int e) { return v[mt][nt][e]; }
  FA_DEVICE const float& operator()(int mt, int nt, int e) const { return v[mt][nt][e]; }

  // Element (mt, nt, e) sits at (row0 + row_offset(mt, e), col0 + col_offset(nt, e)) when the
  // lane's origin is (row0, col0) = (tile row + Layout::lane_row(lane), tile col + Layout::lane_col(lane)).
  static FA_HOST_DEVICE constexpr int row_offset(int mt, int e) {
    return Layout::kTileRows * mt + Layout::row_offset(e);
  }
  static FA_HOST_DEVICE constexpr int col_offset(int nt, int e) {
    return Layout::kTileCols * nt + Layout::col_offset(e);
  }
  // The same as coordinates, for a lane whose element 0 of tile (0, 0) is at (row0, col0). (The
  // sums associate left to right on purpose: nvcc's code for the kernels depends on it.)
  static FA_DEVICE int row(int row0, int mt, int e) { return row0 + Layout::kTileRows * mt + Layout::row_offset(e); }
  static FA_DEVICE int col(int col0, int nt, int e) { return col0 + Layout::kTileCols * nt + Layout::col_offset(e); }
  // Which of the lane's kRows rows element (mt, ., e) is, and where row r sits.
  static FA_HOST_DEVICE constexpr int row_index(int mt, int e) { return Layout::kRowSlots * mt + Layout::row_slot(e); }
  static FA_HOST_DEVICE constexpr int row_offset_of(int r) {
    return Layout::kTileRows * (r / Layout::kRowSlots) + Layout::kRowSlotStride * (r % Layout::kRowSlots);
  }
  // The j-th value of row slot `slot` in a tile.
  static FA_HOST_DEVICE constexpr int element(int slot, int j) { return Layout::element(slot, j); }
};

// Two adjacent values as one store: a 32-bit word of T for 16-bit T, a float2 for float. Sites
// write `*pair_at<T>(p) = pack_pair<T>(a, b);` with a and b plain expressions -- the kernels'
// machine code depends on that form (a helper that takes the pointer first, an array, or lambda
// calls all give other code).
template <class T>
using Pair = std::conditional_t<sizeof(T) == 4, float2, uint32_t>;
template <class T>
FA_DEVICE Pair<T>* pair_at(T* p) { return reinterpret_cast<Pair<T>*>(p); }
template <class T>
FA_DEVICE Pair<T> pack_pair(float lo, float hi) {
  if constexpr (sizeof(T) == 4) return make_float2(lo, hi);
  else return pack2<T>(lo, hi);
}

// One value, for layouts whose runs are single columns (kColRun == 1).
template <class T>
FA_DEVICE void store_one(T* p, float x) {
  if constexpr (sizeof(T) == 4) *p = x;
  else *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(pack2<T>(x, 0.f));
}

}  // namespace flash
