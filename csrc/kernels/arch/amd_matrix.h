// AMD matrix-core instructions behind one small typed interface, for an MFMA/WMMA kernel layer.
// A wavefront computes D = A B + C; each lane passes the A, B registers and the fp32 C
// registers that AMD's register layouts give it (../shared/amd_matrix_layouts, and
// csrc/emu/layouts for CDNA4) and receives its D registers. T is half_t or bf16_t; bf16
// operands travel as raw 16-bit patterns (short vectors), as the CDNA2/3 builtins take them.
//
//   CDNA2/3/4 (wave64)   mfma_32x32x8<T>   A, B: 4 elements a lane   C, D: 16 floats
//                        mfma_16x16x16<T>  A, B: 4                   C, D: 4
//   CDNA4 (gfx950)       mfma_32x32x16<T>  A, B: 8                   C, D: 16
//                        mfma_16x16x32<T>  A, B: 8                   C, D: 4
//   CDNA3/4 fp8 (e4m3)   mfma_32x32x16_fp8, mfma_16x16x32_fp8: 8 fp8 a lane in a long;
//                        gfx942 reads them as e4m3fnuz (bias 8), gfx950 as OCP e4m3fn (bias 7)
//   RDNA3/4 (wave32)     wmma_16x16x16<T>  A, B: 16 elements a lane on RDNA3 (rows and columns
//                        duplicated in lanes l and l + 16), 8 on RDNA4; C, D: 8 floats
//
// Each exists only where its instruction does (like the builtin). On a real AMD compile these
// are the compiler builtins; under the emulator (FA_PLATFORM_EMU) the same call is
// fa_emu::matrix_op, which reads the layouts themselves, never this layer's code.
#pragma once

#include "../platform.h"

#if defined(FA_PLATFORM_HIP)

