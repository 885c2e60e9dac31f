// The subset of HIP's device and runtime API that the kernels use, for host C++: what platform.h
// includes instead of the HIP headers under FA_PLATFORM_EMU. Device functions behave as HIP
// defines them for the target of target.h (shuffle width rules of HIP's amd_warp_functions.h,
// 64-bit ballots); threads, barriers, collectives and atomics go to the emulator (emulator.h).
//
// Like a real device compilation it defines the target's macros (__gfx942__, __GFX9__,
// __AMDGCN_WAVEFRONT_SIZE, __HIP_DEVICE_COMPILE__, __HIPCC__, ...), so arch-specific code
// written for HIP compiles unchanged.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "emulator.h"
#include "target.h"

// ---------------------------------------------------------------- what a device compile defines

#define __HIPCC__ 1
#define __HIP__ 1
#define __HIP_PLATFORM_AMD__ 1
#define __HIP_DEVICE_COMPILE__ 1
#define __AMDGCN__ 1
#define __AMDGPU__ 1
#define __AMDGCN_WAVEFRONT_SIZE FA_EMU_WAVE_SIZE
#define __AMDGCN_WAVEFRONT_SIZE__ FA_EMU_WAVE_SIZE
#if defined(FA_EMU_TARGET_GFX90A)
#define __gfx90a__ 1
#define __GFX9__ 1
#elif defined(FA_EMU_TARGET_GFX942)
#define __gfx942__ 1
#define __GFX9__ 1
#elif defined(FA_EMU_TARGET_GFX950)
#define __gfx950__ 1
#define __GFX9__ 1
#elif defined(FA_EMU_TARGET_GFX1100)
#define __gfx1100__ 1
#define __GFX11__ 1
#elif defined(FA_EMU_TARGET_GFX1201)
#define __gfx1201__ 1
#define __GFX12__ 1
#endif

#define __global__
#define __device__
#define __host__
// The emulator has one LDS buffer per block: the dynamic `extern __shared__ T name[]` the kernels
// declare (lds.cpp defines flash::smem and ::smem over it). A static __shared__ variable is
// not emulated: a local one fails to compile on this section attribute, a `static` one lands in
// the section, which tools/emu_build.py rejects.
#define __shared__ __attribute__((section("fa_emu_static_shared_is_unsupported")))
#define __constant__
// Plain inline: forcing the kernels' helpers inline changes nothing on the host but makes the
// optimiser's work on the unrolled backward 7x slower (measured: 20 s instead of 3 s a file).
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

inline constexpr int warpSize = FA_EMU_WAVE_SIZE;

// ---------------------------------------------------------------- vector types

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define FA_EMU_VECTOR2(name, T, align)                                                \
  struct alignas(align) name {                                                        \
    T x, y;                                                                           \
  };                                                                                  \
  inline name make_##name(T x, T y) { return name{x, y}; }
#define FA_EMU_VECTOR4(name, T, align)                                                \
  struct alignas(align) name {                                                        \
    T x, y, z, w;                                                                     \
  };                                                                                  \
  inline name make_##name(T x, T y, T z, T w) { return name{x, y, z, w}; }

FA_EMU_VECTOR2(float2, float, 8)
FA_EMU_VECTOR4(float4, float, 16)
FA_EMU_VECTOR2(int2, int, 8)
FA_EMU_VECTOR4(int4, int, 16)
FA_EMU_VECTOR2(uint2, unsigned int, 8)
FA_EMU_VECTOR4(uint4, unsigned int, 16)
#undef FA_EMU_VECTOR2
#undef FA_EMU_VECTOR4

// ---------------------------------------------------------------- thread coordinates

#define threadIdx (::fa_emu::current->thread_idx)
#define blockIdx (::fa_emu::current->block_idx)
#define blockDim (::fa_emu::current->block_dim)
#define gridDim (::fa_emu::current->grid_dim)

inline unsigned int __lane_id() { return static_cast<unsigned int>(::fa_emu::current->lane); }

// ---------------------------------------------------------------- synchronisation and memory order

inline void __syncthreads() { ::fa_emu::block_barrier(); }
// One OS thread runs every emulated thread: memory is sequentially consistent, fences are no-ops.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---------------------------------------------------------------- wavefront collectives
// HIP's index rules (amd_warp_functions.h of HIP 5.2), then ds_bpermute, which reads lane
// index % wave size.

