// Score modifiers: flash-attn's softcap and ALiBi. With them the logit of query i, key j is
//   x = softcap > 0 ? softcap * tanh(q.k * scale / softcap) : q.k * scale
//   logit = x - slope * |i + sk - sq - j|       (the distance from the bottom-right diagonal)
// The kernels keep scores in units of logit_scale (scale, or softcap with a softcap), so the
// softmax still folds the one multiply into its exp2; the slope is divided by it here.
//
// ALiBi uses |distance| for causal rows too: inside the causal window it equals flash-attn's
// slope * (j - i - sk + sq) and the softmax is the same; the lse is the one of the bias above.
#pragma once

#include "fragment.h"
#include "params.h"
#include "platform.h"

namespace flash {

struct ScoreMod {
  float softcap_prescale;  // scale / softcap; 0: no softcap
  float slope;             // ALiBi slope / logit_scale; 0: no ALiBi
  int diagonal;            // sk - sq: key j sits at distance |i + diagonal - j| from query i

  FA_DEVICE ScoreMod(const FwdParams& params, int batch, int head, int seqlen_q, int seqlen_k)
      : softcap_prescale(params.softcap_prescale),
        slope(params.alibi_slopes == nullptr
                  ? 0.f
                  : params.alibi_slopes[batch * params.alibi_batch_stride + head] / params.logit_scale),
        diagonal(seqlen_k - seqlen_q) {}

  // tanh(q.k * scale / softcap): the raw score in logit_scale units (unchanged without a softcap).
  FA_DEVICE float softcap(float s) const { return softcap_prescale != 0.f ? tanh_fast(s * softcap_prescale) : s; }
  FA_DEVICE float bias(int row, int col) const { return -slope * static_cast<float>(abs(row + diagonal - col)); }

  // The raw score q.k of (row, col) in logit_scale units. The caller masks afterwards: tanh
  // would turn a -inf into -1.
  FA_DEVICE float operator()(float s, int row, int col) const { return softcap(s) + bias(row, col); }
};

// The forward's orientation: rows are queries, columns keys; the lane's element 0 of tile (0, 0)
// sits at (row0, col0) (fragment.h).
template <class Tile>
FA_DEVICE void apply_score_mod(Tile& s, const ScoreMod& mod, int row0, int col0) {
#pragma unroll
  for (int mt = 0; mt < Tile::kMT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < Tile::kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < Tile::kElems; ++e) {
        s(mt, nt, e) = mod(s(mt, nt, e), Tile::row(row0, mt, e), Tile::col(col0, nt, e));
      }
    }
  }
}

}  // namespace flash
