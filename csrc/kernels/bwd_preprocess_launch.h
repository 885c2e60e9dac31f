// Launches the backward's preprocess (D = rowsum(dO * O)), which the portable and the Hopper
// backward share.
#pragma once

#include "bwd_preprocess.h"
#include "params.h"
#include "platform.h"

namespace flash {

template <class T, int kHeadDim>
error_t run_bwd_preprocess(const BwdParams& params, stream_t stream) {
  const dim3 grid((params.seqlen_q + kPreprocessRows - 1) / kPreprocessRows, params.h, params.b);
  return launch(&bwd_preprocess_kernel<T, kHeadDim>, grid, dim3(kPreprocessRows * kGroupSize), 0, stream, params);
}

}  // namespace flash
