// What Debian's HIP 5.2 headers need from a compiler newer than the one they were written for
// (clang 19 and 22 besides hipcc 5.2's clang 15). Included by platform.h before any HIP header.
#pragma once

// clang 22 no longer predefines the wavefront size HIP 5.2 reads for warpSize. RDNA (gfx10 and
// later) compiles for wave32 by default, everything older (and the host pass) for wave64.
#if !defined(__AMDGCN_WAVEFRONT_SIZE)
#if defined(__GFX10__) || defined(__GFX11__) || defined(__GFX12__)
#define __AMDGCN_WAVEFRONT_SIZE 32
#else
#define __AMDGCN_WAVEFRONT_SIZE 64
#endif
#endif

// clang 22 removed these deprecated reciprocals from its HIP declarations; hip_fp16.h (5.2)
// still calls them. Same definitions as clang 19 gave (unless a build supplies its own).
#if defined(__clang_major__) && __clang_major__ >= 22 && !defined(__llvm_amdgcn_rcp_f16)
__device__ inline _Float16 __llvm_amdgcn_rcp_f16(_Float16 x) { return (_Float16)1.0f / x; }
__device__ inline __2f16 __llvm_amdgcn_rcp_2f16(__2f16 x) { return (__2f16)1.0f / x; }
#endif
