// NVIDIA sm_90a warpgroup MMA (wgmma): the Hopper kernels' matrix instruction. A warpgroup
// (4 consecutive warps, the first one's index a multiple of 4) computes D[64 x N] += A[64 x 16]
// B[16 x N]; B always comes from shared memory through a matrix descriptor, A from shared memory
// (wgmma_ss) or from registers (wgmma_rs). The accumulator layout per warp is mma.sync's C
// layout: warp w of the group holds rows 16 w .. 16 w + 15 as d[n8 tile][4].
//
// Beside it, what a producer/consumer kernel on Hopper needs: mbarriers, setmaxnreg and the
// fence between the generic and the async proxy. The operand lists are written out because
// inline asm takes no arrays. Compiled only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); other
// targets see declarations.
#pragma once

#include "../platform.h"
#include "mma_sm80.h"  // smem_u32

namespace flash {

// Shared-memory matrix descriptor for the 128-byte swizzle (smem_tile_sm90.h lays tiles out for
// it): start address, leading and stride byte offsets in 16-byte units, swizzle mode 1 in bits 62-63.
FA_DEVICE uint64_t gmma_descriptor(uint32_t smem_addr, uint32_t leading_bytes, uint32_t stride_bytes) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) | static_cast<uint64_t>(leading_bytes >> 4) << 16 |
         static_cast<uint64_t>(stride_bytes >> 4) << 32 | 1ull << 62;
}

// D (N / 8 n8 tiles) += A B over k = 16: A is 64 x 16 K-major at desc_a, B is N x 16 K-major at
// desc_b; accumulate = 0 overwrites D.
template <int N, class T> FA_DEVICE void wgmma_ss(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate);
// Same with A from registers (mma.sync's A fragment layout per warp) and B N-major (transposed).
template <int N, class T>
FA_DEVICE void wgmma_rs(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b, int accumulate);
// Same with B K-major (S = Q K^T with Q's fragments held in registers).
template <int N, class T>
FA_DEVICE void wgmma_rs_k_major(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b, int accumulate);
// Same as wgmma_ss with both operands MN-major (transposed): A is 16 x 64, B is 16 x N, each
// with its k rows apart (the backward's dQ = dS K reads dS^T and K as stored).
template <int N, class T>
FA_DEVICE void wgmma_ss_mn_major(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate);
// Same with A MN-major and B K-major (the d256 backward's dQ^T = K^T dS^T reads K and dS as stored).
template <int N, class T>
FA_DEVICE void wgmma_ss_a_mn_major(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate);

// fp8 (e4m3) operands, k = 32 a product, both K-major (wgmma transposes only 16-bit ones): A from
// shared memory or from registers (four words of 4 bytes: rows lane / 4 and + 8, k 4 (lane % 4)
// .. + 3 and + 16), B from shared memory.
template <int N> FA_DEVICE void wgmma_ss_fp8(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate);
template <int N>
FA_DEVICE void wgmma_rs_fp8(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b, int accumulate);

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Four fp32 values as the e4m3 bytes of one word, x0 in the lowest (round to nearest even,
// saturated: cvt puts its first operand in the upper byte of each pair).
FA_DEVICE uint32_t pack_e4m3x4(float x0, float x1, float x2, float x3) {
  uint32_t word;
  asm("{\n.reg .b16 lo, hi;\ncvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\ncvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n"
      "mov.b32 %0, {lo, hi};\n}\n"
      : "=r"(word)
      : "f"(x0), "f"(x1), "f"(x2), "f"(x3));
  return word;
}

// Orders this thread's earlier register writes to the accumulators before the next wgmma.
FA_DEVICE void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
FA_DEVICE void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int Pending> FA_DEVICE void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

// The asm above cannot tell the compiler that the accumulators change only when the group
// completes: this pins every register of `d` at the point of the call, so that no read moves
// above a wait and no write moves below the wgmma that consumes it.
template <int kNT> FA_DEVICE void wgmma_fence_operands(float (&d)[kNT][4]) {
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+f"(d[j][i])::"memory");
  }
}

// The same for register A fragments: the hardware reads them until the group completes, so
// they must stay allocated (not reused by the compiler) up to the wait.
template <int kK> FA_DEVICE void wgmma_fence_operands(uint32_t (&a)[kK][4]) {
#pragma unroll
  for (int j = 0; j < kK; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(a[j][i])::"memory");
  }
}

