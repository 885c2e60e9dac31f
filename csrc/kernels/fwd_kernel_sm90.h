// The Hopper forward (sm_90a): the sm80 kernel's algorithm with both products on wgmma, the
// loads on TMA, persistent blocks.
//
// Three warpgroups per 128 query rows. One producer thread copies Q and then K and V key block
// by key block into shared-memory stages (three; two at head dim 256) with TMA, each copy
// landing in wgmma's 128-byte swizzle and completing on an mbarrier; it refills a stage once
// both consumers have released it. Consumer g owns rows 64 g .. 64 g + 63, its warp w the
// 16-row strip 16 (4 g + w), so each thread holds the same fragments as in the sm80 kernel (the
// online softmax and the masks are shared). Per key block:
//
//   wait K | S = Q K^T (wgmma, K from smem; Q from registers at d <= 128) | mask, softmax |
//   wait V | O += P V (wgmma, P from registers, V read N-major) | release the stage
//
// At head dims 64 and 128 each consumer overlaps its own softmax with its products (S(i + 1)
// and P(i) V(i) are in flight while it runs the softmax of S(i + 1): kOverlapSoftmax), and the
// two consumers take turns issuing products (kPingPong). The blocks stay resident and walk a
// static schedule of tiles (FwdTileSchedule); the stage ring runs on from tile to tile, so the
// next tile's K and V load while this one finishes. The Has_extras variants add softcap, ALiBi
// and dropout to the scores the way the portable kernel does (score_mod.h, dropout.h: the same
// functions of position, so both kernels drop the same probabilities).
//
// fp8 (T = fp8_e4m3_t, head dims 128 and 256, smaller ones zero-padded by TMA; plain variants):
// both products on the e4m3 wgmma (k = 32), which reads 8-bit operands K-major only: Q from
// shared memory, and V as V^T, written transposed (keys in P's order) by fp8_vt_sm90.h before
// this kernel, loaded by TMA like K. P goes from S's accumulators to the A fragments with cvt
// (times kFp8PScale); q_descale k_descale scale the scores, v_descale / kFp8PScale the output,
// which is bf16.
#pragma once

#include <type_traits>

#include "arch/smem_tile_sm90.h"
#include "arch/tma_sm90.h"
#include "arch/warp_gemm_mma.h"
#include "arch/wgmma_sm90.h"
#include "dropout.h"
#include "epilogue.h"
#include "fp8.h"
#include "fragment.h"
#include "mask.h"
#include "mma.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "seq_bounds.h"
#include "softmax.h"

