// The forward's epilogue, shared by the sm80 and the Hopper kernels: a warp's finished O strips
// (mma.sync's C layout: each thread owns 2 adjacent columns of rows g and g + 8 per 16-row strip)
// go to global memory in T, and the quad's first lane writes each row's lse.
#pragma once

#include "params.h"
#include "platform.h"
#include "seq_bounds.h"

namespace flash {

template <class T, int kMTiles, int kDTiles>
FA_DEVICE void store_output(const FwdParams& params, const SeqBounds& seq, int batch, int head, int thread_row0,
                            int lane, const float (&acc_o)[kMTiles][kDTiles][4], const float (&lse)[2 * kMTiles]) {
  T* o = static_cast<T*>(params.o) + batch * params.o_batch_stride + head * params.o_head_stride +
         seq.q_start * params.o_row_stride;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = thread_row0 + 16 * mt + 8 * half;
      if (row >= seq.seqlen_q) continue;
      T* o_row = o + row * params.o_row_stride;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt) {
        const int col = 8 * dt + 2 * (lane % 4);
        if (col < params.d) {
          *reinterpret_cast<uint32_t*>(o_row + col) = pack2<T>(acc_o[mt][dt][2 * half], acc_o[mt][dt][2 * half + 1]);
        }
      }
      if (lane % 4 == 0) params.softmax_lse[seq.lse_index(params, batch, head, row)] = lse[2 * mt + half];
    }
  }
}

}  // namespace flash
