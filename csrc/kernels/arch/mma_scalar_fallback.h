// SCALAR FALLBACK of mma.h for targets without a matrix-core layer yet (today: AMD, where this
// only has to compile). It reproduces the NVIDIA fragment semantics with 32-lane shuffles and
// plain loads, so the kernels are unchanged; it is slow by design. An MFMA layer replaces it.
#pragma once

#include "../platform.h"

namespace flash {

FA_DEVICE int group_lane() { return static_cast<int>(threadIdx.x) % kGroupSize; }

template <class T>
FA_DEVICE void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int lane = group_lane(), g = lane / 4, t = lane % 4;
  for (int tt = 0; tt < 4; ++tt) {  // tt walks the k pairs (2tt, 2tt+1) and (2tt+8, 2tt+9)
    const uint32_t a_top_lo = shfl(a[0], 4 * g + tt), a_bot_lo = shfl(a[1], 4 * g + tt);
    const uint32_t a_top_hi = shfl(a[2], 4 * g + tt), a_bot_hi = shfl(a[3], 4 * g + tt);
    for (int col = 0; col < 2; ++col) {
      const int src = 4 * (2 * t + col) + tt;
      const uint32_t b_lo = shfl(b0, src), b_hi = shfl(b1, src);
      const float2 bl = unpack2<T>(b_lo), bh = unpack2<T>(b_hi);
      const float2 tl = unpack2<T>(a_top_lo), th = unpack2<T>(a_top_hi);
      const float2 ml = unpack2<T>(a_bot_lo), mh = unpack2<T>(a_bot_hi);
      const float dot_top = tl.x * bl.x + tl.y * bl.y + th.x * bh.x + th.y * bh.y;
      const float dot_bot = ml.x * bl.x + ml.y * bl.y + mh.x * bh.x + mh.y * bh.y;
      c[col] += dot_top;
      c[2 + col] += dot_bot;
    }
  }
}

FA_DEVICE const char* row_address_of(const void* row_ptr, int src_lane) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(row_ptr);
  const uint32_t lo = shfl(static_cast<uint32_t>(p), src_lane);
  const uint32_t hi = shfl(static_cast<uint32_t>(static_cast<uint64_t>(p) >> 32), src_lane);
  return reinterpret_cast<const char*>((static_cast<uint64_t>(hi) << 32) | lo);
}

FA_DEVICE void load_matrix_x4(uint32_t (&r)[4], const void* row_ptr) {
  const int lane = group_lane();
  for (int m = 0; m < 4; ++m) {
    const char* row = row_address_of(row_ptr, m * 8 + lane / 4);
    r[m] = *reinterpret_cast<const uint32_t*>(row + 4 * (lane % 4));
  }
}

FA_DEVICE void load_matrix_x4_trans(uint32_t (&r)[4], const void* row_ptr) {
  const int lane = group_lane();
  for (int m = 0; m < 4; ++m) {
    const char* row0 = row_address_of(row_ptr, m * 8 + 2 * (lane % 4));
    const char* row1 = row_address_of(row_ptr, m * 8 + 2 * (lane % 4) + 1);
    const uint32_t lo = *reinterpret_cast<const uint16_t*>(row0 + 2 * (lane / 4));
    const uint32_t hi = *reinterpret_cast<const uint16_t*>(row1 + 2 * (lane / 4));
    r[m] = lo | (hi << 16);
  }
}

FA_DEVICE void copy_async_16(void* smem, const void* gmem, bool pred) {
  *reinterpret_cast<uint4*>(smem) = pred ? *reinterpret_cast<const uint4*>(gmem) : make_uint4(0, 0, 0, 0);
}
FA_DEVICE void copy_async_commit() {}
template <int Pending> FA_DEVICE void copy_async_wait() {}

}  // namespace flash
