// Launches one Hopper backward instantiation: the shared preprocess, then the wgmma kernel.
// Included only by the generated bwd_sm90_* files, compiled only when the build targets sm_90a.
#pragma once

#include "bwd_kernel_sm90.h"
#include "bwd_launch.h"
#include "params.h"
#include "platform.h"

namespace flash {

template <class T, int kHeadDim, bool Is_causal>
error_t run_bwd_sm90(const BwdParams& params, stream_t stream) {
  using Traits = BwdTraitsSm90<T, kHeadDim>;
  error_t err = run_bwd_preprocess<T, kHeadDim>(params, stream);
  if (err != kSuccess) return err;

  const auto kernel = &flash_bwd_sm90_kernel<Traits, Is_causal>;
  err = set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), Traits::kSmemBytes);
  if (err != kSuccess) return err;
  const dim3 grid((params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN, params.h_k, params.b);
  kernel<<<grid, Traits::kNThreads, Traits::kSmemBytes, stream>>>(params);
  return get_last_error();
}

}  // namespace flash
