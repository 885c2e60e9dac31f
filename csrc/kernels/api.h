// The kernel library's entry points, implemented by the generated dispatch file
// (tools/generate_kernels.py writes it together with the instantiations it dispatches to).
#pragma once

#include <vector>

#include "params.h"
#include "platform.h"
#include "tile_config.h"

namespace flash {

enum class DType { kFloat16, kBFloat16 };

// Head dims compiled into this build, ascending.
std::vector<int> compiled_head_dims();

// The smallest compiled head dim >= head_dim, or 0 when there is none.
int kernel_head_dim(int head_dim);

// Lets the forward use the Hopper (sm_90a) kernels where they apply (the default when the build
// has them); returns the previous setting. false in builds without them.
bool set_hopper_kernels(bool enabled);

// Forward for params.d rounded up to kernel_head_dim(params.d).
error_t run_mha_fwd(const FwdParams& params, DType dtype, bool is_causal, stream_t stream);

// Backward (preprocess + main kernel); dq_accum must be zeroed, and dq_semaphore too when
// params.deterministic ([b, h, ceil(seqlen_q / kBwdBlockM)] ints).
error_t run_mha_bwd(const BwdParams& params, DType dtype, bool is_causal, stream_t stream);

}  // namespace flash
