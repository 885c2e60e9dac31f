// The matrix-core layer: one warp-level m16n8k16 product plus the shared-memory fragment loads
// and asynchronous copies that feed it. The kernels use only the functions declared here.
//
// mma_16816, load_matrix_x4(_trans), copy_async_16/commit/wait: their operand and accumulator
// layouts (which lane holds which element) are described in arch/mma_sm80.h and
// arch/fragment_mma.h; code outside arch/ reads them from there.
#pragma once

#include "platform.h"

#if defined(FA_PLATFORM_CUDA)
#include "arch/mma_sm80.h"
#else
#include "arch/mma_scalar_fallback.h"
#endif
