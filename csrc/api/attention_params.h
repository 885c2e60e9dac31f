// Filling the kernels' params structs from tensors, shared by the dense and varlen ops.
// Varlen tensors ([total, h, d]) come in as 4-D views with a batch of one ([1, total, h, d]);
// set_varlen_params then points the kernels at cu_seqlens.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <optional>

#include "../kernels/api.h"
#include "checks.h"

namespace flash_api {

// q, k, v, out: [b, s, h, d] (views); softmax_lse: [b, h, sq].
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
  params.logit_scale = static_cast<float>(softmax_scale);
  params.scale_softmax_log2 = static_cast<float>(softmax_scale * M_LOG2E);
  params.softcap_prescale = 0.f;
  params.alibi_slopes = nullptr;
  params.alibi_batch_stride = 0;
  params.lse_batch_stride = static_cast<int64_t>(params.h) * params.seqlen_q;
  params.lse_head_stride = params.seqlen_q;
  params.cu_seqlens_q = params.cu_seqlens_k = nullptr;
  params.total_q = params.total_k = 0;
}

// flash-attn's window_size (-1 = unbounded) and causal (right side 0). Returns whether the rows
// have a right edge, i.e. which instantiation (Has_right_edge) the kernels need.
inline bool set_window_params(flash::FwdParams& params, bool is_causal, int64_t window_left, int64_t window_right) {
  TORCH_CHECK(window_left >= -1 && window_right >= -1, "window_size entries must be >= -1, got (", window_left, ", ",
              window_right, ")");
  auto side = [](int64_t size) { return size < 0 || size >= flash::kUnboundedWindow ? flash::kUnboundedWindow : static_cast<int>(size); };
  params.window_left = side(window_left);
  params.window_right = is_causal ? 0 : side(window_right);
  return params.window_right != flash::kUnboundedWindow;
}

// flash-attn's softcap (0: off) and alibi_slopes (fp32 [h] or [batch, h]), after params.b is set.
// With a softcap the kernels' scores are tanh(q.k * scale / softcap), in units of softcap.
inline void set_score_mod_params(flash::FwdParams& params, double softcap,
                                 const std::optional<at::Tensor>& alibi_slopes, const at::Tensor& q) {
  TORCH_CHECK(std::isfinite(softcap) && softcap >= 0, "softcap must be finite and >= 0 (0: off), got ", softcap);
  if (softcap > 0) {
    params.logit_scale = static_cast<float>(softcap);
    params.scale_softmax_log2 = static_cast<float>(softcap * M_LOG2E);
    params.softcap_prescale = static_cast<float>(params.scale_softmax / softcap);
  }
  if (alibi_slopes.has_value()) {
    const at::Tensor& slopes = *alibi_slopes;
    TORCH_CHECK(slopes.scalar_type() == at::kFloat, "alibi_slopes must be float32, got ", slopes.scalar_type());
    TORCH_CHECK(slopes.device() == q.device(), "alibi_slopes must be on the device of q");
    const bool per_head = slopes.dim() == 1 && slopes.size(0) == params.h;
    const bool per_batch = slopes.dim() == 2 && slopes.size(0) == params.b && slopes.size(1) == params.h;
    TORCH_CHECK(per_head || per_batch, "alibi_slopes must have shape [nheads] = [", params.h,
                "] or [batch, nheads] = [", params.b, ", ", params.h, "], got ", slopes.sizes());
    TORCH_CHECK(slopes.stride(-1) == 1, "alibi_slopes must be contiguous in its last dimension");
    params.alibi_slopes = slopes.data_ptr<float>();
    params.alibi_batch_stride = per_batch ? slopes.stride(0) : 0;
  }
}

inline void check_dropout_p(double dropout_p) {
  TORCH_CHECK(dropout_p >= 0 && dropout_p < 1, "dropout_p must be in [0, 1), got ", dropout_p);
}

