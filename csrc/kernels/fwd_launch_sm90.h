// Launches one Hopper forward instantiation. Included only by the generated fwd_sm90_* files,
// which are compiled only when the build targets sm_90a.
#pragma once

#include <algorithm>

#include "fp8_vt_sm90.h"
#include "fwd_kernel_sm90.h"
#include "params.h"
#include "platform.h"
#include "tensor_maps_sm90.h"
#include "tile_config.h"

namespace flash {

template <class Traits, bool Has_right_edge, bool Has_extras>
error_t launch_fwd_sm90(const FwdParams& params, stream_t stream) {
  using T = typename Traits::T;
  FwdTensorMaps maps;
  if constexpr (Traits::kFp8) {
    // V^T first (fp8_vt_sm90.h), then its map; q and k as the 16-bit kernels read them.
    if (!encode_operand_map<T>(&maps.q, params, params.q, true, params.q_batch_stride, params.q_row_stride,
                               params.q_head_stride, Traits::kBlockM) ||
        !encode_operand_map<T>(&maps.k, params, params.k, false, params.k_batch_stride, params.k_row_stride,
                               params.k_head_stride, Traits::kBlockN) ||
        !encode_vt_map(&maps.v, params, Traits::kHeadDim)) {
      return kInvalidConfig;
    }
    const error_t err = run_fp8_transpose_v<Traits::kHeadDim>(params, stream);
    if (err != kSuccess) return err;
  } else if (!encode_qkv_maps<T>(params, Traits::kBlockM, Traits::kBlockN, &maps.q, &maps.k, &maps.v)) {
    // The dispatch sends calls whose strides TMA cannot describe to the portable kernels.
    return kInvalidConfig;
  }
  // Persistent: one block per SM (the shared memory allows no second), or fewer if the units are fewer.
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return get_last_error();
  }
  const FwdTileSchedule schedule = FwdTileSchedule::make(params, Traits::kBlockM, Has_right_edge, sms);
  const int blocks = std::max(1, std::min(schedule.units, sms));
  return launch(&flash_fwd_sm90_kernel<Traits, Has_right_edge, Has_extras>, dim3(blocks), dim3(Traits::kNThreads),
                Traits::kSmemBytes, stream, params, maps, schedule);
}

// The block width comes from the tile table (FwdTileSm90): the wide one only without a right
// edge or extras and from enough keys (one wide variant is compiled, not two).
template <class T, int kHeadDim, bool Has_right_edge, bool Has_extras>
error_t run_fwd_sm90(const FwdParams& params, stream_t stream) {
  using Tile = FwdTileSm90<kHeadDim>;
  if constexpr (std::is_same_v<T, fp8_e4m3_t>) {
    return launch_fwd_sm90<FwdTraitsSm90<T, kHeadDim, Tile::kFp8BlockN>, Has_right_edge, Has_extras>(params, stream);
  } else {
    if constexpr (Tile::kWideBlockN != 0 && !Has_right_edge && !Has_extras) {
      if (params.seqlen_k >= Tile::kWideMinSeqlenK) {
        return launch_fwd_sm90<FwdTraitsSm90<T, kHeadDim, Tile::kWideBlockN>, false, false>(params, stream);
      }
    }
    return launch_fwd_sm90<FwdTraitsSm90<T, kHeadDim, Tile::kBlockN>, Has_right_edge, Has_extras>(params, stream);
  }
}

}  // namespace flash
