// Launches one backward instantiation: preprocess (D = rowsum(dO * O)), then the main kernel.
// The caller zeroes dq_accum (and dq_semaphore when deterministic) and converts dq_accum after.
#pragma once

#include "bwd_preprocess_launch.h"
#include "params.h"
#include "platform.h"
#include "tile_config.h"
#if defined(FA_PLATFORM_HIP)
#include "bwd_kernel_amd.h"
#else
#include "bwd_kernel.h"
#endif

namespace flash {

#if defined(FA_PLATFORM_HIP)
template <class Traits, bool Has_right_edge, bool Has_extras>
error_t launch_bwd_amd(const BwdParams& params, stream_t stream) {
  const dim3 grid((params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN, params.h_k, params.b);
  return launch(&flash_bwd_amd_kernel<Traits, Has_right_edge, Has_extras>, grid, dim3(Traits::kNThreads),
                Traits::kSmemBytes, stream, params);
}
#endif

// The preprocess, then the main kernel: the portable mma.sync one on NVIDIA, on AMD the one of the
// device's matrix-core family.
template <class T, int kHeadDim, bool Has_right_edge, bool Has_extras>
error_t run_bwd(const BwdParams& params, stream_t stream) {
  error_t err = run_bwd_preprocess<T, kHeadDim>(params, stream);
  if (err != kSuccess) return err;
#if defined(FA_PLATFORM_HIP)
  switch (current_amd_family()) {
    case AmdFamily::kCdna4:
      return launch_bwd_amd<BwdTraitsAmd<T, AmdFamily::kCdna4, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
    case AmdFamily::kRdna3:
      return launch_bwd_amd<BwdTraitsAmd<T, AmdFamily::kRdna3, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
    case AmdFamily::kRdna4:
      return launch_bwd_amd<BwdTraitsAmd<T, AmdFamily::kRdna4, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
    default:
      return launch_bwd_amd<BwdTraitsAmd<T, AmdFamily::kCdna, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
  }
#else
  using Traits = BwdTraits<T, kHeadDim>;
  const dim3 grid((params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN, params.h_k, params.b);
  return launch(&flash_bwd_kernel<Traits, Has_right_edge, Has_extras>, grid, dim3(Traits::kNThreads),
                Traits::kSmemBytes, stream, params);
#endif
}

}  // namespace flash