// The forward's rng_state output: int64 [2] with dropout (the kernel fills it), [0] without.
inline at::Tensor make_rng_state(double dropout_p, const at::Tensor& q) {
  check_dropout_p(dropout_p);
  return at::empty({dropout_p > 0 ? 2 : 0}, q.options().dtype(at::kLong));
}

inline void set_keep_probability(flash::FwdParams& params, double dropout_p) {
  const double keep = 1.0 - dropout_p;
  params.has_dropout = true;
  params.keep_threshold = static_cast<uint32_t>(std::min(keep * 4294967296.0, 4294967295.0));
  params.rp_keep = static_cast<float>(1.0 / keep);
}

// flash-attn's dropout_p, forward: a fresh (seed, offset) from the default CUDA generator of
// q's device (graph-safe: under capture the kernel reads them at replay), recorded in rng_state.
inline void set_dropout_params(flash::FwdParams& params, double dropout_p, const at::Tensor& rng_state,
                               const at::Tensor& q) {
  check_dropout_p(dropout_p);
  params.has_dropout = false;
  if (dropout_p == 0) return;
  set_keep_probability(params, dropout_p);
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      std::nullopt, at::cuda::detail::getDefaultCUDAGenerator(q.device().index()));
  at::PhiloxCudaState state;
  {
    std::lock_guard<std::mutex> lock(gen->mutex_);
    state = gen->philox_cuda_state(4);  // the kernels use offset / 4 (dropout.h)
  }
  if (state.captured_) {
    params.philox_seed_ptr = state.seed_.ptr;
    params.philox_offset_ptr = state.offset_.ptr;
    params.philox_offset = state.offset_intragraph_;
  } else {
    params.philox_seed = state.seed_.val;
    params.philox_offset = state.offset_.val;
  }
  params.rng_state = rng_state.data_ptr<int64_t>();
}

// The backward: the forward's rng_state redraws the same mask.
inline void set_dropout_params_bwd(flash::FwdParams& params, double dropout_p,
                                   const std::optional<at::Tensor>& rng_state, const at::Tensor& q) {
  check_dropout_p(dropout_p);
  params.has_dropout = false;
  if (dropout_p == 0) return;
  TORCH_CHECK(rng_state.has_value() && rng_state->scalar_type() == at::kLong && rng_state->numel() == 2 &&
                  rng_state->is_contiguous() && rng_state->device() == q.device(),
              "rng_state must be the int64 [2] tensor that the forward returned with the same dropout_p");
  set_keep_probability(params, dropout_p);
  params.rng_state = rng_state->data_ptr<int64_t>();
}

// After set_attention_params on [1, total, h, d] views: sequences from cu_seqlens, maxima as
// the lengths, softmax_lse as [h, total_q].
inline void set_varlen_params(flash::FwdParams& params, const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k,
                              int64_t max_seqlen_q, int64_t max_seqlen_k) {
  params.total_q = params.seqlen_q;
  params.total_k = params.seqlen_k;
  params.b = static_cast<int>(cu_seqlens_q.size(0) - 1);
  params.seqlen_q = static_cast<int>(max_seqlen_q);
  params.seqlen_k = static_cast<int>(max_seqlen_k);
  params.q_batch_stride = params.k_batch_stride = params.v_batch_stride = params.o_batch_stride = 0;
  params.lse_batch_stride = 0;
  params.lse_head_stride = params.total_q;
  params.cu_seqlens_q = cu_seqlens_q.data_ptr<int>();
  params.cu_seqlens_k = cu_seqlens_k.data_ptr<int>();
}

