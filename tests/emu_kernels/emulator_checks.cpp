// Small kernels that exercise the emulator itself (tests/test_emu_emulator.py): its collectives
// against HIP's rules, the matrix instructions through arch/amd_matrix.h, and kernels that are
// wrong on purpose (a missing barrier, an LDS overrun, a divergent collective, an over-limit
// launch), which the emulator must fail. Compiled like the library's kernels: host C++ for the
// emulated target, with the race detector's instrumentation.
#include <cstdint>
#include <cstring>

#include "arch/amd_matrix.h"
#include "arch/amd_wave.h"
#include "platform.h"

namespace flash {

// ---------------------------------------------------------------- collectives

// One block of `blockDim.x` threads; per thread, 8 results: __shfl (src 5, width 16), __shfl_xor
// (mask 3, width 8), __shfl_up (2, width 16), __shfl_down (3, width 16), __shfl_xor (32, full
// wave), the ballot of odd lanes (low and high word), and __any / __all of lane < 40.
__global__ void collectives_kernel(uint32_t* out, int exit_above) {
  const int tid = threadIdx.x;
  if (tid > exit_above) return;  // exited lanes read as 0 and vote no
  const int v = 1000 + tid;
  uint32_t* o = out + 8 * tid;
  o[0] = __shfl(v, 5, 16);
  o[1] = __shfl_xor(v, 3, 8);
  o[2] = __shfl_up(v, 2u, 16);
  o[3] = __shfl_down(v, 3u, 16);
  o[4] = __shfl_xor(v, 32);
  const unsigned long long odd = __ballot(tid % 2);
  o[5] = static_cast<uint32_t>(odd);
  o[6] = static_cast<uint32_t>(odd >> 32);
  o[7] = (__any(__lane_id() < 40) ? 1u : 0u) | (__all(__lane_id() < 40) ? 2u : 0u) |
         (amd::wave_broadcast_first(v) << 2);
}

// ---------------------------------------------------------------- matrix instructions

// One wavefront: lane l loads its A, B, C registers from a_regs + l * a_bytes etc., runs the
// instruction, and stores its D registers. The harness lays the registers out from AMD's CSVs.
template <class D, class Op>
__global__ void matrix_kernel(const char* a_regs, const char* b_regs, const float* c_regs, float* d_regs, Op op) {
  const int lane = threadIdx.x;
  using A = typename Op::A;
  A a, b;
  D c;
  std::memcpy(&a, a_regs + lane * sizeof(A), sizeof(A));
  std::memcpy(&b, b_regs + lane * sizeof(A), sizeof(A));
  std::memcpy(&c, c_regs + lane * (sizeof(D) / 4), sizeof(D));
  const D d = op(a, b, c);
  std::memcpy(d_regs + lane * (sizeof(D) / 4), &d, sizeof(D));
}

#define FA_EMU_MATRIX_OP(Name, T, N, Dtype, call)                        \
  struct Name {                                                          \
    using A = amd::Operand<T, N>;                                        \
    Dtype operator()(A a, A b, Dtype c) const { return call(a, b, c); } \
  };

#if defined(__GFX9__)
FA_EMU_MATRIX_OP(Mfma32x32x8F16, half_t, 4, amd::floatx16, amd::mfma_32x32x8<half_t>)
FA_EMU_MATRIX_OP(Mfma32x32x8Bf16, bf16_t, 4, amd::floatx16, amd::mfma_32x32x8<bf16_t>)
FA_EMU_MATRIX_OP(Mfma16x16x16F16, half_t, 4, amd::floatx4, amd::mfma_16x16x16<half_t>)
FA_EMU_MATRIX_OP(Mfma16x16x16Bf16, bf16_t, 4, amd::floatx4, amd::mfma_16x16x16<bf16_t>)
#endif
#if defined(__gfx950__)
FA_EMU_MATRIX_OP(Mfma32x32x16F16, half_t, 8, amd::floatx16, amd::mfma_32x32x16<half_t>)
FA_EMU_MATRIX_OP(Mfma32x32x16Bf16, bf16_t, 8, amd::floatx16, amd::mfma_32x32x16<bf16_t>)
FA_EMU_MATRIX_OP(Mfma16x16x32F16, half_t, 8, amd::floatx4, amd::mfma_16x16x32<half_t>)
FA_EMU_MATRIX_OP(Mfma16x16x32Bf16, bf16_t, 8, amd::floatx4, amd::mfma_16x16x32<bf16_t>)
#endif
#if defined(__gfx942__) || defined(__gfx950__)
struct Mfma32x32x16Fp8 {
  using A = long;
  amd::floatx16 operator()(A a, A b, amd::floatx16 c) const { return amd::mfma_32x32x16_fp8(a, b, c); }
};
struct Mfma16x16x32Fp8 {
  using A = long;
  amd::floatx4 operator()(A a, A b, amd::floatx4 c) const { return amd::mfma_16x16x32_fp8(a, b, c); }
};
#endif
#if defined(__GFX11__) || defined(__GFX12__)
FA_EMU_MATRIX_OP(Wmma16x16x16F16, half_t, amd::kWmmaOperandElements, amd::floatx8, amd::wmma_16x16x16<half_t>)
FA_EMU_MATRIX_OP(Wmma16x16x16Bf16, bf16_t, amd::kWmmaOperandElements, amd::floatx8, amd::wmma_16x16x16<bf16_t>)
#endif
#undef FA_EMU_MATRIX_OP

// ---------------------------------------------------------------- wrong on purpose

enum class LdsCase {
  kBarrier,          // write own slot, __syncthreads, read another wave's: correct
  kMissingBarrier,   // the same without the barrier: a race across waves
  kSameWaveNoSync,   // read the next lane's slot with nothing in between: a race inside a wave
  kSameWaveBarrier,  // the same after amd::wave_lds_barrier(): correct
  kWriteAfterRead,   // read another wave's slot, then (no barrier) that wave writes it
  kOverrun,          // the last thread writes one float past the dynamic LDS
  kUnderrun,         // thread 0 reads the float before LDS offset 0
};

__global__ void lds_kernel(int which, float* out) {
  extern __shared__ __align__(16) char smem[];
  float* s = reinterpret_cast<float*>(smem);
  const int tid = threadIdx.x, n = blockDim.x, wave = warpSize;
  const LdsCase c = static_cast<LdsCase>(which);
  if (c == LdsCase::kOverrun) {
    if (tid == n - 1) s[n] = 1.f;
    return;
  }
  if (c == LdsCase::kUnderrun) {
    if (tid == 0) out[0] = s[-1];
    return;
  }
  if (c == LdsCase::kWriteAfterRead) {
    s[tid] = static_cast<float>(tid);
    __syncthreads();
    const float other = s[(tid + wave) % n];
    s[tid] = other + 1.f;
    out[tid] = other;
    return;
  }
  s[tid] = static_cast<float>(tid);
  if (c == LdsCase::kBarrier) __syncthreads();
  if (c == LdsCase::kSameWaveBarrier) amd::wave_lds_barrier();
  const bool same_wave = c == LdsCase::kSameWaveNoSync || c == LdsCase::kSameWaveBarrier;
  const int src = same_wave ? tid - tid % wave + (tid + 1) % wave : (tid + wave) % n;
  out[tid] = s[src];
}

// Lanes below `half` shuffle while the others wait at __syncthreads.
__global__ void divergent_kernel(int half, int* out) {
  const int tid = threadIdx.x;
  if (tid < half) out[tid] = __shfl(tid, 0);
  __syncthreads();
}

// Block b waits until `counter` reaches gridDim.x - 1 - b, then records its turn and advances it:
// the blocks must finish in reverse order, whatever order they start in.
__global__ void reverse_order_kernel(int* counter, int* turn_of_block) {
  const int b = blockIdx.x;
  if (threadIdx.x == 0) {
    while (atomicAdd(counter, 0) != static_cast<int>(gridDim.x) - 1 - b) {}
  }
  __syncthreads();
  if (threadIdx.x == 0) turn_of_block[b] = atomicAdd(counter, 1);
}

__global__ void empty_kernel() {}

}  // namespace flash

