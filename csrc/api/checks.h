// Tensor checks shared by the ops. The Python layer reports bad input first, with the caller's
// argument names; these keep direct torch.ops calls from ever reaching a kernel with bad input.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "../kernels/api.h"
#include "../kernels/platform.h"

namespace flash_api {

inline void check_attention_input(const at::Tensor& t, const char* name, int64_t rank) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dims, got ", t.dim());
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK(t.stride(-1) == 1, name, " must have a contiguous last dimension");
  // The kernels move 16-byte chunks of a row.
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t i = 0; i + 1 < rank; ++i) aligned = aligned && t.stride(i) % 8 == 0;
  TORCH_CHECK(aligned, name, " must be 16-byte aligned (data pointer, and strides in multiples of 8 elements); "
              "pass ", name, ".contiguous()");
}

inline void check_same_shape(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name) {
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have the shape of ", like_name, " ", like.sizes(), ", got ", t.sizes());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* name_b) {
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), name_b, " must have the dtype of q");
  TORCH_CHECK(b.device() == a.device(), name_b, " must be on the device of q");
}

// The FwdParams fields shared by every op: q, k, v, the output and its LSE, sizes and scales.
inline void set_attention_params(flash::FwdParams& params, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& out, const at::Tensor& softmax_lse, double softmax_scale) {
  params.q = q.data_ptr(), params.k = k.data_ptr(), params.v = v.data_ptr(), params.o = out.data_ptr();
  params.softmax_lse = softmax_lse.data_ptr<float>();
  params.q_batch_stride = q.stride(0), params.q_row_stride = q.stride(1), params.q_head_stride = q.stride(2);
  params.k_batch_stride = k.stride(0), params.k_row_stride = k.stride(1), params.k_head_stride = k.stride(2);
  params.v_batch_stride = v.stride(0), params.v_row_stride = v.stride(1), params.v_head_stride = v.stride(2);
  params.o_batch_stride = out.stride(0), params.o_row_stride = out.stride(1), params.o_head_stride = out.stride(2);
  params.b = static_cast<int>(q.size(0));
  params.seqlen_q = static_cast<int>(q.size(1));
  params.seqlen_k = static_cast<int>(k.size(1));
  params.h = static_cast<int>(q.size(2));
  params.h_k = static_cast<int>(k.size(2));
  params.d = static_cast<int>(q.size(3));
  params.scale_softmax = static_cast<float>(softmax_scale);
  params.scale_softmax_log2 = static_cast<float>(softmax_scale * M_LOG2E);
}

inline flash::DType kernel_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf ? flash::DType::kFloat16 : flash::DType::kBFloat16;
}

inline void check_launch(flash::error_t err, const char* op) {
  TORCH_CHECK(err == flash::kSuccess, "flash_attn_rocm::", op, " failed to launch: ", flash::error_string(err));
}

}  // namespace flash_api
