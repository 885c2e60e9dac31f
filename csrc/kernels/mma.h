// NVIDIA's matrix-core layer for the portable kernels: one warp-level m16n8k16 product plus the
// shared-memory fragment loads and asynchronous copies that feed it. (AMD's is
// arch/matrix_core_amd.h.)
//
// mma_16816, load_matrix_x4(_trans), copy_async_16/commit/wait: their operand and accumulator
// layouts (which lane holds which element) are described in arch/mma_sm80.h and
// arch/fragment_mma.h; code outside arch/ reads them from there.
#pragma once

#include "platform.h"

#if defined(FA_PLATFORM_CUDA)
#include "arch/mma_sm80.h"
#else
#error "mma.h is NVIDIA's mma.sync layer; the AMD kernels use arch/matrix_core_amd.h"
#endif
