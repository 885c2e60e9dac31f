// Attention over a KV cache (decode and chunked prefill): one thread block per (16 query rows,
// head, batch, split). Decode is a stream of K and V through the chip, so the block keeps
// kStages key tiles in flight and its warps split every tile between them instead of the
// query rows (there are few): warp w multiplies the 16 rows by keys [w kWarpKeys, (w + 1)
// kWarpKeys) of the tile with its own online softmax, and the warps merge their states at the
// end. With split-KV (num_splits > 1) a block takes a slice of the key blocks and writes fp32
// partials with their lse; flash_kvcache_combine_kernel (kvcache.h) merges the slices.
//
//   wait tile n | issue tile n + kStages - 1 | S = Q K(n)^T, mask | softmax | O += P V(n)
#pragma once

#include "arch/warp_gemm_mma.h"
#include "fragment.h"
#include "kvcache.h"
#include "mask.h"
#include "mma.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "smem_tile.h"
#include "softmax.h"
#include "tile_config.h"

namespace flash {

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads) flash_fwd_kvcache_kernel(const KvCacheParams params) {
  using T = typename Traits::T;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kNWarps = Traits::kNWarps, kNThreads = Traits::kNThreads, kStages = Traits::kStages;
  constexpr int kWarpKeys = Traits::kWarpKeys, kDTiles = Traits::kDTiles;
  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;

  extern __shared__ __align__(16) char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sKV = sQ + kBlockM * kHeadDim;  // stage s: K at sKV + 2 s kBlockN kHeadDim, V after it
  auto stage_k = [&](int stage) { return sKV + 2 * stage * kBlockN * kHeadDim; };
  auto stage_v = [&](int stage) { return sKV + (2 * stage + 1) * kBlockN * kHeadDim; };

  allow_dependents();        // the combine kernel may take its place on the SMs already
  wait_for_previous_grid();  // the append must have landed
  const int m_blocks = (params.seqlen_q + kBlockM - 1) / kBlockM;
  const int m_block = blockIdx.x % m_blocks, split = blockIdx.x / m_blocks;
  const int head = blockIdx.y, batch = blockIdx.z;
  const int head_k = head / (params.h / params.h_k);
  const int tid = threadIdx.x, warp = tid / kGroupSize, lane = tid % kGroupSize;
  const int row_begin = m_block * kBlockM, row_end = min(row_begin + kBlockM, params.seqlen_q);

  const KvCacheBlock<T> kv(params, batch, head, head_k, row_begin, row_end, kBlockN, split);

  const T* q = static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
               row_begin * params.q_row_stride;
  QTile::template load_rows_async<kNThreads>(
      sQ, [&](int row) { return q + row * params.q_row_stride; }, row_end - row_begin, params.d, tid);
  auto load_kv = [&](int n, int stage) {
    const int first = kv.first_row(n, kBlockN), keys = kv.keys(n, kBlockN);
    KVTile::template load_rows_async<kNThreads>(stage_k(stage), [&](int r) { return kv.k_rows(first + r); }, keys,
                                                params.d, tid);
    KVTile::template load_rows_async<kNThreads>(stage_v(stage), [&](int r) { return kv.v_rows(first + r); }, keys,
                                                params.d, tid);
  };
#pragma unroll
  for (int s = 0; s + 1 < kStages; ++s) {
    if (kv.n_begin + s < kv.n_end) load_kv(kv.n_begin + s, s);
    copy_async_commit();  // one group per stage, empty or not: the waits count groups
  }

  using Layout = MmaAccLayout;
  using OTile = MmaTile<1, kDTiles>;  // one 16-row strip of queries x head dim
  OTile acc_o = {};
  OnlineSoftmax<Layout, 1> softmax;
  const int thread_row0 = row_begin + Layout::lane_row(lane);

  for (int n = kv.n_begin; n < kv.n_end; ++n) {
    const int i = n - kv.n_begin, stage = i % kStages;
    copy_async_wait<kStages - 2>();
    __syncthreads();  // tile n visible to all; every warp is done with the stage refilled next
    if (n + kStages - 1 < kv.n_end) load_kv(n + kStages - 1, (i + kStages - 1) % kStages);
    copy_async_commit();

    const int key0 = n * kBlockN + warp * kWarpKeys;
    MmaTile<1, kWarpKeys / 8> acc_s = {};
    gemm_smem<kHeadDim, Major::kRows, Major::kRows, QTile, KVTile>(acc_s, sQ, 0, stage_k(stage), warp * kWarpKeys, lane);
    if (kv.has_score_mod) apply_score_mod(acc_s, kv.score_mod, thread_row0, key0 + Layout::lane_col(lane));
    if (kv.window.block_needs_mask(row_begin, row_end, key0, key0 + kWarpKeys)) {
      apply_key_window(acc_s, kv.window, thread_row0, key0 + Layout::lane_col(lane));
    }
    softmax.update(acc_s, acc_o, params.scale_softmax_log2);
    gemm_regs<Major::kCols, KVTile>(acc_o, acc_s, stage_v(stage) + warp * kWarpKeys * kHeadDim, 0, lane);
  }

  // Merge the warps' softmax states through shared memory (the tiles are no longer needed):
  // M = max of the warps' maxima, L = sum of their sums rescaled to M, O = sum of rescaled O / L.
  copy_async_wait<0>();
  __syncthreads();
  float* s_max = reinterpret_cast<float*>(smem);      // [kNWarps][kBlockM], log2 units
  float* s_sum = s_max + kNWarps * kBlockM;           // [kNWarps][kBlockM]
  float* s_lse = s_sum + kNWarps * kBlockM;           // [kBlockM], natural log
  float* s_o = s_lse + kBlockM;                       // [kNWarps][kBlockM][kMergeRowFloats]
  constexpr int kRowFloats = Traits::kMergeRowFloats;
  // Row slot `slot` of the lane (one 16-row strip) is row row_in_block(slot) of the block.
  auto row_in_block = [&](int slot) { return Layout::lane_row(lane) + OTile::row_offset_of(slot); };
  float warp_max[OTile::kRows];
#pragma unroll
  for (int slot = 0; slot < OTile::kRows; ++slot) {
    const float m = softmax.row_max[slot];
    warp_max[slot] = m == -INFINITY ? -INFINITY : m * params.scale_softmax_log2;
    const float sum = Layout::row_sum(softmax.row_sum[slot]);
    if (Layout::row_leader(lane)) {
      s_max[warp * kBlockM + row_in_block(slot)] = warp_max[slot];
      s_sum[warp * kBlockM + row_in_block(slot)] = sum;
    }
  }
  __syncthreads();
#pragma unroll
  for (int slot = 0; slot < OTile::kRows; ++slot) {
    const int r = row_in_block(slot);
    float m_all = -INFINITY, l_all = 0.f;
#pragma unroll
    for (int w = 0; w < kNWarps; ++w) m_all = fmaxf(m_all, s_max[w * kBlockM + r]);
#pragma unroll
    for (int w = 0; w < kNWarps; ++w) {
      const float m = s_max[w * kBlockM + r];
      if (m != -INFINITY) l_all += s_sum[w * kBlockM + r] * exp2_fast(m - m_all);
    }
    const float factor = warp_max[slot] == -INFINITY || l_all == 0.f ? 0.f : exp2_fast(warp_max[slot] - m_all) / l_all;
    float* o_row = s_o + (warp * kBlockM + r) * kRowFloats + Layout::lane_col(lane);
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) {
#pragma unroll
      for (int run = 0; run < OTile::kRowElems / Layout::kColRun; ++run) {
        const int e0 = Layout::element(slot, run * Layout::kColRun);
#pragma unroll
        for (int i = 0; i < Layout::kColRun; i += 2) {
          *pair_at<float>(o_row + OTile::col_offset(dt, e0) + i) =
              pack_pair<float>(acc_o(0, dt, e0 + i) * factor, acc_o(0, dt, e0 + i + 1) * factor);
        }
      }
    }
    if (warp == 0 && Layout::row_leader(lane)) {
      s_lse[r] = m_all == -INFINITY || l_all == 0.f ? -INFINITY : (m_all + __log2f(l_all)) * 0.6931471805599453f;
    }
  }
  __syncthreads();

  // Sum the warps' O, four columns a thread, into o (T) or this split's fp32 partial.
  const bool is_split = params.num_splits > 1;
  const int64_t partial_row0 = ((int64_t(split) * params.b + batch) * params.h + head) * params.seqlen_q;
  for (int idx = tid; idx < kBlockM * kHeadDim / 4; idx += kNThreads) {
    const int r = idx / (kHeadDim / 4), col = 4 * (idx % (kHeadDim / 4)), row = row_begin + r;
    if (row >= row_end || col >= params.d) continue;
    float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int w = 0; w < kNWarps; ++w) {
      const float4 part = *reinterpret_cast<const float4*>(s_o + (w * kBlockM + r) * kRowFloats + col);
      sum.x += part.x, sum.y += part.y, sum.z += part.z, sum.w += part.w;
    }
    if (is_split) {
      *reinterpret_cast<float4*>(params.o_accum + (partial_row0 + row) * kHeadDim + col) = sum;
    } else {
      T* o = static_cast<T*>(params.o) + batch * params.o_batch_stride + head * params.o_head_stride +
             row * params.o_row_stride + col;
      *reinterpret_cast<uint2*>(o) = make_uint2(pack2<T>(sum.x, sum.y), pack2<T>(sum.z, sum.w));
    }
  }
  if (tid < row_end - row_begin) {
    const int row = row_begin + tid;
    if (is_split) params.lse_accum[partial_row0 + row] = s_lse[tid];
    else params.softmax_lse[batch * params.lse_batch_stride + head * params.lse_head_stride + row] = s_lse[tid];
  }
}

}  // namespace flash