// Shared-memory barriers (mbarrier) between a producer warpgroup and consumer warpgroups: a
// phase completes when `count` threads have arrived; waiters name the parity of the phase.
FA_DEVICE void mbarrier_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
FA_DEVICE void mbarrier_arrive(uint64_t* bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(smem_u32(bar))
               : "memory");
}
FA_DEVICE void mbarrier_wait(uint64_t* bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(smem_u32(bar)), "r"(parity)
      : "memory");
}

// This thread's warpgroup, broadcast from lane 0 so that the compiler knows it is the same in
// the whole warp: addresses derived from it (wgmma descriptors) then live in uniform registers,
// built once, instead of being rebuilt and moved (R2UR) before every wgmma.
FA_DEVICE int warpgroup_index() { return static_cast<int>(shfl(threadIdx.x / 128, 0)); }

// Moves this warpgroup's register budget: the producer gives registers up, consumers take them.
template <int kRegs> FA_DEVICE void warpgroup_registers_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs> FA_DEVICE void warpgroup_registers_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Barrier `id` (1..15; 0 is __syncthreads) among `threads` threads, whole warps: lets one
// warpgroup synchronise without stopping the others.
FA_DEVICE void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Counts this warp in on barrier `id` without waiting for it to complete: signals the threads
// that wait there with named_barrier_sync.
FA_DEVICE void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Adds `bytes` (a multiple of 16) of fp32 from shared to global memory (both 16-byte aligned)
// in the TMA unit, asynchronously: the SM issues one instruction instead of an atomic per
// element. Completion is tracked per thread in bulk groups.
FA_DEVICE void bulk_reduce_add_f32(float* gmem, const float* smem, int bytes) {
  asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(gmem),
               "r"(smem_u32(smem)), "r"(bytes)
               : "memory");
}
FA_DEVICE void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until this thread's bulk groups have read their shared-memory source (it may be reused).
FA_DEVICE void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// Waits until this thread's bulk groups are complete.
FA_DEVICE void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

