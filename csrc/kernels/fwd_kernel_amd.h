// The AMD forward: one thread block per (kBlockM query rows, head, batch), each wave a tile of
// its rows (AmdQueryTile, attention_amd.h: both products on the device's matrix cores,
// transposed). The algorithm is the portable kernel's (fwd_kernel.h): key blocks from the last
// to the first, masking only where a window edge or the sequence end crosses a block, P kept in
// registers, the extras (softcap, ALiBi, dropout) only in the Has_extras instantiations. K and V
// are contiguous: the dispatch refuses paged K/V here (dispatch.cu says why). Per key block:
//
//   barrier | K(n), V(n)^T -> LDS | barrier | load K(n-1), V(n-1) | S^T = K Q^T, mask | softmax | O^T += V^T P^T
//
// With the head dim split (tile_config.h's kDSplit: RDNA above head dim 128), the waves of a query
// tile each compute S^T over their part of the head dim and add the partners' partial sums through
// LDS (one more barrier) before the mask; each keeps its part of O's channels. RDNA3's d128
// extras instantiations load K(n) and V(n) at the block's start instead (kPrefetch, below).
//
// fp8 q, k, v (Traits::kFp8; gfx942 and gfx950, plain variants only): both products on the fp8
// instruction (MatrixCoreFp8), q_descale k_descale folded into the softmax scale, P quantized
// (times MatrixCoreFp8::kPScale), v_descale / kPScale applied to O at the end; out is bf16.
#pragma once

#include "attention_amd.h"
#include "dropout.h"
#include "epilogue.h"
#include "fp8.h"
#include "fragment.h"
#include "mask.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "seq_bounds.h"
#include "tile_config.h"

#if defined(FA_PLATFORM_HIP)

