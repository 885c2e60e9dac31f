// Which kernel runs a call: all of the decision, hand-written, reading the table of what this
// build compiled (kernel_table.h; tools/generate_kernels.py writes its rows). For a forward or a
// backward, in order:
//   1. the family: the smallest compiled head dim >= d, for the call's dtype (none fits:
//      kInvalidConfig, which the ops report);
//   2. Hopper or portable: the Hopper (sm_90a wgmma) kernels run when the build has them for the
//      family, nobody switched them off, the device is compute capability 9.0, the call has no
//      extras (softcap, ALiBi, dropout), its K/V are not paged and TMA can describe every
//      operand's strides; otherwise the portable kernels (mma.sync on NVIDIA, the AMD build's
//      kernels on ROCm);
//   3. the variant: with or without a right window edge, with or without the extras (paged K/V
//      runs the variants with them).
// kernel_family() reports the same decision, and for the portable kernels why not Hopper.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "api.h"
#include "kernel_table.h"
#include "params.h"
#include "platform.h"
#if defined(FA_PLATFORM_CUDA)
#include "tensor_maps_sm90.h"
#else
#include "arch/matrix_core_amd.h"  // amd_device_has_fp8
#endif

namespace flash {
namespace {

bool hopper_kernels_enabled = true;
// Hopper kernels that have not yet run on a GPU take calls only when asked (set_unverified_kernels;
// FLASH_ATTN_ROCM_UNVERIFIED=1): a kernel never run could return wrong numbers without an error.
// The list shrinks as GPU runs verify them (benchmarks/NOTES.md).
bool unverified_kernels_enabled = false;

template <class Family>
const Family* find_family(const Family* rows, int count, int head_dim, DType dtype) {
  for (int i = 0; i < count; ++i) {
    if (rows[i].head_dim == head_dim && rows[i].dtype == dtype) return &rows[i];
  }
  return nullptr;
}

bool build_has_hopper() {
  for (int i = 0; i < kKernelTable.num_fwd; ++i) {
    if (kKernelTable.fwd[i].hopper[0][0] != nullptr) return true;
  }
  return false;
}

bool device_is_hopper() {
#if defined(FA_PLATFORM_CUDA)
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major == 9;
#else
  return false;
#endif
}

// Paged K/V (varlen with a block table: chunked prefill) runs on the portable kernels, which look
// pages up per key block (per row below a block's worth of rows). The Hopper forward loads a key
// block with one TMA copy from a map of the whole K or V; paged, it would need a map over the
// pages, a block-table read in the producer ahead of every copy, and pages that are a multiple of
// its key block: never at head dim 256 (80 keys) or d64's wide 192-key blocks, and not vLLM's
// 16-row pages. The portable kernel serves every page size, so Hopper waits for a measured need.
constexpr const char* kPagedNotHopper =
    "paged K/V (block_table) runs on the portable kernels: the Hopper kernels' TMA loads take a whole key "
    "block from one contiguous map";

// Why a call of `family` does not run its Hopper kernels; nullptr when it does. `extras`: softcap,
// ALiBi or dropout; `dropout`: dropout among them. `paged`: K/V through a block table.
// `operands`: the call's params, whose pointers and strides TMA must describe (a backward's dout
// too), or nullptr to leave them out.
template <class Params>
const char* why_not_hopper(const PassFamily<Params>& family, bool extras, bool dropout, bool paged,
                           const FwdParams* operands, const BwdParams* backward) {
  if (family.hopper[0][0] == nullptr) return "this build has no Hopper kernels for the head dim";
  if (!hopper_kernels_enabled) return "the Hopper kernels are switched off (set_hopper_kernels)";
  if (!device_is_hopper()) return "the device is not compute capability 9.0";
  if (extras && family.hopper[0][1] == nullptr) {
    return "softcap, ALiBi and dropout run on the portable kernels at this head dim";
  }
  if (!unverified_kernels_enabled) {
    constexpr bool kBackward = std::is_same_v<Params, BwdParams>;
    if (family.dtype == DType::kFloat8E4m3) {
      return "the Hopper fp8 forward has not run on a GPU yet (set_unverified_kernels(True) or "
             "FLASH_ATTN_ROCM_UNVERIFIED=1 runs it)";
    }
    if (kBackward && family.head_dim == 256) {
      return "the Hopper d256 backward has not run on a GPU yet (set_unverified_kernels(True) or "
             "FLASH_ATTN_ROCM_UNVERIFIED=1 runs it)";
    }
    if (extras) {
      return "the Hopper kernels' softcap/ALiBi/dropout variants have not run on a GPU yet "
             "(set_unverified_kernels(True) or FLASH_ATTN_ROCM_UNVERIFIED=1 runs them)";
    }
  }
  if (dropout && !family.hopper_dropout) return "dropout runs on the portable kernels at this head dim";
  if (paged) return kPagedNotHopper;
#if defined(FA_PLATFORM_CUDA)
  if (operands != nullptr && !hopper_operands_describable(*operands, backward)) {
    return "TMA cannot describe an operand's strides (a broadcast dimension)";
  }
#endif
  return nullptr;
}

// The fp8 forward family for head dim d: the smallest fp8 head dim >= d (AMD: 64, 128, 256;
// Hopper: 128, 256).
const PassFamily<FwdParams>* fp8_family(int d) {
  const PassFamily<FwdParams>* best = nullptr;
  for (int i = 0; i < kKernelTable.num_fwd; ++i) {
    const PassFamily<FwdParams>& f = kKernelTable.fwd[i];
    const bool fits = f.dtype == DType::kFloat8E4m3 && f.head_dim >= d;
    if (fits && (best == nullptr || f.head_dim < best->head_dim)) best = &f;
  }
  return best;
}

}  // namespace

bool fp8_forward_available(int head_dim) {
  const PassFamily<FwdParams>* family = fp8_family(head_dim);
  if (family == nullptr || head_dim % 16 != 0) return false;
#if defined(FA_PLATFORM_HIP)
  return amd_device_has_fp8();
#else
  return why_not_hopper(*family, false, false, false, nullptr, nullptr) == nullptr;
#endif
}

std::vector<int> compiled_head_dims() {
  std::vector<int> dims;
  for (int i = 0; i < kKernelTable.num_fwd; ++i) dims.push_back(kKernelTable.fwd[i].head_dim);
  std::sort(dims.begin(), dims.end());
  dims.erase(std::unique(dims.begin(), dims.end()), dims.end());
  return dims;
}

int kernel_head_dim(int head_dim) {
  for (int d : compiled_head_dims()) {
    if (d >= head_dim) return d;
  }
  return 0;
}

bool set_unverified_kernels(bool enabled) {
  const bool previous = unverified_kernels_enabled;
  unverified_kernels_enabled = enabled;
  return previous;
}

bool set_hopper_kernels(bool enabled) {
  const bool previous = hopper_kernels_enabled && build_has_hopper();
  hopper_kernels_enabled = enabled;
  return previous;
}

KernelChoice kernel_family(bool backward, int head_dim, DType dtype, bool extras, bool dropout, bool paged,
                           const FwdParams* operands) {
  const int d = kernel_head_dim(head_dim);
  auto choose = [&](const auto* family, const BwdParams* backward_operands) -> KernelChoice {
    if (family == nullptr) return {"none", 0, nullptr};
    const char* why = why_not_hopper(*family, extras, dropout, paged, operands, backward_operands);
    return {why == nullptr ? "sm90" : "sm80", d, why};
  };
  if (backward) {
    return choose(find_family(kKernelTable.bwd, kKernelTable.num_bwd, d, dtype),
                  static_cast<const BwdParams*>(operands));
  }
  return choose(find_family(kKernelTable.fwd, kKernelTable.num_fwd, d, dtype), nullptr);
}

error_t run_mha_fwd(const FwdParams& params, DType dtype, bool has_right_edge, stream_t stream) {
#if !defined(FA_PLATFORM_CUDA)
  // The AMD forward reads contiguous K/V only. Paging it the portable kernel's way (a page lookup
  // a key block, or a row) costs SGPRs its extras variants do not have: at d128 fp16 every variant
  // tried spilled 15-16 SGPRs on gfx942 (the plain kernel without paging uses 105 of 106) and
  // spilled more on gfx1100 (benchmarks/NOTES.md). The varlen op refuses it first, by name.
  if (params.block_table != nullptr) return kInvalidConfig;
#endif
  const bool extras = has_extras(params), paged = params.block_table != nullptr;
  if (dtype == DType::kFloat8E4m3) {
    const PassFamily<FwdParams>* fp8 = fp8_family(params.d);
    if (fp8 == nullptr || extras || paged || params.d % 16 != 0) return kInvalidConfig;
#if defined(FA_PLATFORM_HIP)
    // The AMD fp8 forward (gfx942, gfx950).
    if (!amd_device_has_fp8()) return kInvalidConfig;
    return fp8->portable[has_right_edge][false](params, stream);
#else
    // The Hopper fp8 forward: dense calls (it reads V through its transposed copy).
    if (params.cu_seqlens_q != nullptr || params.v_transposed == nullptr ||
        why_not_hopper(*fp8, false, false, false, nullptr, nullptr) != nullptr) {
      return kInvalidConfig;
    }
    return fp8->hopper[has_right_edge][false](params, stream);
#endif
  }
  const PassFamily<FwdParams>* family =
      find_family(kKernelTable.fwd, kKernelTable.num_fwd, kernel_head_dim(params.d), dtype);
  if (family == nullptr) return kInvalidConfig;
  if (why_not_hopper(*family, extras, params.has_dropout, paged, &params, nullptr) == nullptr) {
    return family->hopper[has_right_edge][extras](params, stream);
  }
  // Paged K/V runs the Has_extras variants, which alone compile the page lookups (fwd_kernel.h).
  return family->portable[has_right_edge][extras || paged](params, stream);
}

error_t run_mha_bwd(const BwdParams& params, DType dtype, bool has_right_edge, stream_t stream) {
  const PassFamily<BwdParams>* family =
      find_family(kKernelTable.bwd, kKernelTable.num_bwd, kernel_head_dim(params.d), dtype);
  if (family == nullptr) return kInvalidConfig;
  const bool extras = has_extras(params);
  if (why_not_hopper(*family, extras, params.has_dropout, false, &params, &params) == nullptr) {  // never paged
    return family->hopper[has_right_edge][extras](params, stream);
  }
  return family->portable[has_right_edge][extras](params, stream);
}

error_t run_mha_fwd_kvcache(const KvCacheParams& params, DType dtype, stream_t stream) {
  const KvCacheFamily* family =
      find_family(kKernelTable.kvcache, kKernelTable.num_kvcache, kernel_head_dim(params.d), dtype);
  return family == nullptr ? kInvalidConfig : family->kernel(params, stream);
}

}  // namespace flash
