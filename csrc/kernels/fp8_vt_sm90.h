// The Hopper fp8 forward's V, transposed (fwd_kernel_sm90.h): wgmma reads 8-bit operands only
// K-major, so O += P V needs V^T with the keys contiguous, [b, h_k, d, keys] (keys rounded up to
// kVtKeys, the rest zeros), which TMA then loads like any K-major tile. Written from v in global
// memory before the attention kernel: for 16k keys at d128 a read and a write of 2 MB a kv head,
// about 1% of the attention's time, in exchange for no transposition in the kernel.
//
// Inside every 16 keys the order is P's: the fp8 A fragment of P comes straight from S's
// accumulators, where a lane holds keys 2 t, 2 t + 1 (t = lane % 4) of each n8 tile, but it
// stands for k = 4 t .. 4 t + 3; so position 4 t + i of a group holds key 8 (i / 2) + 2 t + i % 2
// (fp8_p_key), and both operands agree on which key each k is.
#pragma once

#include "params.h"
#include "platform.h"
#include "tile_config.h"  // kVtKeys

namespace flash {

FA_HOST_DEVICE constexpr int fp8_p_key(int position) {
  const int t = (position % 16) / 4, i = position % 4;
  return position / 16 * 16 + 8 * (i / 2) + 2 * t + i % 2;
}

// Grid (v_transposed_keys / kVtKeys, h_k, b), 256 threads: a [kVtKeys][kHeadDim] tile of v through
// shared memory, then 16 bytes (16 keys of one channel) a store.
template <int kHeadDim>
__global__ void __launch_bounds__(256) fp8_transpose_v_kernel(const FwdParams params) {
  __shared__ __align__(16) uint8_t tile[kVtKeys][kHeadDim + 16];  // + 16: the column reads spread over banks
  const int key0 = blockIdx.x * kVtKeys, head_k = blockIdx.y, batch = blockIdx.z;
  const uint8_t* v =
      static_cast<const uint8_t*>(params.v) + batch * params.v_batch_stride + head_k * params.v_head_stride;
  constexpr int kChunks = kHeadDim / 16;
  for (int i = threadIdx.x; i < kVtKeys * kChunks; i += blockDim.x) {
    const int row = i / kChunks, c = 16 * (i % kChunks);
    uint4 chunk = make_uint4(0, 0, 0, 0);
    if (key0 + row < params.seqlen_k && c < params.d) {
      chunk = *reinterpret_cast<const uint4*>(v + (key0 + row) * params.v_row_stride + c);
    }
    *reinterpret_cast<uint4*>(&tile[row][c]) = chunk;
  }
  __syncthreads();
  uint8_t* vt = static_cast<uint8_t*>(params.v_transposed) +
                (int64_t(batch) * params.h_k + head_k) * params.d * params.v_transposed_keys + key0;
  for (int i = threadIdx.x; i < params.d * (kVtKeys / 16); i += blockDim.x) {
    const int channel = i / (kVtKeys / 16), group = 16 * (i % (kVtKeys / 16));
    uint32_t words[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      words[w] = 0;
#pragma unroll
      for (int b = 0; b < 4; ++b) words[w] |= uint32_t(tile[fp8_p_key(group + 4 * w + b)][channel]) << (8 * b);
    }
    *reinterpret_cast<uint4*>(vt + channel * params.v_transposed_keys + group) =
        make_uint4(words[0], words[1], words[2], words[3]);
  }
}

template <int kHeadDim>
error_t run_fp8_transpose_v(const FwdParams& params, stream_t stream) {
  const dim3 grid(static_cast<unsigned>(params.v_transposed_keys / kVtKeys), params.h_k, params.b);
  fp8_transpose_v_kernel<kHeadDim><<<grid, 256, 0, stream>>>(params);
  return get_last_error();
}

}  // namespace flash