namespace {

template <class D, class Op>
int run_matrix(const char* a, const char* b, const float* c, float* d) {
  return flash::launch(&flash::matrix_kernel<D, Op>, dim3(1), dim3(warpSize), 0, nullptr, a, b, c, d, Op{});
}

}  // namespace

extern "C" {

int fa_emu_check_collectives(int threads, int exit_above, uint32_t* out) {
  return flash::launch(&flash::collectives_kernel, dim3(1), dim3(threads), 0, nullptr, out, exit_above);
}

// The instruction by its name in the layout files; -2: not on this target.
int fa_emu_check_matrix(const char* instruction, const char* a, const char* b, const float* c, float* d) {
  const auto is = [&](const char* name) { return std::strcmp(instruction, name) == 0; };
#if defined(__gfx90a__)
  if (is("v_mfma_f32_32x32x8f16")) return run_matrix<flash::amd::floatx16, flash::Mfma32x32x8F16>(a, b, c, d);
  if (is("v_mfma_f32_32x32x8bf16_1k")) return run_matrix<flash::amd::floatx16, flash::Mfma32x32x8Bf16>(a, b, c, d);
  if (is("v_mfma_f32_16x16x16f16")) return run_matrix<flash::amd::floatx4, flash::Mfma16x16x16F16>(a, b, c, d);
  if (is("v_mfma_f32_16x16x16bf16_1k")) return run_matrix<flash::amd::floatx4, flash::Mfma16x16x16Bf16>(a, b, c, d);
#elif defined(__GFX9__)
  if (is("v_mfma_f32_32x32x8_f16")) return run_matrix<flash::amd::floatx16, flash::Mfma32x32x8F16>(a, b, c, d);
  if (is("v_mfma_f32_32x32x8_bf16")) return run_matrix<flash::amd::floatx16, flash::Mfma32x32x8Bf16>(a, b, c, d);
  if (is("v_mfma_f32_16x16x16_f16")) return run_matrix<flash::amd::floatx4, flash::Mfma16x16x16F16>(a, b, c, d);
  if (is("v_mfma_f32_16x16x16_bf16")) return run_matrix<flash::amd::floatx4, flash::Mfma16x16x16Bf16>(a, b, c, d);
  if (is("v_mfma_f32_32x32x16_fp8_fp8")) return run_matrix<flash::amd::floatx16, flash::Mfma32x32x16Fp8>(a, b, c, d);
  if (is("v_mfma_f32_16x16x32_fp8_fp8")) return run_matrix<flash::amd::floatx4, flash::Mfma16x16x32Fp8>(a, b, c, d);
#endif
#if defined(__gfx950__)
  if (is("v_mfma_f32_32x32x16_f16")) return run_matrix<flash::amd::floatx16, flash::Mfma32x32x16F16>(a, b, c, d);
  if (is("v_mfma_f32_32x32x16_bf16")) return run_matrix<flash::amd::floatx16, flash::Mfma32x32x16Bf16>(a, b, c, d);
  if (is("v_mfma_f32_16x16x32_f16")) return run_matrix<flash::amd::floatx4, flash::Mfma16x16x32F16>(a, b, c, d);
  if (is("v_mfma_f32_16x16x32_bf16")) return run_matrix<flash::amd::floatx4, flash::Mfma16x16x32Bf16>(a, b, c, d);
#endif
#if defined(__GFX11__) || defined(__GFX12__)
  if (is("v_wmma_f32_16x16x16_f16")) return run_matrix<flash::amd::floatx8, flash::Wmma16x16x16F16>(a, b, c, d);
  if (is("v_wmma_f32_16x16x16_bf16")) return run_matrix<flash::amd::floatx8, flash::Wmma16x16x16Bf16>(a, b, c, d);
#endif
  return -2;
}

int fa_emu_check_lds(int which, int threads, size_t lds_bytes, float* out) {
  return flash::launch(&flash::lds_kernel, dim3(1), dim3(threads), lds_bytes, nullptr, which, out);
}

int fa_emu_check_divergent(int threads, int half, int* out) {
  return flash::launch(&flash::divergent_kernel, dim3(1), dim3(threads), 0, nullptr, half, out);
}

int fa_emu_check_reverse_order(int blocks, int* counter, int* turn_of_block) {
  return flash::launch(&flash::reverse_order_kernel, dim3(blocks), dim3(2 * warpSize), 0, nullptr, counter,
                       turn_of_block);
}

int fa_emu_check_launch(unsigned block_x, unsigned block_y, size_t lds_bytes) {
  return flash::launch(&flash::empty_kernel, dim3(1), dim3(block_x, block_y), lds_bytes, nullptr);
}

}  // extern "C"
