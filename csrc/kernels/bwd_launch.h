// Launches one backward instantiation: preprocess (D = rowsum(dO * O)), then the main kernel.
// The caller zeroes dq_accum (and dq_semaphore when deterministic) and converts dq_accum after.
#pragma once

#include "bwd_kernel.h"
#include "bwd_preprocess_launch.h"
#include "params.h"
#include "platform.h"
#include "tile_config.h"

namespace flash {

template <class T, int kHeadDim, bool Has_right_edge, bool Has_extras>
error_t run_bwd(const BwdParams& params, stream_t stream) {
  using Traits = BwdTraits<T, kHeadDim>;
  error_t err = run_bwd_preprocess<T, kHeadDim>(params, stream);
  if (err != kSuccess) return err;

  const dim3 grid((params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN, params.h_k, params.b);
  return launch(&flash_bwd_kernel<Traits, Has_right_edge, Has_extras>, grid, dim3(Traits::kNThreads), Traits::kSmemBytes,
                stream, params);
}

}  // namespace flash
