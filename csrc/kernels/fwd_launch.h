// Launches one forward instantiation. Included only by the generated per-(head dim, dtype)
// files, so each translation unit compiles the kernel for one family.
#pragma once

#include "fwd_kernel.h"
#include "params.h"
#include "platform.h"
#include "tile_config.h"

namespace flash {

template <class T, int kHeadDim, bool Is_causal, bool Has_extras>
error_t run_fwd(const FwdParams& params, stream_t stream) {
  using Traits = FwdTraits<T, kHeadDim>;
  const auto kernel = &flash_fwd_kernel<Traits, Is_causal, Has_extras>;
  if constexpr (Traits::kSmemBytes > 48 * 1024) {
    const error_t err = set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), Traits::kSmemBytes);
    if (err != kSuccess) return err;
  }
  const dim3 grid((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, params.h, params.b);
  kernel<<<grid, Traits::kNThreads, Traits::kSmemBytes, stream>>>(params);
  return get_last_error();
}

}  // namespace flash
