// The backward kernels.
//
// flash_bwd_kernel: one thread block per (kBlockN keys, kv head, batch). K and V stay in shared
// memory while the block walks the query blocks whose windows reach its keys, for every query
// head that shares the kv head (GQA sums there, in registers, without expanded K/V). Per query
// block, with P and dS kept transposed so that the key dimension is the warp's row dimension:
//
//   1. S^T = K Q^T, dP^T = V dO^T; P^T = exp(S^T - lse), dS^T = P^T (dP^T - D) -> shared memory
//      (with a softcap, dS^T also carries the tanh's derivative, score_mod.h; with dropout P^T
//      is the kept P / (1 - p) and dS^T = P (dP^T / (1 - p) - D) where kept, -P D where dropped)
//   2. dV += P^T dO, dK += dS^T Q       (accumulated in registers across the whole walk)
//   3. dQ += dS K, added to an fp32 accumulator in global memory with atomics
// Each product's output tile is shared among the warps as BwdTraits' WarpGrids say.
//
// Q and dO are double-buffered: the next query block loads while this one computes.
#pragma once

#include "arch/warp_gemm_mma.h"
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
#include "smem_tile.h"
#include "tile_config.h"

#include <type_traits>

namespace flash {

// Starts the loads of K and V rows key0 .. key0 + kBlockN - 1 (zeros past the end).
template <class KVTile, int kBlockN, int kNThreads, class T>
FA_DEVICE void load_key_block(const BwdParams& params, const SeqBounds& seq, int batch, int head_k, int key0,
                              T* sK, T* sV, int tid) {
  const int keys_valid = min(kBlockN, seq.seqlen_k - key0);
  KVTile::template load_async<kNThreads>(
      sK, static_cast<const T*>(params.k) + batch * params.k_batch_stride + head_k * params.k_head_stride +
              (seq.k_start + key0) * params.k_row_stride, params.k_row_stride, keys_valid, params.d, tid);
  KVTile::template load_async<kNThreads>(
      sV, static_cast<const T*>(params.v) + batch * params.v_batch_stride + head_k * params.v_head_stride +
              (seq.k_start + key0) * params.v_row_stride, params.v_row_stride, keys_valid, params.d, tid);
}

// Starts the loads of query rows row0 .. row0 + kBlockM - 1 of `head`: Q and dO (zeros past the
// end), and stores their lse (log2 units) and D.
template <class QTile, int kBlockM, int kNThreads, class T>
FA_DEVICE void load_query_block(const BwdParams& params, const SeqBounds& seq, int batch, int head, int row0,
                                T* sQ, T* sdO, float* sLse, float* sD, int tid) {
  const int rows_valid = min(kBlockM, seq.seqlen_q - row0);
  QTile::template load_async<kNThreads>(
      sQ, static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
              (seq.q_start + row0) * params.q_row_stride, params.q_row_stride, rows_valid, params.d, tid);
  QTile::template load_async<kNThreads>(
      sdO, static_cast<const T*>(params.dout) + batch * params.do_batch_stride + head * params.do_head_stride +
               (seq.q_start + row0) * params.do_row_stride, params.do_row_stride, rows_valid, params.d, tid);
  if (tid < kBlockM) {
    const int64_t idx = seq.lse_index(params, batch, head, row0 + tid);
    // Rows past the end, and rows that saw no key (lse = -inf), get lse = +inf: P = 0 there.
    const float lse = tid < rows_valid ? params.softmax_lse[idx] : INFINITY;
    sLse[tid] = lse == -INFINITY ? INFINITY : lse * float(M_LOG2E);
    sD[tid] = tid < rows_valid ? params.softmax_d[idx] : 0.f;
  }
}

// A mask flag known at run time (bool) or at compile time (std::true_type / std::false_type).
FA_DEVICE constexpr bool flag_value(bool flag) { return flag; }
template <bool kFlag> FA_DEVICE constexpr bool flag_value(std::integral_constant<bool, kFlag>) { return kFlag; }

template <class Traits, bool Has_right_edge, bool Has_extras>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm) flash_bwd_kernel(const BwdParams params) {
  using T = typename Traits::T;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  // XOR-form fragment offsets: six operand orientations would otherwise keep 24 registers.
  using QTile = SmemTile<kBlockM, kHeadDim, true>;   // Q, dO
  using KVTile = SmemTile<kBlockN, kHeadDim, true>;  // K, V
  using PTile = SmemTile<kBlockN, kBlockM, true>;    // P^T, dS^T: rows are keys

  extern __shared__ __align__(16) char smem[];
  T* sK = reinterpret_cast<T*>(smem);
  T* sV = sK + Traits::kKVElems;
  T* sQ = sV + Traits::kKVElems;         // [2][kBlockM * kHeadDim]
  T* sdO = sQ + 2 * Traits::kQElems;     // [2][kBlockM * kHeadDim]
  T* sPt = sdO + 2 * Traits::kQElems;
  T* sdSt = sPt + Traits::kPElems;
  float* sLse = reinterpret_cast<float*>(sdSt + Traits::kPElems);  // [2][kBlockM], log2 units
  float* sD = sLse + 2 * kBlockM;                                  // [2][kBlockM]

  const int n_block = blockIdx.x, head_k = blockIdx.y, batch = blockIdx.z;
  const int tid = threadIdx.x, warp = tid / kGroupSize, lane = tid % kGroupSize;
  const int key0 = n_block * kBlockN;
  const int group = params.h / params.h_k;
  const SeqBounds seq(params, batch);
  const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
  if (key0 >= seqlen_k) return;  // varlen: this sequence has fewer keys than the longest

  // Which keys each query row sees (mask.h).
  const KeyWindow<Has_right_edge> window{seqlen_q, seqlen_k, params.window_left, params.window_right};
  const bool has_softcap = Has_extras && params.softcap_prescale != 0.f;
  // Dropout redraws the forward's mask from the (seed, offset) it recorded. The P^T that dV
  // needs is the kept, rescaled one; the P kept for dS^T carries a minus sign where dropped.
  const bool has_dropout = Has_extras && params.has_dropout;
  uint64_t seed = 0, offset = 0;
  if constexpr (Has_extras) {
    if (has_dropout) backward_dropout_seed(params, seed, offset);
  }
  const BwdQueryWalk<kBlockM, kBlockN, Has_right_edge> walk(window, key0, group);
  const int steps = walk.steps;
  load_key_block<KVTile, kBlockN, Traits::kNThreads>(params, seq, batch, head_k, key0, sK, sV, tid);

  // Starts the loads of step `step`'s Q, dO, lse and D into buffer `buf`.
  auto load_step = [&](int step, int buf) {
    const int head = head_k * group + step / walk.m_per_head;
    const int row0 = (walk.m_block_begin + step % walk.m_per_head) * kBlockM;
    load_query_block<QTile, kBlockM, Traits::kNThreads>(params, seq, batch, head, row0, sQ + buf * Traits::kQElems,
                                                        sdO + buf * Traits::kQElems, sLse + buf * kBlockM,
                                                        sD + buf * kBlockM, tid);
  };
  if (steps > 0) load_step(0, 0);
  copy_async_commit();

  using SdpGrid = typename Traits::SdpGrid;  // step 1
  using DkvGrid = typename Traits::DkvGrid;
  using DqGrid = typename Traits::DqGrid;
  const int sdp_row0 = SdpGrid::row0(warp), sdp_col0 = SdpGrid::col0(warp);
  const int dkv_row0 = DkvGrid::row0(warp), dkv_col0 = DkvGrid::col0(warp);
  const int dq_row0 = DqGrid::row0(warp), dq_col0 = DqGrid::col0(warp);

  using Layout = MmaAccLayout;
  MmaTile<DkvGrid::kMT, DkvGrid::kNT> acc_dk = {}, acc_dv = {};

  for (int step = 0; step < steps; ++step) {
    const int buf = step & 1;
    const int head = head_k * group + step / walk.m_per_head;
    const int m_block = walk.m_block_begin + step % walk.m_per_head;
    const int row0 = m_block * kBlockM;
    const T* sQb = sQ + buf * Traits::kQElems;
    const T* sdOb = sdO + buf * Traits::kQElems;
    const float* sLseb = sLse + buf * kBlockM;
    const float* sDb = sD + buf * kBlockM;

    copy_async_wait<0>();
    __syncthreads();  // this step's tiles are visible; every warp is done with the last step
    if (step + 1 < steps) load_step(step + 1, buf ^ 1);
    copy_async_commit();

    // 1. P^T and dS^T for this warp's keys x queries. P^T is finished (and kept packed, as the
    // products below will see it) before dP^T starts, so the two fp32 tiles are never live
    // together.
    {
      using Grid = SdpGrid;
      using STile = MmaTile<Grid::kMT, Grid::kNT>;  // S^T, dP^T: keys x queries
      // Keys past the end must give P = 0 too: with K = 0 there, S = 0 and exp(0 - lse) can
      // overflow, and inf * 0 would poison dQ.
      const bool needs_mask = key0 + kBlockN > seqlen_k || window.block_needs_mask(row0, row0 + kBlockM, key0, key0 + kBlockN);
      // A row (key) holds one pair of adjacent columns (queries) per tile, packed into one 32-bit
      // word of P^T / dS^T: element (mt, nt, element(half, j)) is key key_row(mt, half), query col(nt) + j.
      static_assert(Layout::kColRun == 2 && STile::kRowElems == 2, "one packed pair per row and tile");
      auto key_row = [&](int mt, int half) {
        return sdp_row0 + Layout::kTileRows * mt + Layout::lane_row(lane) + Layout::kRowSlotStride * half;
      };
      auto col = [&](int nt) { return sdp_col0 + Layout::kTileCols * nt + Layout::lane_col(lane); };
      auto p_offset = [&](int mt, int nt, int half) { return PTile::offset(key_row(mt, half), col(nt) / 8) + col(nt) % 8; };

      // Keep bits of this thread's scores: bit kElems nt + e of word mt decides element (mt, nt, e).
      static_assert(Grid::kNT * STile::kElems <= 32, "one word of keep bits per strip");
      [[maybe_unused]] uint32_t keep_bits[Grid::kMT] = {};
      if constexpr (Has_extras) {
        if (has_dropout) {
          const Dropout dropout(params, seed, offset, batch, head);
          auto bit = [](const FragmentIndex& at) { return STile::kElems * at.nt + at.e; };
          for_each_dropout_word<true, STile>(
              dropout, [&](int mt) { return key0 + key_row(mt, 0); },
              [&](int nt, int e) { return row0 + col(nt) + Layout::col_offset(e); },
              [&](uint32_t keep, FragmentIndex at0, FragmentIndex at1, FragmentIndex at2, FragmentIndex at3) {
                keep_bits[at0.mt] |= (keep & 1) << bit(at0) | (keep >> 1 & 1) << bit(at1) | (keep >> 2 & 1) << bit(at2) |
                                     (keep >> 3 & 1) << bit(at3);
              });
        }
      }

      uint32_t p_packed[Grid::kMT][Grid::kNT][2];
      STile acc_s = {};
      gemm_smem<kHeadDim, Major::kRows, Major::kRows, KVTile, QTile>(acc_s, sK, sdp_row0, sQb, sdp_col0, lane);
      // Causal blocks get two bodies: steps off every mask edge skip the per-element test (the
      // compiler would otherwise evaluate it for every score and only predicate the result).
      // Without causal only the last key block has an edge; there the second body's registers
      // cost more than the test (measured, benchmarks/NOTES.md).
      auto exponentiate = [&](auto masked) {
#pragma unroll
        for (int nt = 0; nt < Grid::kNT; ++nt) {
          const float2 lse = *reinterpret_cast<const float2*>(sLseb + col(nt));
#pragma unroll
          for (int mt = 0; mt < Grid::kMT; ++mt) {
#pragma unroll
            for (int half = 0; half < Layout::kRowSlots; ++half) {
              float p[2];
              [[maybe_unused]] float dtanh[2];
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                const int key = key0 + key_row(mt, half), query = row0 + col(nt) + j;
                const bool visible = !flag_value(masked) || (key < seqlen_k && window.visible(query, key));
                if constexpr (Has_extras) {
                  const ScoreMod score_mod(params, batch, head, seqlen_q, seqlen_k);
                  float& x = acc_s(mt, nt, Layout::element(half, j));
                  x = score_mod.softcap(x);
                  dtanh[j] = 1.f - x * x;
                  x += score_mod.bias(query, key);
                }
                p[j] = visible ? exp2_fast(acc_s(mt, nt, Layout::element(half, j)) * params.scale_softmax_log2 -
                                           (j ? lse.y : lse.x))
                               : 0.f;
              }
              if constexpr (Has_extras) {
                if (has_softcap) *reinterpret_cast<uint32_t*>(sdSt + p_offset(mt, nt, half)) = pack2<half_t>(dtanh[0], dtanh[1]);
              }
              p_packed[mt][nt][half] = pack2<T>(p[0], p[1]);
              uint32_t p_dv = p_packed[mt][nt][half];
              if constexpr (Has_extras) {
                if (has_dropout) {
                  float kept[2];
#pragma unroll
                  for (int j = 0; j < 2; ++j) {
                    const bool keep = keep_bits[mt] >> (STile::kElems * nt + Layout::element(half, j)) & 1;
                    kept[j] = keep ? p[j] * params.rp_keep : 0.f;
                    p[j] = keep ? p[j] : -p[j];
                  }
                  p_packed[mt][nt][half] = pack2<T>(p[0], p[1]);
                  p_dv = pack2<T>(kept[0], kept[1]);
                }
              }
              *reinterpret_cast<uint32_t*>(sPt + p_offset(mt, nt, half)) = p_dv;
            }
          }
        }
      };
      if constexpr (Has_right_edge) {
        if (needs_mask) {
          exponentiate(std::true_type{});
        } else {
          exponentiate(std::false_type{});
        }
      } else {
        exponentiate(needs_mask);
      }
      STile acc_dp = {};
      gemm_smem<kHeadDim, Major::kRows, Major::kRows, KVTile, QTile>(acc_dp, sV, sdp_row0, sdOb, sdp_col0, lane);
#pragma unroll
      for (int mt = 0; mt < Grid::kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < Grid::kNT; ++nt) {
#pragma unroll
          for (int half = 0; half < Layout::kRowSlots; ++half) {
            const float2 p = unpack2<T>(p_packed[mt][nt][half]);
            const float2 d = *reinterpret_cast<const float2*>(sDb + col(nt));
            const float dp0 = acc_dp(mt, nt, Layout::element(half, 0)), dp1 = acc_dp(mt, nt, Layout::element(half, 1));
            float ds0 = p.x * (dp0 - d.x);
            float ds1 = p.y * (dp1 - d.y);
            if constexpr (Has_extras) {
              if (has_dropout) {  // dropped: dS = -P D, which is the stored -P times D
                ds0 = signbit(p.x) ? p.x * d.x : p.x * (dp0 * params.rp_keep - d.x);
                ds1 = signbit(p.y) ? p.y * d.y : p.y * (dp1 * params.rp_keep - d.y);
              }
            }
            if (has_softcap) {
              const float2 dtanh = unpack2<half_t>(*reinterpret_cast<const uint32_t*>(sdSt + p_offset(mt, nt, half)));
              ds0 *= dtanh.x;
              ds1 *= dtanh.y;
            }
            *reinterpret_cast<uint32_t*>(sdSt + p_offset(mt, nt, half)) = pack2<T>(ds0, ds1);
          }
        }
      }
    }
    __syncthreads();  // P^T and dS^T complete

    // 2. dV += P^T dO and dK += dS^T Q over this block's queries.
    gemm_smem<kBlockM, Major::kRows, Major::kCols, PTile, QTile>(acc_dv, sPt, dkv_row0, sdOb, dkv_col0, lane);
    gemm_smem<kBlockM, Major::kRows, Major::kCols, PTile, QTile>(acc_dk, sdSt, dkv_row0, sQb, dkv_col0, lane);

    // 3. dQ += dS K for this warp's queries x head-dim columns, into the fp32 accumulator.
    int* semaphore = nullptr;
    if (params.deterministic) {
      semaphore = dq_semaphore_acquire<kBlockM, kBlockN>(params, window, batch, head, m_block, n_block, tid == 0,
                                                         [] { __syncthreads(); });
    }
    float* dq = params.dq_accum + batch * params.dq_accum_batch_stride +
                (static_cast<int64_t>(seq.q_start + row0) * params.h + head) * params.d;
    const int64_t dq_row_stride = static_cast<int64_t>(params.h) * params.d;
