// flash_attn_rocm::fwd_fp8: the fp8 forward, q [b, sq, h, d], k/v [b, sk, h_k, d] in the device's
// e4m3 format (float8_e4m3fnuz on gfx942; float8_e4m3fn on gfx950 and Hopper) with fp32 descales
// [b, h_k] or of one element (None: 1); out is bfloat16. AMD gfx942/gfx950 (fwd_kernel_amd.h) and
// Hopper (fwd_kernel_sm90.h, which reads V through a transposed copy made here); the Python layer
// dequantizes to bfloat16 everywhere else (fp8_forward_available says which).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>
#include <tuple>

#include "../kernels/tile_config.h"
#include "attention_params.h"
#include "checks.h"
#include "ops.h"

namespace flash_api {
namespace {

void check_fp8_input(const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.dim() == 4, name, " must have 4 dims, got ", t.dim());
  TORCH_CHECK(t.scalar_type() == at::kFloat8_e4m3fn || t.scalar_type() == at::kFloat8_e4m3fnuz, name,
              " must be float8_e4m3fn or float8_e4m3fnuz, got ", t.scalar_type());
  check_same(q, t, name);
  check_attention_layout(t, name, 4);
}

void check_descale(const std::optional<at::Tensor>& d, const char* name, const at::Tensor& q, int64_t batch,
                   int64_t h_k) {
  if (!d.has_value()) return;
  TORCH_CHECK(d->scalar_type() == at::kFloat, name, " must be float32, got ", d->scalar_type());
  TORCH_CHECK(d->device() == q.device(), name, " must be on the device of q");
  TORCH_CHECK(d->numel() == 1 || (d->dim() == 2 && d->size(0) == batch && d->size(1) == h_k), name,
              " must have shape [batch, nheads_k] = [", batch, ", ", h_k, "] or one element, got ", d->sizes());
  TORCH_CHECK(d->is_contiguous(), name, " must be contiguous");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fwd_fp8(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const std::optional<at::Tensor>& q_descale,
                                           const std::optional<at::Tensor>& k_descale,
                                           const std::optional<at::Tensor>& v_descale, double softmax_scale,
                                           bool is_causal, int64_t window_size_left, int64_t window_size_right) {
  check_fp8_input(q, "q", q);
  check_fp8_input(k, "k", q);
  check_fp8_input(v, "v", q);
  check_qkv_shapes(q, k, v);
  const int64_t batch = q.size(0), seqlen_q = q.size(1), h = q.size(2), head_dim = q.size(3), h_k = k.size(2);
  TORCH_CHECK(head_dim % 16 == 0, "the fp8 forward takes head dims that are multiples of 16, got ", head_dim);
  TORCH_CHECK(batch <= 65535, "batch must be at most 65535");
  check_softmax_scale(softmax_scale);
  check_descale(q_descale, "q_descale", q, batch, h_k);
  check_descale(k_descale, "k_descale", q, batch, h_k);
  check_descale(v_descale, "v_descale", q, batch, h_k);
  const bool per_head = [&] {
    for (const auto* d : {&q_descale, &k_descale, &v_descale}) {
      if (d->has_value() && (*d)->numel() > 1) return true;
    }
    return false;
  }();
  for (const auto* d : {&q_descale, &k_descale, &v_descale}) {
    TORCH_CHECK(!d->has_value() || ((*d)->numel() > 1) == per_head || batch * h_k == 1,
                "q_descale, k_descale and v_descale must all be [batch, nheads_k] or all of one element");
  }

  auto out = at::empty({batch, seqlen_q, h, head_dim}, q.options().dtype(at::kBFloat16));
  auto softmax_lse = at::empty({batch, h, seqlen_q}, q.options().dtype(at::kFloat));
  if (batch == 0 || seqlen_q == 0 || h == 0) return {out, softmax_lse};
  if (k.size(1) == 0) {
    out.zero_();
    softmax_lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, softmax_lse};
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  flash::FwdParams params{};
  set_attention_params(params, q, k, v, out, softmax_lse, softmax_scale);
  const bool has_right_edge = set_window_params(params, is_causal, window_size_left, window_size_right);
  auto data = [](const std::optional<at::Tensor>& d) { return d.has_value() ? d->data_ptr<float>() : nullptr; };
  params.q_descale = data(q_descale), params.k_descale = data(k_descale), params.v_descale = data(v_descale);
  params.descale_per_head = per_head;
  params.descale_batch_stride = per_head ? h_k : 0;
#if defined(FA_PLATFORM_CUDA)
  TORCH_CHECK(q.scalar_type() == at::kFloat8_e4m3fn, "the Hopper fp8 forward takes float8_e4m3fn, got ",
              q.scalar_type());
  // V^T for the Hopper kernel (fp8_vt_sm90.h), its keys padded to whole transposition blocks.
  const int64_t vt_keys = (k.size(1) + flash::kVtKeys - 1) / flash::kVtKeys * flash::kVtKeys;
  auto v_transposed = at::empty({batch, h_k, head_dim, vt_keys}, q.options().dtype(at::kByte));
  params.v_transposed = v_transposed.data_ptr();
  params.v_transposed_keys = vt_keys;
#endif
  const flash::error_t err =
      flash::run_mha_fwd(params, flash::DType::kFloat8E4m3, has_right_edge, at::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err != flash::kInvalidConfig,
              "flash_attn_rocm::fwd_fp8: no fp8 kernel for this device and call (AMD gfx942 with float8_e4m3fnuz, "
              "gfx950 with float8_e4m3fn, Hopper with float8_e4m3fn and its sm_90a kernels; head dims up to 256 "
              "in multiples of 16)");
  check_launch(err, "fwd_fp8");
  return {out, softmax_lse};
}

bool fp8_forward_available(int64_t head_dim) { return flash::fp8_forward_available(static_cast<int>(head_dim)); }

}  // namespace flash_api
