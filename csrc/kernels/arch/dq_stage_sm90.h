// The Hopper backward's dQ hand-over: each consumer warpgroup's 64 x 64 fp32 dQ piece, in
// wgmma's per-warp accumulator layout (fragment_mma.h), staged in shared memory for the TMA
// reduction that adds it into dq_accum.
#pragma once

#include "../platform.h"

namespace flash {

// A 64 x 64 fp32 dQ piece in shared memory as the TMA reduction reads it: two boxes of 32
// columns, each [64 rows][8 chunks of 4 floats] with chunk c of row r at c ^ (r % 8) (the
// 128-byte swizzle).
struct DqStage {
  static constexpr int kBoxFloats = 64 * 32;
  // Stores a warpgroup's 64 x 64 accumulator (warp w: rows 16 w ..; mma.sync's C layout). A
  // float2 store is served a half-warp at a time: its four rows (lane / 4) must hit four
  // different chunk pairs, but their swizzle only reaches two, so the lanes of odd rows store
  // the n8 tile two further on at each step (chunks 4 away) and the half-warp fills all 32 banks.
  static FA_DEVICE void store(float* stage, const float (&acc)[8][4], int warp, int lane) {
    float* rows = stage + (16 * warp + lane / 4) * 32;
    const bool odd_row = (lane / 4) % 2;
    // Column 2 (lane % 4) of n8 tile m is in chunk 2 m + (lane % 4) / 2, at chunk ^ (row % 8).
    const int swizzled = ((((lane % 4) / 2) ^ (lane / 4)) << 2 | 2 * (lane % 2)) ^ (odd_row ? 16 : 0);
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      float* at = rows + (swizzled ^ (8 * m));  // tile m, or m ^ 2 in odd rows
#pragma unroll
      for (int box = 0; box < 2; ++box) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const float(&mine)[4] = acc[4 * box + m];
          const float(&other)[4] = acc[4 * box + (m ^ 2)];
          *reinterpret_cast<float2*>(at + box * kBoxFloats + half * 8 * 32) =
              odd_row ? make_float2(other[2 * half], other[2 * half + 1])
                      : make_float2(mine[2 * half], mine[2 * half + 1]);
        }
      }
    }
  }
};

// The d256 backward's hand-over (bwd_kernel_sm90.h): each consumer computes dQ^T, a 64 x 32
// piece whose rows are 64 head-dim columns and whose columns are the step's 32 queries. It is
// staged as dq_accum holds it, queries as rows: two boxes of 32 columns, each [32 queries][8
// chunks of 4 floats] with chunk c of row q at c ^ (q % 8).
struct DqStageTransposed {
  static constexpr int kBoxFloats = 32 * 32;
  // Scalar stores (a lane's adjacent accumulators are adjacent queries, i.e. rows here). Per
  // store the warp's lanes hit 8 columns (lane / 4: two chunks, four words each) of 4 queries
  // (lane % 4, all even or all odd): the swizzle sends the 8 chunk pairs to 8 chunks, 32 banks.
  static FA_DEVICE void store(float* stage, const float (&acc)[4][4], int warp, int lane) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int column = 16 * warp + lane / 4 + 8 * (e / 2), query = 8 * nt + 2 * (lane % 4) + e % 2;
        const int chunk = (column % 32) / 4 ^ query % 8;
        stage[(column / 32) * kBoxFloats + query * 32 + chunk * 4 + column % 4] = acc[nt][e];
      }
    }
  }
};

}  // namespace flash
