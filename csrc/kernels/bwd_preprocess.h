// The backward's preprocess, shared by every backward kernel: D = rowsum(dO * O) per query row,
// the term the softmax derivative subtracts. One 32-lane group per row (on a 64-lane wavefront
// each half takes its own row); vendor-neutral.
#pragma once

#include "params.h"
#include "platform.h"
#include "seq_bounds.h"

namespace flash {

inline constexpr int kPreprocessRows = 8;  // one warp per query row

template <class T, int kHeadDim>
__global__ void __launch_bounds__(kPreprocessRows * kGroupSize) bwd_preprocess_kernel(const BwdParams params) {
  const int warp = threadIdx.x / kGroupSize, lane = threadIdx.x % kGroupSize;
  const int row = blockIdx.x * kPreprocessRows + warp, head = blockIdx.y, batch = blockIdx.z;
  const SeqBounds seq(params, batch);
  if (row >= seq.seqlen_q) return;  // whole warps leave together: the shuffles below stay full
  const T* dout = static_cast<const T*>(params.dout) + batch * params.do_batch_stride + head * params.do_head_stride +
                  (seq.q_start + row) * params.do_row_stride;
  const T* out = static_cast<const T*>(params.o) + batch * params.o_batch_stride + head * params.o_head_stride +
                 (seq.q_start + row) * params.o_row_stride;
  float dot = 0.f;
  // Each lane takes 16-byte chunks of the row.
  for (int col = lane * 8; col < params.d; col += kGroupSize * 8) {
    const uint4 a = *reinterpret_cast<const uint4*>(dout + col);
    const uint4 b = *reinterpret_cast<const uint4*>(out + col);
    const uint32_t x[4] = {a.x, a.y, a.z, a.w}, y[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 xf = unpack2<T>(x[i]), yf = unpack2<T>(y[i]);
      dot += xf.x * yf.x + xf.y * yf.y;
    }
  }
#pragma unroll
  for (int offset = kGroupSize / 2; offset > 0; offset /= 2) dot += shfl_xor(dot, offset);
  if (lane == 0) params.softmax_d[seq.lse_index(params, batch, head, row)] = dot;
}

}  // namespace flash
