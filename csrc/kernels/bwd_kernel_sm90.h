// The Hopper backward (sm_90a): the sm80 backward's algorithm (bwd_kernel.h) with all five
// products on wgmma.
//
// A thread block owns kBlockN = 128 keys of one kv head and walks the query blocks (kBlockM
// rows) whose windows reach them, for every query head of the group. Two warpgroups; warpgroup
// g owns keys 64 g .. 64 g + 63, so S and dP come out transposed (rows are keys) and are in
// registers exactly as the next products want their A operand:
//
//   S^T = K_g Q^T, dP^T = V_g dO^T        (smem x smem, issued together)
//   P^T = exp(S^T - lse), dS^T = P^T (dP^T - D)          (registers; dS^T also to smem)
//   dV_g += P^T dO, dK_g += dS^T Q        (A from registers, dO / Q read N-major)
//   dQ += dS K                            (both operands MN-major: dS^T and K as stored)
//
// dQ needs every key of the block, so the two warpgroups meet at a barrier after writing dS^T;
// warpgroup g computes dQ's columns 64 g .. (kBlockM 64, head dim 128) or its rows 64 g ..
// (kBlockM 128, head dim 64) and adds them to the fp32 accumulator by bulk reductions from shared
// memory (cp.reduce.async.bulk: the TMA unit does the adds), or with atomics in key-block order
// behind a semaphore when deterministic. Q, dO, lse and D are double-buffered with
// cp.async: the next query block loads while this one computes.
//
// Only the plain variants (no softcap, ALiBi or dropout) run here; the dispatch sends the rest
// to the sm80 kernels.
#pragma once

#include "arch/wgmma_sm90.h"
#include "bwd_kernel.h"  // store_tile
#include "bwd_walk.h"
#include "mask.h"
#include "mma.h"
#include "params.h"
#include "platform.h"
#include "seq_bounds.h"
#include "smem_tile_sm90.h"

#include <type_traits>

namespace flash {

template <class T_, int kHeadDim_>
struct BwdTraitsSm90 {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 64 || kHeadDim == 128, "dQ's split between the warpgroups assumes these");
  // Each warpgroup's dQ piece is 64 x 64: head dim 128 splits its columns, 64 the rows.
  static constexpr int kBlockM = kHeadDim == 64 ? 128 : 64, kBlockN = 128;
  static constexpr int kNThreads = 256;
  static constexpr bool kDqSplitsRows = kBlockM == 128;
  using QTile = GmmaTile<kBlockM, kHeadDim>;   // Q, dO
  using KVTile = GmmaTile<kBlockN, kHeadDim>;  // K, V
  using DsTile = GmmaTile<kBlockN, kBlockM>;   // dS^T: rows are keys
  static constexpr int kTileBytes = (2 * KVTile::kElems + 4 * QTile::kElems + DsTile::kElems) * int(sizeof(T));
  // Each warpgroup's 64 x 64 fp32 dQ piece is staged for the bulk reduction; rows padded by 8
  // floats so that the fragment stores hit distinct banks.
  static constexpr int kDqRowFloats = 64 + 8, kDqFloats = 2 * 64 * kDqRowFloats;
  static constexpr int kSmemBytes = kTileBytes + (kDqFloats + 4 * kBlockM) * int(sizeof(float));  // + lse, D x 2
};

