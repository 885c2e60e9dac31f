// AMD wavefront intrinsics an MFMA/WMMA kernel layer needs beyond HIP's __shfl family, under
// names that work both on a real AMD compile (the compiler builtins) and under the emulator
// (FA_PLATFORM_EMU), where __builtin_amdgcn_* cannot exist. Lanes are the whole wavefront's
// (64 on CDNA, 32 on RDNA).
#pragma once

#include <cstdint>

#include "../platform.h"

#if defined(FA_PLATFORM_HIP)

namespace flash::amd {

inline constexpr int kWaveSize = __AMDGCN_WAVEFRONT_SIZE;

FA_DEVICE int lane_id() { return static_cast<int>(__lane_id()); }

// ds_bpermute: lane l receives `value` of lane src_lane(l) % kWaveSize.
FA_DEVICE uint32_t wave_permute(uint32_t value, int src_lane) {
#if defined(FA_PLATFORM_EMU)
  return fa_emu::wave_bpermute(src_lane, value);
#else
  return static_cast<uint32_t>(__builtin_amdgcn_ds_bpermute(src_lane << 2, static_cast<int>(value)));
#endif
}

FA_DEVICE uint32_t wave_shuffle_xor(uint32_t value, int lane_mask) {
  return wave_permute(value, lane_id() ^ lane_mask);
}

// The value of the lowest active lane, in every lane (v_readfirstlane_b32).
FA_DEVICE uint32_t wave_broadcast_first(uint32_t value) {
#if defined(FA_PLATFORM_EMU)
  return fa_emu::wave_readfirstlane(value);
#else
  return static_cast<uint32_t>(__builtin_amdgcn_readfirstlane(static_cast<int>(value)));
#endif
}

// A 64-bit value the caller knows to be the same in every lane, moved to SGPRs (two
// v_readfirstlane_b32): for values loaded where the compiler cannot prove them uniform.
FA_DEVICE uint64_t wave_uniform(uint64_t value) {
  return static_cast<uint64_t>(wave_broadcast_first(static_cast<uint32_t>(value >> 32))) << 32 |
         wave_broadcast_first(static_cast<uint32_t>(value));
}

// `value`, which the compiler must treat as computed here. Values derived from a loop-invariant
// uniform value (Philox's round keys from the seed) are then recomputed in the loop where they
// are used instead of hoisted before it and held in SGPRs for the whole loop (where they spill).
template <class Uniform>
FA_DEVICE Uniform opaque_uniform(Uniform value) {
  static_assert(sizeof(Uniform) == 4 || sizeof(Uniform) == 8, "one SGPR or a pair");
#if !defined(FA_PLATFORM_EMU)
  asm volatile("" : "+s"(value));
#endif
  return value;
}

// The kernel's parameters read afresh at the use site: the fields the caller reads from the
// copy are loaded there (scalar loads from the kernel-argument segment, through a pointer the
// compiler must treat as new) instead of held in SGPRs from the kernel's start, where values
// used once per loop iteration or only after the loop spill. `params` must be the kernel's
// first argument (it is read at the segment's start; hipcc 5.2 gives &params a stack copy).
template <class Params>
FA_DEVICE Params reload_params(const Params& params) {
#if defined(FA_PLATFORM_EMU)
  return params;
#else
  auto kernarg = __builtin_amdgcn_kernarg_segment_ptr();
  asm volatile("" : "+s"(kernarg));
  return *(const Params*)kernarg;  // the compiler infers the constant address space back
#endif
}

// reload_params(params) where kReload, else params itself.
template <bool kReload, class Params>
FA_DEVICE decltype(auto) reload_params_if(const Params& params) {
  if constexpr (kReload) return reload_params(params);
  else return (params);  // a reference
}

// A scheduling fence: the compiler moves no instruction across it. Between a product's k-steps it
// bounds how many steps' operand loads are in flight (left alone, the scheduler may issue them
// all first, each step's operands holding registers until its instruction).
FA_DEVICE void schedule_fence() {
#if !defined(FA_PLATFORM_EMU)
#if __has_builtin(__builtin_amdgcn_sched_barrier)
  __builtin_amdgcn_sched_barrier(0);
#endif
#endif
}

// Orders the wavefront's LDS accesses: its lanes' writes before this are visible to its lanes'
// reads after it (wait for outstanding LDS operations, and keep the compiler from moving them).
// Between wavefronts only __syncthreads orders.
FA_DEVICE void wave_lds_barrier() {
#if defined(FA_PLATFORM_EMU)
  fa_emu::wave_barrier();
#else
#if defined(__GFX12__)
  asm volatile("s_wait_dscnt 0x0" ::: "memory");
#else
  asm volatile("s_waitcnt lgkmcnt(0)" ::: "memory");
#endif
  __builtin_amdgcn_wave_barrier();
#endif
}

}  // namespace flash::amd

#endif  // FA_PLATFORM_HIP
