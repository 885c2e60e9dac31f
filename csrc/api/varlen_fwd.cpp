// flash_attn_rocm::varlen_fwd: forward over a batch of sequences of different lengths, packed:
// q [total_q, h, d], k/v [total_k, h_k, d], sequence b = rows cu_seqlens[b] .. cu_seqlens[b + 1].
// With block_table (chunked prefill) k/v are paged [num_pages, page_size, h_k, d] and sequence b's
// cu_seqlens_k[b + 1] - cu_seqlens_k[b] keys are rows 0 .. of its pages block_table[b].
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "attention_params.h"
#include "checks.h"
#include "ops.h"

namespace flash_api {

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                          const at::Tensor& cu_seqlens_q,
                                                          const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q,
                                                          int64_t max_seqlen_k, double softmax_scale, bool is_causal,
                                                          int64_t window_size_left, int64_t window_size_right,
                                                          double softcap, const std::optional<at::Tensor>& alibi_slopes,
                                                          double dropout_p,
                                                          const std::optional<at::Tensor>& block_table) {
  const bool paged = block_table.has_value();
#if !defined(FA_PLATFORM_CUDA)
  TORCH_CHECK(!paged, "block_table (paged K/V) in varlen_fwd is not implemented on AMD GPUs yet (the AMD "
              "forward reads contiguous K/V only); flash_attn_with_kvcache takes paged caches");
#endif
  if (paged) {  // q [total_q, h, d]; k, v [num_pages, page_size, h_k, d] (set_paged_kv_params checks the rest)
    check_attention_input(q, "q", 3);
    check_attention_input(k, "k", 4);
    check_attention_input(v, "v", 4);
    check_same(q, k, "k");
    check_same(q, v, "v");
    check_qkv_shapes(q, k, v);
  } else {
    check_qkv(q, k, v, 3);
  }
  check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q);
  check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", q);
  TORCH_CHECK(cu_seqlens_q.size(0) == cu_seqlens_k.size(0), "cu_seqlens_q and cu_seqlens_k must have the same length");
  TORCH_CHECK(max_seqlen_q >= 0 && max_seqlen_k >= 0, "max_seqlen_q and max_seqlen_k must be >= 0");
  TORCH_CHECK(cu_seqlens_q.size(0) - 1 <= 65535, "batch must be at most 65535");
  check_softmax_scale(softmax_scale);

  const int64_t total_q = q.size(0), h = q.size(1);
  auto out = at::empty_like(q, at::MemoryFormat::Contiguous);
  auto softmax_lse = at::empty({h, total_q}, q.options().dtype(at::kFloat));
  auto rng_state = make_rng_state(dropout_p, q);
  if (total_q == 0 || max_seqlen_q == 0 || cu_seqlens_q.size(0) == 1) return {out, softmax_lse, rng_state};
  if ((!paged && k.size(0) == 0) || max_seqlen_k == 0) {  // no sequence has a key: flash-attn's empty rows
    out.zero_();
    softmax_lse.fill_(-std::numeric_limits<float>::infinity());
    return {out, softmax_lse, rng_state};
  }

  const c10::cuda::CUDAGuard device_guard(q.device());
  flash::FwdParams params{};
  set_attention_params(params, q.unsqueeze(0), paged ? k : k.unsqueeze(0), paged ? v : v.unsqueeze(0),
                       out.unsqueeze(0), softmax_lse, softmax_scale);
  set_varlen_params(params, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  if (paged) {
    set_paged_kv_params(params, *block_table, k, v, params.b, q, "k");
    // cu_seqlens_k count keys and index no tensor: the page lookups clamp instead.
    params.total_k = std::numeric_limits<int>::max();
  }
  const bool has_right_edge = set_window_params(params, is_causal, window_size_left, window_size_right);
  set_score_mod_params(params, softcap, alibi_slopes, q);
  set_dropout_params(params, dropout_p, rng_state, q);
  check_launch(flash::run_mha_fwd(params, kernel_dtype(q), has_right_edge, at::cuda::getCurrentCUDAStream().stream()),
               "varlen_fwd");
  return {out, softmax_lse, rng_state};
}

}  // namespace flash_api
