// The Hopper forward (sm_90a): the sm80 kernel's algorithm with both products on wgmma.
//
// One thread block of two warpgroups per 128 query rows; warpgroup g owns rows 64 g .. 64 g + 63
// and its warp w the 16-row strip 16 (4 g + w), so each thread holds the same fragments as in
// the sm80 kernel (the online softmax and the masks are shared). Q, K and V sit in shared memory
// in wgmma's 128-byte swizzle; K and V are double-buffered. The two products of consecutive key
// blocks overlap the softmax between them:
//
//   issue S(i+1) = Q K(i+1)^T (smem x smem) and O += P(i) V(i) (P from registers, V N-major) |
//   wait for S(i+1) | mask, softmax -> P(i+1) | wait for O | rescale O
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
  auto load_k = [&](int n, int stage) {
    KVTile::template load_async<Traits::kNThreads>(sK + stage * KVTile::kElems, k + n * kBlockN * params.k_row_stride,
                                                   params.k_row_stride, keys_in_block(n), params.d, tid);
  };
  auto load_v = [&](int n, int stage) {
    KVTile::template load_async<Traits::kNThreads>(sV + stage * KVTile::kElems, v + n * kBlockN * params.v_row_stride,
                                                   params.v_row_stride, keys_in_block(n), params.d, tid);
  };

  const KeyWindow<Is_causal> window{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right};
  const int n_block_begin = window.n_block_begin(row_begin, kBlockN);
  const int n_block_end = window.n_block_end(row_begin + kBlockM, kBlockN);
  const int n_blocks = n_block_end - n_block_begin;
  // Step i handles key block n_block_end - 1 - i; its K and V sit in stage i % 2.
  auto block_of = [&](int i) { return n_block_end - 1 - i; };

  float acc_o[1][kDTiles][4] = {};
  OnlineSoftmax<1, kNTiles, kDTiles> softmax;
  const int thread_row0 = row_begin + 16 * warp + lane / 4;
  const uint32_t q_addr = smem_u32(sQ), k_addr = smem_u32(sK), v_addr = smem_u32(sV);
  constexpr uint32_t kStageBytes = KVTile::kElems * sizeof(T);

  float acc_s[1][kNTiles][4];
  // S = Q K(step i)^T, masked where the block needs it.
  auto scores = [&](int i) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma_ss<kBlockN, T>(acc_s[0], QTile::k_major(q_addr, 64 * warpgroup, kk),
                           KVTile::k_major(k_addr + (i % 2) * kStageBytes, 0, kk), kk > 0);
    }
    wgmma_commit();
  };
  auto mask = [&](int i) {
    const int n = block_of(i);
    if (window.block_needs_mask(row_begin, row_begin + kBlockM, n * kBlockN, (n + 1) * kBlockN)) {
      apply_key_window(acc_s, window, thread_row0, n * kBlockN + 2 * (lane % 4));
    }
  };
  // Two adjacent n8 tiles of S are one k16 A fragment of P.
  uint32_t p[kBlockN / 16][4];
  auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      p[kk][0] = pack2<T>(acc_s[0][2 * kk][0], acc_s[0][2 * kk][1]);
      p[kk][1] = pack2<T>(acc_s[0][2 * kk][2], acc_s[0][2 * kk][3]);
      p[kk][2] = pack2<T>(acc_s[0][2 * kk + 1][0], acc_s[0][2 * kk + 1][1]);
      p[kk][3] = pack2<T>(acc_s[0][2 * kk + 1][2], acc_s[0][2 * kk + 1][3]);
    }
  };
  // O += P V(step i).
  auto accumulate_pv = [&](int i) {
    wgmma_fence_operands(acc_o[0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      wgmma_rs<kHeadDim, T>(acc_o[0], p[kk], KVTile::n_major(v_addr + (i % 2) * kStageBytes, kk), 1);
    }
    wgmma_commit();
  };
  // All copies issued so far have landed and are visible to every warp's wgmma.
  auto copies_visible = [&]() {
    copy_async_wait<0>();
    fence_proxy_async_shared();
    __syncthreads();
  };

  // Loads run one step ahead for K and level with the products for V:
  //   step i: S(i + 1) = Q K(i + 1)^T and O += P(i) V(i) in flight together; while they run,
  //   K(i + 2) and V(i + 1) load and, once S(i + 1) is back, its softmax; O is rescaled last.
  QTile::template load_async<Traits::kNThreads>(sQ, q, params.q_row_stride, min(kBlockM, seq.seqlen_q - row_begin),
                                                params.d, tid);
  if (n_blocks > 0) load_k(block_of(0), 0);
  copy_async_commit();
  if (n_blocks == 0) copy_async_wait<0>();  // no key to see: O = 0, lse = -inf
  if (n_blocks > 0) {
    load_v(block_of(0), 0);
    if (n_blocks > 1) load_k(block_of(1), 1);
    copy_async_commit();
    copy_async_wait<1>();
    fence_proxy_async_shared();
    __syncthreads();
    scores(0);
    wgmma_wait<0>();
    wgmma_fence_operands(acc_s[0]);
    mask(0);
    float o_factor[2];
    softmax.update_scores(acc_s, params.scale_softmax_log2, o_factor);  // O is still zero
    pack_p();
  }
  for (int i = 0; i + 1 < n_blocks; ++i) {
    copies_visible();  // K(i + 1), V(i); every warp is done with K(i) and V(i - 1)
    if (i + 2 < n_blocks) load_k(block_of(i + 2), i % 2);
    load_v(block_of(i + 1), (i + 1) % 2);
    copy_async_commit();

    scores(i + 1);
    accumulate_pv(i);
    wgmma_wait<1>();  // S(i + 1) is back; P(i) V(i) may still run
    wgmma_fence_operands(acc_s[0]);
    mask(i + 1);
    float o_factor[2];
    softmax.update_scores(acc_s, params.scale_softmax_log2, o_factor);
    wgmma_wait<0>();
    wgmma_fence_operands(acc_o[0]);
    softmax.rescale(acc_o, o_factor);
    pack_p();
  }
  if (n_blocks > 0) {
    copies_visible();  // V(last)
    accumulate_pv(n_blocks - 1);
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
