// The AMD kernels' two products on one matrix instruction per target family, written transposed
// (fragment_amd.h says why):
//
//   S^T[keys x queries]    += K[keys x d]     Q^T[d x queries]     A = K from LDS, B = Q held in registers
//   O^T[d x queries]       += V^T[d x keys]   P^T[keys x queries]  A = V^T from LDS, B = S^T's accumulators
//
// A MatrixCore says, for its instruction: the accumulator layout; the k that element i of a lane's
// A or B operand holds (operand_k); how S^T's accumulators become P's B operand for k-step s, and
// which key each of those operand elements is (the product may take the keys in any order as long
// as V^T's operand takes the same: p_key). Operand rows and columns belong to lane % kM and
// lane % kN on every family.
//
//   family  instruction            kM x kN x kK   operand elements  B of P^T from S^T
//   CDNA    v_mfma_f32_32x32x8     32 x 32 x 8    4                 registers 4 g .. 4 g + 3 of a tile
//   CDNA4   v_mfma_f32_32x32x16    32 x 32 x 16   8                 registers 8 j .. 8 j + 7, keys permuted
//   RDNA3   v_wmma_f32_16x16x16    16 x 16 x 16   16 (both halves)  even and odd keys, swapped with lane ^ 16
//   RDNA4   v_wmma_f32_16x16x16    16 x 16 x 16   8                 the tile's registers as they are

#pragma once

#include <type_traits>

#include "../fp8.h"
#include "../fragment.h"
#include "../platform.h"
#include "../tile_config.h"
#include "amd_matrix.h"
#include "amd_wave.h"
#include "fragment_amd.h"

#if defined(FA_PLATFORM_HIP)

namespace flash {

// One fp32 value as an operand element of T: fp16 as _Float16, bf16 as its 16-bit pattern.
template <class T>
FA_DEVICE auto operand_value(float x) {
  if constexpr (std::is_same_v<T, half_t>) return static_cast<_Float16>(x);
  else return static_cast<short>(float_to_bf16_bits(x));
}

// Elements i .. i + 3 of an operand from four adjacent 16-bit values at p (8-byte aligned), or
// fp8 ones (4-byte aligned): the operands' k (operand_k) and keys (p_key) come in runs of four on
// every family.
template <class Operand, class T>
FA_DEVICE void load_operand_run(Operand& op, int i, const T* p) {
  if constexpr (sizeof(T) == 1) {
    const uint32_t w = *reinterpret_cast<const uint32_t*>(p);
#pragma unroll
    for (int j = 0; j < 4; ++j) op[i + j] = static_cast<unsigned char>(w >> (8 * j));
  } else {
    const uint2 w = *reinterpret_cast<const uint2*>(p);
    using Element = std::remove_reference_t<decltype(op[0])>;
    op[i] = __builtin_bit_cast(Element, static_cast<unsigned short>(w.x & 0xffffu));
    op[i + 1] = __builtin_bit_cast(Element, static_cast<unsigned short>(w.x >> 16));
    op[i + 2] = __builtin_bit_cast(Element, static_cast<unsigned short>(w.y & 0xffffu));
    op[i + 3] = __builtin_bit_cast(Element, static_cast<unsigned short>(w.y >> 16));
  }
}

// FA_AMD_DEVICE_HAS_FP8: the device pass has the fp8 instructions (arch/amd_matrix.h).
#if defined(__gfx942__) || defined(__gfx950__)
#define FA_AMD_DEVICE_HAS_FP8 true
#else
#define FA_AMD_DEVICE_HAS_FP8 false
#endif

#if defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
#define FA_AMD_DEVICE_FAMILY ::flash::AmdFamily::kCdna
#elif defined(__gfx950__)
#define FA_AMD_DEVICE_FAMILY ::flash::AmdFamily::kCdna4
#elif defined(__gfx1100__)
#define FA_AMD_DEVICE_FAMILY ::flash::AmdFamily::kRdna3
#elif defined(__gfx1201__)
#define FA_AMD_DEVICE_FAMILY ::flash::AmdFamily::kRdna4
#endif

template <AmdFamily kFamily, class T> struct MatrixCore;  // AmdFamily: tile_config.h

template <class T>
struct MatrixCore<AmdFamily::kCdna, T> {
  using Layout = CdnaAccLayout;
  static constexpr int kM = 32, kN = 32, kK = 8, kOperandElems = 4;
  using Operand = amd::Operand<T, kOperandElems>;
  using Accumulator = amd::floatx16;

  // A[m][k] sits in lane m + 32 (k / 4), element k % 4; B[k][n] in lane n + 32 (k / 4).
  static FA_DEVICE int operand_k(int lane, int i) { return 4 * (lane / 32) + i; }

#if defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
  static FA_DEVICE Accumulator mma(Operand a, Operand b, Accumulator c) { return amd::mfma_32x32x8<T>(a, b, c); }
#endif