// Stores four 8 x 8 matrices of 16-bit elements held in mma.sync's fragment layout (register i:
// this lane's row lane / 4, columns 2 (lane % 4) .. + 1 of matrix i); lane l gives the address
// of row l % 8 of matrix l / 8, 16 contiguous bytes. One instruction instead of sixteen stores.
FA_DEVICE void stmatrix_x4(uint32_t smem_addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// The same with each 8 x 8 matrix transposed: register i's row lane / 4 becomes column lane / 4
// of matrix i in memory, whose rows lane l addresses as above.
FA_DEVICE void stmatrix_x4_trans(uint32_t smem_addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// Makes this thread's generic-proxy shared-memory writes (cp.async included) visible to the
// async proxy that wgmma reads through; a barrier after it publishes them to the warpgroup.
FA_DEVICE void fence_proxy_async_shared() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// The specialisations, one line each. Inline asm takes no arrays, so each N has its accumulator
// operands (FA_WGMMA_ACC_<N>: N / 2 floats a thread) and their placeholders %0 ..
// (FA_WGMMA_REGS_<N>, without braces); the A registers, the descriptors and the accumulate
// predicate are numbered after them. SS: A and B from shared memory, K-major ("0, 0") or
// MN-major ("1, 1"); RS: A from registers, B N-major ("1") or K-major ("0").
#define FA_WGMMA_ACC4(i) "+f"(d[i][0]), "+f"(d[i][1]), "+f"(d[i][2]), "+f"(d[i][3])
#define FA_WGMMA_ACC_32 FA_WGMMA_ACC4(0), FA_WGMMA_ACC4(1), FA_WGMMA_ACC4(2), FA_WGMMA_ACC4(3)
#define FA_WGMMA_ACC_64 \
  FA_WGMMA_ACC4(0), FA_WGMMA_ACC4(1), FA_WGMMA_ACC4(2), FA_WGMMA_ACC4(3), FA_WGMMA_ACC4(4), \
  FA_WGMMA_ACC4(5), FA_WGMMA_ACC4(6), FA_WGMMA_ACC4(7)
#define FA_WGMMA_ACC_80 FA_WGMMA_ACC_64, FA_WGMMA_ACC4(8), FA_WGMMA_ACC4(9)
#define FA_WGMMA_ACC_128 \
  FA_WGMMA_ACC_64, FA_WGMMA_ACC4(8), FA_WGMMA_ACC4(9), FA_WGMMA_ACC4(10), FA_WGMMA_ACC4(11), \
  FA_WGMMA_ACC4(12), FA_WGMMA_ACC4(13), FA_WGMMA_ACC4(14), FA_WGMMA_ACC4(15)
#define FA_WGMMA_ACC_192 \
  FA_WGMMA_ACC_128, FA_WGMMA_ACC4(16), FA_WGMMA_ACC4(17), FA_WGMMA_ACC4(18), FA_WGMMA_ACC4(19), \
  FA_WGMMA_ACC4(20), FA_WGMMA_ACC4(21), FA_WGMMA_ACC4(22), FA_WGMMA_ACC4(23)
#define FA_WGMMA_ACC_256 \
  FA_WGMMA_ACC_128, FA_WGMMA_ACC4(16), FA_WGMMA_ACC4(17), FA_WGMMA_ACC4(18), FA_WGMMA_ACC4(19), \
  FA_WGMMA_ACC4(20), FA_WGMMA_ACC4(21), FA_WGMMA_ACC4(22), FA_WGMMA_ACC4(23), FA_WGMMA_ACC4(24), \
  FA_WGMMA_ACC4(25), FA_WGMMA_ACC4(26), FA_WGMMA_ACC4(27), FA_WGMMA_ACC4(28), FA_WGMMA_ACC4(29), \
  FA_WGMMA_ACC4(30), FA_WGMMA_ACC4(31)
#define FA_WGMMA_REGS_32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define FA_WGMMA_REGS_64 \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, " \
  "%21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define FA_WGMMA_REGS_80 FA_WGMMA_REGS_64 ", %32, %33, %34, %35, %36, %37, %38, %39"
#define FA_WGMMA_REGS_128 \
  FA_WGMMA_REGS_64 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, " \
  "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define FA_WGMMA_REGS_192 \
  FA_WGMMA_REGS_128 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, " \
  "%82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
#define FA_WGMMA_REGS_256 \
  FA_WGMMA_REGS_128 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, " \
  "%82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, " \
  "%101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, " \
  "%117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"

#define FA_WGMMA_SS(NAME, N, T, PTX_T, TRANS, DA, DB, P)                                            \
  template <>                                                                                       \
  FA_DEVICE void NAME<N, T>(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n"                                   \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_T "." PTX_T " "              \
                 "{" FA_WGMMA_REGS_##N "}, %" #DA ", %" #DB ", p, 1, 1, " TRANS ";\n}\n"            \
                 : FA_WGMMA_ACC_##N                                                                 \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                      \
  }
#define FA_WGMMA_RS(NAME, N, T, PTX_T, TRANS_B, A0, A1, A2, A3, DB, P)                              \
  template <>                                                                                       \
  FA_DEVICE void NAME<N, T>(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b,          \
                            int accumulate) {                                                       \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n"                                   \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." PTX_T "." PTX_T " "              \
                 "{" FA_WGMMA_REGS_##N "}, {%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #DB         \
                 ", p, 1, 1, " TRANS_B ";\n}\n"                                                     \
                 : FA_WGMMA_ACC_##N                                                                 \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));       \
  }

// m64n32: the d256 backward's S^T and dP^T over 32 queries, and its dQ^T (A MN-major).
FA_WGMMA_SS(wgmma_ss, 32, half_t, "f16", "0, 0", 16, 17, 18)
FA_WGMMA_SS(wgmma_ss, 32, bf16_t, "bf16", "0, 0", 16, 17, 18)
FA_WGMMA_SS(wgmma_ss_a_mn_major, 32, half_t, "f16", "1, 0", 16, 17, 18)
FA_WGMMA_SS(wgmma_ss_a_mn_major, 32, bf16_t, "bf16", "1, 0", 16, 17, 18)
// m64n64: the backward's S^T, dP^T (head dim 128) and dQ (MN-major); P V, dV, dK at head dim 64.
FA_WGMMA_SS(wgmma_ss, 64, half_t, "f16", "0, 0", 32, 33, 34)
FA_WGMMA_SS(wgmma_ss, 64, bf16_t, "bf16", "0, 0", 32, 33, 34)
FA_WGMMA_SS(wgmma_ss_mn_major, 64, half_t, "f16", "1, 1", 32, 33, 34)
FA_WGMMA_SS(wgmma_ss_mn_major, 64, bf16_t, "bf16", "1, 1", 32, 33, 34)
FA_WGMMA_RS(wgmma_rs, 64, half_t, "f16", "1", 32, 33, 34, 35, 36, 37)
FA_WGMMA_RS(wgmma_rs, 64, bf16_t, "bf16", "1", 32, 33, 34, 35, 36, 37)
// m64n80: the forward's S at head dim 256 (80-key blocks).
FA_WGMMA_SS(wgmma_ss, 80, half_t, "f16", "0, 0", 40, 41, 42)
FA_WGMMA_SS(wgmma_ss, 80, bf16_t, "bf16", "0, 0", 40, 41, 42)
// m64n128: S over 128 keys (Q from shared memory or registers), S^T and dP^T over 128 queries
// (head dim 64); P V, dV, dK at 128 (and the d256 backward's column halves).
FA_WGMMA_SS(wgmma_ss, 128, half_t, "f16", "0, 0", 64, 65, 66)
FA_WGMMA_SS(wgmma_ss, 128, bf16_t, "bf16", "0, 0", 64, 65, 66)
FA_WGMMA_RS(wgmma_rs, 128, half_t, "f16", "1", 64, 65, 66, 67, 68, 69)
FA_WGMMA_RS(wgmma_rs, 128, bf16_t, "bf16", "1", 64, 65, 66, 67, 68, 69)
FA_WGMMA_RS(wgmma_rs_k_major, 128, half_t, "f16", "0", 64, 65, 66, 67, 68, 69)
FA_WGMMA_RS(wgmma_rs_k_major, 128, bf16_t, "bf16", "0", 64, 65, 66, 67, 68, 69)
// m64n192: the forward's S at head dim 64 (192-key blocks, Q from registers).
FA_WGMMA_RS(wgmma_rs_k_major, 192, half_t, "f16", "0", 96, 97, 98, 99, 100, 101)
FA_WGMMA_RS(wgmma_rs_k_major, 192, bf16_t, "bf16", "0", 96, 97, 98, 99, 100, 101)
// m64n256: the forward's P V at head dim 256 (O is 128 registers a thread).
FA_WGMMA_RS(wgmma_rs, 256, half_t, "f16", "1", 128, 129, 130, 131, 132, 133)
FA_WGMMA_RS(wgmma_rs, 256, bf16_t, "bf16", "1", 128, 129, 130, 131, 132, 133)

// fp8 (e4m3 x e4m3, k32): the fp8 forward's S over 128 keys, and P V at head dims 64, 128 and 256.
#define FA_WGMMA_SS_FP8(N, DA, DB, P)                                                                \
  template <>                                                                                        \
  FA_DEVICE void wgmma_ss_fp8<N>(float (&d)[N / 8][4], uint64_t desc_a, uint64_t desc_b, int accumulate) { \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 "                         \
                 "{" FA_WGMMA_REGS_##N "}, %" #DA ", %" #DB ", p, 1, 1;\n}\n"                       \
                 : FA_WGMMA_ACC_##N                                                                  \
                 : "l"(desc_a), "l"(desc_b), "r"(accumulate));                                       \
  }
#define FA_WGMMA_RS_FP8(N, A0, A1, A2, A3, DB, P)                                                    \
  template <>                                                                                        \
  FA_DEVICE void wgmma_rs_fp8<N>(float (&d)[N / 8][4], const uint32_t (&a)[4], uint64_t desc_b,      \
                                 int accumulate) {                                                   \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n"                                    \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k32.f32.e4m3.e4m3 "                         \
                 "{" FA_WGMMA_REGS_##N "}, {%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #DB ", p, 1, 1;\n}\n" \
                 : FA_WGMMA_ACC_##N                                                                  \
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(accumulate));        \
  }
FA_WGMMA_SS_FP8(128, 64, 65, 66)
FA_WGMMA_RS_FP8(64, 32, 33, 34, 35, 36, 37)
FA_WGMMA_RS_FP8(128, 64, 65, 66, 67, 68, 69)
FA_WGMMA_RS_FP8(256, 128, 129, 130, 131, 132, 133)

#undef FA_WGMMA_RS_FP8
#undef FA_WGMMA_SS_FP8
#undef FA_WGMMA_RS
#undef FA_WGMMA_SS
#undef FA_WGMMA_REGS_32
#undef FA_WGMMA_ACC_32
#undef FA_WGMMA_REGS_64
#undef FA_WGMMA_ACC_64
#undef FA_WGMMA_REGS_80
#undef FA_WGMMA_ACC_80
#undef FA_WGMMA_REGS_128
#undef FA_WGMMA_ACC_128
#undef FA_WGMMA_REGS_192
#undef FA_WGMMA_ACC_192
#undef FA_WGMMA_REGS_256
#undef FA_WGMMA_ACC_256
#undef FA_WGMMA_ACC4

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace flash
