// The ATen-level ops that bindings.cpp registers, one source file each.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace flash_api {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   double softmax_scale, bool is_causal, int64_t window_size_left,
                                                   int64_t window_size_right, double softcap,
                                                   const std::optional<at::Tensor>& alibi_slopes, double dropout_p);

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& out,
                                                   const at::Tensor& softmax_lse, double softmax_scale, bool is_causal,
                                                   bool deterministic, int64_t window_size_left,
                                                   int64_t window_size_right, double softcap,
                                                   const std::optional<at::Tensor>& alibi_slopes, double dropout_p,
                                                   const std::optional<at::Tensor>& rng_state);

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                          const at::Tensor& cu_seqlens_q,
                                                          const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                          int64_t max_seqlen_k, double softmax_scale, bool is_causal,
                                                          int64_t window_size_left, int64_t window_size_right,
                                                          double softcap, const std::optional<at::Tensor>& alibi_slopes,
                                                          double dropout_p);

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_lse, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double softmax_scale, bool is_causal, bool deterministic, int64_t window_size_left,
    int64_t window_size_right, double softcap, const std::optional<at::Tensor>& alibi_slopes, double dropout_p,
    const std::optional<at::Tensor>& rng_state);

}  // namespace flash_api
