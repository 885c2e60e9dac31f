// Launches one Hopper backward instantiation: the shared preprocess, then the wgmma kernel.
// Included only by the generated bwd_sm90_* files, compiled only when the build targets sm_90a.
#pragma once

#include "bwd_kernel_sm90.h"
#include "bwd_preprocess_launch.h"
#include "params.h"
#include "platform.h"
#include "tensor_maps_sm90.h"

namespace flash {

template <class T, int kHeadDim, bool Has_right_edge, bool Has_extras>
error_t run_bwd_sm90(const BwdParams& params, stream_t stream) {
  using Traits = BwdTraitsSm90<T, kHeadDim>;
  BwdTensorMaps maps;
  // The dispatch sends calls whose strides TMA cannot describe to the portable kernels.
  if (!encode_qkv_maps<T>(params, Traits::kBlockM, Traits::kBlockN, &maps.q, &maps.k, &maps.v) ||
      !encode_operand_map<T>(&maps.dout, params, params.dout, true, params.do_batch_stride, params.do_row_stride,
                             params.do_head_stride, Traits::kBlockM) ||
      !encode_operand_map<float>(&maps.dq, params, params.dq_accum, true, params.dq_accum_batch_stride,
                                 int64_t(params.h) * params.d, params.d, Traits::kDqBoxRows)) {
    return kInvalidConfig;
  }
  error_t err = run_bwd_preprocess<T, kHeadDim>(params, stream);
  if (err != kSuccess) return err;

  // kDimParts blocks a key block, adjacent: they read the same K, V, Q and dO at the same time.
  const dim3 grid((params.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN * Traits::kDimParts, params.h_k, params.b);
  return launch(&flash_bwd_sm90_kernel<Traits, Has_right_edge, Has_extras>, grid, dim3(Traits::kNThreads), Traits::kSmemBytes, stream,
                params, maps);
}

}  // namespace flash
