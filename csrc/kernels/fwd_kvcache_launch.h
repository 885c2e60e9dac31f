// Launches the KV-cache forward of one (dtype, head dim) family: the append (and rotary), the
// attention, and with split-KV the combine. Included only by the generated kvcache files.
#pragma once

#include "kvcache.h"
#include "params.h"
#include "platform.h"
#include "tile_config.h"
#if defined(FA_PLATFORM_HIP)
#include "fwd_kvcache_kernel_amd.h"
#else
#include "fwd_kvcache_kernel.h"
#endif

namespace flash {

// The attention kernel and its tiles: the portable mma.sync one on NVIDIA, on AMD the one of the
// device's matrix-core family.
template <class Traits, class Params>
error_t launch_kvcache_attention(const Params& params, stream_t stream) {
  const int m_blocks = (params.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM;
  const dim3 grid(m_blocks * params.num_splits, params.h, params.b);
#if defined(FA_PLATFORM_HIP)
  return launch_overlapped(&flash_fwd_kvcache_amd_kernel<Traits>, grid, dim3(Traits::kNThreads), Traits::kSmemBytes,
                           stream, params);
#else
  return launch_overlapped(&flash_fwd_kvcache_kernel<Traits>, grid, dim3(Traits::kNThreads), Traits::kSmemBytes,
                           stream, params);
#endif
}

template <class T, int kHeadDim>
error_t run_fwd_kvcache(const KvCacheParams& params, stream_t stream) {
  constexpr int kWarpsPerBlock = 4;
  if (params.seqlen_new > 0 || params.rotary_cos != nullptr) {
    const int q_rows = params.rotary_cos != nullptr ? params.b * params.seqlen_q_rows * params.nheads_q : 0;
    const int kv_rows = params.b * params.seqlen_new * params.h_k;
    const dim3 grid((max(q_rows, kv_rows) + kWarpsPerBlock - 1) / kWarpsPerBlock, 3);
    const error_t err = launch(&kvcache_prepare_kernel<T>, grid, dim3(kWarpsPerBlock * kGroupSize), 0, stream, params);
    if (err != kSuccess) return err;
  }

  // Each kernel after the first overlaps its launch with the tail of the one before (decode
  // steps are short enough for the gap between kernels to show).
#if defined(FA_PLATFORM_HIP)
  error_t err;
  switch (current_amd_family()) {
    case AmdFamily::kCdna4:
      err = launch_kvcache_attention<KvCacheTraitsAmd<T, AmdFamily::kCdna4, kHeadDim>>(params, stream);
      break;
    case AmdFamily::kRdna3:
      err = launch_kvcache_attention<KvCacheTraitsAmd<T, AmdFamily::kRdna3, kHeadDim>>(params, stream);
      break;
    case AmdFamily::kRdna4:
      err = launch_kvcache_attention<KvCacheTraitsAmd<T, AmdFamily::kRdna4, kHeadDim>>(params, stream);
      break;
    default:
      err = launch_kvcache_attention<KvCacheTraitsAmd<T, AmdFamily::kCdna, kHeadDim>>(params, stream);
      break;
  }
#else
  error_t err = launch_kvcache_attention<KvCacheTraits<T, kHeadDim>>(params, stream);
#endif
  if (err != kSuccess || params.num_splits == 1) return err;
  const int64_t rows = int64_t(params.b) * params.h * params.seqlen_q;
  return launch_overlapped(&flash_kvcache_combine_kernel<T, kHeadDim>,
                           dim3(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock)),
                           dim3(kWarpsPerBlock * kGroupSize), 0, stream, params);
}

}  // namespace flash
