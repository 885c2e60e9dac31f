// Tensor checks shared by the ops. The Python layer reports bad input first, with the caller's
// argument names; these keep direct torch.ops calls from ever reaching a kernel with bad input.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

#include "../kernels/api.h"
#include "../kernels/platform.h"

namespace flash_api {

// A contiguous last dimension and 16-byte aligned rows: the kernels move 16-byte chunks of a row
// (8 elements of 16 bits, 16 of fp8). The dtype is each op's own check.
inline void check_attention_layout(const at::Tensor& t, const char* name, int64_t rank) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dims, got ", t.dim());
  TORCH_CHECK(t.stride(-1) == 1, name, " must have a contiguous last dimension");
  const int64_t chunk = 16 / static_cast<int64_t>(t.element_size());
  bool aligned = reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
  for (int64_t i = 0; i + 1 < rank; ++i) aligned = aligned && t.stride(i) % chunk == 0;
  TORCH_CHECK(aligned, name, " must be 16-byte aligned (data pointer, and strides in multiples of ", chunk,
              " elements); pass ", name, ".contiguous()");
}

inline void check_attention_input(const at::Tensor& t, const char* name, int64_t rank) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dims, got ", t.dim());
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16,
              name, " must be float16 or bfloat16, got ", t.scalar_type());
  check_attention_layout(t, name, rank);
}

inline void check_same_shape(const at::Tensor& t, const at::Tensor& like, const char* name, const char* like_name) {
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have the shape of ", like_name, " ", like.sizes(), ", got ", t.sizes());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* name_b) {
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), name_b, " must have the dtype of q");
  TORCH_CHECK(b.device() == a.device(), name_b, " must be on the device of q");
}

// cu_seqlens: int32 [b + 1] on q's device. Its values are the caller's contract (0, non-decreasing,
// last = total rows); the kernels clamp them so that bad values cannot reach outside the tensors.
inline void check_cu_seqlens(const at::Tensor& cu_seqlens, const char* name, const at::Tensor& q) {
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt, name, " must be int32, got ", cu_seqlens.scalar_type());
  TORCH_CHECK(cu_seqlens.device() == q.device(), name, " must be on the device of q");
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1, name, " must be 1-D [batch + 1]");
  TORCH_CHECK(cu_seqlens.is_contiguous(), name, " must be contiguous");
}

// q [b, sq, h, d] / k, v [b, sk, h_k, d] (dense) or [total, h, d] (varlen): sizes that agree.
inline void check_qkv_shapes(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t h = q.size(-2), head_dim = q.size(-1), h_k = k.size(-2);
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape, got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(k.size(-1) == head_dim, "q, k and v must have the same head dim");
  TORCH_CHECK(q.dim() == 3 || k.size(0) == q.size(0), "q, k and v must have the same batch size");
  TORCH_CHECK(head_dim % 8 == 0 && head_dim <= 256 && flash::kernel_head_dim(head_dim) != 0,
              "head dim must be a multiple of 8 and at most 256 (and compiled into this build), got ", head_dim);
  TORCH_CHECK(h_k > 0 && h % h_k == 0, "nheads of q (", h, ") must be divisible by nheads of k/v (", h_k, ")");
  TORCH_CHECK(h <= 65535, "nheads must be at most 65535");
}

// q, k, v (and for the backward out, dout) as the kernels take them: rank 4 dense, 3 varlen.
inline void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t rank) {
  check_attention_input(q, "q", rank);
  check_attention_input(k, "k", rank);
  check_attention_input(v, "v", rank);
  check_same(q, k, "k");
  check_same(q, v, "v");
  check_qkv_shapes(q, k, v);
}

inline void check_bwd_inputs(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& out, int64_t rank) {
  check_qkv(q, k, v, rank);
  check_attention_input(out, "out", rank);
  check_attention_input(dout, "dout", rank);
  check_same(q, out, "out");
  check_same(q, dout, "dout");
  check_same_shape(out, q, "out", "q");
  check_same_shape(dout, q, "dout", "q");
}

// The kernels take the row max of the raw scores and scale after it, which is the softmax's max
// only for a scale >= 0.
inline void check_softmax_scale(double softmax_scale) {
  TORCH_CHECK(std::isfinite(softmax_scale) && softmax_scale >= 0, "softmax_scale must be finite and >= 0, got ",
              softmax_scale);
}

inline flash::DType kernel_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kHalf ? flash::DType::kFloat16 : flash::DType::kBFloat16;
}

inline void check_launch(flash::error_t err, const char* op) {
  TORCH_CHECK(err == flash::kSuccess, "flash_attn_rocm::", op, " failed to launch: ", flash::error_string(err));
}

}  // namespace flash_api