  // k-step s (kK keys) of a tile row of P^T: lane half h holds keys 8 g + 4 h + i in registers
  // 4 g + i (g = s % 4 of tile s / 4), which is B's k = 4 h + i as it stands.
  template <class Tile>
  static FA_DEVICE Operand p_operand(const Tile& p, int mt, int s, int) {
    Operand b;
#pragma unroll
    for (int i = 0; i < kOperandElems; ++i) b[i] = operand_value<T>(p(mt, s / 4, 4 * (s % 4) + i));
    return b;
  }
  static FA_DEVICE int p_key(int lane, int i) { return operand_k(lane, i); }
};

template <class T>
struct MatrixCore<AmdFamily::kCdna4, T> {
  using Layout = CdnaAccLayout;  // gfx950's 32x32x16 leaves D where 32x32x8 does
  static constexpr int kM = 32, kN = 32, kK = 16, kOperandElems = 8;
  using Operand = amd::Operand<T, kOperandElems>;
  using Accumulator = amd::floatx16;

  // A[m][k] sits in lane m + 32 (k / 8), element k % 8; B[k][n] in lane n + 32 (k / 8).
  static FA_DEVICE int operand_k(int lane, int i) { return 8 * (lane / 32) + i; }

#if defined(__gfx950__)
  static FA_DEVICE Accumulator mma(Operand a, Operand b, Accumulator c) { return amd::mfma_32x32x16<T>(a, b, c); }
#endif

  // k-step s (16 keys) of a tile row of P^T: lane half h holds keys 8 g + 4 h + i in registers
  // 4 g + i; the step's registers 8 (s % 2) .. + 7 of tile s / 2, taken in order, put key
  // 8 (i / 4) + 4 h + i % 4 of the step in B's element i (p_key), where B wants k = 8 h + i: the
  // keys come permuted, and V^T's operand takes the same permutation.
  template <class Tile>
  static FA_DEVICE Operand p_operand(const Tile& p, int mt, int s, int) {
    Operand b;
#pragma unroll
    for (int i = 0; i < kOperandElems; ++i) b[i] = operand_value<T>(p(mt, s / 2, 8 * (s % 2) + i));
    return b;
  }
  static FA_DEVICE int p_key(int lane, int i) { return 8 * (i / 4) + 4 * (lane / 32) + i % 4; }
};

template <class T>
struct MatrixCore<AmdFamily::kRdna3, T> {
  using Layout = Rdna3AccLayout;
  static constexpr int kM = 16, kN = 16, kK = 16, kOperandElems = 16;
  using Operand = amd::Operand<T, kOperandElems>;
  using Accumulator = amd::floatx8;

  // Every lane holds its row (A) or column (B) whole: lanes l and l + 16 hold the same one.
  static FA_DEVICE int operand_k(int, int i) { return i; }

#if defined(__gfx1100__)
  static FA_DEVICE Accumulator mma(Operand a, Operand b, Accumulator c) { return amd::wmma_16x16x16<T>(a, b, c); }
#endif

  // Tile s of P^T: lane half h holds keys 2 r + h in register r; B wants all 16 keys in both
  // halves, so each lane takes the other half's eight from lane ^ 16.
  template <class Tile>
  static FA_DEVICE Operand p_operand(const Tile& p, int mt, int s, int lane) {
    Operand b;
    // Constant element indices with a select: an index that depends on the lane makes the
    // compiler build a compare mask (an SGPR) per element and index, which spilled on gfx1100.
    const bool upper_half = lane >= 16;
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const float mine = p(mt, s, r);
      const float other = __uint_as_float(amd::wave_shuffle_xor(__float_as_uint(mine), 16));
      b[2 * r] = operand_value<T>(upper_half ? other : mine);
      b[2 * r + 1] = operand_value<T>(upper_half ? mine : other);
    }
    return b;
  }
  static FA_DEVICE int p_key(int, int i) { return i; }
};

template <class T>
struct MatrixCore<AmdFamily::kRdna4, T> {
  using Layout = Rdna4AccLayout;
  static constexpr int kM = 16, kN = 16, kK = 16, kOperandElems = 8;
  using Operand = amd::Operand<T, kOperandElems>;
  using Accumulator = amd::floatx8;

  // A[m][k] sits in lane m + 16 h for k = 4 h + i (i < 4) and k = 8 + 4 h + (i - 4).
  static FA_DEVICE int operand_k(int lane, int i) { return 8 * (i / 4) + 4 * (lane / 16) + i % 4; }

#if defined(__gfx1201__)
  static FA_DEVICE Accumulator mma(Operand a, Operand b, Accumulator c) { return amd::wmma_16x16x16<T>(a, b, c); }
#endif

  // Tile s of P^T: lane half h holds keys 8 h + r in register r. Taken as they stand, B's element
  // i of lane half h is key 8 h + i: V^T's operand reads those keys (p_key).
  template <class Tile>
  static FA_DEVICE Operand p_operand(const Tile& p, int mt, int s, int) {
    Operand b;
#pragma unroll
    for (int i = 0; i < kOperandElems; ++i) b[i] = operand_value<T>(p(mt, s, i));
    return b;
  }
  static FA_DEVICE int p_key(int lane, int i) { return 8 * (lane / 16) + i; }
};