inline int __fa_emu_bpermute_i32(int index, int var) {
  return static_cast<int>(::fa_emu::wave_bpermute(index, static_cast<uint32_t>(var)));
}
inline int __shfl(int var, int src_lane, int width = warpSize) {
  const int self = static_cast<int>(__lane_id());
  return __fa_emu_bpermute_i32(src_lane + (self & ~(width - 1)), var);
}
inline int __shfl_up(int var, unsigned int lane_delta, int width = warpSize) {
  const int self = static_cast<int>(__lane_id());
  const int index = self - static_cast<int>(lane_delta);
  return __fa_emu_bpermute_i32(index < (self & ~(width - 1)) ? self : index, var);
}
inline int __shfl_down(int var, unsigned int lane_delta, int width = warpSize) {
  const int self = static_cast<int>(__lane_id());
  const bool outside = static_cast<int>((self & (width - 1)) + lane_delta) >= width;
  return __fa_emu_bpermute_i32(outside ? self : self + static_cast<int>(lane_delta), var);
}
inline int __shfl_xor(int var, int lane_mask, int width = warpSize) {
  const int self = static_cast<int>(__lane_id());
  const int index = self ^ lane_mask;
  return __fa_emu_bpermute_i32(index >= ((self + width) & ~(width - 1)) ? self : index, var);
}

// The other 32-bit types as their bits; 64-bit types as two 32-bit shuffles, low word first.
#define FA_EMU_SHUFFLE_AS_INT(fn, Arg)                                                  \
  inline unsigned int fn(unsigned int var, Arg arg, int width = warpSize) {             \
    return static_cast<unsigned int>(fn(static_cast<int>(var), arg, width));            \
  }                                                                                     \
  inline float fn(float var, Arg arg, int width = warpSize) {                           \
    int bits;                                                                           \
    std::memcpy(&bits, &var, 4);                                                        \
    bits = fn(bits, arg, width);                                                        \
    std::memcpy(&var, &bits, 4);                                                        \
    return var;                                                                         \
  }                                                                                     \
  template <class T, class = std::enable_if_t<sizeof(T) == 8 && std::is_arithmetic_v<T>>> \
  inline T fn(T var, Arg arg, int width = warpSize) {                                   \
    int words[2];                                                                       \
    std::memcpy(words, &var, 8);                                                        \
    words[0] = fn(words[0], arg, width);                                                \
    words[1] = fn(words[1], arg, width);                                                \
    std::memcpy(&var, words, 8);                                                        \
    return var;                                                                         \
  }
FA_EMU_SHUFFLE_AS_INT(__shfl, int)
FA_EMU_SHUFFLE_AS_INT(__shfl_up, unsigned int)
FA_EMU_SHUFFLE_AS_INT(__shfl_down, unsigned int)
FA_EMU_SHUFFLE_AS_INT(__shfl_xor, int)
#undef FA_EMU_SHUFFLE_AS_INT

inline unsigned long long __ballot(int predicate) { return ::fa_emu::wave_ballot(predicate != 0); }
inline unsigned long long __ballot64(int predicate) { return __ballot(predicate); }
inline int __any(int predicate) { return __ballot(predicate) != 0; }
// All live lanes agree: compare with the ballot of lanes that are still there.
inline int __all(int predicate) {
  const unsigned long long yes = ::fa_emu::wave_ballot(predicate != 0);
  const unsigned long long live = ::fa_emu::wave_ballot(true);
  return yes == live;
}

// ---------------------------------------------------------------- atomics

inline int atomicAdd(int* p, int v) { return ::fa_emu::atomic_add(p, v); }
inline unsigned int atomicAdd(unsigned int* p, unsigned int v) { return ::fa_emu::atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return ::fa_emu::atomic_add(p, v); }
inline float atomicAdd(float* p, float v) { return ::fa_emu::atomic_add(p, v); }
inline int atomicCAS(int* p, int compare, int v) { return ::fa_emu::atomic_cas(p, compare, v); }
inline unsigned int atomicCAS(unsigned int* p, unsigned int compare, unsigned int v) {
  return ::fa_emu::atomic_cas(p, compare, v);
}
inline int atomicExch(int* p, int v) { return ::fa_emu::atomic_exch(p, v); }
inline unsigned int atomicExch(unsigned int* p, unsigned int v) { return ::fa_emu::atomic_exch(p, v); }
inline float atomicExch(float* p, float v) { return ::fa_emu::atomic_exch(p, v); }
inline int atomicMax(int* p, int v) { return ::fa_emu::atomic_max(p, v); }
inline int atomicMin(int* p, int v) { return ::fa_emu::atomic_min(p, v); }

