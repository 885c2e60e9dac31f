// The AMD forward: one thread block per (kBlockM query rows, head, batch), on the device's matrix
// cores (MFMA on CDNA, WMMA on RDNA) through MatrixCore (arch/matrix_core_amd.h). The algorithm
// is the portable kernel's (fwd_kernel.h) -- key blocks from the last to the first, masking only
// where a window edge or the sequence end crosses a block, P kept in registers -- with both
// products transposed:
//
//   S^T = K Q^T   (A: K from LDS, B: Q's fragments, loaded once into registers)
//   O^T += V^T P^T  (A: V^T from LDS, B: S^T's accumulators, converted in place)
//
// so each lane holds a query row's statistics (fragment_amd.h) and the online softmax, the masks,
// the score modifiers, dropout and the epilogue are the shared ones. K and V are copied into LDS
// block by block, V transposed on the way, since V^T's operand wants a run of keys of one
// channel. Per key block:
//
//   barrier | K(n), V(n) -> LDS | barrier | S^T = K Q^T, mask | softmax | O^T += V^T P^T
#pragma once

#include "arch/matrix_core_amd.h"
#include "dropout.h"
#include "epilogue.h"
#include "fragment.h"
#include "mask.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "seq_bounds.h"
#include "softmax.h"
#include "tile_config.h"

#if defined(FA_PLATFORM_HIP)

namespace flash {

// Copies rows [0, rows_valid) of a [rows, d] slice (row_stride apart) into LDS as K's tile
// ([kRows][kStride], row-major) or V's transposed ([kHeadDim][kStride]: element (row, c) at
// c * kStride + row), in 16-byte chunks; other rows and channels past head_dim are zeros.
template <int kRows, int kHeadDim, int kStride, bool kTransposed, int kNThreads, class T>
FA_DEVICE void copy_rows_to_lds(T* lds, const T* gmem, int64_t row_stride, int rows_valid, int head_dim, int tid) {
  constexpr int kChunks = kHeadDim / 8, kCopies = kRows * kChunks;
#pragma unroll
  for (int i = 0; i < (kCopies + kNThreads - 1) / kNThreads; ++i) {
    const int idx = tid + i * kNThreads;
    if (kCopies % kNThreads != 0 && idx >= kCopies) break;
    const int row = idx / kChunks, c = 8 * (idx % kChunks);
    uint4 chunk = make_uint4(0, 0, 0, 0);
    if (row < rows_valid && c < head_dim) chunk = *reinterpret_cast<const uint4*>(gmem + row * row_stride + c);
    if constexpr (!kTransposed) {
      *reinterpret_cast<uint4*>(lds + row * kStride + c) = chunk;
    } else {
      const uint32_t words[4] = {chunk.x, chunk.y, chunk.z, chunk.w};
      uint16_t* out = reinterpret_cast<uint16_t*>(lds) + c * kStride + row;
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        out[(2 * w) * kStride] = static_cast<uint16_t>(words[w] & 0xffffu);
        out[(2 * w + 1) * kStride] = static_cast<uint16_t>(words[w] >> 16);
      }
    }
  }
}

// One lane's A or B operand of k-step kk from a row of 16-bit values (LDS or global): elements
// i .. i + 3 at k = kK kk + k_of(i), which come in runs of four; runs at or past k_limit (the head
// dim actually present, for rows read from global memory) are zeros.
template <class Core, class T, class KOf>
FA_DEVICE typename Core::Operand load_operand(const T* row, int kk, KOf&& k_of, int k_limit = 1 << 30) {
  typename Core::Operand op{};
#pragma unroll
  for (int i = 0; i < Core::kOperandElems; i += 4) {
    const int k = Core::kK * kk + k_of(i);
    if (k < k_limit) load_operand_run(op, i, row + k);
  }
  return op;
}

// acc tile (mt, nt) += a b on the instruction.
template <class Core, class Tile>
FA_DEVICE void mma_tile(Tile& acc, int mt, int nt, const typename Core::Operand& a, const typename Core::Operand& b) {
  using Accumulator = typename Core::Accumulator;
  from_accumulator(acc.v[mt][nt], Core::mma(a, b, to_accumulator<Accumulator>(acc.v[mt][nt])));
}

