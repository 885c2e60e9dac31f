// Kernels written to trip (or pass) each ISA gate, so tests/test_amd_isa.py can show that the
// gates see what they claim to see. Compiled per AMD target; never run.
#include "platform.h"  // the HIP headers, with what newer clangs need to read them

namespace flash {

// Needs all 64 loaded values live at once (every output is scaled by their sum), in a budget of
// 32 VGPRs: the register allocator must spill.
__global__ void __attribute__((amdgpu_num_vgpr(32))) gate_spill_kernel(const float* in, float* out) {
  float v[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) v[i] = in[threadIdx.x + 256 * i];
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < 64; ++i) total += v[i] * v[63 - i];
#pragma unroll
  for (int i = 0; i < 64; ++i) out[threadIdx.x + 256 * i] = v[i] * total;
}

// A private array indexed at run time is too large to live in registers: it goes to scratch.
__global__ void gate_scratch_kernel(const float* in, const int* index, float* out) {
  float table[512];
  for (int i = 0; i < 512; ++i) table[i] = in[i * 64 + threadIdx.x];
  out[threadIdx.x] = table[index[threadIdx.x] & 511];
}

// A loop of matrix products (one per step), the shape of a steady-state KV loop.
#if defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx942__) || defined(__gfx950__)
typedef _Float16 half4 __attribute__((ext_vector_type(4)));
typedef float float16v __attribute__((ext_vector_type(16)));
__global__ void gate_matrix_kernel(const half4* a, const half4* b, float16v* c, int steps) {
  float16v acc = {};
  for (int s = 0; s < steps; ++s) {
    acc = __builtin_amdgcn_mfma_f32_32x32x8f16(a[s * 64 + threadIdx.x], b[s * 64 + threadIdx.x], acc, 0, 0, 0);
  }
  c[threadIdx.x] = acc;
}
#elif defined(__gfx1100__)
typedef _Float16 half16 __attribute__((ext_vector_type(16)));
typedef float float8v __attribute__((ext_vector_type(8)));
__global__ void gate_matrix_kernel(const half16* a, const half16* b, float8v* c, int steps) {
  float8v acc = {};
  for (int s = 0; s < steps; ++s) {
    acc = __builtin_amdgcn_wmma_f32_16x16x16_f16_w32(a[s * 32 + threadIdx.x], b[s * 32 + threadIdx.x], acc);
  }
  c[threadIdx.x] = acc;
}
#elif defined(__gfx1201__)
typedef _Float16 half8 __attribute__((ext_vector_type(8)));
typedef float float8v __attribute__((ext_vector_type(8)));
__global__ void gate_matrix_kernel(const half8* a, const half8* b, float8v* c, int steps) {
  float8v acc = {};
  for (int s = 0; s < steps; ++s) {
    acc = __builtin_amdgcn_wmma_f32_16x16x16_f16_w32_gfx12(a[s * 32 + threadIdx.x], b[s * 32 + threadIdx.x], acc);
  }
  c[threadIdx.x] = acc;
}
#endif

// A matrix-product kernel in name only: plain FMAs, no matrix instruction.
__global__ void gate_no_matrix_kernel(const float* a, const float* b, float* c, int steps) {
  float acc = 0.f;
  for (int s = 0; s < steps; ++s) acc += a[s * 64 + threadIdx.x] * b[s * 64 + threadIdx.x];
  c[threadIdx.x] = acc;
}

}  // namespace flash
