// What the AMD attention kernels (fwd_kernel_amd.h, fwd_kvcache_kernel_amd.h) share: a wave's
// query tile attending to key blocks in LDS on the device's matrix cores (MatrixCore,
// arch/matrix_core_amd.h), both products transposed:
//
//   S^T = K Q^T     (A: K from LDS, B: Q's fragments, in registers or in LDS)
//   O^T += V^T P^T  (A: V^T from LDS, B: S^T's accumulators, converted in place)
//
// so each lane holds its query rows' statistics (fragment_amd.h) and the online softmax, the
// masks, the score modifiers, dropout and the epilogues are the shared ones. Key blocks go to
// LDS as K [kBlockN][kKStride] and, transposed on the way, V^T [kHeadDim][kVtStride]: V^T's
// operand wants a run of keys of one channel.
#pragma once

#include "arch/matrix_core_amd.h"
#include "fragment.h"
#include "platform.h"
#include "softmax.h"

#if defined(FA_PLATFORM_HIP)

namespace flash {

// A tile of kRows rows of a [rows, d] slice on its way from global memory to LDS, in 16-byte
// chunks a thread holds in registers between the two halves: load() issues the global loads
// (rows past rows_valid and channels past head_dim are zeros; row_ptr(row) is row `row`'s first
// element: strided, or a page of a KV cache), store() writes LDS as K's tile ([kRows][kStride],
// row-major) or transposed as V^T's ([kHeadDim][kStride]: element (row, c) at c * kStride + row).
// Between them the kernel can run the last block's products while the loads are in flight.
// Elements of 2 bytes (fp16, bf16) or 1 (fp8: head_dim then a multiple of 16).
template <int kRows, int kHeadDim, int kNThreads, int kElemBytes = 2>
struct RowChunks {
  static constexpr int kChunkElems = 16 / kElemBytes;
  static constexpr int kChunks = kHeadDim / kChunkElems, kCopies = kRows * kChunks;
  static constexpr int kPerThread = (kCopies + kNThreads - 1) / kNThreads;
  uint4 chunk[kPerThread];

  template <class RowPtr>
  FA_DEVICE void load(const RowPtr& row_ptr, int rows_valid, int head_dim, int tid) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = tid + i * kNThreads, row = idx / kChunks, c = kChunkElems * (idx % kChunks);
      chunk[i] = make_uint4(0, 0, 0, 0);
      if ((kCopies % kNThreads == 0 || idx < kCopies) && row < rows_valid && c < head_dim) {
        chunk[i] = *reinterpret_cast<const uint4*>(row_ptr(row) + c);
      }
    }
  }

  // The same from rows row_stride apart starting at `first`. Where the threads' rows advance by a
  // whole number per chunk, a thread holds one offset and each chunk adds a uniform step: offsets
  // per chunk (row * row_stride, hoisted out of the kernel's key loop) took a register pair each.
  template <class T>
  FA_DEVICE void load_rows(const T* first, int64_t row_stride, int rows_valid, int head_dim, int tid) {
    if constexpr (kNThreads % kChunks != 0) {
      load([&](int row) { return first + row * row_stride; }, rows_valid, head_dim, tid);
    } else {
      constexpr int kRowStep = kNThreads / kChunks;
      const int row0 = tid / kChunks, c = kChunkElems * (tid % kChunks);
      const T* thread_first = first + (row0 * row_stride + c);
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int row = row0 + i * kRowStep;
        chunk[i] = make_uint4(0, 0, 0, 0);
        if ((kCopies % kNThreads == 0 || row < kRows) && row < rows_valid && c < head_dim) {
          chunk[i] = *reinterpret_cast<const uint4*>(thread_first + i * kRowStep * row_stride);
        }
      }
    }
  }

  template <int kStride, bool kTransposed, class T>
  FA_DEVICE void store(T* lds, int tid) const {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int idx = tid + i * kNThreads;
      if (kCopies % kNThreads != 0 && idx >= kCopies) break;
      const int row = idx / kChunks, c = kChunkElems * (idx % kChunks);
      if constexpr (!kTransposed) {
        *reinterpret_cast<uint4*>(lds + row * kStride + c) = chunk[i];
      } else if constexpr (kElemBytes == 1) {
        const uint32_t words[4] = {chunk[i].x, chunk[i].y, chunk[i].z, chunk[i].w};
        uint8_t* out = reinterpret_cast<uint8_t*>(lds) + c * kStride + row;
#pragma unroll
        for (int b = 0; b < 16; ++b) out[b * kStride] = static_cast<uint8_t>(words[b / 4] >> (8 * (b % 4)));
      } else {
        const uint32_t words[4] = {chunk[i].x, chunk[i].y, chunk[i].z, chunk[i].w};
        uint16_t* out = reinterpret_cast<uint16_t*>(lds) + c * kStride + row;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
          out[(2 * w) * kStride] = static_cast<uint16_t>(words[w] & 0xffffu);
          out[(2 * w + 1) * kStride] = static_cast<uint16_t>(words[w] >> 16);
        }
      }
    }
  }
};