// The fp8 forward's instruction, v_mfma_f32_32x32x16_fp8_fp8 (gfx942, gfx950): the operand layout
// of CDNA4's 32x32x16 16-bit one with one-byte elements (A[m][k] in lane m + 32 (k / 8), byte
// k % 8; D as 32x32x8's), so P^T's operand comes from S^T's accumulators the same way, keys
// permuted. P goes in as e4m3(P kFp8PScale) (fp8.h); the forward divides the factor back out of O.
struct MatrixCoreFp8 {
  using Layout = CdnaAccLayout;
  static constexpr int kM = 32, kN = 32, kK = 16, kOperandElems = 8;
  using Operand = amd::Operand<fp8_e4m3_t, kOperandElems>;
  using Accumulator = amd::floatx16;
  static constexpr float kPScale = kFp8PScale;

  static FA_DEVICE int operand_k(int lane, int i) { return 8 * (lane / 32) + i; }

#if defined(__gfx942__) || defined(__gfx950__)
  static FA_DEVICE Accumulator mma(Operand a, Operand b, Accumulator c) {
    return amd::mfma_32x32x16_fp8(__builtin_bit_cast(long, a), __builtin_bit_cast(long, b), c);
  }
#endif

  template <class Tile>
  static FA_DEVICE Operand p_operand(const Tile& p, int mt, int s, int) {
    auto word = [&](int e) {  // registers e .. e + 3 of tile s / 2
      return amd::fp8x4_e4m3_of(p(mt, s / 2, e) * kPScale, p(mt, s / 2, e + 1) * kPScale,
                                p(mt, s / 2, e + 2) * kPScale, p(mt, s / 2, e + 3) * kPScale);
    };
    typedef uint32_t Words __attribute__((ext_vector_type(2)));
    const Words words = {word(8 * (s % 2)), word(8 * (s % 2) + 4)};
    return __builtin_bit_cast(Operand, words);
  }
  static FA_DEVICE int p_key(int lane, int i) { return 8 * (i / 4) + 4 * (lane / 32) + i % 4; }
};
template <> struct MatrixCore<AmdFamily::kCdna, fp8_e4m3_t> : MatrixCoreFp8 {};
template <> struct MatrixCore<AmdFamily::kCdna4, fp8_e4m3_t> : MatrixCoreFp8 {};

// The matrix-core family of the current device (under the emulator: of its target), which picks
// the kernels' instantiation at run time; a fat binary holds each family's code for its targets.
inline AmdFamily current_amd_family() {
#if defined(FA_PLATFORM_EMU)
  return FA_AMD_DEVICE_FAMILY;
#else
  static AmdFamily families[64];
  static bool known[64] = {};
  int device = 0;
  if (hipGetDevice(&device) != hipSuccess || device < 0 || device >= 64) return AmdFamily::kCdna;
  if (!known[device]) {
    hipDeviceProp_t prop;
    families[device] = AmdFamily::kCdna;
    if (hipGetDeviceProperties(&prop, device) == hipSuccess) {
      const char* arch = prop.gcnArchName;
      if (arch[0] == 'g' && arch[1] == 'f' && arch[2] == 'x' && arch[3] == '9' && arch[4] == '5') {
        families[device] = AmdFamily::kCdna4;
      }
      if (arch[0] == 'g' && arch[1] == 'f' && arch[2] == 'x' && arch[3] == '1' && arch[4] == '1') {
        families[device] = AmdFamily::kRdna3;
      } else if (arch[0] == 'g' && arch[1] == 'f' && arch[2] == 'x' && arch[3] == '1' && arch[4] == '2') {
        families[device] = AmdFamily::kRdna4;
      }
    }
    known[device] = true;
  }
  return families[device];
#endif
}

// Whether the current device has the fp8 matrix instructions (gfx94x, gfx95x: the fp8 forward).
inline bool amd_device_has_fp8() {
#if defined(FA_PLATFORM_EMU)
  return FA_AMD_DEVICE_HAS_FP8;
#else
  int device = 0;
  hipDeviceProp_t prop;
  if (hipGetDevice(&device) != hipSuccess || hipGetDeviceProperties(&prop, device) != hipSuccess) return false;
  const char* arch = prop.gcnArchName;
  return arch[0] == 'g' && arch[1] == 'f' && arch[2] == 'x' && arch[3] == '9' && (arch[4] == '4' || arch[4] == '5');
#endif
}

// acc (one instruction tile of an AccTile) as the instruction's accumulator vector, and back.
template <class Accumulator, int kElems>
FA_DEVICE Accumulator to_accumulator(const float (&acc)[kElems]) {
  Accumulator c;
#pragma unroll
  for (int i = 0; i < kElems; ++i) c[i] = acc[i];
  return c;
}
template <class Accumulator, int kElems>
FA_DEVICE void from_accumulator(float (&acc)[kElems], const Accumulator& d) {
#pragma unroll
  for (int i = 0; i < kElems; ++i) acc[i] = d[i];
}

}  // namespace flash

#endif  // FA_PLATFORM_HIP