namespace flash::amd {

template <class T, int N> struct OperandOf;
template <int N> struct OperandOf<half_t, N> {
  typedef _Float16 type __attribute__((ext_vector_type(N)));
};
template <int N> struct OperandOf<bf16_t, N> {
  typedef short type __attribute__((ext_vector_type(N)));
};
template <int N> struct OperandOf<fp8_e4m3_t, N> {
  typedef unsigned char type __attribute__((ext_vector_type(N)));
};
template <class T, int N> using Operand = typename OperandOf<T, N>::type;

typedef float floatx4 __attribute__((ext_vector_type(4)));
typedef float floatx8 __attribute__((ext_vector_type(8)));
typedef float floatx16 __attribute__((ext_vector_type(16)));

#if defined(FA_PLATFORM_EMU)
// The emulated instruction, named as in AMD's layout files.
template <class D, class A, class B>
FA_DEVICE D emulate(const char* instruction, const A& a, const B& b, const D& c) {
  D d;
  fa_emu::matrix_op(instruction, &a, &b, reinterpret_cast<const float*>(&c), reinterpret_cast<float*>(&d));
  return d;
}
#endif

#if defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx942__) || defined(__gfx950__)

template <class T> FA_DEVICE floatx16 mfma_32x32x8(Operand<T, 4> a, Operand<T, 4> b, floatx16 c);
template <class T> FA_DEVICE floatx4 mfma_16x16x16(Operand<T, 4> a, Operand<T, 4> b, floatx4 c);

#if defined(FA_PLATFORM_EMU)
#if defined(__gfx90a__)
template <> FA_DEVICE floatx16 mfma_32x32x8<half_t>(Operand<half_t, 4> a, Operand<half_t, 4> b, floatx16 c) {
  return emulate("v_mfma_f32_32x32x8f16", a, b, c);
}
template <> FA_DEVICE floatx16 mfma_32x32x8<bf16_t>(Operand<bf16_t, 4> a, Operand<bf16_t, 4> b, floatx16 c) {
  return emulate("v_mfma_f32_32x32x8bf16_1k", a, b, c);
}
template <> FA_DEVICE floatx4 mfma_16x16x16<half_t>(Operand<half_t, 4> a, Operand<half_t, 4> b, floatx4 c) {
  return emulate("v_mfma_f32_16x16x16f16", a, b, c);
}
template <> FA_DEVICE floatx4 mfma_16x16x16<bf16_t>(Operand<bf16_t, 4> a, Operand<bf16_t, 4> b, floatx4 c) {
  return emulate("v_mfma_f32_16x16x16bf16_1k", a, b, c);
}
#else  // CDNA3 names (gfx950 runs them too)
template <> FA_DEVICE floatx16 mfma_32x32x8<half_t>(Operand<half_t, 4> a, Operand<half_t, 4> b, floatx16 c) {
  return emulate("v_mfma_f32_32x32x8_f16", a, b, c);
}
template <> FA_DEVICE floatx16 mfma_32x32x8<bf16_t>(Operand<bf16_t, 4> a, Operand<bf16_t, 4> b, floatx16 c) {
  return emulate("v_mfma_f32_32x32x8_bf16", a, b, c);
}
template <> FA_DEVICE floatx4 mfma_16x16x16<half_t>(Operand<half_t, 4> a, Operand<half_t, 4> b, floatx4 c) {
  return emulate("v_mfma_f32_16x16x16_f16", a, b, c);
}
template <> FA_DEVICE floatx4 mfma_16x16x16<bf16_t>(Operand<bf16_t, 4> a, Operand<bf16_t, 4> b, floatx4 c) {
  return emulate("v_mfma_f32_16x16x16_bf16", a, b, c);
}
#endif
#else
template <> FA_DEVICE floatx16 mfma_32x32x8<half_t>(Operand<half_t, 4> a, Operand<half_t, 4> b, floatx16 c) {
  return __builtin_amdgcn_mfma_f32_32x32x8f16(a, b, c, 0, 0, 0);
}
template <> FA_DEVICE floatx16 mfma_32x32x8<bf16_t>(Operand<bf16_t, 4> a, Operand<bf16_t, 4> b, floatx16 c) {
  return __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(a, b, c, 0, 0, 0);
}
template <> FA_DEVICE floatx4 mfma_16x16x16<half_t>(Operand<half_t, 4> a, Operand<half_t, 4> b, floatx4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x16f16(a, b, c, 0, 0, 0);
}
template <> FA_DEVICE floatx4 mfma_16x16x16<bf16_t>(Operand<bf16_t, 4> a, Operand<bf16_t, 4> b, floatx4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(a, b, c, 0, 0, 0);
}
#endif

#endif  // CDNA

#if defined(__gfx942__) || defined(__gfx950__)
FA_DEVICE floatx16 mfma_32x32x16_fp8(long a, long b, floatx16 c) {
#if defined(FA_PLATFORM_EMU)
  return emulate("v_mfma_f32_32x32x16_fp8_fp8", a, b, c);
#else
  return __builtin_amdgcn_mfma_f32_32x32x16_fp8_fp8(a, b, c, 0, 0, 0);
#endif
}
FA_DEVICE floatx4 mfma_16x16x32_fp8(long a, long b, floatx4 c) {
#if defined(FA_PLATFORM_EMU)
  return emulate("v_mfma_f32_16x16x32_fp8_fp8", a, b, c);
#else
  return __builtin_amdgcn_mfma_f32_16x16x32_fp8_fp8(a, b, c, 0, 0, 0);
#endif
}

#endif  // CDNA3+ fp8

// x (finite, >= 0) as the target's e4m3 byte, rounded to nearest even and saturated at its
// largest value: e4m3fnuz (bias 8, 240) on gfx942, OCP e4m3fn (bias 7, 448) on gfx950 -- the
// formats the fp8 instructions read there. For P (fwd_kernel_amd.h's fp8 forward).
FA_DEVICE unsigned char fp8_e4m3_of(float x) {
#if defined(__gfx950__)
  constexpr int kBias = 7;
  constexpr float kMax = 448.f;
#else
  constexpr int kBias = 8;
  constexpr float kMax = 240.f;
#endif
  x = fminf(x, kMax);
  if (!(x > 0.f)) return 0;
  int e;
  const float m = frexpf(x, &e);  // x = m 2^e, m in [0.5, 1)
  int field = e - 1 + kBias;
  if (field < 1) return static_cast<unsigned char>(rintf(ldexpf(x, kBias + 2)));  // subnormal: 2^(-kBias - 2) units
  int mantissa = static_cast<int>(rintf((2.f * m - 1.f) * 8.f));
  if (mantissa == 8) mantissa = 0, ++field;
  return static_cast<unsigned char>(field << 3 | mantissa);
}

// Four values (each as fp8_e4m3_of takes them) as the bytes of one word, a in the lowest. On the
// fp8 targets two v_cvt_pk_fp8_f32 (the same rounding, in the same format); the emulator, which
// cannot see that line, runs fp8_e4m3_of.
FA_DEVICE uint32_t fp8x4_e4m3_of(float a, float b, float c, float d) {
#if (defined(__gfx942__) || defined(__gfx950__)) && !defined(FA_PLATFORM_EMU)
  const int low = __builtin_amdgcn_cvt_pk_fp8_f32(a, b, 0, false);
  return static_cast<uint32_t>(__builtin_amdgcn_cvt_pk_fp8_f32(c, d, low, true));
#else
  return uint32_t(fp8_e4m3_of(a)) | uint32_t(fp8_e4m3_of(b)) << 8 | uint32_t(fp8_e4m3_of(c)) << 16 |
         uint32_t(fp8_e4m3_of(d)) << 24;
#endif
}

#if defined(__gfx950__)
template <class T> FA_DEVICE floatx16 mfma_32x32x16(Operand<T, 8> a, Operand<T, 8> b, floatx16 c);
template <class T> FA_DEVICE floatx4 mfma_16x16x32(Operand<T, 8> a, Operand<T, 8> b, floatx4 c);

#if defined(FA_PLATFORM_EMU)
template <> FA_DEVICE floatx16 mfma_32x32x16<half_t>(Operand<half_t, 8> a, Operand<half_t, 8> b, floatx16 c) {
  return emulate("v_mfma_f32_32x32x16_f16", a, b, c);
}
template <> FA_DEVICE floatx16 mfma_32x32x16<bf16_t>(Operand<bf16_t, 8> a, Operand<bf16_t, 8> b, floatx16 c) {
  return emulate("v_mfma_f32_32x32x16_bf16", a, b, c);
}
template <> FA_DEVICE floatx4 mfma_16x16x32<half_t>(Operand<half_t, 8> a, Operand<half_t, 8> b, floatx4 c) {
  return emulate("v_mfma_f32_16x16x32_f16", a, b, c);
}
template <> FA_DEVICE floatx4 mfma_16x16x32<bf16_t>(Operand<bf16_t, 8> a, Operand<bf16_t, 8> b, floatx4 c) {
  return emulate("v_mfma_f32_16x16x32_bf16", a, b, c);
}
#else
typedef __bf16 bf16x8 __attribute__((ext_vector_type(8)));  // the gfx950 bf16 builtins' operand type
template <> FA_DEVICE floatx16 mfma_32x32x16<half_t>(Operand<half_t, 8> a, Operand<half_t, 8> b, floatx16 c) {
  return __builtin_amdgcn_mfma_f32_32x32x16_f16(a, b, c, 0, 0, 0);
}
template <> FA_DEVICE floatx16 mfma_32x32x16<bf16_t>(Operand<bf16_t, 8> a, Operand<bf16_t, 8> b, floatx16 c) {
  return __builtin_amdgcn_mfma_f32_32x32x16_bf16(__builtin_bit_cast(bf16x8, a), __builtin_bit_cast(bf16x8, b), c,
                                                 0, 0, 0);
}
template <> FA_DEVICE floatx4 mfma_16x16x32<half_t>(Operand<half_t, 8> a, Operand<half_t, 8> b, floatx4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x32_f16(a, b, c, 0, 0, 0);
}
template <> FA_DEVICE floatx4 mfma_16x16x32<bf16_t>(Operand<bf16_t, 8> a, Operand<bf16_t, 8> b, floatx4 c) {
  return __builtin_amdgcn_mfma_f32_16x16x32_bf16(__builtin_bit_cast(bf16x8, a), __builtin_bit_cast(bf16x8, b), c,
                                                 0, 0, 0);
}
#endif
#endif  // CDNA4

#if defined(__gfx1100__) || defined(__gfx1201__)
#if defined(__gfx1100__)
inline constexpr int kWmmaOperandElements = 16;
#else
inline constexpr int kWmmaOperandElements = 8;
#endif
template <class T>
FA_DEVICE floatx8 wmma_16x16x16(Operand<T, kWmmaOperandElements> a, Operand<T, kWmmaOperandElements> b, floatx8 c);

#if defined(FA_PLATFORM_EMU)
template <> FA_DEVICE floatx8 wmma_16x16x16<half_t>(Operand<half_t, kWmmaOperandElements> a,
                                                   Operand<half_t, kWmmaOperandElements> b, floatx8 c) {
  return emulate("v_wmma_f32_16x16x16_f16", a, b, c);
}
template <> FA_DEVICE floatx8 wmma_16x16x16<bf16_t>(Operand<bf16_t, kWmmaOperandElements> a,
                                                   Operand<bf16_t, kWmmaOperandElements> b, floatx8 c) {
  return emulate("v_wmma_f32_16x16x16_bf16", a, b, c);
}
#elif defined(__gfx1100__)
template <> FA_DEVICE floatx8 wmma_16x16x16<half_t>(Operand<half_t, 16> a, Operand<half_t, 16> b, floatx8 c) {
  return __builtin_amdgcn_wmma_f32_16x16x16_f16_w32(a, b, c);
}
template <> FA_DEVICE floatx8 wmma_16x16x16<bf16_t>(Operand<bf16_t, 16> a, Operand<bf16_t, 16> b, floatx8 c) {
  return __builtin_amdgcn_wmma_f32_16x16x16_bf16_w32(a, b, c);
}
#else
template <> FA_DEVICE floatx8 wmma_16x16x16<half_t>(Operand<half_t, 8> a, Operand<half_t, 8> b, floatx8 c) {
  return __builtin_amdgcn_wmma_f32_16x16x16_f16_w32_gfx12(a, b, c);
}
template <> FA_DEVICE floatx8 wmma_16x16x16<bf16_t>(Operand<bf16_t, 8> a, Operand<bf16_t, 8> b, floatx8 c) {
  return __builtin_amdgcn_wmma_f32_16x16x16_bf16_w32_gfx12(a, b, c);
}
#endif
#endif  // RDNA3/4

}  // namespace flash::amd

#endif  // FA_PLATFORM_HIP