// A tile straight from global memory into LDS (RowChunks' two halves back to back).
template <int kRows, int kHeadDim, int kStride, bool kTransposed, int kNThreads, class T, class RowPtr>
FA_DEVICE void copy_rows_to_lds(T* lds, const RowPtr& row_ptr, int rows_valid, int head_dim, int tid) {
  RowChunks<kRows, kHeadDim, kNThreads, int(sizeof(T))> chunks;
  chunks.load(row_ptr, rows_valid, head_dim, tid);
  chunks.template store<kStride, kTransposed>(lds, tid);
}

// One lane's A or B operand of k-step kk from a row of 16-bit (or fp8) values (LDS or global): elements
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

// With the head dim split over kDSplit waves (consecutive ones), each adds its partners' partial
// sums of a tile to its own: every wave publishes its partial to swap[wave], all wait (a barrier,
// the caller's), each adds its partners'. The buffer is free again after the next barrier.
template <int kTileFloats, class Tile>
FA_DEVICE void publish_partial(const Tile& tile, float* swap, int wave, int lane) {
  static_assert(Tile::kMT * Tile::kNT * Tile::kElems * Tile::Layout::kWaveSize == kTileFloats, "one tile a wave");
  float* mine = swap + wave * kTileFloats + lane;
  constexpr int kStride = Tile::Layout::kWaveSize;
#pragma unroll
  for (int nt = 0; nt < Tile::kNT; ++nt) {
#pragma unroll
    for (int e = 0; e < Tile::kElems; ++e) mine[(nt * Tile::kElems + e) * kStride] = tile(0, nt, e);
  }
}
template <int kDSplit, int kTileFloats, class Tile>
FA_DEVICE void add_partner_partials(Tile& tile, const float* swap, int wave, int lane) {
  constexpr int kStride = Tile::Layout::kWaveSize;
  const int first = wave - wave % kDSplit;
#pragma unroll
  for (int w = first; w < first + kDSplit; ++w) {
    if (w == wave) continue;
    const float* theirs = swap + w * kTileFloats + lane;
#pragma unroll
    for (int nt = 0; nt < Tile::kNT; ++nt) {
#pragma unroll
      for (int e = 0; e < Tile::kElems; ++e) tile(0, nt, e) += theirs[(nt * Tile::kElems + e) * kStride];
    }
  }
}

// One wave's kMT instruction tiles of query rows (rows wave_row0 .. of the block): Q's operands,
// the output accumulators and the softmax state, and the steps of a key block. With the head dim
// split (Traits::kDSplit > 1) the wave holds part `part` of it: its k-steps of S (a partial sum
// the caller completes with the partners': add_partner_partials) and its channels of O.
template <class Traits>
struct AmdQueryTile {
  using T = typename Traits::T;
  using Core = MatrixCore<Traits::kFamily, T>;
  using Layout = typename Core::Layout;
  static constexpr int kMT = Traits::kMT, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  static constexpr int kDSplit = Traits::kDSplit;
  static constexpr int kNTiles = kBlockN / Core::kM, kDTiles = kHeadDim / Core::kM / kDSplit;  // the wave's
  static constexpr int kKSteps = kHeadDim / Core::kK / kDSplit, kPSteps = kBlockN / Core::kK;   // the wave's
  static constexpr bool kQInRegisters = Traits::kQInRegisters;
  using STile = AccTile<Layout, kMT, kNTiles>;  // scores, then probabilities: queries x keys
  using OTile = AccTile<Layout, kMT, kDTiles>;  // output: queries x the wave's channels
  static_assert(Core::kN == Traits::kTileRows && Layout::kWaveSize == Traits::kWaveSize, "traits and instruction");

  int lane, wave_row0, part;
  typename Core::Operand q_frag[kQInRegisters ? kMT : 1][kQInRegisters ? kKSteps : 1];
  OTile acc_o;
  OnlineSoftmax<Layout, kMT> softmax;

  FA_DEVICE AmdQueryTile(int lane_, int wave_row0_, int part_ = 0)
      : lane(lane_), wave_row0(wave_row0_), part(part_), acc_o{} {}

  // How the operand loads address LDS. RDNA: one address a lane (its row, its first k) and
  // constant offsets from it; indices that mix the lane's k with the step's left the compiler an
  // address register per load (16 in the d256 forward's O^T += V^T P^T). CDNA keeps the plain
  // indices: there the same form moved gfx942's d256 KV cache into spills.
  static constexpr bool kLaneBase = !is_cdna(Traits::kFamily);

  // The head dim's k-step of the wave's k-step kk, and its first channel (O's column of tile 0).
  FA_DEVICE int k_step(int kk) const { return kDSplit > 1 ? part * kKSteps + kk : kk; }
  FA_DEVICE int channel0() const { return kDSplit > 1 ? part * kDTiles * Core::kM : 0; }