#pragma unroll
    for (int pass = 0; pass < Traits::kDqPasses; ++pass) {
      const int col0 = pass * (kHeadDim / Traits::kDqPasses) + dq_col0;
      MmaTile<DqGrid::kMT, DqGrid::kNT> acc_dq = {};
      gemm_smem<kBlockN, Major::kCols, Major::kCols, PTile, KVTile>(acc_dq, sdSt, dq_row0, sK, col0, lane);
      atomic_add_tile(dq, dq_row_stride, acc_dq, dq_row0, col0, row0, seqlen_q, params.d, lane);
    }
    if (params.deterministic) dq_semaphore_release(semaphore, tid == 0, [] { __syncthreads(); });
  }

  // dK = scale * sum dS^T Q; dV = sum P^T dO. Keys no query sees write zeros.
  store_tile<T>(static_cast<T*>(params.dk) + batch * params.dk_batch_stride + head_k * params.dk_head_stride +
                    seq.k_start * params.dk_row_stride,
                params.dk_row_stride, acc_dk, key0 + dkv_row0, dkv_col0, seqlen_k, params.d, params.scale_softmax, lane);
  store_tile<T>(static_cast<T*>(params.dv) + batch * params.dv_batch_stride + head_k * params.dv_head_stride +
                    seq.k_start * params.dv_row_stride,
                params.dv_row_stride, acc_dv, key0 + dkv_row0, dkv_col0, seqlen_k, params.d, 1.f, lane);
}

}  // namespace flash
