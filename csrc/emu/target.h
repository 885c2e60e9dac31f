// The emulated AMD target, chosen at compile time with one of -DFA_EMU_TARGET_GFX90A, _GFX942,
// _GFX950, _GFX1100, _GFX1201: its wavefront size, LDS per workgroup, the architecture prefix of
// its matrix-layout files (amd_matrix_layouts/ARCH_instruction_X.csv; a target that also runs
// its predecessor's instructions lists both, newest first) and its fp8 encoding.
#pragma once

#if defined(FA_EMU_TARGET_GFX90A)
#define FA_EMU_TARGET_NAME "gfx90a"
#define FA_EMU_WAVE_SIZE 64
#define FA_EMU_LDS_BYTES (64 * 1024)
#define FA_EMU_LAYOUT_ARCHS "CDNA2"
#define FA_EMU_FP8_FORMAT "none"
#elif defined(FA_EMU_TARGET_GFX942)
#define FA_EMU_TARGET_NAME "gfx942"
#define FA_EMU_WAVE_SIZE 64
#define FA_EMU_LDS_BYTES (64 * 1024)
#define FA_EMU_LAYOUT_ARCHS "CDNA3"
#define FA_EMU_FP8_FORMAT "e4m3fnuz"  // MI300's fp8: bias 8, no infinities, NaN = 0x80
#elif defined(FA_EMU_TARGET_GFX950)
#define FA_EMU_TARGET_NAME "gfx950"
#define FA_EMU_WAVE_SIZE 64
#define FA_EMU_LDS_BYTES (160 * 1024)
#define FA_EMU_LAYOUT_ARCHS "CDNA4,CDNA3"
#define FA_EMU_FP8_FORMAT "e4m3fn"  // MI350's fp8 is OCP's: bias 7, NaN = 0x7f / 0xff
#elif defined(FA_EMU_TARGET_GFX1100)
#define FA_EMU_TARGET_NAME "gfx1100"
#define FA_EMU_WAVE_SIZE 32
#define FA_EMU_LDS_BYTES (64 * 1024)
#define FA_EMU_LAYOUT_ARCHS "RDNA3"
#define FA_EMU_FP8_FORMAT "none"
#elif defined(FA_EMU_TARGET_GFX1201)
#define FA_EMU_TARGET_NAME "gfx1201"
#define FA_EMU_WAVE_SIZE 32
#define FA_EMU_LDS_BYTES (64 * 1024)
#define FA_EMU_LAYOUT_ARCHS "RDNA4"
#define FA_EMU_FP8_FORMAT "e4m3fn"
#else
#error "the emulator needs a target: -DFA_EMU_TARGET_GFX90A, _GFX942, _GFX950, _GFX1100 or _GFX1201"
#endif
