// The Hopper backward (sm_90a): the sm80 backward's algorithm (bwd_kernel.h) with all five
// products on wgmma, the loads on TMA and the dQ reduction in a warp of its own.
//
// A thread block owns kBlockN = 128 keys of one kv head and walks the query blocks (kBlockM
// rows) whose windows reach them, for every query head of the group. Three warpgroups:
//
// - the producer: its thread 0 copies K and V once, then each step's Q and dO with TMA into a
//   ring of kStages stages (completing on mbarriers); its warp 1 reads the step's lse and D
//   into the same stage; its thread 64 adds each step's dQ to the fp32 accumulator with TMA
//   reductions from shared memory (cp.reduce.async.bulk.tensor: the TMA unit does the adds).
// - two consumers: consumer g owns keys 64 g .. 64 g + 63, so S and dP come out transposed
//   (rows are keys) and are in registers exactly as the next products want their A operand:
//
//   S^T = K_g Q^T, dP^T = V_g dO^T        (smem x smem, issued together)
//   P^T = exp(S^T - lse), dS^T = P^T (dP^T - D)          (registers; dS^T also to smem)
//   dV_g += P^T dO                        (A from registers, dO read N-major)
//   dQ += dS K                            (both operands MN-major: dS^T and K as stored)
//   dK_g += dS^T Q                        (A from registers, Q read N-major)
//
// dQ needs every key of the block, so the consumers meet at a named barrier once both have
// written dS^T (double-buffered: the next step's may be written while the other consumer still
// reads this one). Consumer g computes dQ's columns 64 g .. (kBlockM 64, head dim 128) or its
// rows 64 g .. (kBlockM 128, head dim 64) and stages them for the reducer thread; dK's product
// runs on while it does. When deterministic the consumers add dQ with atomics in key-block
// order behind a semaphore instead.
//
// Head dim 256: dK and dV over a warpgroup's 64 keys would hold 256 accumulators a thread, so
// two blocks share each key block, block part c owning head-dim columns 128 c .. 128 c + 127 of
// dK, dV and dQ; each computes S^T and dP^T over all 256 (7 units of b h sq sk d of work against
// 5: 1.4x). Shared memory then allows 32-query blocks, below wgmma's M of 64 for dQ = dS K: the
// consumers store dS (queries as rows, stmatrix.trans) and compute dQ^T = K^T dS^T, consumer g
// the 64 columns 128 c + 64 g .., staged transposed (DqStageTransposed).
//
// The Has_extras variants add softcap, ALiBi and dropout as the portable backward does
// (bwd_kernel.h): tanh's derivative scales dS; a dropped score keeps its P for dS (as -P, the
// sign marking it) and gives 0 to dV's operand, the kept ones P / (1 - p).
#pragma once

#include "arch/dq_stage_sm90.h"
#include "arch/smem_tile_sm90.h"
#include "arch/tma_sm90.h"
#include "arch/warp_gemm_mma.h"
#include "arch/wgmma_sm90.h"
#include "bwd_walk.h"
#include "dropout.h"
#include "epilogue.h"
#include "fragment.h"
#include "mask.h"
#include "mma.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "seq_bounds.h"

#include <type_traits>