namespace flash {

// kBlockN_ comes from the tile table (tile_config.h: FwdTileSm90).
template <class T_, int kHeadDim_, int kBlockN_>
struct FwdTraitsSm90 {
  using T = T_;
  static constexpr bool kFp8 = std::is_same_v<T, fp8_e4m3_t>;
  using OutT = std::conditional_t<kFp8, bf16_t, T>;  // fp8 gives a bf16 output
  static constexpr int kElemBytes = int(sizeof(T));
  static constexpr int kHeadDim = kHeadDim_;
  // fp8 rows of 128 bytes fill the swizzle rows exactly; smaller head dims run here zero-padded.
  static_assert(!kFp8 || ((kHeadDim == 128 || kHeadDim == 256) && kBlockN_ % 128 == 0),
                "the fp8 forward exists at head dims 128 and 256, in blocks of 128 keys (V^T's swizzle rows)");
  static constexpr int kBlockM = 128, kBlockN = kBlockN_;
  static constexpr int kStages = kHeadDim <= 128 ? 3 : 2;
  static constexpr int kNThreads = 3 * 128;  // a producer warpgroup, two consumer warpgroups
  // One producer thread issues the TMA copies; the consumers take the registers.
  static constexpr int kProducerRegs = 24, kConsumerRegs = 240;  // 128 * 24 + 256 * 240 <= 64K
  // Overlapping the softmax with the next products holds S, P and O at once, and the ping-pong
  // turns (named barriers 1 and 2) order the consumers' products: both pay at d64 and d128 and
  // cost at d256, where O alone takes 128 registers (benchmarks/NOTES.md).
  static constexpr bool kOverlapSoftmax = kHeadDim <= 128;
  static constexpr bool kPingPong = kHeadDim <= 128;
  static_assert(!kPingPong || kOverlapSoftmax, "the turns are taken in the overlapped loop only");
  // Q's fragments in registers (32 a thread at d128): S = Q K^T reads only K from shared memory,
  // and Q's buffer is free for the next tile as soon as the consumers have loaded it. (fp8: from
  // shared memory.)
  static constexpr bool kQInRegisters = kHeadDim <= 128 && !kFp8;
  // The extras variants take dropout up to d128: beside d256's O the Philox rounds spill (the
  // dispatch sends dropout there to the portable kernel: tools/generate_kernels.py SM90_DROPOUT).
  static constexpr bool kExtrasDropout = kHeadDim <= 128;
  static constexpr int kNTiles = kBlockN / 8, kDTiles = kHeadDim / 8;
  // k-steps of the two products (32 bytes of k each: 16 elements, fp8 32)
  static constexpr int kQKSteps = kHeadDim * kElemBytes / 32, kPSteps = kBlockN * kElemBytes / 32;
  using QTile = GmmaTile<kBlockM, kHeadDim, kElemBytes>;
  using KVTile = GmmaTile<kBlockN, kHeadDim, kElemBytes>;
  // V's tile: as K's (read N-major), or fp8's V^T (channels as rows, keys as k).
  using VTile = std::conditional_t<kFp8, GmmaTile<kHeadDim, kBlockN, 1>, KVTile>;
  static_assert(VTile::kElems == KVTile::kElems, "K and V stages of one size");
  static constexpr int kTileBytes = (QTile::kElems + 2 * kStages * KVTile::kElems) * int(sizeof(T));
  static constexpr int kBarriers = 2 + 3 * kStages;  // Q full, Q empty; per stage K full, V full, empty
  static constexpr uint32_t kQBytes = QTile::kElems * sizeof(T), kKVBytes = KVTile::kElems * sizeof(T);
  static constexpr int kSmemBytes = kTileBytes + kBarriers * 8;
};

// The TMA descriptions of q, k and v (fwd_launch_sm90.h encodes them; boxes of kBlockM rows for
// q, kBlockN for k and v).
struct FwdTensorMaps {
  CUtensorMap q, k, v;
};

// The blocks are persistent and walk a static schedule, built on the host (it needs the SM count)
// in one of two orders:
// - Head-major (by default): a unit is one 128-row tile, or with a right edge the pair of tiles j
//   and m_blocks - 1 - j of a head, longest first, so that every unit costs the same; block b
//   takes units b, b + gridDim.x, ... The blocks at work share a few heads' K and V in L2.
// - Longest first: with a right edge, when the pairs fill the last round of blocks poorly (160
//   pairs on 132 SMs take two rounds of work for 1.2: the causal curve's drop after every 1024
//   tokens at 32 heads). A unit is one tile; the last row tile of every head comes first, then
//   the one before, ..., dealt in snake order (left to right in even rounds, right to left in
//   odd ones), which keeps each block's total near the average. It spreads the blocks at work
//   over every head, which costs L2 hits where many rounds run (benchmarks/NOTES.md), so it is
//   taken only where the pairs would leave more than 5% of the blocks' time idle.
struct FwdTileSchedule {
  int m_blocks, units_per_head, units;
  bool longest_first;

