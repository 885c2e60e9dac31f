// The Hopper forward (sm_90a): the sm80 kernel's algorithm with both products on wgmma.
//
// One thread block of two warpgroups per 128 query rows; warpgroup g owns rows 64 g .. 64 g + 63
// and its warp w the 16-row strip 16 (4 g + w), so each thread holds the same fragments as in
// the sm80 kernel (the online softmax and the masks are shared). Q, K and V sit in shared memory
// in wgmma's 128-byte swizzle; K and V are double-buffered, the next key block loading while
// this one computes:
//
//   wait K, V(n) | issue K, V(n-1) | S = Q K(n)^T (wgmma, smem x smem) | mask, softmax |
//   O += P V(n) (wgmma, P from registers, V read N-major)
//
// Only the plain variants (no softcap, ALiBi or dropout) run here; the dispatch sends the rest
// to the sm80 kernels.
#pragma once

#include "arch/wgmma_sm90.h"
#include "mask.h"
#include "mma.h"
#include "params.h"
#include "platform.h"
#include "seq_bounds.h"
#include "smem_tile_sm90.h"
#include "softmax.h"

namespace flash {

template <class T_, int kHeadDim_>
struct FwdTraitsSm90 {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128, kBlockN = 128;
  static constexpr int kNWarps = 8, kNThreads = kNWarps * kGroupSize;
  static constexpr int kNTiles = kBlockN / 8, kDTiles = kHeadDim / 8;
  using QTile = GmmaTile<kBlockM, kHeadDim>;
  using KVTile = GmmaTile<kBlockN, kHeadDim>;
  // Q, then two stages of K and two of V.
  static constexpr int kSmemBytes = (QTile::kElems + 4 * KVTile::kElems) * int(sizeof(T));
};

template <class Traits, bool Is_causal>
__global__ void __launch_bounds__(Traits::kNThreads, 1) flash_fwd_sm90_kernel(const FwdParams params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Traits::T;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kNTiles = Traits::kNTiles, kDTiles = Traits::kDTiles;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;

  extern __shared__ __align__(1024) char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + QTile::kElems;        // [2][KVTile::kElems]
  T* sV = sK + 2 * KVTile::kElems;   // [2][KVTile::kElems]

  const int m_block = Is_causal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int head = blockIdx.y, batch = blockIdx.z;
  const int head_k = head / (params.h / params.h_k);
  const int tid = threadIdx.x, warp = tid / kGroupSize, lane = tid % kGroupSize;
  const int warpgroup = warp / 4;
  const int row_begin = m_block * kBlockM;
  const SeqBounds seq(params, batch);
  if (row_begin >= seq.seqlen_q) return;

  const T* q = static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
               (seq.q_start + row_begin) * params.q_row_stride;
  const T* k = static_cast<const T*>(params.k) + batch * params.k_batch_stride + head_k * params.k_head_stride +
               seq.k_start * params.k_row_stride;
  const T* v = static_cast<const T*>(params.v) + batch * params.v_batch_stride + head_k * params.v_head_stride +
               seq.k_start * params.v_row_stride;
  auto keys_in_block = [&](int n) { return min(kBlockN, seq.seqlen_k - n * kBlockN); };
  auto load_kv = [&](int n, int stage) {
    KVTile::template load_async<Traits::kNThreads>(sK + stage * KVTile::kElems, k + n * kBlockN * params.k_row_stride,
                                                   params.k_row_stride, keys_in_block(n), params.d, tid);
    KVTile::template load_async<Traits::kNThreads>(sV + stage * KVTile::kElems, v + n * kBlockN * params.v_row_stride,
                                                   params.v_row_stride, keys_in_block(n), params.d, tid);
  };

  const KeyWindow<Is_causal> window{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right};
  const int n_block_begin = window.n_block_begin(row_begin, kBlockN);
  const int n_block_end = window.n_block_end(row_begin + kBlockM, kBlockN);

  QTile::template load_async<Traits::kNThreads>(sQ, q, params.q_row_stride, min(kBlockM, seq.seqlen_q - row_begin),
                                                params.d, tid);
  if (n_block_end > n_block_begin) load_kv(n_block_end - 1, 0);
  copy_async_commit();
  if (n_block_end <= n_block_begin) copy_async_wait<0>();  // no key to see: O = 0, lse = -inf

  float acc_o[1][kDTiles][4] = {};
  OnlineSoftmax<1, kNTiles, kDTiles> softmax;
  const int thread_row0 = row_begin + 16 * warp + lane / 4;
  const uint32_t q_addr = smem_u32(sQ), k_addr = smem_u32(sK), v_addr = smem_u32(sV);
  constexpr uint32_t kStageBytes = KVTile::kElems * sizeof(T);

  int stage = 0;
  for (int n = n_block_end - 1; n >= n_block_begin; --n, stage ^= 1) {
    copy_async_wait<0>();
    fence_proxy_async_shared();  // the copies are read by wgmma, through the async proxy
    __syncthreads();             // K, V(n) visible to all; every warp is done with the other stage
    if (n > n_block_begin) load_kv(n - 1, stage ^ 1);
    copy_async_commit();

    float acc_s[1][kNTiles][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma_ss<kBlockN, T>(acc_s[0], QTile::k_major(q_addr, 64 * warpgroup, kk),
                           KVTile::k_major(k_addr + stage * kStageBytes, 0, kk), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(acc_s[0]);

    if (window.block_needs_mask(row_begin, row_begin + kBlockM, n * kBlockN, (n + 1) * kBlockN)) {
      apply_key_window(acc_s, window, thread_row0, n * kBlockN + 2 * (lane % 4));
    }
    softmax.update(acc_s, acc_o, params.scale_softmax_log2);

    // Two adjacent n8 tiles of S are one k16 A fragment of P.
    uint32_t p[kBlockN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      p[kk][0] = pack2<T>(acc_s[0][2 * kk][0], acc_s[0][2 * kk][1]);
      p[kk][1] = pack2<T>(acc_s[0][2 * kk][2], acc_s[0][2 * kk][3]);
      p[kk][2] = pack2<T>(acc_s[0][2 * kk + 1][0], acc_s[0][2 * kk + 1][1]);
      p[kk][3] = pack2<T>(acc_s[0][2 * kk + 1][2], acc_s[0][2 * kk + 1][3]);
    }
    wgmma_fence_operands(acc_o[0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      wgmma_rs<kHeadDim, T>(acc_o[0], p[kk], KVTile::n_major(v_addr + stage * kStageBytes, kk), 1);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(acc_o[0]);
  }

  float lse[2];
  softmax.finalize(acc_o, params.logit_scale, lse);

  T* o = static_cast<T*>(params.o) + batch * params.o_batch_stride + head * params.o_head_stride +
         seq.q_start * params.o_row_stride;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = thread_row0 + 8 * half;
    if (row >= seq.seqlen_q) continue;
    T* o_row = o + row * params.o_row_stride;
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) {
      const int col = 8 * dt + 2 * (lane % 4);
      if (col < params.d) *reinterpret_cast<uint32_t*>(o_row + col) = pack2<T>(acc_o[0][dt][2 * half], acc_o[0][dt][2 * half + 1]);
    }
    if (lane % 4 == 0) params.softmax_lse[seq.lse_index(params, batch, head, row)] = lse[half];
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

}  // namespace flash
