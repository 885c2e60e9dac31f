// flash_attn_rocm::bwd: dense attention backward. Given the forward's inputs, output and LSE and
// the output gradient, returns dq, dk, dv (dk/dv summed over the query heads of each kv head).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <tuple>

#include "checks.h"
#include "ops.h"

namespace flash_api {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v, const at::Tensor& out,
                                                    const at::Tensor& softmax_lse, double softmax_scale, bool is_causal,
                                                    bool deterministic) {
  check_attention_input(q, "q", 4);
  check_attention_input(k, "k", 4);
  check_attention_input(v, "v", 4);
  check_attention_input(out, "out", 4);
  check_attention_input(dout, "dout", 4);
  check_same(q, k, "k");
  check_same(q, v, "v");
  check_same(q, out, "out");
  check_same(q, dout, "dout");
  check_same_shape(out, q, "out", "q");
  check_same_shape(dout, q, "dout", "q");
  check_same_shape(v, k, "v", "k");

  const int64_t batch = q.size(0), seqlen_q = q.size(1), h = q.size(2), head_dim = q.size(3);
  const int64_t seqlen_k = k.size(1), h_k = k.size(2);
  TORCH_CHECK(k.size(0) == batch && k.size(3) == head_dim, "k must be [batch, seqlen_k, nheads_k, head_dim] like q");
  TORCH_CHECK(flash::kernel_head_dim(head_dim) != 0 && head_dim % 8 == 0,
              "head dim ", head_dim, " is not supported by this build");
  TORCH_CHECK(h_k > 0 && h % h_k == 0, "nheads of q (", h, ") must be divisible by nheads of k/v (", h_k, ")");
  TORCH_CHECK(batch <= 65535 && h <= 65535, "batch and nheads must be at most 65535");
  TORCH_CHECK(softmax_lse.scalar_type() == at::kFloat, "softmax_lse must be float32, got ", softmax_lse.scalar_type());
  TORCH_CHECK(softmax_lse.device() == q.device(), "softmax_lse must be on the device of q");
  TORCH_CHECK(softmax_lse.sizes() == at::IntArrayRef({batch, h, seqlen_q}),
              "softmax_lse must have shape [batch, nheads, seqlen_q] = ", at::IntArrayRef({batch, h, seqlen_q}),
              ", got ", softmax_lse.sizes());
  TORCH_CHECK(softmax_lse.is_contiguous(), "softmax_lse must be contiguous");
  TORCH_CHECK(std::isfinite(softmax_scale), "softmax_scale must be finite");

  auto dq = at::empty({batch, seqlen_q, h, head_dim}, q.options());
  auto dk = at::empty({batch, seqlen_k, h_k, head_dim}, q.options());
  auto dv = at::empty({batch, seqlen_k, h_k, head_dim}, q.options());
  if (batch == 0 || h == 0 || seqlen_q == 0 || seqlen_k == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    return {dq, dk, dv};
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  auto dq_accum = at::zeros({batch, seqlen_q, h, head_dim}, q.options().dtype(at::kFloat));
  auto softmax_d = at::empty({batch, h, seqlen_q}, q.options().dtype(at::kFloat));
  const int64_t m_blocks = (seqlen_q + flash::kBwdBlockM - 1) / flash::kBwdBlockM;
  auto dq_semaphore = deterministic ? at::zeros({batch, h, m_blocks}, q.options().dtype(at::kInt)) : at::Tensor();

  flash::BwdParams params{};
  set_attention_params(params, q, k, v, out, softmax_lse, softmax_scale);

  params.dout = dout.data_ptr();
  params.do_batch_stride = dout.stride(0), params.do_row_stride = dout.stride(1), params.do_head_stride = dout.stride(2);
  params.dk = dk.data_ptr(), params.dv = dv.data_ptr();
  params.dk_batch_stride = dk.stride(0), params.dk_row_stride = dk.stride(1), params.dk_head_stride = dk.stride(2);
  params.dv_batch_stride = dv.stride(0), params.dv_row_stride = dv.stride(1), params.dv_head_stride = dv.stride(2);
  params.dq_accum = dq_accum.data_ptr<float>();
  params.softmax_d = softmax_d.data_ptr<float>();
  params.dq_semaphore = deterministic ? dq_semaphore.data_ptr<int>() : nullptr;
  params.deterministic = deterministic;

  check_launch(flash::run_mha_bwd(params, kernel_dtype(q), is_causal, at::cuda::getCurrentCUDAStream().stream()), "bwd");
  dq.copy_(dq_accum.mul_(softmax_scale));
  return {dq, dk, dv};
}

}  // namespace flash_api