template <class Traits, bool Is_causal>
__global__ void __launch_bounds__(Traits::kNThreads, 1) flash_bwd_sm90_kernel(const BwdParams params) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Traits::T;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kNThreads = Traits::kNThreads;
  constexpr int kMTiles = kBlockM / 8;  // n8 tiles of S^T per warpgroup row strip (queries)
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using DsTile = typename Traits::DsTile;

  extern __shared__ __align__(1024) char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + KVTile::kElems;
  T* sQ = sV + KVTile::kElems;           // [2][QTile::kElems]
  T* sdO = sQ + 2 * QTile::kElems;       // [2][QTile::kElems]
  T* sdSt = sdO + 2 * QTile::kElems;
  float* sdQ = reinterpret_cast<float*>(smem + Traits::kTileBytes);   // [2 warpgroups][64][kDqRowFloats]
  float* sLse = sdQ + Traits::kDqFloats;                               // [2][kBlockM], log2 units
  float* sD = sLse + 2 * kBlockM;                                     // [2][kBlockM]

  const int n_block = blockIdx.x, head_k = blockIdx.y, batch = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / kGroupSize, lane = tid % kGroupSize;
  const int warpgroup = warp / 4, group_warp = warp % 4;
  const int key0 = n_block * kBlockN;
  const int group = params.h / params.h_k;
  const SeqBounds seq(params, batch);
  const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
  if (key0 >= seqlen_k) return;

  const KeyWindow<Is_causal> window{seqlen_q, seqlen_k, params.window_left, params.window_right};
  const BwdQueryWalk<kBlockM, kBlockN, Is_causal> walk(window, key0, group);
  const int steps = walk.steps;
  load_key_block<KVTile, kBlockN, kNThreads>(params, seq, batch, head_k, key0, sK, sV, tid);

  // Step `step` works on (query head, query block) number work(step). Blocks start their walks
  // at different query blocks: the dQ rows they add to at one time then differ (all starting at
  // the first would pile their reductions onto the same addresses). The deterministic order
  // needs the plain walk.
  const int work_offset = params.deterministic || steps == 0 ? 0 : n_block % steps;
  auto work = [&](int step) {
    const int w = step + work_offset;
    return w >= steps ? w - steps : w;
  };

  // Starts the loads of step `step`'s Q, dO, lse and D into buffer `buf`.
  auto load_step = [&](int step, int buf) {
    const int head = head_k * group + work(step) / walk.m_per_head;
    const int row0 = (walk.m_block_begin + work(step) % walk.m_per_head) * kBlockM;
    load_query_block<QTile, kBlockM, kNThreads>(params, seq, batch, head, row0, sQ + buf * QTile::kElems,
                                                sdO + buf * QTile::kElems, sLse + buf * kBlockM, sD + buf * kBlockM,
                                                tid);
  };
  if (steps > 0) load_step(0, 0);
  copy_async_commit();

  // This thread's rows of S^T (keys): key_row(half); its columns (queries): col(nt) + j.
  const int wg_key0 = 64 * warpgroup;
  auto key_row = [&](int half) { return wg_key0 + 16 * group_warp + lane / 4 + 8 * half; };
  auto col = [&](int nt) { return 8 * nt + 2 * (lane % 4); };
  const uint32_t k_addr = smem_u32(sK), v_addr = smem_u32(sV), ds_addr = smem_u32(sdSt);
  constexpr uint32_t kQBytes = QTile::kElems * sizeof(T);

  float acc_dk[1][kHeadDim / 8][4] = {}, acc_dv[1][kHeadDim / 8][4] = {};  // store_tile's [strip][n8 tile]

  for (int step = 0; step < steps; ++step) {
    const int buf = step & 1;
    const int head = head_k * group + work(step) / walk.m_per_head;
    const int m_block = walk.m_block_begin + work(step) % walk.m_per_head;
    const int row0 = m_block * kBlockM;
    const uint32_t q_addr = smem_u32(sQ) + buf * kQBytes, do_addr = smem_u32(sdO) + buf * kQBytes;
    const float* sLseb = sLse + buf * kBlockM;
    const float* sDb = sD + buf * kBlockM;

    copy_async_wait<0>();
    fence_proxy_async_shared();  // the copies (and last step's reads of the other buffer) vs wgmma
    __syncthreads();             // this step's tiles are visible; every warp is done with the last step
    if (step + 1 < steps) load_step(step + 1, buf ^ 1);
    copy_async_commit();

    // S^T and dP^T for this warpgroup's 64 keys x the block's queries.
    float acc_s[kMTiles][4], acc_dp[kMTiles][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma_ss<kBlockM, T>(acc_s, KVTile::k_major(k_addr, wg_key0, kk), QTile::k_major(q_addr, 0, kk), kk > 0);
    }
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma_ss<kBlockM, T>(acc_dp, KVTile::k_major(v_addr, wg_key0, kk), QTile::k_major(do_addr, 0, kk), kk > 0);
    }
    wgmma_commit();

    // P^T while dP^T is still running. Keys past the end must give P = 0 too: with K = 0 there,
    // S = 0 and exp(0 - lse) can overflow, and inf * 0 would poison dQ.
    wgmma_wait<1>();
    wgmma_fence_operands(acc_s);
    const bool needs_mask = key0 + wg_key0 + 64 > seqlen_k ||
                            window.block_needs_mask(row0, row0 + kBlockM, key0 + wg_key0, key0 + wg_key0 + 64);
    auto exponentiate = [&](auto masked) {
#pragma unroll
      for (int nt = 0; nt < kMTiles; ++nt) {
        const float2 lse = *reinterpret_cast<const float2*>(sLseb + col(nt));
#pragma unroll
        for (int half = 0; half < 2; ++half) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float& s = acc_s[nt][2 * half + j];
            s = exp2_fast(s * params.scale_softmax_log2 - (j ? lse.y : lse.x));
            if constexpr (decltype(masked)::value) {
              const int key = key0 + key_row(half), query = row0 + col(nt) + j;
              if (key >= seqlen_k || !window.visible(query, key)) s = 0.f;
            }
          }
        }
      }
    };
    // Most steps see every score: they skip the per-element test.
    if (needs_mask) {
      exponentiate(std::true_type{});
    } else {
      exponentiate(std::false_type{});
    }
    // Two adjacent n8 tiles (queries) are one k16 A fragment of P^T or dS^T. dV's product
    // starts as soon as P^T is packed, and runs while dS^T is computed.
    uint32_t p[kBlockM / 16][4], ds[kBlockM / 16][4];
    auto fragment = [](const float (&acc)[kMTiles][4], int kk, int i) {
      const int nt = 2 * kk + i / 2, e = 2 * (i % 2);
      return pack2<T>(acc[nt][e], acc[nt][e + 1]);
    };
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
#pragma unroll
      for (int i = 0; i < 4; ++i) p[kk][i] = fragment(acc_s, kk, i);
    }
    wgmma_fence_operands(acc_dv[0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) wgmma_rs<kHeadDim, T>(acc_dv[0], p[kk], QTile::n_major(do_addr, kk), 1);
    wgmma_commit();

    wgmma_wait<1>();  // dP^T
    wgmma_fence_operands(acc_dp);
    // dS^T = P^T (dP^T - D), P^T as packed (acc_s is free by now).
#pragma unroll
    for (int nt = 0; nt < kMTiles; ++nt) {
      const float2 d = *reinterpret_cast<const float2*>(sDb + col(nt));
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const float2 pv = unpack2<T>(p[nt / 2][2 * (nt % 2) + half]);
        acc_dp[nt][2 * half] = pv.x * (acc_dp[nt][2 * half] - d.x);
        acc_dp[nt][2 * half + 1] = pv.y * (acc_dp[nt][2 * half + 1] - d.y);
      }
    }
    // dS^T also goes to shared memory for dQ.
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        ds[kk][i] = fragment(acc_dp, kk, i);
        const int nt = 2 * kk + i / 2;
        *reinterpret_cast<uint32_t*>(sdSt + DsTile::offset(key_row(i % 2), col(nt) / 8) + col(nt) % 8) = ds[kk][i];
      }
    }
    wgmma_fence_operands(acc_dk[0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) wgmma_rs<kHeadDim, T>(acc_dk[0], ds[kk], QTile::n_major(q_addr, kk), 1);
    wgmma_commit();

    fence_proxy_async_shared();
    __syncthreads();  // dS^T complete: both warpgroups' keys

    // dQ (this warpgroup's 64 x 64 piece) = dS K over the block's keys.
    const int dq_row0 = Traits::kDqSplitsRows ? 64 * warpgroup : 0;
    const int dq_col0 = Traits::kDqSplitsRows ? 0 : 64 * warpgroup;
    float acc_dq[8][4];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      wgmma_ss_mn_major<64, T>(acc_dq, DsTile::n_major(ds_addr, kk, dq_row0 / 64),
                               KVTile::n_major(k_addr, kk, dq_col0 / 64), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    wgmma_fence_operands(acc_dq);
    wgmma_fence_operands(acc_dv[0]);
    wgmma_fence_operands(acc_dk[0]);
    wgmma_fence_operands(p);
    wgmma_fence_operands(ds);

    float* dq = params.dq_accum + batch * params.dq_accum_batch_stride +
                (static_cast<int64_t>(seq.q_start + row0) * params.h + head) * params.d;
    const int64_t dq_row_stride = static_cast<int64_t>(params.h) * params.d;
    if (!params.deterministic) {
      // Through shared memory to the TMA unit: thread t < 64 of the warpgroup adds row t.
      const int wg_tid = tid % 128;
      float* sdQ_wg = sdQ + warpgroup * 64 * Traits::kDqRowFloats;
      if (wg_tid < 64) bulk_wait_read();  // the last step's reduction has read the staging rows
      named_barrier_sync(1 + warpgroup, 128);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = 16 * group_warp + lane / 4 + 8 * half;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          *reinterpret_cast<float2*>(sdQ_wg + row * Traits::kDqRowFloats + col(nt)) =
              make_float2(acc_dq[nt][2 * half], acc_dq[nt][2 * half + 1]);
        }
      }
      fence_proxy_async_shared();
      named_barrier_sync(1 + warpgroup, 128);
      const int cols = min(64, params.d - dq_col0);
      if (wg_tid < 64 && row0 + dq_row0 + wg_tid < seqlen_q && cols > 0) {
        bulk_reduce_add_f32(dq + (dq_row0 + wg_tid) * dq_row_stride + dq_col0, sdQ_wg + wg_tid * Traits::kDqRowFloats,
                            cols * int(sizeof(float)));
        bulk_commit();
      }
      continue;
    }

    // Deterministic: atomics in key-block order behind a semaphore.
    int* semaphore = dq_semaphore_acquire<kBlockM, kBlockN>(params, window, batch, head, m_block, n_block, tid);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = dq_row0 + 16 * group_warp + lane / 4 + 8 * half;
      if (row0 + row >= seqlen_q) continue;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int c = dq_col0 + col(nt);
        if (c < params.d) atomic_add2(dq + row * dq_row_stride + c, acc_dq[nt][2 * half], acc_dq[nt][2 * half + 1]);
      }
    }
    dq_semaphore_release(semaphore, tid);
  }
  if (tid % 128 < 64) bulk_wait();  // the staging rows must outlive the reductions

  // dK = scale * sum dS^T Q; dV = sum P^T dO. Keys no query sees write zeros.
  const int key_base = key0 + wg_key0 + 16 * group_warp;
  store_tile<T>(static_cast<T*>(params.dk) + batch * params.dk_batch_stride + head_k * params.dk_head_stride +
                    seq.k_start * params.dk_row_stride,
                params.dk_row_stride, acc_dk, key_base, 0,
                seqlen_k, params.d, params.scale_softmax, lane);
  store_tile<T>(static_cast<T*>(params.dv) + batch * params.dv_batch_stride + head_k * params.dv_head_stride +
                    seq.k_start * params.dv_row_stride,
                params.dv_row_stride, acc_dv, key_base, 0,
                seqlen_k, params.d, 1.f, lane);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

}  // namespace flash
