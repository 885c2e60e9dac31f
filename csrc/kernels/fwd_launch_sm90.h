// Launches one Hopper forward instantiation. Included only by the generated fwd_sm90_* files,
// which are compiled only when the build targets sm_90a.
#pragma once

#include "fwd_kernel_sm90.h"
#include "params.h"
#include "platform.h"

namespace flash {

template <class T, int kHeadDim, bool Is_causal>
error_t run_fwd_sm90(const FwdParams& params, stream_t stream) {
  using Traits = FwdTraitsSm90<T, kHeadDim>;
  const auto kernel = &flash_fwd_sm90_kernel<Traits, Is_causal>;
  const error_t err = set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), Traits::kSmemBytes);
  if (err != kSuccess) return err;
  const dim3 grid((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, params.h, params.b);
  kernel<<<grid, Traits::kNThreads, Traits::kSmemBytes, stream>>>(params);
  return get_last_error();
}

}  // namespace flash