  static FwdTileSchedule make(const FwdParams& params, int block_m, bool has_right_edge, int sms) {
    FwdTileSchedule s;
    s.m_blocks = (params.seqlen_q + block_m - 1) / block_m;
    const int heads = params.h * params.b;
    const int pairs = (has_right_edge ? (s.m_blocks + 1) / 2 : s.m_blocks) * heads;
    const int rounds = (pairs + sms - 1) / sms;
    s.longest_first = has_right_edge && 20 * int64_t(pairs) < 19 * int64_t(rounds) * sms;  // pairs fill < 95%
    s.units_per_head = s.longest_first ? s.m_blocks : (has_right_edge ? (s.m_blocks + 1) / 2 : s.m_blocks);
    s.units = s.units_per_head * heads;
    return s;
  }
  // The unit block `block` of `blocks` takes in round `round` (>= units once past the end).
  FA_DEVICE int unit_of(int block, int blocks, int round) const {
    const bool reversed = longest_first && round % 2 == 1;
    return round * blocks + (reversed ? blocks - 1 - block : block);
  }
  FA_DEVICE int tiles_in(int unit, bool has_right_edge) const {
    return has_right_edge && !longest_first && 2 * (unit % units_per_head) + 1 != m_blocks ? 2 : 1;
  }
  // Tile `part` of `unit`: its m_block, head and batch.
  FA_DEVICE void tile(int unit, int part, bool has_right_edge, const FwdParams& params, int& m_block, int& head,
                      int& batch) const {
    int head_batch;
    if (longest_first) {
      const int heads = params.h * params.b;
      m_block = m_blocks - 1 - unit / heads;
      head_batch = unit % heads;
    } else {
      const int j = unit % units_per_head;
      head_batch = unit / units_per_head;
      m_block = has_right_edge ? (part == 0 ? m_blocks - 1 - j : j) : j;
    }
    head = head_batch % params.h;
    batch = head_batch / params.h;
  }
};

template <class Traits, bool Has_right_edge, bool Has_extras>
__global__ void __launch_bounds__(Traits::kNThreads, 1)
    flash_fwd_sm90_kernel(const FwdParams params, const __grid_constant__ FwdTensorMaps maps,
                          const FwdTileSchedule schedule) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using T = typename Traits::T;
  constexpr int kBlockM = Traits::kBlockM, kBlockN = Traits::kBlockN, kHeadDim = Traits::kHeadDim;
  constexpr int kStages = Traits::kStages, kNTiles = Traits::kNTiles, kDTiles = Traits::kDTiles;
  constexpr bool kQInRegisters = Traits::kQInRegisters;
  using QTile = typename Traits::QTile;
  using KVTile = typename Traits::KVTile;
  using VTile = typename Traits::VTile;
  using OutT = typename Traits::OutT;

  extern __shared__ __align__(1024) char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = sQ + QTile::kElems;              // [kStages][KVTile::kElems]
  T* sV = sK + kStages * KVTile::kElems;   // [kStages][KVTile::kElems]
  uint64_t* q_full = reinterpret_cast<uint64_t*>(smem + Traits::kTileBytes);
  uint64_t* q_empty = q_full + 1;          // both consumers are done reading the tile's Q
  uint64_t* k_full = q_empty + 1;          // [kStages]: the producer's copies landed
  uint64_t* v_full = k_full + kStages;     // [kStages]
  uint64_t* empty = v_full + kStages;      // [kStages]: both consumers are done with the stage

  const int tid = threadIdx.x, warp = tid / kGroupSize, lane = tid % kGroupSize;
  const int warpgroup = warpgroup_index();
  // Dropout's (seed, offset); thread 0 of block 0 records them for the backward.
  constexpr bool kDropout = Has_extras && Traits::kExtrasDropout;
  uint64_t seed = 0, offset = 0;
  if constexpr (kDropout) forward_dropout_seed(params, 0, 0, tid, seed, offset);

