// Calls every wrapper of arch/amd_matrix.h and arch/amd_wave.h that the target has, so that a real
// device compile shows each one becomes its instruction (tests/test_emu_amd_headers.py).
#include "arch/amd_matrix.h"
#include "arch/amd_wave.h"

using namespace flash;
using namespace flash::amd;

__global__ void every_wrapper(float* out) {
  const int lane = lane_id();
  const uint32_t x = wave_permute(lane, lane + 1) + wave_shuffle_xor(lane, 1) + wave_broadcast_first(lane);
  wave_lds_barrier();
  float sum = static_cast<float>(x);
#if defined(__GFX9__)
  const Operand<half_t, 4> h4{};
  const Operand<bf16_t, 4> b4{};
  sum += mfma_32x32x8<half_t>(h4, h4, floatx16{})[0] + mfma_32x32x8<bf16_t>(b4, b4, floatx16{})[0];
  sum += mfma_16x16x16<half_t>(h4, h4, floatx4{})[0] + mfma_16x16x16<bf16_t>(b4, b4, floatx4{})[0];
#endif
#if defined(__gfx942__) || defined(__gfx950__)
  sum += mfma_32x32x16_fp8(lane, lane, floatx16{})[0] + mfma_16x16x32_fp8(lane, lane, floatx4{})[0];
#endif
#if defined(__gfx950__)
  const Operand<half_t, 8> h8{};
  const Operand<bf16_t, 8> b8{};
  sum += mfma_32x32x16<half_t>(h8, h8, floatx16{})[0] + mfma_32x32x16<bf16_t>(b8, b8, floatx16{})[0];
  sum += mfma_16x16x32<half_t>(h8, h8, floatx4{})[0] + mfma_16x16x32<bf16_t>(b8, b8, floatx4{})[0];
#endif
#if defined(__GFX11__) || defined(__GFX12__)
  const Operand<half_t, kWmmaOperandElements> hw{};
  const Operand<bf16_t, kWmmaOperandElements> bw{};
  sum += wmma_16x16x16<half_t>(hw, hw, floatx8{})[0] + wmma_16x16x16<bf16_t>(bw, bw, floatx8{})[0];
#endif
  out[lane] = sum;
}
