// flash_attn_rocm::varlen_bwd: the backward of varlen_fwd; dk/dv summed over the query heads of
// each kv head.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <tuple>

#include "attention_params.h"
#include "checks.h"
#include "ops.h"

namespace flash_api {

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_bwd(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& softmax_lse, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
    int64_t max_seqlen_k, double softmax_scale, bool is_causal, bool deterministic, int64_t window_size_left,
    int64_t window_size_right, double softcap, const std::optional<at::Tensor>& alibi_slopes, double dropout_p,
    const std::optional<at::Tensor>& rng_state) {
  check_bwd_inputs(dout, q, k, v, out, 3);
  check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q);
  check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", q);
  TORCH_CHECK(cu_seqlens_q.size(0) == cu_seqlens_k.size(0), "cu_seqlens_q and cu_seqlens_k must have the same length");
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, "max_seqlen_q and max_seqlen_k must be >= 0");
  const int64_t total_q = q.size(0), h = q.size(1);
  TORCH_CHECK(softmax_lse.scalar_type() == at::kFloat, "softmax_lse must be float32, got ", softmax_lse.scalar_type());
  TORCH_CHECK(softmax_lse.device() == q.device(), "softmax_lse must be on the device of q");
  TORCH_CHECK(softmax_lse.sizes() == at::IntArrayRef({h, total_q}), "softmax_lse must have shape [nheads, total_q] = ",
              at::IntArrayRef({h, total_q}), ", got ", softmax_lse.sizes());
  TORCH_CHECK(softmax_lse.is_contiguous(), "softmax_lse must be contiguous");
  check_softmax_scale(softmax_scale);

  auto dq = at::zeros_like(q, at::MemoryFormat::Contiguous);
  auto dk = at::zeros_like(k, at::MemoryFormat::Contiguous);
  auto dv = at::zeros_like(v, at::MemoryFormat::Contiguous);
  if (total_q == 0 || k.size(0) == 0 || max_seqlen_q == 0 || max_seqlen_k == 0 || cu_seqlens_q.size(0) == 1) {
    return {dq, dk, dv};
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  flash::BwdParams params{};
  set_attention_params(params, q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), out.unsqueeze(0), softmax_lse, softmax_scale);
  set_varlen_params(params, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  const bool has_right_edge = set_window_params(params, is_causal, window_size_left, window_size_right);
  set_score_mod_params(params, softcap, alibi_slopes, q);
  set_dropout_params_bwd(params, dropout_p, rng_state, q);
  run_backward(params, dout.unsqueeze(0), dq.unsqueeze(0), dk.unsqueeze(0), dv.unsqueeze(0), softmax_lse,
               has_right_edge, deterministic);
  return {dq, dk, dv};
}

}  // namespace flash_api
