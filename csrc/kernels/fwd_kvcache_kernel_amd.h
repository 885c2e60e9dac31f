// Attention over a KV cache on AMD (decode and chunked prefill): one thread block per (query tile,
// head, batch, split) with one wave, whose query tile attends to its split's key blocks on the
// device's matrix cores (AmdQueryTile, attention_amd.h). The cache's rows come through KvRows
// (seq_bounds.h; kvcache.h adds cache_batch_idx and cache_leftpad: contiguous or paged), the new
// rows having been appended by kvcache_prepare_kernel; with split-KV each block writes fp32
// partials with their lse and flash_kvcache_combine_kernel merges them (both kvcache.h /
// fwd_kvcache_kernel.h's, which are vendor-neutral). With the head dim split (tile_config.h's
// kDSplit: RDNA above head dim 128) kDSplit waves share the query tile, each computing S^T over
// its part of the head dim and holding its part of O's channels; they add their partial S through
// LDS (one more barrier a key block), as the forward does (fwd_kernel_amd.h).
#pragma once

#include "attention_amd.h"
#include "epilogue.h"
#include "fragment.h"
#include "kvcache.h"
#include "mask.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "tile_config.h"

#if defined(FA_PLATFORM_HIP)

namespace flash {

template <class Traits>
__global__ void __launch_bounds__(Traits::kNThreads) flash_fwd_kvcache_amd_kernel(const KvCacheParams params) {
#if defined(FA_AMD_DEVICE_FAMILY)
  if constexpr (Traits::kFamily == FA_AMD_DEVICE_FAMILY) {
    using T = typename Traits::T;
    using Wave = AmdQueryTile<Traits>;
    using Layout = typename Wave::Layout;
    constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
    constexpr int kKStride = Traits::kKStride, kVtStride = Traits::kVtStride, kNThreads = Traits::kNThreads;
    constexpr int kDSplit = Traits::kDSplit;

    extern __shared__ __align__(16) char smem[];
    T* sK = reinterpret_cast<T*>(smem);  // [kBlockN][kKStride]
    T* sVt = sK + kBlockN * kKStride;    // [kHeadDim][kVtStride]
    T* sQ = sVt + kHeadDim * kVtStride;  // [kBlockM][kKStride] without Q in registers
    // [kWaves][kRowsPerWave * kBlockN]: partial S, with the head dim split
    float* sSwap = reinterpret_cast<float*>(sQ + (Traits::kQInRegisters ? 0 : kBlockM * kKStride));

    const int m_blocks = (params.seqlen_q + kBlockM - 1) / kBlockM;
    const int m_block = blockIdx.x % m_blocks, split = blockIdx.x / m_blocks;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int head_k = head / (params.h / params.h_k);
    const int tid = threadIdx.x, wave = tid / Traits::kWaveSize, lane = tid % Traits::kWaveSize;
    const int row_begin = m_block * kBlockM, row_end = min(row_begin + kBlockM, params.seqlen_q);

    const KvCacheBlock<T> kv(params, batch, head, head_k, row_begin, row_end, kBlockN, split);

    const T* q = static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
                 row_begin * params.q_row_stride;
    // Waves wave / kDSplit share their query rows; wave % kDSplit names the part of the head dim.
    Wave tile(lane, wave / kDSplit * Traits::kRowsPerWave, wave % kDSplit);
    auto q_row = [&](int row) { return q + row * params.q_row_stride; };
    tile.load_q(q_row, row_end - row_begin, params.d);
    if constexpr (!Traits::kQInRegisters) {
      copy_rows_to_lds<kBlockM, kHeadDim, kKStride, false, kNThreads>(sQ, q_row, row_end - row_begin, params.d, tid);
    }
    const int tile_row0 = row_begin + tile.wave_row0, thread_row0 = tile_row0 + Layout::lane_row(lane);

    constexpr bool kChunksSpanChannels = kNThreads % (kHeadDim / 8) != 0;  // 16-byte chunks
    // One wave copies the whole block: the copies go straight to LDS (a block held in registers
    // through the products would take a wave's registers).
    for (int n = kv.n_begin; n < kv.n_end; ++n) {
      const int first = kv.first_row(n, kBlockN), keys = kv.keys(n, kBlockN);
      __syncthreads();  // done with the last block's K and V^T
      copy_rows_to_lds<kBlockN, kHeadDim, kKStride, false, kNThreads>(
          sK, [&](int r) { return kv.k_rows(first + r); }, keys, params.d, tid);
      // Where a thread's chunks fall in different channels (d96, d192), each has a row and a channel
      // compare, and K's masks, kept for V's copy (the same rows and channels), spilled SGPRs at
      // d192: there V's key count is opaque, so V's copy makes its own where its loads are.
      copy_rows_to_lds<kBlockN, kHeadDim, kVtStride, true, kNThreads>(
          sVt, [&](int r) { return kv.v_rows(first + r); }, kChunksSpanChannels ? amd::opaque_uniform(keys) : keys,
          params.d, tid);
      __syncthreads();

      typename Wave::STile acc_s = tile.scores(sK, sQ);
      if constexpr (kDSplit > 1) {
        // The partners' partial S (the buffer is written again after the next block's first barrier).
        publish_partial<Traits::kRowsPerWave * kBlockN>(acc_s, sSwap, wave, lane);
        __syncthreads();
        add_partner_partials<kDSplit, Traits::kRowsPerWave * kBlockN>(acc_s, sSwap, wave, lane);
      }
      const int col0 = n * kBlockN + Layout::lane_col(lane);
      if (kv.has_score_mod) apply_score_mod(acc_s, kv.score_mod, thread_row0, col0);
      if (kv.window.block_needs_mask(row_begin, row_end, n * kBlockN, (n + 1) * kBlockN)) {
        apply_key_window(acc_s, kv.window, thread_row0, col0);
      }
      tile.softmax.update(acc_s, tile.acc_o, params.scale_softmax_log2);
      tile.accumulate(acc_s, sVt);
    }

    // The parameters read afresh: the output's pointers and strides are loaded here instead of
    // held in SGPRs across the loop (amd_wave.h).
    const KvCacheParams late = amd::reload_params(params);
    float lse[Wave::OTile::kRows];
    tile.softmax.finalize(tile.acc_o, late.logit_scale, lse);
    // Each wave its channels of O; the first of a query tile's waves its rows' lse.
    const int col0 = tile.channel0();
    const bool stores_lse = tile.part == 0;
    if (late.num_splits > 1) {
      // This split's fp32 partial [num_splits, b, h, seqlen_q, kHeadDim] and its lse.
      const int64_t partial_row0 = ((int64_t(split) * late.b + batch) * late.h + head) * late.seqlen_q;
      store_tile<float>(late.o_accum + partial_row0 * kHeadDim, kHeadDim, tile.acc_o, tile_row0, col0, row_end,
                        late.d, 1.f, lane);
      if (stores_lse) {
        store_row_values<typename Wave::OTile>(late.lse_accum + partial_row0, lse, tile_row0, row_end, lane);
      }
    } else {
      T* o = static_cast<T*>(late.o) + batch * late.o_batch_stride + head * late.o_head_stride;
      store_tile<T>(o, late.o_row_stride, tile.acc_o, tile_row0, col0, row_end, late.d, 1.f, lane);
      if (stores_lse) {
        store_row_values<typename Wave::OTile>(
            late.softmax_lse + batch * late.lse_batch_stride + head * late.lse_head_stride, lse, tile_row0,
            row_end, lane);
      }
    }
  }
#endif  // FA_AMD_DEVICE_FAMILY
}

}  // namespace flash

#endif  // FA_PLATFORM_HIP
