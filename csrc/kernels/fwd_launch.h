// Launches one forward instantiation. Included only by the generated per-(head dim, dtype)
// files, so each translation unit compiles the kernel for one family: the portable mma.sync
// kernel on NVIDIA, the matrix-core kernel of the device's family on AMD.
#pragma once

#include <type_traits>

#include "params.h"
#include "platform.h"
#include "tile_config.h"
#if defined(FA_PLATFORM_HIP)
#include "fwd_kernel_amd.h"
#else
#include "fwd_kernel.h"
#endif

namespace flash {

#if defined(FA_PLATFORM_HIP)

template <class Traits, bool Has_right_edge, bool Has_extras>
error_t launch_fwd_amd(const FwdParams& params, stream_t stream) {
  const dim3 grid((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, params.h, params.b);
  return launch(&flash_fwd_amd_kernel<Traits, Has_right_edge, Has_extras>, grid, dim3(Traits::kNThreads),
                Traits::kSmemBytes, stream, params);
}

// The device's matrix-core family picks the kernel (its instruction and tiles). fp8 runs on CDNA3/4
// only (the dispatch has checked that the device has the instruction: amd_device_has_fp8).
template <class T, int kHeadDim, bool Has_right_edge, bool Has_extras>
error_t run_fwd(const FwdParams& params, stream_t stream) {
  if constexpr (std::is_same_v<T, fp8_e4m3_t>) {
    static_assert(!Has_extras, "the fp8 forward has no extras variants");
    switch (current_amd_family()) {
      case AmdFamily::kCdna4:
        return launch_fwd_amd<FwdTraitsAmd<T, AmdFamily::kCdna4, kHeadDim>, Has_right_edge, false>(params, stream);
      case AmdFamily::kCdna:
        return launch_fwd_amd<FwdTraitsAmd<T, AmdFamily::kCdna, kHeadDim>, Has_right_edge, false>(params, stream);
      default:
        return kInvalidConfig;
    }
  } else {
    switch (current_amd_family()) {
      case AmdFamily::kCdna4:
        return launch_fwd_amd<FwdTraitsAmd<T, AmdFamily::kCdna4, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
      case AmdFamily::kRdna3:
        return launch_fwd_amd<FwdTraitsAmd<T, AmdFamily::kRdna3, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
      case AmdFamily::kRdna4:
        return launch_fwd_amd<FwdTraitsAmd<T, AmdFamily::kRdna4, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
      default:
        return launch_fwd_amd<FwdTraitsAmd<T, AmdFamily::kCdna, kHeadDim>, Has_right_edge, Has_extras>(params, stream);
    }
  }
}

#else

template <class T, int kHeadDim, bool Has_right_edge, bool Has_extras>
error_t run_fwd(const FwdParams& params, stream_t stream) {
  using Traits = FwdTraits<T, kHeadDim>;
  const dim3 grid((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, params.h, params.b);
  return launch(&flash_fwd_kernel<Traits, Has_right_edge, Has_extras>, grid, dim3(Traits::kNThreads),
                Traits::kSmemBytes, stream, params);
}

#endif

}  // namespace flash
