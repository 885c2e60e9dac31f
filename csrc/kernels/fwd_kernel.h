// The forward kernel: one thread block per (kBlockM query rows, head, batch).
//
// Q stays in shared memory for the block's lifetime; K and V blocks stream through one buffer
// each (contiguous, or paged through a block table: seq_bounds.h's KvRows), walking the key
// blocks the rows' windows reach from the last to the first; only blocks that cross the sequence
// end or a window edge pay for masking, and only the Has_extras instantiations pay for softcap,
// ALiBi and dropout (the sum of a row counts the dropped probabilities too; the kept ones are
// rescaled at the end). The loads overlap the math:
//
//   wait K(n) | issue V(n) | S = Q K(n)^T, mask | wait V(n) | issue K(n-1) | softmax | O += P V(n)
//
// Nothing of size seqlen_q x seqlen_k leaves the registers: P goes from the first product's
// accumulators straight into the second product's A operand.
#pragma once

#include "arch/warp_gemm_mma.h"
#include "dropout.h"
#include "epilogue.h"
#include "fragment.h"
#include "mask.h"
#include "mma.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "seq_bounds.h"
#include "smem_tile.h"
#include "softmax.h"
#include "tile_config.h"

namespace flash {

template <class Traits, bool Has_right_edge, bool Has_extras>
__global__ void __launch_bounds__(Traits::kNThreads) flash_fwd_kernel(const FwdParams params) {
  using T = typename Traits::T;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kMTiles = Traits::kMTiles, kNTiles = Traits::kNTiles, kDTiles = Traits::kDTiles;
  using Layout = MmaAccLayout;
  using STile = AccTile<Layout, kMTiles, kNTiles>;  // scores, then probabilities: queries x keys
  using OTile = AccTile<Layout, kMTiles, kDTiles>;  // output: queries x head dim
  using QTile = SmemTile<kBlockM, kHeadDim>;
  using KVTile = SmemTile<kBlockN, kHeadDim>;

  extern __shared__ __align__(16) char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + kBlockM * kHeadDim;
  T* sV = sK + kBlockN * kHeadDim;

  // Causal blocks near the end of the sequence carry the most keys: start those first.
  const int m_block = Has_right_edge ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int head = blockIdx.y, batch = blockIdx.z;
  const int head_k = head / (params.h / params.h_k);
  const int tid = threadIdx.x, warp = tid / kGroupSize, lane = tid % kGroupSize;
  const int warp_row0 = warp * 16 * kMTiles;  // first of this warp's rows inside the block
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
  auto keys_in_block = [&](int n) { return min(kBlockN, seq.seqlen_k - n * kBlockN); };
  // Paged K/V, in the Has_extras instantiations only (the dispatch sends paged calls there): the
  // plain ones sit at 255 registers at d128, and any paging code in their loop spills. Where one
  // copy step of all threads fits in a page (d64, d128, d256), a thread's one pointer is re-based
  // at the steps that start a page, from a uniform lookup (one a block for pages of >= kBlockN
  // rows), in a rolled loop; other head dims copy a block from its first row, or look up each row.
  // rows_of() makes the KvRows afresh (k_rows, v_rows below): nothing paged is held in the loop.
  constexpr bool kPagedSteps = KVTile::template kPagedRowSteps<Traits::kNThreads, kMinPageRows>;
  auto load_paged = [&](T* smem, const auto& rows_of, int n) {
    const KvRows<T> rows = rows_of();
    if constexpr (kPagedSteps) {
      auto page_offset = [&](int r) { return rows_of().paged_offset(n * kBlockN + r); };
      KVTile::template load_pages_async<Traits::kNThreads>(smem, rows.base, page_offset, rows.row_stride,
                                                           1 << rows.page_shift, keys_in_block(n), params.d, tid);
    } else if (rows.strided_blocks(kBlockN)) {
      KVTile::template load_async<Traits::kNThreads>(smem, rows(n * kBlockN), rows.row_stride, keys_in_block(n),
                                                     params.d, tid);
    } else {
      auto row_ptr = [&](int r) { return rows(n * kBlockN + r); };
      KVTile::template load_rows_async<Traits::kNThreads, T, decltype(row_ptr), 1>(smem, row_ptr, keys_in_block(n),
                                                                                     params.d, tid);
    }
  };
  // The batch index opaque: the block-table row is recomputed at each lookup, not held in the loop
  // (with per-row lookups that spills more at d96 and d192).
  auto k_rows = [&] { return seq.k_rows<T>(params, kPagedSteps ? opaque(batch) : batch, head_k); };
  auto v_rows = [&] { return seq.v_rows<T>(params, kPagedSteps ? opaque(batch) : batch, head_k); };
  auto load_k = [&](int n) {
    if (Has_extras && params.block_table != nullptr) return load_paged(sK, k_rows, n);
    KVTile::template load_async<Traits::kNThreads>(sK, k + n * kBlockN * params.k_row_stride, params.k_row_stride,
                                                   keys_in_block(n), params.d, tid);
  };
  auto load_v = [&](int n) {
    if (Has_extras && params.block_table != nullptr) return load_paged(sV, v_rows, n);
    KVTile::template load_async<Traits::kNThreads>(sV, v + n * kBlockN * params.v_row_stride, params.v_row_stride,
                                                   keys_in_block(n), params.d, tid);
  };

  const KeyWindow<Has_right_edge> window{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right};
  const ScoreMod score_mod(params, batch, head, seq.seqlen_q, seq.seqlen_k);
  const Dropout dropout(params, seed, offset, batch, head);
  const int n_block_begin = window.n_block_begin(row_begin, kBlockN);
  const int n_block_end = window.n_block_end(row_begin + kBlockM, kBlockN);

  QTile::template load_async<Traits::kNThreads>(sQ, q, params.q_row_stride, rows_valid, params.d, tid);
  if (n_block_end > n_block_begin) load_k(n_block_end - 1);
  copy_async_commit();

  OTile acc_o = {};
  OnlineSoftmax<Layout, kMTiles> softmax;
  const int thread_row0 = row_begin + warp_row0 + Layout::lane_row(lane);  // row of fragment element 0

  for (int n = n_block_end - 1; n >= n_block_begin; --n) {
    copy_async_wait<0>();
    __syncthreads();  // K(n) visible to all; every warp is done with V(n+1)
    load_v(n);
    copy_async_commit();

    STile acc_s = {};
    gemm_smem<kHeadDim, Major::kRows, Major::kRows, QTile, KVTile>(acc_s, sQ, warp_row0, sK, 0, lane);
    if constexpr (Has_extras) apply_score_mod(acc_s, score_mod, thread_row0, n * kBlockN + Layout::lane_col(lane));
    if (window.block_needs_mask(row_begin, row_begin + kBlockM, n * kBlockN, (n + 1) * kBlockN)) {
      apply_key_window(acc_s, window, thread_row0, n * kBlockN + Layout::lane_col(lane));
    }

    copy_async_wait<0>();
    __syncthreads();  // V(n) visible to all; every warp is done with K(n)
    if (n > n_block_begin) {
      load_k(n - 1);
      copy_async_commit();
    }

    softmax.update(acc_s, acc_o, params.scale_softmax_log2);
    if constexpr (Has_extras) {
      if (params.has_dropout) apply_dropout(acc_s, dropout, thread_row0, n * kBlockN + Layout::lane_col(lane));
    }
    gemm_regs<Major::kCols, KVTile>(acc_o, acc_s, sV, 0, lane);
  }

  float lse[OTile::kRows];
  softmax.finalize(acc_o, params.logit_scale, lse, Has_extras && params.has_dropout ? params.rp_keep : 1.f);

  store_output<T>(params, seq, batch, head, thread_row0, lane, acc_o, lse);
}

}  // namespace flash
