// Online softmax over the score rows one thread holds. Per 16-row strip a thread sees two rows
// (g and g+8) and 2 of every 8 columns; the other columns of its rows sit in the 3 other lanes
// of its quad, so a row reduction is two xor-shuffles.
#pragma once

#include "platform.h"

namespace flash {

FA_DEVICE float quad_max(float v) {
  v = fmaxf(v, shfl_xor(v, 1));
  return fmaxf(v, shfl_xor(v, 2));
}
FA_DEVICE float quad_sum(float v) {
  v += shfl_xor(v, 1);
  return v + shfl_xor(v, 2);
}

template <int kMTiles, int kNTiles, int kDTiles>
struct OnlineSoftmax {
  static constexpr int kRows = 2 * kMTiles;  // row r = 2 * strip + (0: row g, 1: row g+8)
  float row_max[kRows];  // running max of the raw scores seen so far
  float row_sum[kRows];  // this thread's part of the running sum of exp

  FA_DEVICE OnlineSoftmax() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) { row_max[r] = -INFINITY; row_sum[r] = 0.f; }
  }

  // Scores -> unnormalised probabilities exp2((s - max) * scale_log2), in place; the output
  // accumulator is rescaled for the new max, so O / sum stays the softmax-weighted mean.
  FA_DEVICE void update(float (&s)[kMTiles][kNTiles][4], float (&acc_o)[kMTiles][kDTiles][4], float scale_log2) {
    float o_factor[kRows];
    update_scores(s, scale_log2, o_factor);
    rescale(acc_o, o_factor);
  }

  // update() in two halves, for a kernel whose O accumulators are still being written by an
  // asynchronous product when the next scores arrive: update_scores() turns the scores into
  // probabilities and returns per row the factor O must be multiplied by (1 where the max did
  // not move), rescale() applies it once O may be touched (skipped for a row whose max moved in
  // no lane of the warp: most key blocks of a long row).
  FA_DEVICE void update_scores(float (&s)[kMTiles][kNTiles][4], float scale_log2, float (&o_factor)[kRows]) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = 2 * mt + half;
        float m = row_max[r];
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) m = fmaxf(m, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
        m = quad_max(m);
        // A row that has seen only masked keys keeps max = -inf; use 0 there so that
        // (-inf) - (-inf) never makes a NaN. Its probabilities are exp2(-inf) = 0.
        const float m_scaled = m == -INFINITY ? 0.f : m * scale_log2;
        o_factor[r] = m == row_max[r] ? 1.f : exp2_fast(row_max[r] * scale_log2 - m_scaled);
        row_max[r] = m;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
          for (int i = 2 * half; i < 2 * half + 2; ++i) {
            s[mt][nt][i] = exp2_fast(s[mt][nt][i] * scale_log2 - m_scaled);
            sum += s[mt][nt][i];
          }
        }
        row_sum[r] = row_sum[r] * o_factor[r] + sum;
      }
    }
  }

  static FA_DEVICE void rescale(float (&acc_o)[kMTiles][kDTiles][4], const float (&o_factor)[kRows]) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float f = o_factor[2 * mt + half];
        if (any_in_group(f != 1.f)) {
#pragma unroll
          for (int dt = 0; dt < kDTiles; ++dt) {
            acc_o[mt][dt][2 * half] *= f;
            acc_o[mt][dt][2 * half + 1] *= f;
          }
        }
      }
    }
  }

  // Divides O by the row sums (and multiplies it by out_scale) and returns the natural-log LSE
  // per row (-inf for a row that saw no key, whose O is then 0).
  FA_DEVICE void finalize(float (&acc_o)[kMTiles][kDTiles][4], float scale, float (&lse)[kRows],
                          float out_scale = 1.f) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = 2 * mt + half;
        const float sum = quad_sum(row_sum[r]);
        const float inv = sum == 0.f ? 0.f : out_scale / sum;
        lse[r] = sum == 0.f ? -INFINITY : row_max[r] * scale + logf(sum);
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt) {
          acc_o[mt][dt][2 * half] *= inv;
          acc_o[mt][dt][2 * half + 1] *= inv;
        }
      }
    }
  }
};

}  // namespace flash