namespace flash {

template <class T_, int kHeadDim_>
struct BwdTraitsSm90 {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256,
                "dQ's split between the warpgroups assumes these");
  // Blocks per key block, each owning kDimCols columns of dK, dV and dQ (head dim 256: two).
  static constexpr int kDimParts = kHeadDim == 256 ? 2 : 1, kDimCols = kHeadDim / kDimParts;
  // Each consumer's dQ piece is 64 x 64: head dim 128 splits its columns, 64 the rows; at 256
  // it is 64 columns x 32 queries.
  static constexpr int kBlockM = kHeadDim == 64 ? 128 : kHeadDim == 128 ? 64 : 32, kBlockN = 128;
  // Stages of Q, dO, lse and D: three fit in head dim 128's shared memory, two in 64's and 256's.
  static constexpr int kStages = kHeadDim == 128 ? 3 : 2;
  static constexpr int kNThreads = 3 * 128;  // a producer warpgroup, two consumer warpgroups
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;  // 128 * 24 + 256 * 240 <= 64K
  static constexpr bool kDqSplitsRows = kBlockM == 128;
  // Below 64 queries dQ is computed transposed (dQ^T = K^T dS^T), from dS with queries as rows.
  static constexpr bool kDqTransposed = kBlockM < 64;
  using QTile = GmmaTile<kBlockM, kHeadDim>;   // Q, dO
  using KVTile = GmmaTile<kBlockN, kHeadDim>;  // K, V
  // dS^T (rows are keys), or with kDqTransposed dS (rows are queries).
  using DsTile = std::conditional_t<kDqTransposed, GmmaTile<kBlockM, kBlockN>, GmmaTile<kBlockN, kBlockM>>;
  static constexpr uint32_t kQBytes = QTile::kElems * sizeof(T), kKVBytes = KVTile::kElems * sizeof(T);
  static constexpr uint32_t kDsBytes = DsTile::kElems * sizeof(T);
  static constexpr int kTileBytes = 2 * kKVBytes + 2 * kStages * kQBytes + 2 * kDsBytes;
  // Each consumer's 64 x 64 fp32 dQ piece is staged for the reducer as two 64-row x 32-column
  // boxes in the 128-byte swizzle (DqStage); a 64 x 32 dQ^T piece as two 32-query boxes.
  static constexpr int kDqPieceFloats = 64 * (kDqTransposed ? kBlockM : 64);
  static constexpr int kDqFloats = 2 * kDqPieceFloats;
  static constexpr int kDqBoxRows = kDqTransposed ? kBlockM : 64;  // dq_accum's TMA box
  static constexpr int kFloats = kDqFloats + 2 * kStages * kBlockM;  // + lse (log2 units), D per stage
  static constexpr int kBarriers = 3 + 3 * kStages;  // K/V full, dQ full, dQ empty; per stage Q, dO full, empty
  static constexpr int kSmemBytes = kTileBytes + kFloats * int(sizeof(float)) + kBarriers * 8;
  static_assert(kSmemBytes <= 227 * 1024, "an sm_90 block's shared memory");
};

// The TMA descriptions of q, k, v, dout and dq_accum (bwd_launch_sm90.h encodes them; boxes of
// kBlockM rows for q and dout, kBlockN for k and v, kDqBoxRows for dq_accum).
struct BwdTensorMaps {
  CUtensorMap q, k, v, dout, dq;
};

