// Everything that differs between CUDA and HIP lives here, so the kernels read the same on both.
// The matrix-core instruction itself is not here: see mma.h.
#pragma once

#include <cstdint>

#if defined(FA_PLATFORM_EMU)
// HIP semantics on the CPU (the wavefront emulator, csrc/emu/): host C++ that behaves like HIP
// on the target it names (-DFA_EMU_TARGET_GFX942, ...), including that target's device macros.
#define FA_PLATFORM_HIP 1
#include "../emu/hip_emu.h"
#elif defined(__HIPCC__) || defined(__HIP_PLATFORM_AMD__)
#define FA_PLATFORM_HIP 1
#include "hip_toolchain_compat.h"
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>
#include <hip/hip_bfloat16.h>
#else
#define FA_PLATFORM_CUDA 1
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

#define FA_HOST_DEVICE __host__ __device__ __forceinline__
#define FA_DEVICE __device__ __forceinline__

namespace flash {

#if defined(FA_PLATFORM_HIP)
using stream_t = hipStream_t;
using error_t = hipError_t;
using half_t = __half;
using bf16_t = hip_bfloat16;
inline constexpr error_t kSuccess = hipSuccess;
inline constexpr error_t kInvalidConfig = hipErrorInvalidConfiguration;  // no kernel for the request
inline const char* error_string(error_t e) { return hipGetErrorString(e); }
inline error_t get_last_error() { return hipGetLastError(); }
inline error_t set_max_dynamic_smem(const void* kernel, int bytes) {
  return hipFuncSetAttribute(kernel, hipFuncAttributeMaxDynamicSharedMemorySize, bytes);
}
#else
using stream_t = cudaStream_t;
using error_t = cudaError_t;
using half_t = __half;
using bf16_t = __nv_bfloat16;
inline constexpr error_t kSuccess = cudaSuccess;
inline constexpr error_t kInvalidConfig = cudaErrorInvalidConfiguration;  // no kernel for the request
inline const char* error_string(error_t e) { return cudaGetErrorString(e); }
inline error_t get_last_error() { return cudaGetLastError(); }
inline error_t set_max_dynamic_smem(const void* kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}
#endif

// An fp8 (e4m3) element as the AMD matrix cores read it: e4m3fnuz (bias 8) on gfx942, OCP's
// e4m3fn (bias 7) on gfx950 (arch/amd_matrix.h). Only the AMD fp8 forward takes it.
struct fp8_e4m3_t {
  uint8_t bits;
};

// The kernels are written for 32-lane groups (the NVIDIA fragment layouts). On a 64-lane
// wavefront each half acts as one such group: shuffles pass an explicit width of 32.
inline constexpr int kGroupSize = 32;

// Device-side helpers below; host-only translation units (the ATen layer) see just the types.
#if defined(__CUDACC__) || defined(__HIPCC__)

FA_DEVICE float shfl_xor(float v, int lane_mask) {
#if defined(FA_PLATFORM_HIP)
  return __shfl_xor(v, lane_mask, kGroupSize);
#else
  return __shfl_xor_sync(0xffffffffu, v, lane_mask, kGroupSize);
#endif
}

FA_DEVICE uint32_t shfl(uint32_t v, int src_lane) {
#if defined(FA_PLATFORM_HIP)
  return static_cast<uint32_t>(__shfl(static_cast<int>(v), src_lane, kGroupSize));
#else
  return __shfl_sync(0xffffffffu, v, src_lane, kGroupSize);
#endif
}

// True when `pred` holds in any lane of the 32-lane group (on HIP: of the whole wavefront,
// which only makes the answer conservative).
FA_DEVICE bool any_in_group(bool pred) {
#if defined(FA_PLATFORM_HIP)
  return __any(pred);
#else
  return __any_sync(0xffffffffu, pred);
#endif
}

// p[0] += a, p[1] += b in global memory (p 8-byte aligned); one vector atomic where there is one.
FA_DEVICE void atomic_add2(float* p, float a, float b) {
#if defined(FA_PLATFORM_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
  atomicAdd(p, a);
  atomicAdd(p + 1, b);
#endif
}

// 2^x. The softmax folds log2(e) into its scale so this is the only transcendental per score.
FA_DEVICE float exp2_fast(float x) {
#if defined(FA_PLATFORM_HIP)
#if !defined(FA_PLATFORM_EMU) && __has_builtin(__builtin_amdgcn_exp2f)
  // v_exp_f32 alone. exp2f wraps it in a fix for results below 2^-126 (a compare, two selects and
  // a multiply a score, the compares' lane masks held in SGPRs): nothing next to a row sum of at
  // least 1, and NVIDIA's ex2.approx.ftz flushes them too. (hipcc 5.2 has no such builtin.)
  return __builtin_amdgcn_exp2f(x);
#else
  return exp2f(x);
#endif
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

#if !defined(FA_PLATFORM_HIP)
// log2(x) for x > 0 (the Hopper backward's softcap derivative): one hardware approximation.
FA_DEVICE float log2_fast(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
#endif

// tanh(x) for softcapping: one hardware approximation (about 2^-11 relative error, below the
// fp16/bf16 rounding the scores go through anyway).
FA_DEVICE float tanh_fast(float x) {
#if defined(FA_PLATFORM_HIP)
  // tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|) in (0, 1]: one native exp and one reciprocal,
  // no branch (tanhf picks a polynomial or an exp per element: a divergent branch whose exec masks
  // take SGPRs in the softcap loops). Absolute error ~1e-7; relative ~1e-7 / |x| near 0.
  const float e = __expf(-2.f * fabsf(x));
#if defined(FA_PLATFORM_EMU)
  const float r = 1.f / (1.f + e);
#else
  const float r = __builtin_amdgcn_rcpf(1.f + e);  // v_rcp_f32 (1 ulp); __frcp_rn is a full division
#endif
  return copysignf((1.f - e) * r, x);
#else
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// The two 16-bit elements of a 32-bit register as floats (low half first).
template <class T> FA_DEVICE float2 unpack2(uint32_t v);
template <> FA_DEVICE float2 unpack2<half_t>(uint32_t v) {
  return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xffffu))),
                     __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16))));
}
template <> FA_DEVICE float2 unpack2<bf16_t>(uint32_t v) {
  return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xffff0000u));
}

