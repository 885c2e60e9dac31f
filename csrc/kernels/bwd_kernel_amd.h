// The AMD backward: one thread block per (kBlockN keys, kv head, batch), each wave owning kN of
// the keys (the instruction's N), walking the query blocks of kBlockM rows that see them, for
// every query head of the group (BwdQueryWalk, bwd_walk.h). All five products run on the device's
// matrix cores (MatrixCore, arch/matrix_core_amd.h), written so that each one's operands are where
// the one before left them:
//
//   S  = Q K^T,  dP = dO V^T   D[query][key]: a lane holds one key, a run of queries (fragment_amd.h)
//   dV += P^T dO, dK += dS^T Q  as D[d][key] with B = P, dS straight from S's and dP's accumulators
//   dQ += dS K                  as D[d][query] with B = dS^T, which goes through LDS
//
// so P and dS are computed in the backward's own orientation (rows are keys, as the portable
// kernel's S^T), and the masks, the score modifiers, dropout's words and the epilogues are the
// shared ones. Q, dO, K (and V up to head dim 128) sit row-major in LDS; the products that want
// them transposed read them with strided loads. Per query block:
//
//   barrier | Q, dO, lse, D -> LDS | barrier | S, dP | P, dS | dS -> LDS | dV, dK | barrier | dQ (atomics)
#pragma once

#include "attention_amd.h"
#include "bwd_walk.h"
#include "dropout.h"
#include "epilogue.h"
#include "fragment.h"
#include "mask.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "seq_bounds.h"
#include "tile_config.h"

#include <type_traits>

#if defined(FA_PLATFORM_HIP)

