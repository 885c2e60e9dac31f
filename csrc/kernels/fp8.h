// What the fp8 forwards (fwd_kernel_amd.h on gfx942/gfx950, fwd_kernel_sm90.h on Hopper) share:
// the descale of (batch, kv head), and the factor P is scaled by before it is rounded to e4m3.
#pragma once

#include "params.h"
#include "platform.h"

namespace flash {

// P in [0, 1] enters the second product as e4m3(P * kFp8PScale): the normal range of e4m3 (from
// 2^-6 on gfx950 and NVIDIA, 2^-7 on gfx942) rather than its subnormals, which would hold the
// small probabilities to one or two bits. O is divided by it at the end.
inline constexpr float kFp8PScale = 128.f;

// An fp8 tensor's descale for (batch, kv head): params.*_descale (nullptr: 1).
FA_DEVICE float fp8_descale(const float* descale, const FwdParams& params, int batch, int head_k) {
  return descale == nullptr ? 1.f
                            : descale[batch * params.descale_batch_stride + (params.descale_per_head ? head_k : 0)];
}

}  // namespace flash
