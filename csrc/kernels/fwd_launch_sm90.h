// Launches one Hopper forward instantiation. Included only by the generated fwd_sm90_* files,
// which are compiled only when the build targets sm_90a.
#pragma once

#include <algorithm>

#include "fwd_kernel_sm90.h"
#include "params.h"
#include "platform.h"
#include "tensor_maps_sm90.h"

namespace flash {

template <class T, int kHeadDim, bool Is_causal, bool Has_extras>
error_t run_fwd(const FwdParams& params, stream_t stream);

template <class Traits, bool Is_causal>
error_t launch_fwd_sm90(const FwdParams& params, stream_t stream) {
  using T = typename Traits::T;
  FwdTensorMaps maps;
  // Strides TMA cannot follow (a broadcast dimension): the portable kernel reads anything.
  if (!encode_qkv_maps<T>(params, Traits::kBlockM, Traits::kBlockN, &maps.q, &maps.k, &maps.v)) {
    return run_fwd<T, Traits::kHeadDim, Is_causal, false>(params, stream);
  }
  // Persistent: one block per SM (the shared memory allows no second), or fewer if the units are fewer.
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return get_last_error();
  }
  const FwdTileSchedule schedule(params, Traits::kBlockM, Is_causal);
  const int blocks = std::max(1, std::min(schedule.units, sms));
  return launch(&flash_fwd_sm90_kernel<Traits, Is_causal>, dim3(blocks), dim3(Traits::kNThreads), Traits::kSmemBytes,
                stream, params, maps);
}

// Head dim 64 without the causal mask takes 192-key blocks from 4096 keys on; shorter rows lose
// more to the last, partial block than the wider step saves, and the causal diagonal's masked
// blocks never paid for it (benchmarks/NOTES.md, session 10).
constexpr int kWideKeysMinSeqlenK = 4096;

template <class T, int kHeadDim, bool Is_causal>
error_t run_fwd_sm90(const FwdParams& params, stream_t stream) {
  if constexpr (kHeadDim == 64 && !Is_causal) {
    if (params.seqlen_k >= kWideKeysMinSeqlenK) return launch_fwd_sm90<FwdTraitsSm90<T, 64, 192>, false>(params, stream);
  }
  return launch_fwd_sm90<FwdTraitsSm90<T, kHeadDim>, Is_causal>(params, stream);
}

}  // namespace flash