  // The block row of the lane's operand column in tile mt (queries run along the instruction's N).
  FA_DEVICE int q_row(int mt) const { return wave_row0 + mt * Core::kN + lane % Core::kN; }

  // Q's fragments from global memory: q_ptr(row) is block row `row`, for rows < rows_valid;
  // the other rows and channels past head_dim are zeros. Without Q in registers, the caller copies
  // the block's Q into LDS instead (copy_rows_to_lds, kKStride).
  template <class RowPtr>
  FA_DEVICE void load_q(const RowPtr& q_ptr, int rows_valid, int head_dim) {
    if constexpr (kQInRegisters) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const bool valid = q_row(mt) < rows_valid;
        const T* row = q_ptr(valid ? q_row(mt) : 0);
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
          q_frag[mt][kk] = load_operand<Core>(row, k_step(kk), [&](int i) { return Core::operand_k(lane, i); },
                                              valid ? head_dim : 0);
        }
      }
    }
  }

  // S^T = K Q^T for the key block in sK (sQ: the block's Q without Q in registers), over the
  // wave's part of the head dim. kFenceSteps > 0: a scheduling fence after every kFenceSteps
  // k-steps, so that at most that many steps' operands are loaded ahead (amd::schedule_fence).
  template <int kFenceSteps = 0>
  FA_DEVICE STile scores(const T* sK, const T* sQ) const {
    auto operand_k = [&](int i) { return Core::operand_k(lane, i); };
    // RDNA: one LDS address a lane (its row, its first k), the rest constant offsets from it.
    auto k_run = [&](int i) { return Core::operand_k(lane, i) - Core::operand_k(lane, 0); };
    const T* k_lane = sK + (lane % Core::kM) * Traits::kKStride + Core::operand_k(lane, 0);
    STile acc_s = {};
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        typename Core::Operand b;
        if constexpr (kQInRegisters) {
          b = q_frag[mt][kk];
        } else if constexpr (kLaneBase) {
          b = load_operand<Core>(sQ + q_row(mt) * Traits::kKStride + Core::operand_k(lane, 0), k_step(kk), k_run);
        } else {
          b = load_operand<Core>(sQ + q_row(mt) * Traits::kKStride, k_step(kk), operand_k);
        }
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          typename Core::Operand a;
          if constexpr (kLaneBase) {
            a = load_operand<Core>(k_lane + nt * Core::kM * Traits::kKStride, k_step(kk), k_run);
          } else {
            a = load_operand<Core>(sK + (nt * Core::kM + lane % Core::kM) * Traits::kKStride, k_step(kk), operand_k);
          }
          mma_tile<Core>(acc_s, mt, nt, a, b);
        }
      }
      if constexpr (kFenceSteps > 0) {
        if ((kk + 1) % kFenceSteps == 0 && kk + 1 < kKSteps) amd::schedule_fence();
      }
    }
    return acc_s;
  }

  // O^T += V^T P^T (the wave's channels) for the key block whose V^T is in sVt, a k-step (kK
  // keys) at a time; V^T's operand takes P's keys in P's order (MatrixCore::p_key).
  FA_DEVICE void accumulate(const STile& p, const T* sVt) {
    auto p_key = [&](int i) { return Core::p_key(lane, i); };
    // RDNA: one LDS address a lane, as in scores().
    auto key_run = [&](int i) { return Core::p_key(lane, i) - Core::p_key(lane, 0); };
    const T* vt_lane = sVt + (channel0() + lane % Core::kM) * Traits::kVtStride + Core::p_key(lane, 0);
#pragma unroll
    for (int s = 0; s < kPSteps; ++s) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const typename Core::Operand b = Core::p_operand(p, mt, s, lane);
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt) {
          typename Core::Operand a;
          if constexpr (kLaneBase) {
            a = load_operand<Core>(vt_lane + dt * Core::kM * Traits::kVtStride, s, key_run);
          } else {
            a = load_operand<Core>(sVt + (channel0() + dt * Core::kM + lane % Core::kM) * Traits::kVtStride, s, p_key);
          }
          mma_tile<Core>(acc_o, mt, dt, a, b);
        }
      }
    }
  }
};

// Writes one value per row the lane holds (an lse) from the row's leader lane: row r of the
// lane's rows is row0 + Layout::lane_row(lane) + row_offset_of(r) of dst, for rows < rows_valid.
template <class Tile>
FA_DEVICE void store_row_values(float* dst, const float (&values)[Tile::kRows], int row0, int rows_valid, int lane) {
  using L = typename Tile::Layout;
  if (!L::row_leader(lane)) return;
#pragma unroll
  for (int r = 0; r < Tile::kRows; ++r) {
    const int row = row0 + L::lane_row(lane) + Tile::row_offset_of(r);
    if (row < rows_valid) dst[row] = values[r];
  }
}

}  // namespace flash

#endif  // FA_PLATFORM_HIP