namespace flash {

// One lane's A operand of k-step kk read down a column: element i at base[(kK kk + k_of(i)) *
// stride] (base: the column's first element). The products with a transposed operand (dO^T, Q^T,
// K^T) read row-major tiles this way.
template <class Core, class T, class KOf>
FA_DEVICE typename Core::Operand load_operand_strided(const T* base, int stride, int kk, KOf&& k_of) {
  typename Core::Operand op;
  using Element = std::remove_reference_t<decltype(op[0])>;
  const uint16_t* column = reinterpret_cast<const uint16_t*>(base);
#pragma unroll
  for (int i = 0; i < Core::kOperandElems; ++i) {
    op[i] = __builtin_bit_cast(Element, column[(Core::kK * kk + k_of(i)) * stride]);
  }
  return op;
}

template <class Traits, bool Has_right_edge, bool Has_extras>
__global__ void __launch_bounds__(Traits::kNThreads, Traits::kMinBlocksPerSm)
    flash_bwd_amd_kernel(const BwdParams params) {
#if defined(FA_AMD_DEVICE_FAMILY)
  if constexpr (Traits::kFamily == FA_AMD_DEVICE_FAMILY) {
    using T = typename Traits::T;
    using Core = MatrixCore<Traits::kFamily, T>;
    using Layout = typename Core::Layout;
    constexpr int kTile = Traits::kTile, kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN;
    constexpr int kHeadDim = Traits::kHeadDim, kRowStride = Traits::kRowStride, kDsStride = Traits::kDsStride;
    constexpr int kNThreads = Traits::kNThreads, kWaves = Traits::kWaves, kDSplit = Traits::kDSplit;
    constexpr int kKSteps = kHeadDim / Core::kK, kDTiles = kHeadDim / kTile;
    // The wave's share of the head dim: k-steps of S and dP, channel tiles of dK and dV.
    constexpr int kWaveKSteps = kKSteps / kDSplit, kWaveDTiles = kDTiles / kDSplit;
    constexpr int kQuerySteps = kBlockM / Core::kK, kKeySteps = kBlockN / Core::kK;
    constexpr bool kVFromGlobal = Traits::kVFromGlobal;
    static_assert(Core::kM == kTile && Core::kN == kTile, "square instruction tiles");
    using STile = AccTile<Layout, 1, kBlockM / kTile>;  // S, then P; dP, then dS: the wave's keys x queries
    using DkvTile = AccTile<Layout, 1, kWaveDTiles>;    // dK, dV: the wave's keys x its channels
    using DqTile = AccTile<Layout, 1, 1>;               // dQ: queries x one tile of head dim

    extern __shared__ __align__(16) char smem[];
    T* sK = reinterpret_cast<T*>(smem);                              // [kBlockN][kRowStride]
    T* sV = sK + Traits::kKVElems;                                   // [kBlockN][kRowStride], unless from global
    T* sQ = sV + (kVFromGlobal ? 0 : Traits::kKVElems);              // [kBlockM][kRowStride]
    T* sdO = sQ + Traits::kQElems;                                   // [kBlockM][kRowStride]
    T* sdS = sdO + Traits::kQElems;                                  // [kBlockM][kDsStride]: dS, queries x keys
    float* sLse = reinterpret_cast<float*>(sdS + kBlockM * kDsStride);  // [kBlockM], log2 units
    float* sD = sLse + kBlockM;                                         // [kBlockM]
    float* sSwap = sD + kBlockM;  // [kWaves][kTile * kTile]: partial S, then dP, with the head dim split

    const int n_block = blockIdx.x, head_k = blockIdx.y, batch = blockIdx.z;
    // Never negative: their 64-bit products then need no sign words (held across the loop, spilled).
    __builtin_assume(n_block >= 0 && head_k >= 0 && batch >= 0);
    const int tid = threadIdx.x, wave = tid / Traits::kWaveSize, lane = tid % Traits::kWaveSize;
    // Waves wave / kDSplit share their keys; wave % kDSplit names the part of the head dim.
    const int key0 = n_block * kBlockN, wave_key0 = wave / kDSplit * kTile, part = wave % kDSplit;
    const int group = params.h / params.h_k;
    const SeqBounds seq(params, batch);
    const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
    if (key0 >= seqlen_k) return;  // varlen: this sequence has fewer keys than the longest

    const KeyWindow<Has_right_edge> window{seqlen_q, seqlen_k, params.window_left, params.window_right};
    const BwdQueryWalk<kBlockM, kBlockN, Has_right_edge> walk(window, key0, group);

    // K and V once: rows past the end are zeros.
    const int keys_valid = min(kBlockN, seqlen_k - key0);
    const T* k = static_cast<const T*>(params.k) + batch * params.k_batch_stride + head_k * params.k_head_stride +
                 (seq.k_start + key0) * params.k_row_stride;
    const T* v = static_cast<const T*>(params.v) + batch * params.v_batch_stride + head_k * params.v_head_stride +
                 (seq.k_start + key0) * params.v_row_stride;
    copy_rows_to_lds<kBlockN, kHeadDim, kRowStride, false, kNThreads>(
        sK, [&](int row) { return k + row * params.k_row_stride; }, keys_valid, params.d, tid);
    auto operand_k = [&](int i) { return Core::operand_k(lane, i); };
    auto p_key = [&](int i) { return Core::p_key(lane, i); };
    const int wave_key = wave_key0 + lane % Core::kN;  // the block row of the lane's B operand column
    if constexpr (!kVFromGlobal) {
      copy_rows_to_lds<kBlockN, kHeadDim, kRowStride, false, kNThreads>(
          sV, [&](int row) { return v + row * params.v_row_stride; }, keys_valid, params.d, tid);
    }

    // The lane's key (its tile row) and the block column of element (0, qt, e) (its query).
    const int key = key0 + wave_key0 + Layout::lane_row(lane);
    auto query_col = [&](int qt, int e) { return STile::col(Layout::lane_col(lane), qt, e); };

    // The sequence's first rows of Q, dO, lse, D and dQ accumulator for query head 0: the loop
    // adds only the step's head and rows (fewer values held in SGPRs across it).
    const T* q_seq = static_cast<const T*>(params.q) + batch * params.q_batch_stride + seq.q_start * params.q_row_stride;
    const T* dout_seq =
        static_cast<const T*>(params.dout) + batch * params.do_batch_stride + seq.q_start * params.do_row_stride;
    const int64_t lse_seq = seq.lse_index(params, batch, 0, 0);
    const int64_t dq_row_stride = static_cast<int64_t>(params.h) * params.d;
    float* dq_seq = params.dq_accum + batch * params.dq_accum_batch_stride + seq.q_start * dq_row_stride;

    DkvTile acc_dk = {}, acc_dv = {};
    const int head_begin = head_k * group;
    BwdStepCursor cursor(walk, head_begin, 0);  // no division per step
    for (int step = 0; step < walk.steps; ++step, cursor.next(walk, head_begin, group)) {
      const int head = cursor.head, m_block = cursor.m_block;
      // The parameters read afresh each step: the strides, pointers and scalars the step reads
      // are loaded here instead of held in SGPRs across the loop.
      const BwdParams step_params = amd::reload_params(params);
      const int row0 = m_block * kBlockM, rows_valid = min(kBlockM, seqlen_q - row0);
      // Compared with each lane's channels in the copies and the dQ atomics: opaque, so that those
      // compares are made here instead of hoisted before the loop as exec masks held in SGPRs.
      const int head_dim = step_params.d;
      // Likewise, in the extras instantiations (short of SGPRs), the thread index and the lane's
      // key, compared with the step's rows and counts.
      const int step_tid = Has_extras ? opaque(tid) : tid;
      [[maybe_unused]] const bool wave_key_valid = (Has_extras ? opaque(wave_key) : wave_key) < keys_valid;

      __syncthreads();  // every wave is done with the last step's Q, dO, dS (and, first, K and V landed)
      const T* q = q_seq + head * step_params.q_head_stride + row0 * step_params.q_row_stride;
      const T* dout = dout_seq + head * step_params.do_head_stride + row0 * step_params.do_row_stride;
      copy_rows_to_lds<kBlockM, kHeadDim, kRowStride, false, kNThreads>(
          sQ, [&](int row) { return q + row * step_params.q_row_stride; }, rows_valid, head_dim, tid);
      // dO's row count and head dim opaque: its chunks' compares are then its own, made where its
      // loads are, instead of Q's (the same rows and channels) kept from Q's copy, one lane mask
      // (2 SGPRs) a chunk.
      copy_rows_to_lds<kBlockM, kHeadDim, kRowStride, false, kNThreads>(
          sdO, [&](int row) { return dout + row * step_params.do_row_stride; }, amd::opaque_uniform(rows_valid),
          amd::opaque_uniform(head_dim), tid);
      if (step_tid < kBlockM) {
        // Rows past the end, and rows that saw no key (lse = -inf), get lse = +inf: P = 0 there.
        const int64_t idx = lse_seq + head * step_params.lse_head_stride + row0 + step_tid;
        const float lse = step_tid < rows_valid ? step_params.softmax_lse[idx] : INFINITY;
        sLse[step_tid] = lse == -INFINITY ? INFINITY : lse * float(M_LOG2E);
        sD[step_tid] = step_tid < rows_valid ? step_params.softmax_d[idx] : 0.f;
      }
      __syncthreads();

      // S = Q K^T and dP = dO V^T: A = Q, dO rows (the instruction's M: queries), B = K, V rows;
      // over the wave's part of the head dim.
      STile acc_s = {}, acc_dp = {};
#pragma unroll
      for (int kk = part * kWaveKSteps; kk < (part + 1) * kWaveKSteps; ++kk) {
        const auto b_k = load_operand<Core>(sK + wave_key * kRowStride, kk, operand_k);
        typename Core::Operand b_v;
        if constexpr (kVFromGlobal) {
          b_v = load_operand<Core>(v + (wave_key_valid ? wave_key : 0) * step_params.v_row_stride, kk, operand_k,
                                   wave_key_valid ? head_dim : 0);
        } else {
          b_v = load_operand<Core>(sV + wave_key * kRowStride, kk, operand_k);
        }
#pragma unroll
        for (int qt = 0; qt < STile::kNT; ++qt) {
          const int query = qt * kTile + lane % Core::kM;
          mma_tile<Core>(acc_s, 0, qt, load_operand<Core>(sQ + query * kRowStride, kk, operand_k), b_k);
          mma_tile<Core>(acc_dp, 0, qt, load_operand<Core>(sdO + query * kRowStride, kk, operand_k), b_v);
        }
      }

      if constexpr (kDSplit > 1) {
        // The waves of a key tile add each other's partial sums: all end with all of S and dP.
        publish_partial<kTile * kTile>(acc_s, sSwap, wave, lane);
        __syncthreads();
        add_partner_partials<kDSplit, kTile * kTile>(acc_s, sSwap, wave, lane);
        __syncthreads();
        publish_partial<kTile * kTile>(acc_dp, sSwap, wave, lane);
        __syncthreads();
        add_partner_partials<kDSplit, kTile * kTile>(acc_dp, sSwap, wave, lane);
        __syncthreads();
      }

      // P (kept and rescaled, for dV) in acc_s, dS in acc_dp. Keys past the end get P = 0 too:
      // with K = 0 there, S = 0 and exp(0 - lse) could overflow (inf * 0 would poison dQ).
      const bool needs_mask =
          key0 + kBlockN > seqlen_k || window.block_needs_mask(row0, row0 + kBlockM, key0, key0 + kBlockN);
      static_assert(STile::kNT * STile::kElems <= 32, "one word of keep bits");
      // Dropout redraws the forward's mask from the (seed, offset) it recorded. The flag from the
      // step's params: held across the loop, it took an SGPR pair (a bool as a 64-bit mask).
      const bool has_dropout = Has_extras && step_params.has_dropout;
      [[maybe_unused]] uint32_t keep_bits = 0;
      if constexpr (Has_extras) {
        if (has_dropout) {
          // (seed, offset) read each step through the reloaded params instead of held across the
          // loop (4 SGPRs). A load after the loop's stores is a vector load: broadcast to SGPRs.
          uint64_t seed, offset;
          backward_dropout_seed(step_params, seed, offset);
          const Dropout dropout(step_params, amd::wave_uniform(seed), amd::wave_uniform(offset), batch, head);
          auto bit = [](const FragmentIndex& at) { return at.e < 0 ? 0u : 1u << (STile::kElems * at.nt + at.e); };
          for_each_dropout_word<true, STile>(
              dropout, [&](int) { return key; }, [&](int qt, int e) { return row0 + query_col(qt, e); },
              [&](uint32_t word, FragmentIndex at0, FragmentIndex at1, FragmentIndex at2, FragmentIndex at3) {
                keep_bits |= (word & 1 ? bit(at0) : 0u) | (word & 2 ? bit(at1) : 0u) | (word & 4 ? bit(at2) : 0u) |
                             (word & 8 ? bit(at3) : 0u);
              });
        }
      }
      // The softcap tested on its bits, per step: a scalar compare (a float compare of a uniform
      // value is a VALU compare, whose 64-bit lane mask would be held in SGPRs); either zero is off.
      [[maybe_unused]] const float softcap_prescale = step_params.softcap_prescale;
      [[maybe_unused]] const bool has_softcap =
          Has_extras && (__float_as_uint(softcap_prescale) & 0x7fffffffu) != 0u;
      [[maybe_unused]] const ScoreMod score_mod(step_params, batch, head, seqlen_q, seqlen_k);
#pragma unroll
      for (int qt = 0; qt < STile::kNT; ++qt) {
#pragma unroll
        for (int e = 0; e < STile::kElems; ++e) {
          const int col = query_col(qt, e), query = row0 + col;
          float x = acc_s(0, qt, e);
          [[maybe_unused]] float dtanh = 1.f;  // d tanh / d its argument (1: no softcap)
          if constexpr (Has_extras) {
            if (has_softcap) {
              x = tanh_fast(x * softcap_prescale);
              dtanh = 1.f - x * x;
            }
            x += score_mod.bias(query, key);
          }
          const bool visible = !needs_mask || (key < seqlen_k && window.visible(query, key));
          const float p = visible ? exp2_fast(x * step_params.scale_softmax_log2 - sLse[col]) : 0.f;
          const float dp = acc_dp(0, qt, e), d = sD[col];
          float p_dv = p, ds = p * (dp - d);
          if constexpr (Has_extras) {
            if (has_dropout) {  // dropped: dS = -P D
              const bool keep = keep_bits >> (STile::kElems * qt + e) & 1;
              p_dv = keep ? p * step_params.rp_keep : 0.f;
              ds = keep ? p * (dp * step_params.rp_keep - d) : -p * d;
            }
            ds *= dtanh;
          }
          acc_s(0, qt, e) = p_dv;
          acc_dp(0, qt, e) = ds;
          if (part == 0) store_one(sdS + col * kDsStride + wave_key0 + Layout::lane_row(lane), ds);
        }
      }

      // dV += P^T dO and dK += dS^T Q, as D[d][key]: A = dO^T, Q^T read down their columns,
      // B = P, dS from the accumulators (MatrixCore::p_operand: its keys are queries here).
#pragma unroll
      for (int s = 0; s < kQuerySteps; ++s) {
        const typename Core::Operand b_p = Core::p_operand(acc_s, 0, s, lane);
        const typename Core::Operand b_ds = Core::p_operand(acc_dp, 0, s, lane);
#pragma unroll
        for (int dt = 0; dt < kWaveDTiles; ++dt) {
          const int channel = (part * kWaveDTiles + dt) * kTile + lane % Core::kM;
          mma_tile<Core>(acc_dv, 0, dt, load_operand_strided<Core>(sdO + channel, kRowStride, s, p_key), b_p);
          mma_tile<Core>(acc_dk, 0, dt, load_operand_strided<Core>(sQ + channel, kRowStride, s, p_key), b_ds);
        }
      }
      __syncthreads();  // dS of every wave's keys in sdS

      // dQ += dS K over the block's keys, as D[d][query]: A = K^T read down K's columns, B = dS^T
      // (sdS's rows). The waves take the head-dim tiles in turn and add them with atomics, in
      // deterministic mode in key-block order behind the query block's semaphore.
      int* semaphore = nullptr;
      if (step_params.deterministic) {
        semaphore = dq_semaphore_acquire<kBlockM, kBlockN>(step_params, window, batch, head, m_block, n_block, step_tid == 0,
                                                           [] { __syncthreads(); });
      }
      float* dq = dq_seq + row0 * dq_row_stride + head * step_params.d;
      for (int dt = wave; dt < kDTiles; dt += kWaves) {
        DqTile acc_dq = {};
        const int channel = dt * kTile + lane % Core::kM;
#pragma unroll
        for (int s = 0; s < kKeySteps; ++s) {
          mma_tile<Core>(acc_dq, 0, 0, load_operand_strided<Core>(sK + channel, kRowStride, s, operand_k),
                         load_operand<Core>(sdS + (lane % Core::kN) * kDsStride, s, operand_k));
        }
        atomic_add_tile(dq, dq_row_stride, acc_dq, 0, dt * kTile, row0, seqlen_q, head_dim, lane);
      }
      if (step_params.deterministic) dq_semaphore_release(semaphore, step_tid == 0, [] { __syncthreads(); });
    }

    // dK = scale * sum dS^T Q; dV = sum P^T dO. Keys no query sees write zeros. The
    // parameters read afresh: held across the loop, their pointers and strides spilled.
    const BwdParams late = amd::reload_params(params);
    store_tile<T>(static_cast<T*>(late.dk) + batch * late.dk_batch_stride + head_k * late.dk_head_stride +
                      seq.k_start * late.dk_row_stride,
                  late.dk_row_stride, acc_dk, key0 + wave_key0, part * kWaveDTiles * kTile, seqlen_k, late.d,
                  late.scale_softmax, lane);
    store_tile<T>(static_cast<T*>(late.dv) + batch * late.dv_batch_stride + head_k * late.dv_head_stride +
                      seq.k_start * late.dv_row_stride,
                  late.dv_row_stride, acc_dv, key0 + wave_key0, part * kWaveDTiles * kTile, seqlen_k, late.d, 1.f,
                  lane);
  }
#endif  // FA_AMD_DEVICE_FAMILY
}

}  // namespace flash

#endif  // FA_PLATFORM_HIP
