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
  const dim3 grid((params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM, params.h, params.b);
  return launch(&flash_fwd_kernel<Traits, Is_causal, Has_extras>, grid, dim3(Traits::kNThreads), Traits::kSmemBytes,
                stream, params);
}

}  // namespace flash
