// Tensor checks shared by the ops. The Python layer reports bad input first, with the caller's
// argument names; these keep direct torch.ops calls from ever reaching a kernel with bad input.
#pragma once

#include <ATen/ATen.h>

#include "../kernels/fwd_api.h"
#include "../kernels/platform.h"

namespace flash_api {

inline void check_attention_input(const at::Tensor& t, const char* name, int64_t rank) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dims, got ", t.dim());
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.stride(-1) == 1, name, " must have a contiguous last dimension");
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* name_b) {
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), name_b, " must have the dtype of q");
  TORCH_CHECK(b.device() == a.device(), name_b, " must be on the device of q");
}

inline flash::DType kernel_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf ? flash::DType::kFloat16 : flash::DType::kBFloat16;
}

inline void check_launch(flash::error_t err, const char* op) {
  TORCH_CHECK(err == flash::kSuccess, "flash_attn_rocm::", op, " failed to launch: ", flash::error_string(err));
}

}  // namespace flash_api