template <class Traits, bool Has_right_edge, bool Has_extras>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    flash_bwd_sm90_kernel(const BwdParams params, const __grid_constant__ BwdTensorMaps maps) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Traits::T;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages;
  constexpr int kMTiles = kBlockM / 8;  // n8 tiles of S^T per warpgroup row strip (queries)
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using DsTile = typename Traits::DsTile;

  extern __shared__ __align__(1024) char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + KVTile::kElems;
  T* sQ = sV + KVTile::kElems;              // [kStages][QTile::kElems]
  T* sdO = sQ + kStages * QTile::kElems;    // [kStages][QTile::kElems]
  T* sdSt = sdO + kStages * QTile::kElems;  // [2][DsTile::kElems]: dS^T, or dS (kDqTransposed)
  float* sdQ = reinterpret_cast<float*>(smem + Traits::kTileBytes);  // [2 consumers][DqStage]
  float* sLse = sdQ + Traits::kDqFloats;                              // [kStages][kBlockM], log2 units
  float* sD = sLse + kStages * kBlockM;                               // [kStages][kBlockM]
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(sD + kStages * kBlockM);
  uint64_t* dq_full = kv_full + 1;   // both consumers staged the step's dQ
  uint64_t* dq_empty = dq_full + 1;  // the reducer has read the staged dQ
  uint64_t* q_full = dq_empty + 1;   // [kStages]: Q landed, lse and D written
  uint64_t* do_full = q_full + kStages;  // [kStages]: dO landed
  uint64_t* empty = do_full + kStages;   // [kStages]: both consumers are done with the stage

  constexpr bool kDqTransposed = Traits::kDqTransposed;
  // Block x owns key block x / kDimParts and head-dim columns dim0 .. dim0 + kDimCols - 1.
  const int n_block = blockIdx.x / Traits::kDimParts, dim0 = blockIdx.x % Traits::kDimParts * Traits::kDimCols;
  const int head_k = blockIdx.y, batch = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / kGroupSize, lane = tid % kGroupSize;
  const int warpgroup = warpgroup_index(), group_warp = warp % 4;
  const int key0 = n_block * kBlockN;
  const int group = params.h / params.h_k;
  const SeqBounds seq(params, batch);
  const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
  if (key0 >= seqlen_k) return;

  const KeyWindow<Has_right_edge> window{seqlen_q, seqlen_k, params.window_left, params.window_right};
  const BwdQueryWalk<kBlockM, kBlockN, Has_right_edge> walk(window, key0, group);
  const int steps = walk.steps;

  if (tid == 0) {
    mbarrier_init(kv_full, 1);
    mbarrier_init(dq_full, 8);  // one arrival per consumer warp
    mbarrier_init(dq_empty, 1);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&q_full[s], 1 + kGroupSize);  // the TMA thread and the lse warp
      mbarrier_init(&do_full[s], 1);
      mbarrier_init(&empty[s], 2 * 128);  // every consumer thread
    }
  }
  __syncthreads();

  // Step `step` works on (query head, query block) number work(step). Blocks start their walks
  // at different query blocks: the dQ rows they add to at one time then differ (all starting at
  // the first would pile their reductions onto the same addresses). The deterministic order
  // needs the plain walk. Step s uses stage s % kStages with parity (s / kStages) % 2.
  const int work_offset = params.deterministic || steps == 0 ? 0 : n_block % steps;
  const int head_begin = head_k * group;  // the query heads of this kv head
  const BwdStepCursor first_step(walk, head_begin, work_offset);
  // The producer side waits until the consumers have released the stage's last use.
  auto wait_stage_free = [&](int step) {
    if (step >= kStages) mbarrier_wait(&empty[step % kStages], (step / kStages - 1) & 1);
  };

  if (warpgroup == 0) {
    warpgroup_registers_dec<Traits::kProducerRegs>();
    if (tid == 0 && steps > 0) {
      // TMA: K and V once, then Q and dO step by step. Varlen tensors are one packed batch.
      const int batch_index = params.cu_seqlens_q != nullptr ? 0 : batch;
      tma_prefetch_map(&maps.q);
      tma_prefetch_map(&maps.dout);
      mbarrier_arrive_expect_tx(kv_full, 2 * Traits::kKVBytes);
      KVTile::load_tma(sK, &maps.k, kv_full, seq.k_start + key0, head_k, batch_index);
      KVTile::load_tma(sV, &maps.v, kv_full, seq.k_start + key0, head_k, batch_index);
      BwdStepCursor at = first_step;
      for (int step = 0; step < steps; ++step, at.next(walk, head_begin, group)) {
        const int stage = step % kStages, head = at.head, row = seq.q_start + at.m_block * kBlockM;
        wait_stage_free(step);
        mbarrier_arrive_expect_tx(&q_full[stage], Traits::kQBytes);
        QTile::load_tma(sQ + stage * QTile::kElems, &maps.q, &q_full[stage], row, head, batch_index);
        mbarrier_arrive_expect_tx(&do_full[stage], Traits::kQBytes);
        QTile::load_tma(sdO + stage * QTile::kElems, &maps.dout, &do_full[stage], row, head, batch_index);
      }
    } else if (warp == 1) {
      // lse (in log2 units) and D. Rows past the end, and rows that saw no key (lse = -inf),
      // get lse = +inf: P = 0 there, whatever Q and dO hold.
      BwdStepCursor at = first_step;
      for (int step = 0; step < steps; ++step, at.next(walk, head_begin, group)) {
        const int stage = step % kStages, head = at.head, row0 = at.m_block * kBlockM;
        float lse[kBlockM / kGroupSize], d[kBlockM / kGroupSize];
#pragma unroll
        for (int i = 0; i < kBlockM / kGroupSize; ++i) {
          const int row = row0 + lane + i * kGroupSize;
          const int64_t idx = seq.lse_index(params, batch, head, row);
          lse[i] = row < seqlen_q ? params.softmax_lse[idx] : INFINITY;
          d[i] = row < seqlen_q ? params.softmax_d[idx] : 0.f;
        }
        wait_stage_free(step);
#pragma unroll
        for (int i = 0; i < kBlockM / kGroupSize; ++i) {
          sLse[stage * kBlockM + lane + i * kGroupSize] = lse[i] == -INFINITY ? INFINITY : lse[i] * float(M_LOG2E);
          sD[stage * kBlockM + lane + i * kGroupSize] = d[i];
        }
        mbarrier_arrive(&q_full[stage]);
      }
    } else if (tid == 2 * kGroupSize && steps > 0 && !params.deterministic) {
      // dQ: four TMA reductions a step (two boxes per consumer piece). Rows past a sequence's
      // end hold zeros (P = 0 there): adding them is harmless, and past the tensor TMA skips them.
      const int batch_index = params.cu_seqlens_q != nullptr ? 0 : batch;
      BwdStepCursor at = first_step;
      for (int step = 0; step < steps; ++step, at.next(walk, head_begin, group)) {
        const int row = seq.q_start + at.m_block * kBlockM;
        mbarrier_wait(dq_full, step & 1);
#pragma unroll
        for (int piece = 0; piece < 2; ++piece) {
#pragma unroll
          for (int box = 0; box < 2; ++box) {
            const int box_floats = kDqTransposed ? DqStageTransposed::kBoxFloats : DqStage::kBoxFloats;
            const int column = kDqTransposed ? dim0 + 64 * piece : Traits::kDqSplitsRows ? 0 : 64 * piece;
            tma_reduce_add(&maps.dq, sdQ + piece * Traits::kDqPieceFloats + box * box_floats, column + 32 * box,
                           row + (Traits::kDqSplitsRows ? 64 * piece : 0), at.head, batch_index);
          }
        }
        bulk_commit();
        bulk_wait_read();
        mbarrier_arrive(dq_empty);
      }
      bulk_wait();
    }
    return;
  }

  // Consumers.
  warpgroup_registers_inc<Traits::kConsumerRegs>();
  const int consumer = warpgroup - 1;
  // This thread's rows of S^T (keys): key_row(half); its columns (queries): col(nt) + j, for
  // element (nt, element(half, j)) of the warp's strip (wgmma's accumulators, per warp).
  using Layout = MmaAccLayout;
  using STile = MmaTile<1, kMTiles>;
  const int wg_key0 = 64 * consumer;
  auto key_row = [&](int half) {
    return wg_key0 + 16 * group_warp + Layout::lane_row(lane) + Layout::kRowSlotStride * half;
  };
  auto col = [&](int nt) { return Layout::kTileCols * nt + Layout::lane_col(lane); };
  const uint32_t k_addr = smem_u32(sK), v_addr = smem_u32(sV);
  // This consumer's dQ piece: rows dq_row0 .., columns dq_col0 .. of the query block.
  const int dq_row0 = Traits::kDqSplitsRows ? 64 * consumer : 0;
  const int dq_col0 = kDqTransposed ? dim0 + 64 * consumer : Traits::kDqSplitsRows ? 0 : 64 * consumer;
  const int dim_block0 = dim0 / 64;  // the first 64-column block of this block's dK, dV columns

  MmaTile<1, Traits::kDimCols / 8> acc_dk = {}, acc_dv = {};
  if (steps > 0) mbarrier_wait(kv_full, 0);
  const bool has_softcap = Has_extras && params.softcap_prescale != 0.f;
  const bool has_dropout = Has_extras && params.has_dropout;
  uint64_t seed = 0, offset = 0;
  if (has_dropout) backward_dropout_seed(params, seed, offset);

  BwdStepCursor at = first_step;
  for (int step = 0; step < steps; ++step, at.next(walk, head_begin, group)) {
    const int stage = step % kStages, parity = (step / kStages) & 1;
    const int head = at.head, m_block = at.m_block, row0 = m_block * kBlockM;
    const uint32_t q_addr = smem_u32(sQ) + stage * Traits::kQBytes, do_addr = smem_u32(sdO) + stage * Traits::kQBytes;
    const float* sLseb = sLse + stage * kBlockM;
    const float* sDb = sD + stage * kBlockM;
    T* sdS = sdSt + (step & 1) * DsTile::kElems;

    // Dropout's keep bits before the products start: while S^T and dP^T run, their accumulators
    // and dK's and dV's leave no registers for the Philox rounds. Bit 4 nt + e: element (0, nt, e).
    static_assert(STile::kElems == 4, "four accumulators per n8 tile");
    [[maybe_unused]] uint64_t keep_bits = 0;
    if constexpr (Has_extras) {
      if (has_dropout) {
        const Dropout dropout(params, seed, offset, batch, head);
        auto bit = [](const FragmentIndex& at) { return STile::kElems * at.nt + at.e; };
        for_each_dropout_word<true, STile>(
            dropout, [&](int) { return key0 + key_row(0); },
            [&](int nt, int e) { return row0 + col(nt) + Layout::col_offset(e); },
            [&](uint32_t keep, FragmentIndex at0, FragmentIndex at1, FragmentIndex at2, FragmentIndex at3) {
              keep_bits |= uint64_t(keep & 1) << bit(at0) | uint64_t(keep >> 1 & 1) << bit(at1) |
                           uint64_t(keep >> 2 & 1) << bit(at2) | uint64_t(keep >> 3 & 1) << bit(at3);
            });
      }
    }
    // S^T and dP^T for this warpgroup's 64 keys x the block's queries.
    STile acc_s, acc_dp;
    mbarrier_wait(&q_full[stage], parity);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma_ss<kBlockM, T>(acc_s.v[0], KVTile::k_major(k_addr, wg_key0, kk), QTile::k_major(q_addr, 0, kk), kk > 0);
    }
    wgmma_commit();
    mbarrier_wait(&do_full[stage], parity);
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      wgmma_ss<kBlockM, T>(acc_dp.v[0], KVTile::k_major(v_addr, wg_key0, kk), QTile::k_major(do_addr, 0, kk), kk > 0);
    }
    wgmma_commit();

    // P^T while dP^T is still running. Keys past the end must give P = 0 too: K there is zero or another
    // sequence's, and exp(S - lse) could overflow (inf * 0 would poison dQ).
    wgmma_wait<1>();
    wgmma_fence_operands(acc_s.v[0]);
    const ScoreMod score_mod(params, batch, head, seqlen_q, seqlen_k);
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
            float& s = acc_s(0, nt, Layout::element(half, j));
            if constexpr (Has_extras) s = score_mod(s, row0 + col(nt) + j, key0 + key_row(half));  // before the mask
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
    // With dropout dS needs every P (dropped ones too, signed -P) and dV's operand the kept ones
    // scaled by 1 / (1 - p): two packings.
    [[maybe_unused]] uint32_t p_signed[Has_extras ? kBlockM / 16 : 1][4];
    if constexpr (Has_extras) {
      if (has_dropout) {
#pragma unroll
        for (int nt = 0; nt < kMTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float& s = acc_s(0, nt, e);
            if (!(keep_bits >> (4 * nt + e) & 1)) s = -s;
          }
        }
#pragma unroll
        for (int kk = 0; kk < kBlockM / 16; ++kk) a_fragment_of<T>(acc_s, 0, kk, p_signed[kk]);
#pragma unroll
        for (int nt = 0; nt < kMTiles; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            float& s = acc_s(0, nt, e);
            s = signbit(s) ? 0.f : s * params.rp_keep;
          }
        }
      }
    }
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) a_fragment_of<T>(acc_s, 0, kk, p[kk]);
    wgmma_fence_operands(acc_dv.v[0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      wgmma_rs<Traits::kDimCols, T>(acc_dv.v[0], p[kk], QTile::n_major(do_addr, kk, dim_block0), 1);
    }
    wgmma_commit();
    // This thread's D now: its loads run under the products instead of stalling the first dS^T.
    // (The extras variants, short of registers for it, load it where it is used.)
    float2 d_early[Has_extras ? 1 : kMTiles];
    if constexpr (!Has_extras) {
#pragma unroll
      for (int nt = 0; nt < kMTiles; ++nt) d_early[nt] = *reinterpret_cast<const float2*>(sDb + col(nt));
    }
    auto d_of = [&](int nt) {
      if constexpr (Has_extras) {
        return *reinterpret_cast<const float2*>(sDb + col(nt));
      } else {
        return d_early[nt];
      }
    };

    wgmma_wait<1>();  // dP^T
    wgmma_fence_operands(acc_dp.v[0]);
    // dS^T = P^T (dP^T - D), P^T as packed (acc_s is free by now): with dropout the signed one.
    [[maybe_unused]] auto p_for_ds = [&](int nt, int half) -> uint32_t {
      if constexpr (Has_extras) {
        return has_dropout ? p_signed[nt / 2][2 * (nt % 2) + half] : p[nt / 2][2 * (nt % 2) + half];
      } else {
        return p[nt / 2][2 * (nt % 2) + half];
      }
    };
    [[maybe_unused]] const float inv_scale_log2 = 1.f / params.scale_softmax_log2;
#pragma unroll
    for (int nt = 0; nt < kMTiles; ++nt) {
      const float2 d = d_of(nt);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float& ds0 = acc_dp(0, nt, Layout::element(half, 0));
        float& ds1 = acc_dp(0, nt, Layout::element(half, 1));
        if (Has_extras && has_dropout) {  // dropped: dS = -P D, which is the stored -P times D
          const float2 pv = unpack2<T>(p_for_ds(nt, half));
          ds0 = signbit(pv.x) ? pv.x * d.x : pv.x * (ds0 * params.rp_keep - d.x);
          ds1 = signbit(pv.y) ? pv.y * d.y : pv.y * (ds1 * params.rp_keep - d.y);
        } else {
          const float2 pv = unpack2<T>(p[nt / 2][2 * (nt % 2) + half]);
          ds0 = pv.x * (ds0 - d.x);
          ds1 = pv.y * (ds1 - d.y);
        }
        if constexpr (Has_extras) {
          if (has_softcap) {
            // tanh's derivative 1 - t^2, t recovered from P = 2^(scale (t + bias) - lse): holding
            // t from the exponentiation instead spilled (240 B at d128). P's rounding to T moves
            // log2 P by at most 2^-8 (bf16), t by that over scale log2 e; P = 0 gives dS = 0.
            const float2 pv = unpack2<T>(p_for_ds(nt, half));
            const float2 lse = *reinterpret_cast<const float2*>(sLseb + col(nt));
            const int query = row0 + col(nt), key = key0 + key_row(half);
            const float t0 = (log2_fast(fabsf(pv.x)) + lse.x) * inv_scale_log2 - score_mod.bias(query, key);
            const float t1 = (log2_fast(fabsf(pv.y)) + lse.y) * inv_scale_log2 - score_mod.bias(query + 1, key);
            ds0 *= pv.x == 0.f ? 0.f : fmaxf(1.f - t0 * t0, 0.f);  // |t| <= 1, rounding aside
            ds1 *= pv.y == 0.f ? 0.f : fmaxf(1.f - t1 * t1, 0.f);
          }
        }
      }
    }
    // dS^T also goes to shared memory for dQ, a k16 A fragment (four 8 x 8 matrices) per stmatrix
    // (transposed into dS with kDqTransposed).
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      a_fragment_of<T>(acc_dp, 0, kk, ds[kk]);
      if constexpr (kDqTransposed) {
        DsTile::store_a_fragment_transposed(sdS, wg_key0 + 16 * group_warp, kk, lane, ds[kk]);
      } else {
        DsTile::store_a_fragment(sdS, wg_key0 + 16 * group_warp, kk, lane, ds[kk]);
      }
    }
    fence_proxy_async_shared();
    named_barrier_sync(1, 256);  // dS^T complete: both consumers' keys

    // dQ (this consumer's 64 x 64 piece) = dS K over the block's keys, or its 64 columns x 32
    // queries as dQ^T = K^T dS^T; then dK += dS^T Q.
    MmaTile<1, kDqTransposed ? kBlockM / 8 : 8> acc_dq;
    const uint32_t ds_addr = smem_u32(sdS);
    wgmma_fence_operands(acc_dk.v[0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      if constexpr (kDqTransposed) {
        wgmma_ss_a_mn_major<kBlockM, T>(acc_dq.v[0], KVTile::n_major(k_addr, kk, dq_col0 / 64),
                                        DsTile::k_major(ds_addr, 0, kk), kk > 0);
      } else {
        wgmma_ss_mn_major<64, T>(acc_dq.v[0], DsTile::n_major(ds_addr, kk, dq_row0 / 64),
                                 KVTile::n_major(k_addr, kk, dq_col0 / 64), kk > 0);
      }
    }
    wgmma_commit();
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
      wgmma_rs<Traits::kDimCols, T>(acc_dk.v[0], ds[kk], QTile::n_major(q_addr, kk, dim_block0), 1);
    }
    wgmma_commit();
    wgmma_wait<1>();  // dV and dQ; dK runs on while dQ is handed over
    wgmma_fence_operands(acc_dq.v[0]);
    wgmma_fence_operands(acc_dv.v[0]);
    wgmma_fence_operands(p);

    if (!params.deterministic) {
      // Staged for the reducer (producer thread 64), once it has read the last step's.
      if (step > 0) mbarrier_wait(dq_empty, (step - 1) & 1);
      if constexpr (kDqTransposed) {
        DqStageTransposed::store(sdQ + consumer * Traits::kDqPieceFloats, acc_dq.v[0], group_warp, lane);
      } else {
        DqStage::store(sdQ + consumer * Traits::kDqPieceFloats, acc_dq.v[0], group_warp, lane);
      }
      fence_proxy_async_shared();
      __syncwarp();
      if (lane == 0) mbarrier_arrive(dq_full);
    } else {
      // Deterministic: atomics in key-block order behind a semaphore.
      auto consumers_sync = [] { named_barrier_sync(2, 256); };
      int* semaphore = dq_semaphore_acquire<kBlockM, kBlockN, Traits::kDimParts>(
          params, window, batch, head, m_block, n_block, tid == 128, consumers_sync);
      float* dq = params.dq_accum + batch * params.dq_accum_batch_stride +
                  (static_cast<int64_t>(seq.q_start + row0) * params.h + head) * params.d;
      const int64_t dq_row_stride = static_cast<int64_t>(params.h) * params.d;
      if constexpr (kDqTransposed) {
        // dQ^T's element (column, query): one query a row of dq_accum, so one float an atomic.
#pragma unroll
        for (int nt = 0; nt < kBlockM / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int column = dq_col0 + 16 * group_warp + Layout::lane_row(lane) + Layout::kRowSlotStride * (e / 2);
            const int query = col(nt) + e % 2;
            if (row0 + query < seqlen_q && column < params.d) {
              atomicAdd(dq + query * dq_row_stride + column, acc_dq(0, nt, e));
            }
          }
        }
      } else {
        atomic_add_tile(dq, dq_row_stride, acc_dq, dq_row0 + 16 * group_warp, dq_col0, row0, seqlen_q, params.d, lane);
      }
      dq_semaphore_release(semaphore, tid == 128, consumers_sync);
    }
    // dK's product ends inside the step: one in flight across the loop's back edge makes ptxas
    // serialise every wgmma (C7515).
    wgmma_wait<0>();
    wgmma_fence_operands(acc_dk.v[0]);
    wgmma_fence_operands(ds);
    // Every consumer thread arrives: each has read the stage's lse and D with plain loads, and an
    // arrival releases only its own thread's accesses (one per warp after __syncwarp is ordered
    // too, but compute-sanitizer's racecheck reports it as a race with the next write).
    mbarrier_arrive(&empty[stage]);
  }

  // dK = scale * sum dS^T Q; dV = sum P^T dO. Keys no query sees write zeros.
  const int key_base = key0 + wg_key0 + 16 * group_warp;
  store_tile<T>(static_cast<T*>(params.dk) + batch * params.dk_batch_stride + head_k * params.dk_head_stride +
                    seq.k_start * params.dk_row_stride,
                params.dk_row_stride, acc_dk, key_base, dim0,
                seqlen_k, params.d, params.scale_softmax, lane);
  store_tile<T>(static_cast<T*>(params.dv) + batch * params.dv_batch_stride + head_k * params.dv_head_stride +
                    seq.k_start * params.dv_row_stride,
                params.dv_row_stride, acc_dv, key_base, dim0,
                seqlen_k, params.d, 1.f, lane);
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

}  // namespace flash
