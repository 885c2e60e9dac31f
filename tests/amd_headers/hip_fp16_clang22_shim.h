// HIP 5.2's hip_fp16.h calls two builtins clang 22 no longer has (KERNELS.md); only for gfx950.
#pragma once
#define __llvm_amdgcn_rcp_f16(x) ((_Float16)1 / (x))
#define __llvm_amdgcn_rcp_2f16(x) ((_Float16)1 / (x))
