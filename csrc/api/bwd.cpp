// flash_attn_rocm::bwd: dense attention backward. Given the forward's inputs, output and LSE and
// the output gradient, returns dq, dk, dv (dk/dv summed over the query heads of each kv head).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <tuple>

#include "attention_params.h"
#include "checks.h"
#include "ops.h"

namespace flash_api {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                                   const at::Tensor& v, const at::Tensor& out,
                                                   const at::Tensor& softmax_lse, double softmax_scale, bool is_causal,
                                                   bool deterministic, int64_t window_size_left,
                                                   int64_t window_size_right, double softcap,
                                                   const std::optional<at::Tensor>& alibi_slopes, double dropout_p,
                                                   const std::optional<at::Tensor>& rng_state) {
  check_bwd_inputs(dout, q, k, v, out, 4);

  const int64_t batch = q.size(0), seqlen_q = q.size(1), h = q.size(2), head_dim = q.size(3);
  const int64_t seqlen_k = k.size(1), h_k = k.size(2);
  TORCH_CHECK(batch <= 65535, "batch must be at most 65535");
  TORCH_CHECK(softmax_lse.scalar_type() == at::kFloat, "softmax_lse must be float32, got ", softmax_lse.scalar_type());
  TORCH_CHECK(softmax_lse.device() == q.device(), "softmax_lse must be on the device of q");
  TORCH_CHECK(softmax_lse.sizes() == at::IntArrayRef({batch, h, seqlen_q}),
              "softmax_lse must have shape [batch, nheads, seqlen_q] = ", at::IntArrayRef({batch, h, seqlen_q}),
              ", got ", softmax_lse.sizes());
  TORCH_CHECK(softmax_lse.is_contiguous(), "softmax_lse must be contiguous");
  check_softmax_scale(softmax_scale);

  auto dq = at::empty({batch, seqlen_q, h, head_dim}, q.options());
  auto dk = at::empty({batch, seqlen_k, h_k, head_dim}, q.options());
  auto dv = at::empty({batch, seqlen_k, h_k, head_dim}, q.options());
  if (batch == 0 || h == 0 || seqlen_q == 0 || seqlen_k == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    return {dq, dk, dv};
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  flash::BwdParams params{};
  set_attention_params(params, q, k, v, out, softmax_lse, softmax_scale);
  const bool has_right_edge = set_window_params(params, is_causal, window_size_left, window_size_right);
  set_score_mod_params(params, softcap, alibi_slopes, q);
  set_dropout_params_bwd(params, dropout_p, rng_state, q);
  run_backward(params, dout, dq, dk, dv, softmax_lse, has_right_edge, deterministic);
  return {dq, dk, dv};
}

}  // namespace flash_api
