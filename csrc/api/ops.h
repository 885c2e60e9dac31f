// The ATen-level ops that bindings.cpp registers, one source file each.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

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

std::tuple<at::Tensor, at::Tensor> fwd_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const std::optional<at::Tensor>& q_descale,
                                           const std::optional<at::Tensor>& k_descale,
                                           const std::optional<at::Tensor>& v_descale, double softmax_scale,
                                           bool is_causal, int64_t window_size_left, int64_t window_size_right);
bool fp8_forward_available(int64_t head_dim);
std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                          const at::Tensor& cu_seqlens_q,
                                                          const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                          int64_t max_seqlen_k, double softmax_scale, bool is_causal,
                                                          int64_t window_size_left, int64_t window_size_right,
                                                          double softcap, const std::optional<at::Tensor>& alibi_slopes,
                                                          double dropout_p,
                                                          const std::optional<at::Tensor>& block_table);

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_lse, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double softmax_scale, bool is_causal, bool deterministic, int64_t window_size_left,
    int64_t window_size_right, double softcap, const std::optional<at::Tensor>& alibi_slopes, double dropout_p,
    const std::optional<at::Tensor>& rng_state);

std::tuple<at::Tensor, at::Tensor> fwd_kvcache(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const std::optional<at::Tensor>& k_new,
    const std::optional<at::Tensor>& v_new, const std::optional<at::Tensor>& rotary_cos,
    const std::optional<at::Tensor>& rotary_sin, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& cache_batch_idx, const std::optional<at::Tensor>& cache_leftpad,
    const std::optional<at::Tensor>& block_table, double softmax_scale, bool is_causal, int64_t window_size_left,
    int64_t window_size_right, double softcap, bool rotary_interleaved, const std::optional<at::Tensor>& alibi_slopes,
    int64_t num_splits);

// [family ("sm90:hdim128", "sm80:hdim64" or "none"), why not Hopper ("" when Hopper or none)].
std::vector<std::string> kernel_family(bool backward, int64_t head_dim, bool bf16, bool extras,
                                       const std::optional<at::Tensor>& q, const std::optional<at::Tensor>& k,
                                       const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& dout,
                                       bool paged, bool dropout);

}  // namespace flash_api