// Paged K/V: k, v [num_pages, page_size, h_k, d] with page_size a power of two >= 16, block_table
// int32 [batch, max_pages_per_sequence] on q's device. Sets the batch strides to a page's, so a
// varlen call makes it after set_varlen_params (which zeroes them). `pages`: the argument's name
// for k ("k_cache" for the KV cache). Returns the rows a sequence can hold, max_pages * page_size.
inline int64_t set_paged_kv_params(flash::FwdParams& params, const at::Tensor& table, const at::Tensor& k,
                                   const at::Tensor& v, int64_t batch, const at::Tensor& q, const char* pages) {
  TORCH_CHECK(table.scalar_type() == at::kInt, "block_table must be int32, got ", table.scalar_type());
  TORCH_CHECK(table.device() == q.device(), "block_table must be on the device of q");
  TORCH_CHECK(table.dim() == 2 && table.size(0) == batch && table.size(1) >= 1 && table.stride(1) == 1,
              "block_table must be [batch, max_pages_per_sequence] = [", batch, ", >= 1] with a contiguous last "
              "dim, got ", table.sizes());
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes(), "with block_table, ", pages, " must be paged [num_pages, "
              "page_size, nheads_k, head_dim], got ", k.sizes());
  const int64_t page = k.size(1);
  TORCH_CHECK(page >= flash::kMinPageRows && (page & (page - 1)) == 0, "the page size (", pages,
              ".size(1) with block_table) must be a power of two >= ", flash::kMinPageRows, ", got ", page);
  TORCH_CHECK(k.size(0) >= 1, pages, " must hold at least one page");
  const int64_t capacity = table.size(1) * page;
  TORCH_CHECK(capacity < (1 << 30), "block_table's pages must hold below 2^30 rows per sequence");
  params.block_table = table.data_ptr<int>();
  params.block_table_batch_stride = table.stride(0);
  params.block_table_width = static_cast<int>(table.size(1));
  params.num_pages = static_cast<int>(k.size(0));
  params.page_shift = static_cast<int>(std::log2(static_cast<double>(page)));
  params.k_batch_stride = k.stride(0), params.v_batch_stride = v.stride(0);  // one page
  return capacity;
}

// The backward after the forward's fields are set: dout, dq, dk, dv are 4-D views like q, k, v;
// softmax_lse is the forward's. Writes dq, dk, dv.
inline void run_backward(flash::BwdParams& params, const at::Tensor& dout, const at::Tensor& dq, const at::Tensor& dk,
                         const at::Tensor& dv, const at::Tensor& softmax_lse, bool has_right_edge,
                         bool deterministic) {
  const auto float_options = dq.options().dtype(at::kFloat);
  auto dq_accum = at::zeros(dq.sizes(), float_options);
  auto softmax_d = at::empty(softmax_lse.sizes(), float_options);
  const int64_t m_blocks = (params.seqlen_q + flash::kDqSemaphoreBlockM - 1) / flash::kDqSemaphoreBlockM;
  auto dq_semaphore = deterministic ? at::zeros({params.b, params.h, m_blocks}, dq.options().dtype(at::kInt)) : at::Tensor();

  params.dout = dout.data_ptr();
  params.do_batch_stride = dout.stride(0), params.do_row_stride = dout.stride(1), params.do_head_stride = dout.stride(2);
  params.dk = dk.data_ptr(), params.dv = dv.data_ptr();
  params.dk_batch_stride = dk.stride(0), params.dk_row_stride = dk.stride(1), params.dk_head_stride = dk.stride(2);
  params.dv_batch_stride = dv.stride(0), params.dv_row_stride = dv.stride(1), params.dv_head_stride = dv.stride(2);
  if (params.cu_seqlens_q != nullptr) params.dk_batch_stride = params.dv_batch_stride = params.do_batch_stride = 0;
  params.dq_accum = dq_accum.data_ptr<float>();
  params.dq_accum_batch_stride = params.cu_seqlens_q != nullptr ? 0 : dq_accum.stride(0);
  params.softmax_d = softmax_d.data_ptr<float>();
  params.dq_semaphore = deterministic ? dq_semaphore.data_ptr<int>() : nullptr;
  params.deterministic = deterministic;

  check_launch(flash::run_mha_bwd(params, kernel_dtype(dq), has_right_edge, at::cuda::getCurrentCUDAStream().stream()),
               "bwd");
  dq.copy_(dq_accum.mul_(params.scale_softmax));
}

}  // namespace flash_api
