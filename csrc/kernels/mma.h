// The matrix-core layer: one warp-level m16n8k16 product plus the shared-memory fragment loads
// and asynchronous copies that feed it. The kernels use only the functions declared here.
//
// Fragment layout for a 32-lane group, g = lane / 4, t = lane % 4 (each register holds two
// 16-bit elements, the lower column/k first):
//   A 16x16 (row-major):  a[0] = (g, 2t..2t+1)   a[1] = (g+8, 2t..)   a[2] = (g, 2t+8..)   a[3] = (g+8, 2t+8..)
//   B 16x8  (k by n):     b[0] = (k 2t..2t+1, n g)   b[1] = (k 2t+8..2t+9, n g)
//   C 16x8  (fp32):       c[0..1] = (g, 2t..2t+1)   c[2..3] = (g+8, 2t..2t+1)
// Two adjacent C tiles along n are exactly one A fragment along k: P goes from the first GEMM's
// accumulators to the second GEMM's operand without touching shared memory.
//
// load_matrix_x4(r, row_ptr): four 8x8 matrices of 16-bit elements; lane l gives the address of
// row l % 8 of matrix l / 8, and receives in r[m] the elements (l / 4, 2(l % 4)..+1) of matrix m.
// The _trans variant delivers each matrix transposed: (2(l % 4)..+1, l / 4).
#pragma once

#include "platform.h"

#if defined(FA_PLATFORM_CUDA)
#include "arch/mma_sm80.h"
#else
#include "arch/mma_scalar_fallback.h"
#endif
