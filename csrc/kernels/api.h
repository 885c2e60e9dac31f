// The kernel library's entry points, implemented by the dispatch (dispatch.cu), which reads the
// table of compiled kernels that tools/generate_kernels.py writes with the instantiations.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "params.h"
#include "platform.h"
#include "tile_config.h"

namespace flash {

// kFloat8E4m3: the AMD fp8 forward's q, k, v (the device's e4m3 format; out is bf16).
enum class DType { kFloat16, kBFloat16, kFloat8E4m3 };

// Whether this build and the current device have an fp8 forward for head_dim (AMD gfx942/gfx950;
// Hopper with its sm_90a kernels).
bool fp8_forward_available(int head_dim);

// Head dims compiled into this build, ascending.
std::vector<int> compiled_head_dims();

// The smallest compiled head dim >= head_dim, or 0 when there is none.
int kernel_head_dim(int head_dim);

// Lets the forward and backward use the Hopper (sm_90a) kernels where they apply (the default
// when the build has them); returns the previous setting, false in builds without them.
bool set_hopper_kernels(bool enabled);
// Whether the Hopper kernels not yet run on a GPU (the fp8 forward, the d256 backward, the softcap/
// ALiBi/dropout variants) may take calls; off by default. Returns the previous setting.
bool set_unverified_kernels(bool enabled);

// Which kernels run_mha_fwd (backward = false) or run_mha_bwd would launch on the current device,
// decided as they decide it (dispatch.cu).
struct KernelChoice {
  const char* family;      // "sm90" (the Hopper wgmma kernels), "sm80" (the portable ones), "none"
  int head_dim;            // the compiled head dim the call rounds up to; 0 with "none"
  const char* not_hopper;  // with "sm80": why not the Hopper kernels; nullptr otherwise
};
// `extras`: softcap, ALiBi or dropout. `paged`: K/V through a block table (forward only).
// `operands`: the call's params, whose pointers and strides decide whether TMA can take them (a
// backward's must be a BwdParams), or nullptr to leave them out.
KernelChoice kernel_family(bool backward, int head_dim, DType dtype, bool extras, bool dropout, bool paged,
                           const FwdParams* operands);

// Forward for params.d rounded up to kernel_head_dim(params.d); paged K/V when params.block_table is set.
error_t run_mha_fwd(const FwdParams& params, DType dtype, bool has_right_edge, stream_t stream);

// Backward (preprocess + main kernel); dq_accum must be zeroed, and dq_semaphore too when
// params.deterministic ([b, h, ceil(seqlen_q / kDqSemaphoreBlockM)] ints).
error_t run_mha_bwd(const BwdParams& params, DType dtype, bool has_right_edge, stream_t stream);

// KV-cache forward (append, rotary, attention, split-KV combine) for params.d rounded up.
error_t run_mha_fwd_kvcache(const KvCacheParams& params, DType dtype, stream_t stream);

// Split count for the KV-cache forward when the caller asks for the heuristic: 1 when the
// blocks (batch x heads x row blocks) already fill the slots, else the fewest splits that fill
// whole waves of `slots` blocks to 90% of the best fill, each split keeping >= 2 key blocks, at
// most 128. Measured on an H100 (benchmarks/NOTES.md): a contiguous cache streams fastest with
// one long split per SM (slots = SMs), a paged one with two blocks per SM (slots = 2 x SMs),
// whose extra loads in flight hide the scattered pages.
inline int kvcache_num_splits(int64_t blocks, int key_blocks, int slots) {
  if (blocks <= 0 || blocks * 10 >= int64_t(slots) * 8) return 1;
  const int max_splits = std::max(1, std::min(128, key_blocks / 2));
  auto fill = [&](int splits) {
    const int64_t work = blocks * splits, waves = (work + slots - 1) / slots;
    return double(work) / double(waves * slots);
  };
  double best = 0;
  for (int s = 1; s <= max_splits; ++s) best = std::max(best, fill(s));
  for (int s = 1; s <= max_splits; ++s) {
    if (fill(s) >= 0.9 * best) return s;
  }
  return 1;
}

}  // namespace flash
