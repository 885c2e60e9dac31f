// Launches one Hopper forward instantiation. Included only by the generated fwd_sm90_* files,
// which are compiled only when the build targets sm_90a.
#pragma once

#include <algorithm>
#include <type_traits>

#include "fwd_kernel_sm90.h"
#include "params.h"
#include "platform.h"

namespace flash {

template <class T, int kHeadDim, bool Is_causal, bool Has_extras>
error_t run_fwd(const FwdParams& params, stream_t stream);

// The TMA descriptions of q, k and v; varlen tensors are one batch of total rows.
template <class Traits>
bool encode_fwd_tensor_maps(const FwdParams& params, FwdTensorMaps& maps) {
  const bool bf16 = std::is_same<typename Traits::T, bf16_t>::value;
  const bool varlen = params.cu_seqlens_q != nullptr;
  const int batches = varlen ? 1 : params.b;
  return TensorMap4d::encode(&maps.q, params.q, bf16, params.d, varlen ? params.total_q : params.seqlen_q, params.h,
                             batches, params.q_row_stride, params.q_head_stride, params.q_batch_stride,
                             Traits::kBlockM) &&
         TensorMap4d::encode(&maps.k, params.k, bf16, params.d, varlen ? params.total_k : params.seqlen_k,
                             params.h_k, batches, params.k_row_stride, params.k_head_stride, params.k_batch_stride,
                             Traits::kBlockN) &&
         TensorMap4d::encode(&maps.v, params.v, bf16, params.d, varlen ? params.total_k : params.seqlen_k,
                             params.h_k, batches, params.v_row_stride, params.v_head_stride, params.v_batch_stride,
                             Traits::kBlockN);
}

template <class T, int kHeadDim, bool Is_causal>
error_t run_fwd_sm90(const FwdParams& params, stream_t stream) {
  using Traits = FwdTraitsSm90<T, kHeadDim>;
  FwdTensorMaps maps;
  // Strides TMA cannot follow (a broadcast dimension): the portable kernel reads anything.
  if (!encode_fwd_tensor_maps<Traits>(params, maps)) return run_fwd<T, kHeadDim, Is_causal, false>(params, stream);
  const auto kernel = &flash_fwd_sm90_kernel<Traits, Is_causal>;
  const error_t err = set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), Traits::kSmemBytes);
  if (err != kSuccess) return err;
  // Persistent: one block per SM (the shared memory allows no second), or fewer if the units are fewer.
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return get_last_error();
  }
  const FwdTileSchedule schedule(params, Traits::kBlockM, Is_causal);
  const int blocks = std::max(1, std::min(schedule.units, sms));
  kernel<<<blocks, Traits::kNThreads, Traits::kSmemBytes, stream>>>(params, maps);
  return get_last_error();
}

}  // namespace flash
