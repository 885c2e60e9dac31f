// Dropout on the attention probabilities, regenerated (never stored) by the forward and the
// backward from a counter-based RNG: Philox4x32-10 keyed by PyTorch's CUDA generator seed.
//
// One Philox call decides the four scores {q, q+8} x {k, k+8} (q % 16 < 8, k % 16 < 8) of one
// (batch, head): each orientation of the mma fragments (the forward's queries x keys and the
// backward's keys x queries) holds such a group in one thread, so neither pass draws numbers it
// throws away. Counter: (k, q, batch * h + head, offset / 4); key: the seed. A score is kept
// when its 32-bit draw is below keep_threshold = (1 - p) * 2^32. flash_attn_rocm/_dropout.py is
// the same function in PyTorch, for tests and return_attn_probs.
#pragma once

#include <cstdint>

#include "params.h"
#include "platform.h"

namespace flash {

#if defined(__CUDACC__) || defined(__HIPCC__)

FA_DEVICE uint4 philox4x32_10(uint4 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;   // round multipliers
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // key schedule increments
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = __umulhi(kMul0, counter.x), lo0 = kMul0 * counter.x;
    const uint32_t hi1 = __umulhi(kMul1, counter.z), lo1 = kMul1 * counter.z;
    counter = make_uint4(hi1 ^ counter.y ^ key0, lo1, hi0 ^ counter.w ^ key1, lo0);
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

struct Dropout {
  uint32_t seed_lo, seed_hi, offset_quads;
  uint32_t head_index;  // batch * h + head
  uint32_t keep_threshold;

  FA_DEVICE Dropout(const FwdParams& params, uint64_t seed, uint64_t offset, int batch, int head)
      : seed_lo(static_cast<uint32_t>(seed)),
        seed_hi(static_cast<uint32_t>(seed >> 32)),
        offset_quads(static_cast<uint32_t>(offset / 4)),
        head_index(static_cast<uint32_t>(batch * params.h + head)),
        keep_threshold(params.keep_threshold) {}

  // Keep bits of (q0, k0), (q0, k0 + 8), (q0 + 8, k0), (q0 + 8, k0 + 8) in bits 0..3;
  // q0 % 16 < 8 and k0 % 16 < 8, positions inside the sequence.
  FA_DEVICE uint32_t keep4(int q0, int k0) const {
    const uint4 r = philox4x32_10(make_uint4(k0, q0, head_index, offset_quads), seed_lo, seed_hi);
    return uint32_t(r.x < keep_threshold) | uint32_t(r.y < keep_threshold) << 1 |
           uint32_t(r.z < keep_threshold) << 2 | uint32_t(r.w < keep_threshold) << 3;
  }
};

// The generator's (seed, offset): values, or under CUDA graph capture read at replay from the
// generator's device memory (PyTorch's graph-safe RNG).
FA_DEVICE void philox_seed_offset(const FwdParams& params, uint64_t& seed, uint64_t& offset) {
  if (params.philox_seed_ptr != nullptr) {
    seed = static_cast<uint64_t>(*params.philox_seed_ptr);
    offset = static_cast<uint64_t>(*params.philox_offset_ptr) + params.philox_offset;
  } else {
    seed = params.philox_seed;
    offset = params.philox_offset;
  }
}

// The forward's orientation (rows are queries): zeroes the dropped probabilities of a warp's
// strips. Element i of n8 tile nt in strip mt is (row0 + 16 mt + 8 (i / 2), col0 + 8 nt + i % 2);
// row0 % 16 < 8 and col0 % 16 < 8.
template <int kMTiles, int kNTiles>
FA_DEVICE void apply_dropout(float (&p)[kMTiles][kNTiles][4], const Dropout& dropout, int row0, int col0) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int nt = 0; nt < kNTiles; nt += 2) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const uint32_t keep = dropout.keep4(row0 + 16 * mt, col0 + 8 * nt + j);
        if (!(keep & 1)) p[mt][nt][j] = 0.f;
        if (!(keep & 2)) p[mt][nt + 1][j] = 0.f;
        if (!(keep & 4)) p[mt][nt][2 + j] = 0.f;
        if (!(keep & 8)) p[mt][nt + 1][2 + j] = 0.f;
      }
    }
  }
}

#endif  // __CUDACC__ || __HIPCC__

}  // namespace flash