// ---------------------------------------------------------------- integer and float intrinsics

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<uint64_t>(a) * b) >> 32);
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline int __float_as_int(float f) { return static_cast<int>(__float_as_uint(f)); }
inline float __int_as_float(int i) { return __uint_as_float(static_cast<unsigned int>(i)); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __fdividef(float a, float b) { return a / b; }

// HIP declares the classification functions globally.
using std::isfinite;
using std::isinf;
using std::isnan;
using std::signbit;

// HIP's integer min/max overloads (the kernels call them unqualified).
#define FA_EMU_MIN_MAX(T)                            \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
FA_EMU_MIN_MAX(int)
FA_EMU_MIN_MAX(unsigned int)
FA_EMU_MIN_MAX(long)
FA_EMU_MIN_MAX(unsigned long)
FA_EMU_MIN_MAX(long long)
FA_EMU_MIN_MAX(unsigned long long)
FA_EMU_MIN_MAX(float)
FA_EMU_MIN_MAX(double)
#undef FA_EMU_MIN_MAX

// ---------------------------------------------------------------- 16-bit floats

struct __half {
  unsigned short __x;
};
inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
// Exact widening by bit manipulation (the library call behind a _Float16 cast is a hot spot).
inline float __half2float(__half h) {
  const unsigned int sign = (h.__x & 0x8000u) << 16, exponent = (h.__x >> 10) & 0x1fu, mantissa = h.__x & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  const unsigned int bits = sign | (exponent == 31 ? 0x7f800000u | (mantissa << 13)
                                                   : ((exponent + 112) << 23) | (mantissa << 13));
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __half __float2half(float x) {  // round to nearest even, as v_cvt_f16_f32
  const _Float16 f = static_cast<_Float16>(x);
  __half h;
  std::memcpy(&h.__x, &f, 2);
  return h;
}

// HIP's bfloat16: the upper half of a float, rounded to nearest even.
struct hip_bfloat16 {
  uint16_t data;
  hip_bfloat16() = default;
  explicit hip_bfloat16(float f) : data(round_to_bfloat16(f)) {}
  explicit operator float() const { return __uint_as_float(static_cast<unsigned int>(data) << 16); }
  static uint16_t round_to_bfloat16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
  }
};

// ---------------------------------------------------------------- the runtime calls platform.h makes

enum hipError_t {
  hipSuccess = 0,
  hipErrorInvalidValue = 1,
  hipErrorOutOfMemory = 2,
  hipErrorInvalidConfiguration = 9,
  hipErrorLaunchFailure = 719,
  hipErrorOutOfResources = 701,
};
using hipStream_t = struct fa_emu_stream*;
enum hipFuncAttribute { hipFuncAttributeMaxDynamicSharedMemorySize = 8 };

inline const char* hipGetErrorString(hipError_t e) {
  switch (e) {
    case hipSuccess: return "hipSuccess";
    case hipErrorInvalidValue: return "hipErrorInvalidValue";
    case hipErrorOutOfMemory: return "hipErrorOutOfMemory";
    case hipErrorInvalidConfiguration: return "hipErrorInvalidConfiguration";
    case hipErrorLaunchFailure: return "hipErrorLaunchFailure";
    case hipErrorOutOfResources: return "hipErrorOutOfResources";
  }
  return "hipErrorUnknown";
}
// Launches return their error directly (platform.h's EMU launch): nothing is left pending.
inline hipError_t hipGetLastError() { return hipSuccess; }
inline hipError_t hipFuncSetAttribute(const void* kernel, hipFuncAttribute, int value) {
  return static_cast<hipError_t>(::fa_emu::set_max_dynamic_lds(kernel, value));
}

namespace fa_emu {

// `kernel<<<grid, block, lds>>>(args...)`: every emulated thread calls kernel(args...).
template <class... Params, class... Args>
hipError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_lds, Args&&... args) {
  auto body = [&] { kernel(args...); };
  using Body = decltype(body);
  return static_cast<hipError_t>(launch(reinterpret_cast<const void*>(kernel), Index3{grid.x, grid.y, grid.z},
                                        Index3{block.x, block.y, block.z}, dynamic_lds,
                                        [](void* context) { (*static_cast<Body*>(context))(); }, &body));
}

}  // namespace fa_emu
