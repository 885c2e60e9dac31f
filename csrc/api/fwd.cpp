// flash_attn_rocm::fwd: dense attention forward, q [b, sq, h, d], k/v [b, sk, h_k, d].
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "checks.h"
#include "ops.h"

namespace flash_api {

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        double softmax_scale, bool is_causal) {
  check_attention_input(q, "q", 4);
  check_attention_input(k, "k", 4);
  check_attention_input(v, "v", 4);
  check_same(q, k, "k");
  check_same(q, v, "v");

  const int64_t batch = q.size(0), seqlen_q = q.size(1), h = q.size(2), head_dim = q.size(3);
  const int64_t seqlen_k = k.size(1), h_k = k.size(2);
  TORCH_CHECK(k.size(0) == batch && v.size(0) == batch, "q, k and v must have the same batch size");
  TORCH_CHECK(k.sizes() == v.sizes(), "k and v must have the same shape");
  TORCH_CHECK(k.size(3) == head_dim, "q, k and v must have the same head dim");
  TORCH_CHECK(head_dim % 8 == 0 && head_dim <= 256, "head dim must be a multiple of 8 and at most 256, got ", head_dim);
  TORCH_CHECK(flash::kernel_head_dim(head_dim) != 0, "head dim ", head_dim, " is not compiled into this build");
  TORCH_CHECK(h_k > 0 && h % h_k == 0, "nheads of q (", h, ") must be divisible by nheads of k/v (", h_k, ")");
  TORCH_CHECK(batch <= 65535 && h <= 65535, "batch and nheads must be at most 65535");
  TORCH_CHECK(std::isfinite(softmax_scale), "softmax_scale must be finite");

  auto out = at::empty({batch, seqlen_q, h, head_dim}, q.options());
  auto softmax_lse = at::empty({batch, h, seqlen_q}, q.options().dtype(at::kFloat));
  if (batch == 0 || seqlen_q == 0 || h == 0) return {out, softmax_lse};
  if (seqlen_k == 0) {  // nothing to attend to: flash-attn's convention for an empty row
    out.zero_();
    softmax_lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, softmax_lse};
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  flash::FwdParams params{};
  set_attention_params(params, q, k, v, out, softmax_lse, softmax_scale);

  check_launch(flash::run_mha_fwd(params, kernel_dtype(q), is_causal, at::cuda::getCurrentCUDAStream().stream()), "fwd");
  return {out, softmax_lse};
}

}  // namespace flash_api
