// flash_attn_rocm::fwd: dense attention forward, q [b, sq, h, d], k/v [b, sk, h_k, d].
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "attention_params.h"
#include "checks.h"
#include "ops.h"

namespace flash_api {

std::tuple<at::Tensor, at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   double softmax_scale, bool is_causal, int64_t window_size_left,
                                                   int64_t window_size_right, double softcap,
                                                   const std::optional<at::Tensor>& alibi_slopes, double dropout_p) {
  check_qkv(q, k, v, 4);

  const int64_t batch = q.size(0), seqlen_q = q.size(1), h = q.size(2), head_dim = q.size(3);
  TORCH_CHECK(batch <= 65535, "batch must be at most 65535");
  check_softmax_scale(softmax_scale);

  auto out = at::empty({batch, seqlen_q, h, head_dim}, q.options());
  auto softmax_lse = at::empty({batch, h, seqlen_q}, q.options().dtype(at::kFloat));
  auto rng_state = make_rng_state(dropout_p, q);
  if (batch == 0 || seqlen_q == 0 || h == 0) return {out, softmax_lse, rng_state};
  if (k.size(1) == 0) {  // nothing to attend to: flash-attn's convention for an empty row
    out.zero_();
    softmax_lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, softmax_lse, rng_state};
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  flash::FwdParams params{};
  set_attention_params(params, q, k, v, out, softmax_lse, softmax_scale);

  const bool has_right_edge = set_window_params(params, is_causal, window_size_left, window_size_right);
  set_score_mod_params(params, softcap, alibi_slopes, q);
  set_dropout_params(params, dropout_p, rng_state, q);
  check_launch(flash::run_mha_fwd(params, kernel_dtype(q), has_right_edge, at::cuda::getCurrentCUDAStream().stream()),
               "fwd");
  return {out, softmax_lse, rng_state};
}

}  // namespace flash_api