  if (tid == 0) {
    mbarrier_init(q_full, 1);
    mbarrier_init(q_empty, 256);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&k_full[s], 1);
      mbarrier_init(&v_full[s], 1);
      mbarrier_init(&empty[s], 256);
    }
  }
  __syncthreads();

  // Both sides walk the same tiles. A tile with rows has key blocks [n_block_begin, n_block_end);
  // its step i handles key block n_block_end - 1 - i. Stages and barrier phases run on across
  // tiles: the block's step s uses stage s % kStages with parity (s / kStages) % 2, and its q-th
  // tile with keys the parity q % 2 of the Q barriers.
  struct Tile {
    int head, batch, row_begin, n_block_end, n_blocks;
    SeqBounds seq;
  };
  auto for_each_tile = [&](auto&& body) {
    for (int round = 0;; ++round) {
      const int unit = schedule.unit_of(blockIdx.x, gridDim.x, round);
      if (unit >= schedule.units) break;
      for (int part = 0; part < schedule.tiles_in(unit, Has_right_edge); ++part) {
        int m_block, head, batch;
        schedule.tile(unit, part, Has_right_edge, params, m_block, head, batch);
        const SeqBounds seq(params, batch);
        const int row_begin = m_block * kBlockM;
        if (row_begin >= seq.seqlen_q) continue;
        const KeyWindow<Has_right_edge> window{seq.seqlen_q, seq.seqlen_k, params.window_left, params.window_right};
        const int n_block_end = window.n_block_end(row_begin + kBlockM, kBlockN);
        const int n_blocks = max(n_block_end - window.n_block_begin(row_begin, kBlockN), 0);
        body(Tile{head, batch, row_begin, n_block_end, n_blocks, seq}, window);
      }
    }
  };

  if (warpgroup == 0) {
    // Producer: one thread keeps up to kStages steps of TMA copies in flight, refilling a stage
    // once both consumers have released it; a tile's Q follows its first K and V, once the
    // consumers are done with the last tile's. Varlen tensors are one packed batch.
    warpgroup_registers_dec<Traits::kProducerRegs>();
    if (tid == 0) {
      const bool varlen = params.cu_seqlens_q != nullptr;
      tma_prefetch_map(&maps.q);
      tma_prefetch_map(&maps.k);
      tma_prefetch_map(&maps.v);
      int step = 0, q_tiles = 0;
      for_each_tile([&](const Tile& t, const auto&) {
        if (t.n_blocks == 0) return;
        const int batch_index = varlen ? 0 : t.batch, head_k = t.head / (params.h / params.h_k);
        auto load_step = [&](int i) {
          const int stage = step % kStages, row = t.seq.k_start + (t.n_block_end - 1 - i) * kBlockN;
          if (step >= kStages) mbarrier_wait(&empty[stage], (step / kStages - 1) & 1);
          mbarrier_arrive_expect_tx(&k_full[stage], Traits::kKVBytes);
          KVTile::load_tma(sK + stage * KVTile::kElems, &maps.k, &k_full[stage], row, head_k, batch_index);
          mbarrier_arrive_expect_tx(&v_full[stage], Traits::kKVBytes);
          if constexpr (Traits::kFp8) {  // V^T: channels 0 .., the block's keys (dense calls only)
            VTile::load_tma(sV + stage * VTile::kElems, &maps.v, &v_full[stage], 0, head_k, batch_index,
                            (t.n_block_end - 1 - i) * kBlockN);
          } else {
            KVTile::load_tma(sV + stage * KVTile::kElems, &maps.v, &v_full[stage], row, head_k, batch_index);
          }
          ++step;
        };
        // Q comes from DRAM (each tile reads its own once): start it towards L2 now, as the
        // last tile's final steps run, so that its copy below (after q_empty) is short.
        for (int cb = 0; cb < kHeadDim / QTile::kRowElems; ++cb) {
          tma_prefetch_l2(&maps.q, QTile::kRowElems * cb, t.seq.q_start + t.row_begin, t.head, batch_index);
        }
        load_step(0);
        if (q_tiles > 0) mbarrier_wait(q_empty, (q_tiles - 1) & 1);
        mbarrier_arrive_expect_tx(q_full, Traits::kQBytes);
        QTile::load_tma(sQ, &maps.q, q_full, t.seq.q_start + t.row_begin, t.head, batch_index);
        ++q_tiles;
        for (int i = 1; i < t.n_blocks; ++i) load_step(i);
      });
    }
  } else {
    // Consumers: warpgroup c owns query rows 64 c .. 64 c + 63 of each tile.
    warpgroup_registers_inc<Traits::kConsumerRegs>();
    // consumer_warp (0 .. 7) counts the warps of both consumers: its strip is rows 16 consumer_warp .. + 15.
    const int consumer = warpgroup - 1, consumer_warp = warp - 4;
    const uint32_t q_addr = smem_u32(sQ), k_addr = smem_u32(sK), v_addr = smem_u32(sV);
    constexpr uint32_t kStageBytes = KVTile::kElems * sizeof(T);
    int step0 = 0, q_tiles = 0;  // the block's steps and tiles with keys before this tile
    for_each_tile([&](const Tile& t, const KeyWindow<Has_right_edge>& window) {
      const int n_blocks = t.n_blocks, row_begin = t.row_begin;
      using Layout = MmaAccLayout;  // wgmma's accumulators, per warp
      MmaTile<1, kDTiles> acc_o = {};
      OnlineSoftmax<Layout, 1> softmax;
      const int thread_row0 = row_begin + 16 * consumer_warp + Layout::lane_row(lane);
      const ScoreMod score_mod(params, t.batch, t.head, t.seq.seqlen_q, t.seq.seqlen_k);
      // fp8: the scores of q and k as stored, times q_descale k_descale, are the logits' inputs.
      float qk_descale = 1.f;
      if constexpr (Traits::kFp8) {
        const int head_k = t.head / (params.h / params.h_k);
        qk_descale = fp8_descale(params.q_descale, params, t.batch, head_k) *
                     fp8_descale(params.k_descale, params, t.batch, head_k);
      }
      uint32_t q_frag[kQInRegisters ? kHeadDim / 16 : 1][4];
      if (n_blocks > 0) {
        mbarrier_wait(q_full, q_tiles & 1);
        if constexpr (kQInRegisters) {
#pragma unroll
          for (int kk = 0; kk < kHeadDim / 16; ++kk) {
            load_matrix_x4(q_frag[kk], QTile::a_fragment_row(sQ, 16 * consumer_warp, kk, lane));
          }
          mbarrier_arrive(q_empty);
        }
      }

      // kOverlapSoftmax: S(i + 1) and P(i) V(i) run together, the softmax of S(i + 1) overlaps
      // the second product and O is rescaled once it is back. Otherwise one product at a time.
      MmaTile<1, kNTiles> acc_s;
      uint32_t p[Traits::kPSteps][4];
      auto stage_of = [&](int i) { return (step0 + i) % kStages; };
      auto parity_of = [&](int i) { return ((step0 + i) / kStages) & 1; };
      auto scores = [&](int i) {
        mbarrier_wait(&k_full[stage_of(i)], parity_of(i));
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < Traits::kQKSteps; ++kk) {
          const uint64_t k_desc = KVTile::k_major(k_addr + stage_of(i) * kStageBytes, 0, kk);
          if constexpr (Traits::kFp8) {
            wgmma_ss_fp8<kBlockN>(acc_s.v[0], QTile::k_major(q_addr, 64 * consumer, kk), k_desc, kk > 0);
          } else if constexpr (kQInRegisters) {
            wgmma_rs_k_major<kBlockN, T>(acc_s.v[0], q_frag[kk], k_desc, kk > 0);
          } else {
            wgmma_ss<kBlockN, T>(acc_s.v[0], QTile::k_major(q_addr, 64 * consumer, kk), k_desc, kk > 0);
          }
        }
        wgmma_commit();
      };
      auto accumulate_pv = [&](int i) {
        mbarrier_wait(&v_full[stage_of(i)], parity_of(i));
        wgmma_fence_operands(acc_o.v[0]);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < Traits::kPSteps; ++kk) {
          if constexpr (Traits::kFp8) {
            wgmma_rs_fp8<kHeadDim>(acc_o.v[0], p[kk], VTile::k_major(v_addr + stage_of(i) * kStageBytes, 0, kk), 1);
          } else {
            wgmma_rs<kHeadDim, T>(acc_o.v[0], p[kk], KVTile::n_major(v_addr + stage_of(i) * kStageBytes, kk), 1);
          }
        }
        wgmma_commit();
      };
      auto release = [&](int i) { mbarrier_arrive(&empty[stage_of(i)]); };
      int p_col0 = 0;  // the first key column of the scores in acc_s (for dropout)
      auto softmax_of = [&](int i, float (&o_factor)[2]) {  // S(i) is back
        wgmma_fence_operands(acc_s.v[0]);
        const int n = t.n_block_end - 1 - i;
        if constexpr (Has_extras) {
          p_col0 = n * kBlockN + Layout::lane_col(lane);
          apply_score_mod(acc_s, score_mod, thread_row0, p_col0);
        }
        if (window.block_needs_mask(row_begin, row_begin + kBlockM, n * kBlockN, (n + 1) * kBlockN)) {
          apply_key_window(acc_s, window, thread_row0, n * kBlockN + Layout::lane_col(lane));
        }
        softmax.update_scores(acc_s, params.scale_softmax_log2 * qk_descale, o_factor);
      };
      auto pack_p = [&]() {  // two adjacent n8 tiles of S are one k16 A fragment of P
        if constexpr (Traits::kFp8) {
          // Four n8 tiles are one k32 fragment: word 0 row g's keys 2t, 2t + 1 of tiles 4 kk and
          // 4 kk + 1, word 1 the same of row g + 8, words 2 and 3 those of tiles 4 kk + 2 and + 3
          // (k = 4t + i stands for key 8 (i / 2) + 2t + i % 2 of its 16: fp8_vt_sm90.h).
#pragma unroll
          for (int kk = 0; kk < Traits::kPSteps; ++kk) {
#pragma unroll
            for (int w = 0; w < 4; ++w) {
              const int tile = 4 * kk + 2 * (w / 2), e = 2 * (w % 2);
              p[kk][w] = pack_e4m3x4(acc_s(0, tile, e) * kFp8PScale, acc_s(0, tile, e + 1) * kFp8PScale,
                                     acc_s(0, tile + 1, e) * kFp8PScale, acc_s(0, tile + 1, e + 1) * kFp8PScale);
            }
          }
        } else {
#pragma unroll
          for (int kk = 0; kk < kBlockN / 16; ++kk) a_fragment_of<T>(acc_s, 0, kk, p[kk]);
          // The row sums count the dropped probabilities too, so dropout comes after them; on the
          // packed P, once the last P V product and S's fp32 tile have left the Philox rounds
          // their registers (on the fp32 tile, before packing, d256 spilled 116 B).
          if constexpr (kDropout) {
            if (params.has_dropout) {
              const Dropout dropout(params, seed, offset, t.batch, t.head);
              apply_dropout_packed<MmaTile<1, kNTiles>>(p, dropout, thread_row0, p_col0);
            }
          }
        }
      };
      // Ping-pong: a consumer waits for its turn (its barrier), issues its products and hands
      // the turn over (arrives on the other's). Consumer 0 starts; the two barriers must end each
      // tile with as many arrivals as waits, so consumer 1 does not hand over after its last turn.
      auto take_turn = [&]() {
        if constexpr (Traits::kPingPong) named_barrier_sync(1 + consumer, 256);
      };
      auto pass_turn = [&](bool last) {
        if constexpr (Traits::kPingPong) {
          if (!(last && consumer == 1)) named_barrier_arrive(2 - consumer, 256);
        }
      };
      if constexpr (!Traits::kOverlapSoftmax) {  // one product at a time
        for (int i = 0; i < n_blocks; ++i) {
          scores(i);
          wgmma_wait<0>();
          if (!kQInRegisters && i + 1 == n_blocks) mbarrier_arrive(q_empty);
          float o_factor[2];
          softmax_of(i, o_factor);
          softmax.rescale(acc_o, o_factor);
          pack_p();
          accumulate_pv(i);
          wgmma_wait<0>();
          wgmma_fence_operands(acc_o.v[0]);
          release(i);
        }
      } else if (n_blocks > 0) {
        if (consumer == 1) pass_turn(false);
        take_turn();
        scores(0);
        pass_turn(n_blocks == 1);
        wgmma_wait<0>();
        float o_factor[2];
        softmax_of(0, o_factor);  // O is still zero
        pack_p();
        for (int i = 0; i + 1 < n_blocks; ++i) {
          take_turn();
          scores(i + 1);
          accumulate_pv(i);
          pass_turn(i + 2 == n_blocks);
          wgmma_wait<1>();  // S(i + 1)
          softmax_of(i + 1, o_factor);
          wgmma_wait<0>();  // P(i) V(i)
          wgmma_fence_operands(acc_o.v[0]);
          release(i);
          softmax.rescale(acc_o, o_factor);
          pack_p();
        }
        if constexpr (!kQInRegisters) mbarrier_arrive(q_empty);
        accumulate_pv(n_blocks - 1);
        wgmma_wait<0>();
        wgmma_fence_operands(acc_o.v[0]);
        release(n_blocks - 1);
      }
      // The hardware reads Q's fragments until the tile's last S is back: keep them allocated.
      if constexpr (kQInRegisters) wgmma_fence_operands(q_frag);
      step0 += n_blocks;
      q_tiles += n_blocks > 0;

      float lse[2];
      if constexpr (Traits::kFp8) {
        const float v_descale = fp8_descale(params.v_descale, params, t.batch, t.head / (params.h / params.h_k));
        softmax.finalize(acc_o, params.logit_scale * qk_descale, lse, v_descale / kFp8PScale);
      } else {
        softmax.finalize(acc_o, params.logit_scale, lse, kDropout && params.has_dropout ? params.rp_keep : 1.f);
      }
      store_output<OutT>(params, t.seq, t.batch, t.head, thread_row0, lane, acc_o, lse);
    });
  }
#endif  // __CUDA_ARCH_FEAT_SM90_ALL
}

}  // namespace flash
