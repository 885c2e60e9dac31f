// NVIDIA sm_80+ implementation of mma.h: mma.sync, ldmatrix and cp.async.
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

#include "../platform.h"

namespace flash {

template <class T> FA_DEVICE void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <> FA_DEVICE void mma_16816<half_t>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <> FA_DEVICE void mma_16816<bf16_t>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

FA_DEVICE uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

FA_DEVICE void load_matrix_x4(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row_ptr)));
}

FA_DEVICE void load_matrix_x4_trans(uint32_t (&r)[4], const void* row_ptr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(row_ptr)));
}

// 16 bytes global -> shared without a register round trip; when !pred the destination is
// zero-filled (src-size 0), which is how tiles past the sequence end or head dim read as zeros.
FA_DEVICE void copy_async_16(void* smem, const void* gmem, bool pred) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
               :: "r"(smem_u32(smem)), "l"(gmem), "r"(pred ? 16 : 0));
}

FA_DEVICE void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int Pending> FA_DEVICE void copy_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" :: "n"(Pending));
}

// copy_async_wait for a pending count known only at run time (0..7).
FA_DEVICE void copy_async_wait_at_most(int pending) {
  switch (pending) {
    case 0: copy_async_wait<0>(); break;
    case 1: copy_async_wait<1>(); break;
    case 2: copy_async_wait<2>(); break;
    case 3: copy_async_wait<3>(); break;
    case 4: copy_async_wait<4>(); break;
    case 5: copy_async_wait<5>(); break;
    case 6: copy_async_wait<6>(); break;
    default: copy_async_wait<7>(); break;
  }
}

}  // namespace flash