// Two floats rounded to the element type and packed into one 32-bit register (low half first).
template <class T> FA_DEVICE uint32_t pack2(float lo, float hi);

#if defined(FA_PLATFORM_HIP)
FA_DEVICE uint16_t float_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);                     // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
template <> FA_DEVICE uint32_t pack2<half_t>(float lo, float hi) {
  return static_cast<uint32_t>(__half_as_ushort(__float2half(lo))) |
         (static_cast<uint32_t>(__half_as_ushort(__float2half(hi))) << 16);
}
template <> FA_DEVICE uint32_t pack2<bf16_t>(float lo, float hi) {
  return static_cast<uint32_t>(float_to_bf16_bits(lo)) |
         (static_cast<uint32_t>(float_to_bf16_bits(hi)) << 16);
}
#else
// cvt packs its first source into the upper half.
template <> FA_DEVICE uint32_t pack2<half_t>(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
template <> FA_DEVICE uint32_t pack2<bf16_t>(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
#endif

// `value` (one per thread), which the compiler must treat as computed here: what is derived from
// it (a block-table row, a lane's compares) is recomputed at the use site instead of hoisted out
// of a loop and held in registers across it (on AMD: a VGPR; wave-uniform values have
// amd::opaque_uniform for SGPRs). A plain copy in the emulator.
FA_DEVICE int opaque(int value) {
#if defined(FA_PLATFORM_CUDA)
  asm volatile("" : "+r"(value));
#elif !defined(FA_PLATFORM_EMU)
  asm volatile("" : "+v"(value));
#endif
  return value;
}

// Programmatic dependent launch (sm_90): a kernel started by launch_overlapped() may begin while
// the one before it on the stream still runs, and must call wait_for_previous_grid() before
// touching memory that kernel writes; allow_dependents() lets the next kernel start early.
// Elsewhere both are no-ops (and launch_overlapped a plain launch).
FA_DEVICE void wait_for_previous_grid() {
#if defined(FA_PLATFORM_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
FA_DEVICE void allow_dependents() {
#if defined(FA_PLATFORM_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Raises `kernel`'s dynamic shared-memory limit to `smem` bytes where that is past the default
// 48 KB.
template <class... Params>
error_t allow_dynamic_smem(void (*kernel)(Params...), size_t smem) {
  return smem > 48 * 1024 ? set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), int(smem)) : kSuccess;
}

// Launches `kernel` with `smem` bytes of dynamic shared memory; returns the launch's error.
template <class... Params, class... Args>
error_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, stream_t stream, Args&&... args) {
  const error_t err = allow_dynamic_smem(kernel, smem);
  if (err != kSuccess) return err;
#if defined(FA_PLATFORM_EMU)
  return fa_emu::launch_kernel(kernel, grid, block, smem, static_cast<Args&&>(args)...);
#else
  kernel<<<grid, block, smem, stream>>>(static_cast<Args&&>(args)...);
  return get_last_error();
#endif
}

template <class... Params, class... Args>
error_t launch_overlapped(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, stream_t stream,
                          Args&&... args) {
  const error_t err = allow_dynamic_smem(kernel, smem);
  if (err != kSuccess) return err;
#if defined(FA_PLATFORM_CUDA)
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid, config.blockDim = block, config.dynamicSmemBytes = smem, config.stream = stream;
  config.attrs = attribute, config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Args&&>(args)...);
#elif defined(FA_PLATFORM_EMU)
  return fa_emu::launch_kernel(kernel, grid, block, smem, static_cast<Args&&>(args)...);
#else
  kernel<<<grid, block, smem, stream>>>(static_cast<Args&&>(args)...);
  return get_last_error();
#endif
}

#endif  // device-side helpers

}  // namespace flash