template <class Traits, bool Has_right_edge, bool Has_extras>
__global__ void __launch_bounds__(Traits::kNThreads) flash_fwd_amd_kernel(const FwdParams params) {
  // Each device pass compiles the body of its own family only (the launch picks the family from
  // the device at run time).
#if defined(FA_AMD_DEVICE_FAMILY)
  if constexpr (Traits::kFamily == FA_AMD_DEVICE_FAMILY) {
    using T = typename Traits::T;
    using Core = MatrixCore<Traits::kFamily, T>;
    using Layout = typename Core::Layout;
    constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
    constexpr int kMT = Traits::kMT, kNTiles = kBlockN / Core::kM, kDTiles = kHeadDim / Core::kM;
    constexpr int kKSteps = kHeadDim / Core::kK, kPSteps = kBlockN / Core::kK;
    constexpr int kKStride = Traits::kKStride, kVtStride = Traits::kVtStride, kNThreads = Traits::kNThreads;
    constexpr bool kQInRegisters = Traits::kQInRegisters;
    using STile = AccTile<Layout, kMT, kNTiles>;  // scores, then probabilities: queries x keys
    using OTile = AccTile<Layout, kMT, kDTiles>;  // output: queries x head dim
    static_assert(Core::kN == Traits::kTileRows && Layout::kWaveSize == Traits::kWaveSize, "traits and instruction");

    extern __shared__ __align__(16) char smem[];
    T* sK = reinterpret_cast<T*>(smem);  // [kBlockN][kKStride]
    T* sVt = sK + kBlockN * kKStride;    // [kHeadDim][kVtStride]
    T* sQ = sVt + kHeadDim * kVtStride;  // [kBlockM][kKStride] without Q in registers

    // Blocks with a right window edge near the end of the sequence carry the most keys: first.
    const int m_block = Has_right_edge ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int head_k = head / (params.h / params.h_k);
    const int tid = threadIdx.x, wave = tid / Traits::kWaveSize, lane = tid % Traits::kWaveSize;
    const int wave_row0 = wave * Traits::kRowsPerWave;
    const int row_begin = m_block * kBlockM;
    uint64_t seed = 0, offset = 0;
    if constexpr (Has_extras) {
      if (params.has_dropout) {
        philox_seed_offset(params, seed, offset);
        if (blockIdx.x == 0 && head == 0 && batch == 0 && tid == 0) {
          params.rng_state[0] = static_cast<int64_t>(seed);
          params.rng_state[1] = static_cast<int64_t>(offset);
        }
      }
    }
    const SeqBounds seq(params, batch);
    if (row_begin >= seq.seqlen_q) return;  // varlen: this sequence is shorter than the longest

    const T* q = static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
                 (seq.q_start + row_begin) * params.q_row_stride;
    const T* k = static_cast<const T*>(params.k) + batch * params.k_batch_stride + head_k * params.k_head_stride +
                 seq.k_start * params.k_row_stride;
    const T* v = static_cast<const T*>(params.v) + batch * params.v_batch_stride + head_k * params.v_head_stride +
                 seq.k_start * params.v_row_stride;
    const int rows_valid = min(kBlockM, seq.seqlen_q - row_begin);

    const KeyWindow<Has_right_edge> window{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right};
    const ScoreMod score_mod(params, batch, head, seq.seqlen_q, seq.seqlen_k);
    const Dropout dropout(params, seed, offset, batch, head);
    const int n_block_begin = window.n_block_begin(row_begin, kBlockN);
    const int n_block_end = window.n_block_end(row_begin + kBlockM, kBlockN);

    // Q's B operands (queries along N): the lane's query row is lane % kN of each tile.
    auto operand_k = [&](int i) { return Core::operand_k(lane, i); };
    auto q_row = [&](int mt) { return wave_row0 + mt * Core::kN + lane % Core::kN; };
    typename Core::Operand q_frag[kQInRegisters ? kMT : 1][kQInRegisters ? kKSteps : 1];
    if constexpr (kQInRegisters) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const bool valid = q_row(mt) < rows_valid;
        const T* row = q + (valid ? q_row(mt) : 0) * params.q_row_stride;
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
          // Rows past the sequence and channels past params.d (the kernel's head dim may be larger) are zeros.
          q_frag[mt][kk] = load_operand<Core>(row, kk, operand_k, valid ? params.d : 0);
        }
      }
    } else {
      copy_rows_to_lds<kBlockM, kHeadDim, kKStride, false, kNThreads>(sQ, q, params.q_row_stride, rows_valid,
                                                                        params.d, tid);
    }

    OTile acc_o = {};
    OnlineSoftmax<Layout, kMT> softmax;
    const int thread_row0 = row_begin + wave_row0 + Layout::lane_row(lane);  // row of the lane's element 0

    for (int n = n_block_end - 1; n >= n_block_begin; --n) {
      const int keys_valid = min(kBlockN, seq.seqlen_k - n * kBlockN);
      __syncthreads();  // every wave is done with the last block's K and V^T
      copy_rows_to_lds<kBlockN, kHeadDim, kKStride, false, kNThreads>(sK, k + n * kBlockN * params.k_row_stride,
                                                                        params.k_row_stride, keys_valid, params.d, tid);
      copy_rows_to_lds<kBlockN, kHeadDim, kVtStride, true, kNThreads>(sVt, v + n * kBlockN * params.v_row_stride,
                                                                        params.v_row_stride, keys_valid, params.d, tid);
      __syncthreads();  // K(n), V(n)^T (and Q) visible to all

      STile acc_s = {};
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          const typename Core::Operand b =
              kQInRegisters ? q_frag[kQInRegisters ? mt : 0][kQInRegisters ? kk : 0]
                            : load_operand<Core>(sQ + q_row(mt) * kKStride, kk, operand_k);
#pragma unroll
          for (int nt = 0; nt < kNTiles; ++nt) {
            const typename Core::Operand a =
                load_operand<Core>(sK + (nt * Core::kM + lane % Core::kM) * kKStride, kk, operand_k);
            mma_tile<Core>(acc_s, mt, nt, a, b);
          }
        }
      }
      const int col0 = n * kBlockN + Layout::lane_col(lane);
      if constexpr (Has_extras) apply_score_mod(acc_s, score_mod, thread_row0, col0);
      if (window.block_needs_mask(row_begin, row_begin + kBlockM, n * kBlockN, (n + 1) * kBlockN)) {
        apply_key_window(acc_s, window, thread_row0, col0);
      }
      softmax.update(acc_s, acc_o, params.scale_softmax_log2);
      if constexpr (Has_extras) {
        if (params.has_dropout) apply_dropout(acc_s, dropout, thread_row0, col0);
      }

      // O^T += V^T P^T, a k-step (kK keys) at a time; V^T's operand takes P's keys (p_key).
      auto p_key = [&](int i) { return Core::p_key(lane, i); };
#pragma unroll
      for (int s = 0; s < kPSteps; ++s) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          const typename Core::Operand b = Core::p_operand(acc_s, mt, s, lane);
#pragma unroll
          for (int dt = 0; dt < kDTiles; ++dt) {
            const typename Core::Operand a =
                load_operand<Core>(sVt + (dt * Core::kM + lane % Core::kM) * kVtStride, s, p_key);
            mma_tile<Core>(acc_o, mt, dt, a, b);
          }
        }
      }
    }

    float lse[OTile::kRows];
    softmax.finalize(acc_o, params.logit_scale, lse, Has_extras && params.has_dropout ? params.rp_keep : 1.f);
    store_output<T>(params, seq, batch, head, thread_row0, lane, acc_o, lse);
  }
#endif  // FA_AMD_DEVICE_FAMILY
}

}  // namespace flash

#endif  // FA_PLATFORM_HIP