namespace flash {

template <class Traits, bool Has_right_edge, bool Has_extras>
__global__ void __launch_bounds__(Traits::kNThreads) flash_fwd_amd_kernel(const FwdParams params) {
  // Each device pass compiles the body of its own family only (the launch picks the family from
  // the device at run time).
#if defined(FA_AMD_DEVICE_FAMILY)
  if constexpr (Traits::kFamily == FA_AMD_DEVICE_FAMILY && (!Traits::kFp8 || FA_AMD_DEVICE_HAS_FP8)) {
    using T = typename Traits::T;
    using OutT = typename Traits::OutT;
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

    // Blocks with a right window edge near the end of the sequence carry the most keys: first.
    const int m_block = Has_right_edge ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int head_k = head / (params.h / params.h_k);
    const int tid = threadIdx.x, wave = tid / Traits::kWaveSize, lane = tid % Traits::kWaveSize;
    const int row_begin = m_block * kBlockM;
    uint64_t seed = 0, offset = 0;
    if constexpr (Has_extras) {
      forward_dropout_seed(params, head, batch, tid, seed, offset);
    }
    const SeqBounds seq(params, batch);
    if (row_begin >= seq.seqlen_q) return;  // varlen: this sequence is shorter than the longest

    const T* q = seq.q_row<T>(params, batch, head, row_begin);
    const T* k = seq.k_contiguous<T>(params, batch, head_k);
    const T* v = seq.v_contiguous<T>(params, batch, head_k);
    const int rows_valid = min(kBlockM, seq.seqlen_q - row_begin);

    const KeyWindow<Has_right_edge> window{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right};
    [[maybe_unused]] const ScoreMod score_mod(params, batch, head, seq.seqlen_q, seq.seqlen_k);
    const int n_block_begin = window.n_block_begin(row_begin, kBlockN);
    const int n_block_end = window.n_block_end(row_begin + kBlockM, kBlockN);
    // fp8: the scores of q and k as stored, times q_descale k_descale, are the logits' inputs.
    [[maybe_unused]] float qk_descale = 1.f;
    if constexpr (Traits::kFp8) {
      qk_descale = fp8_descale(params.q_descale, params, batch, head_k) *
                   fp8_descale(params.k_descale, params, batch, head_k);
    }

    // Waves wave / kDSplit share their query rows; wave % kDSplit names the part of the head dim.
    Wave tile(lane, wave / kDSplit * Traits::kRowsPerWave, wave % kDSplit);
    auto q_row = [&](int row) { return q + row * params.q_row_stride; };
    tile.load_q(q_row, rows_valid, params.d);
    if constexpr (!Traits::kQInRegisters) {
      copy_rows_to_lds<kBlockM, kHeadDim, kKStride, false, kNThreads>(sQ, q_row, rows_valid, params.d, tid);
    }
    const int thread_row0 = row_begin + tile.wave_row0 + Layout::lane_row(lane);  // row of the lane's element 0

    // K(n) and V(n) travel through registers: their loads are issued before block n + 1's products.
    RowChunks<kBlockN, kHeadDim, kNThreads, int(sizeof(T))> k_next, v_next;
    auto load_next = [&](const FwdParams& p, int n) {
      const int keys_valid = min(kBlockN, seq.seqlen_k - n * kBlockN);
      const T* k_block = k + n * kBlockN * p.k_row_stride;
      const T* v_block = v + n * kBlockN * p.v_row_stride;
      // RDNA: one offset a thread (RowChunks::load_rows). On CDNA its uniform per-chunk steps
      // cost SGPRs the d128 extras lack (gfx942 spilled 6): there the offsets stay per chunk.
      if constexpr (is_cdna(Traits::kFamily)) {
        k_next.load([&](int row) { return k_block + row * p.k_row_stride; }, keys_valid, p.d, tid);
        v_next.load([&](int row) { return v_block + row * p.v_row_stride; }, keys_valid, p.d, tid);
      } else {
        k_next.load_rows(k_block, p.k_row_stride, keys_valid, p.d, tid);
        v_next.load_rows(v_block, p.v_row_stride, keys_valid, p.d, tid);
      }
    };
    // RDNA3's d128 extras: K(n-1) and V(n-1) held in registers across block n's products (32 VGPRs)
    // spilled 59 VGPRs, and so did the products' operands loaded all ahead. There each block's K and
    // V go straight to LDS, and S^T = K Q^T loads at most two k-steps' operands ahead (0 spills;
    // the cost, global loads no longer overlapped with the products, is unmeasured).
    constexpr bool kPrefetch = !(Traits::kFamily == AmdFamily::kRdna3 && Has_extras && kDSplit == 1 && kHeadDim == 128);
    constexpr int kFenceSteps = kPrefetch ? 0 : 2;
    if (kPrefetch && n_block_end > n_block_begin) load_next(params, n_block_end - 1);

    for (int n = n_block_end - 1; n >= n_block_begin; --n) {
      // With the extras, the parameters read afresh each block: the strides, the head dim (and
      // the exec masks of its compares) and the scalars are loaded here instead of held in SGPRs
      // across the loop. (Without, nothing spills and the reloads would cost instructions.)
      const FwdParams& block_params = amd::reload_params_if<Has_extras>(params);
      __syncthreads();  // every wave is done with the last block's K and V^T
      if constexpr (!kPrefetch) load_next(block_params, n);
      // With the head dim split, K(n) went to LDS behind the partial sums' barrier (below).
      if (kDSplit == 1 || n == n_block_end - 1) k_next.template store<kKStride, false>(sK, tid);
      v_next.template store<kVtStride, true>(sVt, tid);
      __syncthreads();  // K(n), V(n)^T (and Q) visible to all
      if (kPrefetch && n > n_block_begin) load_next(block_params, n - 1);

      typename Wave::STile acc_s = tile.template scores<kFenceSteps>(sK, sQ);
      if constexpr (kDSplit > 1) {
        // The waves of a query tile add each other's partial S (the buffer is written again after
        // the loop's first barrier). Past this barrier no wave reads K(n): K(n - 1) takes its place
        // now, so its registers are free for the softmax and O^T += V^T P^T.
        publish_partial<Traits::kRowsPerWave * kBlockN>(acc_s, sSwap, wave, lane);
        __syncthreads();
        if (n > n_block_begin) k_next.template store<kKStride, false>(sK, tid);
        add_partner_partials<kDSplit, Traits::kRowsPerWave * kBlockN>(acc_s, sSwap, wave, lane);
      }
      const int col0 = n * kBlockN + Layout::lane_col(lane);
      if constexpr (Has_extras) {
        if constexpr (is_cdna(Traits::kFamily)) {
          // From the block's reloaded params: the softcap, slope and diagonal (and the softcap's
          // compare, a 64-bit mask) are not held in SGPRs across the loop (gfx950: 5-13 -> 0-3
          // spills). On RDNA3 the per-block values cost VGPRs it lacks (gfx1100 d128 59 -> 189).
          const ScoreMod block_mod(block_params, batch, head, seq.seqlen_q, seq.seqlen_k);
          apply_score_mod(acc_s, block_mod, thread_row0, col0);
        } else {
          apply_score_mod(acc_s, score_mod, thread_row0, col0);
        }
      }
      if (window.block_needs_mask(row_begin, row_begin + kBlockM, n * kBlockN, (n + 1) * kBlockN)) {
        apply_key_window(acc_s, window, thread_row0, col0);
      }
      if constexpr (Traits::kFp8) {
        tile.softmax.update(acc_s, tile.acc_o, block_params.scale_softmax_log2 * qk_descale);
      } else {
        tile.softmax.update(acc_s, tile.acc_o, block_params.scale_softmax_log2);
      }
      if constexpr (Has_extras) {
        if (block_params.has_dropout) {
          // The seed opaque too: its 20 Philox round keys are then computed here, not held.
          const Dropout dropout(block_params, amd::opaque_uniform(seed), offset, batch, head);
          apply_dropout(acc_s, dropout, thread_row0, col0);
        }
      }
      tile.accumulate(acc_s, sVt);
    }

    // The parameters read afresh: the output's pointers and strides are loaded here instead of
    // held in SGPRs across the loop.
    const FwdParams late = amd::reload_params(params);
    float lse[Wave::OTile::kRows];
    if constexpr (Traits::kFp8) {
      const float o_scale = fp8_descale(late.v_descale, late, batch, head_k) / kFp8PScale;
      tile.softmax.finalize(tile.acc_o, late.logit_scale * qk_descale, lse, o_scale);
    } else {
      tile.softmax.finalize(tile.acc_o, late.logit_scale, lse, Has_extras && late.has_dropout ? late.rp_keep : 1.f);
    }
    if constexpr (kDSplit == 1) {
      store_output<OutT>(late, seq, batch, head, thread_row0, lane, tile.acc_o, lse);
    } else {
      // Each wave its channels of O; the first of a query tile's waves its rows' lse.
      const int tile_row0 = row_begin + tile.wave_row0;
      OutT* o = static_cast<OutT*>(late.o) + batch * late.o_batch_stride + head * late.o_head_stride +
                seq.q_start * late.o_row_stride;
      store_tile<OutT>(o, late.o_row_stride, tile.acc_o, tile_row0, tile.channel0(), seq.seqlen_q, late.d, 1.f, lane);
      if (tile.part == 0) {
        store_row_values<typename Wave::OTile>(late.softmax_lse + seq.lse_index(late, batch, head, 0), lse,
                                               tile_row0, seq.seqlen_q, lane);
      }
    }
  }
#endif  // FA_AMD_DEVICE_FAMILY
}

}  // namespace flash

#endif  // FA_PLATFORM_HIP
