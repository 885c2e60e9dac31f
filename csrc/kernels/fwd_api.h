// The kernel library's entry points, implemented by the generated dispatch file
// (tools/generate_kernels.py writes it together with the instantiations it dispatches to).
#pragma once

#include <vector>

#include "params.h"
#include "platform.h"

namespace flash {

enum class DType { kFloat16, kBFloat16 };

// Head dims compiled into this build, ascending.
std::vector<int> fwd_head_dims();

// The smallest compiled head dim >= head_dim, or 0 when there is none.
int fwd_kernel_head_dim(int head_dim);

// Runs the forward for params.d rounded up to fwd_kernel_head_dim(params.d).
error_t run_mha_fwd(const FwdParams& params, DType dtype, bool is_causal, stream_t stream);

}  // namespace flash
