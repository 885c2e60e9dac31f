// Online softmax over the score rows a lane holds (fragment.h). A lane holds parts of
// STile::kRows rows; the rest of each row sits in the lanes the layout names, so a row's max and
// sum end in one reduction over them (Layout::row_max / row_sum).
#pragma once

#include "fragment.h"
#include "platform.h"

namespace flash {

template <class Layout, int kMT>
struct OnlineSoftmax {
  static constexpr int kRowSlots = Layout::kRowSlots;
  static constexpr int kRows = kMT * kRowSlots;  // row r = kRowSlots * strip + slot
  float row_max[kRows];  // running max of the raw scores seen so far
  float row_sum[kRows];  // this lane's part of the running sum of exp

  FA_DEVICE OnlineSoftmax() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) { row_max[r] = -INFINITY; row_sum[r] = 0.f; }
  }

  // Scores -> unnormalised probabilities exp2((s - max) * scale_log2), in place; the output
  // accumulator is rescaled for the new max, so O / sum stays the softmax-weighted mean.
  template <int kNT, int kDT>
  FA_DEVICE void update(AccTile<Layout, kMT, kNT>& s, AccTile<Layout, kMT, kDT>& acc_o, float scale_log2) {
    float o_factor[kRows];
    update_scores(s, scale_log2, o_factor);
    rescale(acc_o, o_factor);
  }

  // update() in two halves, for a kernel whose O accumulators are still being written by an
  // asynchronous product when the next scores arrive: update_scores() turns the scores into
  // probabilities and returns per row the factor O must be multiplied by (1 where the max did
  // not move), rescale() applies it once O may be touched (skipped for a row whose max moved in
  // no lane of the wave: most key blocks of a long row).
  template <int kNT>
  FA_DEVICE void update_scores(AccTile<Layout, kMT, kNT>& s, float scale_log2, float (&o_factor)[kRows]) {
    constexpr int kRowElems = AccTile<Layout, kMT, kNT>::kRowElems;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int slot = 0; slot < kRowSlots; ++slot) {
        const int r = kRowSlots * mt + slot;
        float m = row_max[r];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          float tile_max = s(mt, nt, Layout::element(slot, 0));
#pragma unroll
          for (int j = 1; j < kRowElems; ++j) tile_max = fmaxf(tile_max, s(mt, nt, Layout::element(slot, j)));
          m = fmaxf(m, tile_max);
        }
        m = Layout::row_max(m);
        // A row that has seen only masked keys keeps max = -inf; use 0 there so that
        // (-inf) - (-inf) never makes a NaN. Its probabilities are exp2(-inf) = 0.
        const float m_scaled = m == -INFINITY ? 0.f : m * scale_log2;
        o_factor[r] = m == row_max[r] ? 1.f : exp2_fast(row_max[r] * scale_log2 - m_scaled);
        row_max[r] = m;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int j = 0; j < kRowElems; ++j) {
            float& p = s(mt, nt, Layout::element(slot, j));
            p = exp2_fast(p * scale_log2 - m_scaled);
            sum += p;
          }
        }
        row_sum[r] = row_sum[r] * o_factor[r] + sum;
      }
    }
  }

  template <int kDT>
  static FA_DEVICE void rescale(AccTile<Layout, kMT, kDT>& acc_o, const float (&o_factor)[kRows]) {
    constexpr int kRowElems = AccTile<Layout, kMT, kDT>::kRowElems;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int slot = 0; slot < kRowSlots; ++slot) {
        const float f = o_factor[kRowSlots * mt + slot];
        if (any_in_group(f != 1.f)) {
#pragma unroll
          for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
            for (int j = 0; j < kRowElems; ++j) acc_o(mt, dt, Layout::element(slot, j)) *= f;
          }
        }
      }
    }
  }

  // Divides O by the row sums (and multiplies it by out_scale) and returns the natural-log LSE
  // per row (-inf for a row that saw no key, whose O is then 0).
  template <int kDT>
  FA_DEVICE void finalize(AccTile<Layout, kMT, kDT>& acc_o, float scale, float (&lse)[kRows], float out_scale = 1.f) {
    constexpr int kRowElems = AccTile<Layout, kMT, kDT>::kRowElems;
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int slot = 0; slot < kRowSlots; ++slot) {
        const int r = kRowSlots * mt + slot;
        const float sum = Layout::row_sum(row_sum[r]);
        const float inv = sum == 0.f ? 0.f : out_scale / sum;
        lse[r] = sum == 0.f ? -INFINITY : row_max[r] * scale + logf(sum);
#pragma unroll
        for (int dt = 0; dt < kDT; ++dt) {
#pragma unroll
          for (int j = 0; j < kRowElems; ++j) acc_o(mt, dt, Layout::element(slot, j)) *= inv;
        }
      }
    }
  }
};

}  // namespace flash
