// flash_attn_rocm::fwd_kvcache: attention of q [b, sq, h, d] over a KV cache, contiguous
// [b_cache, s_cache, h_k, d] or paged [num_pages, page_size, h_k, d] with block_table, after
// appending the new k, v (rotated) in place. flash-attn's flash_attn_with_kvcache.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <tuple>

#include "attention_params.h"
#include "checks.h"
#include "ops.h"

namespace flash_api {
namespace {

// An int32 [b] tensor on q's device, or nothing.
const int* batch_indices(const std::optional<at::Tensor>& t, const char* name, int64_t batch, const at::Tensor& q) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kInt, name, " must be int32, got ", t->scalar_type());
  TORCH_CHECK(t->device() == q.device(), name, " must be on the device of q");
  TORCH_CHECK(t->dim() == 1 && t->size(0) == batch && t->is_contiguous(), name, " must be a contiguous [batch] = [",
              batch, "] tensor, got ", t->sizes());
  return t->data_ptr<int>();
}

void set_rotary_params(flash::KvCacheParams& params, const at::Tensor& cos, const at::Tensor& sin,
                       bool interleaved, bool per_row) {
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes(), "rotary_cos and rotary_sin must be 2-D of one shape "
              "[seqlen_ro, rotary_dim / 2], got ", cos.sizes(), " and ", sin.sizes());
  const int64_t rotary_dim = 2 * cos.size(1);
  TORCH_CHECK(rotary_dim > 0 && rotary_dim % 16 == 0 && rotary_dim <= params.d, "rotary_dim (2 * rotary_cos.size(1) = ",
              rotary_dim, ") must be a positive multiple of 16 and at most the head dim ", params.d);
  TORCH_CHECK(cos.size(0) >= params.seqlen_k, "rotary_cos must have a row per cache position: ", params.seqlen_k,
              " or more, got ", cos.size(0));
  params.rotary_cos = cos.data_ptr<float>();
  params.rotary_sin = sin.data_ptr<float>();
  params.rotary_dim = static_cast<int>(rotary_dim);
  params.seqlen_ro = static_cast<int>(cos.size(0));
  params.rotary_interleaved = interleaved;
  params.rotary_q_per_row = per_row;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fwd_kvcache(
    const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache, const std::optional<at::Tensor>& k_new,
    const std::optional<at::Tensor>& v_new, const std::optional<at::Tensor>& rotary_cos,
    const std::optional<at::Tensor>& rotary_sin, const std::optional<at::Tensor>& cache_seqlens,
    const std::optional<at::Tensor>& cache_batch_idx, const std::optional<at::Tensor>& cache_leftpad,
    const std::optional<at::Tensor>& block_table, double softmax_scale, bool is_causal, int64_t window_size_left,
    int64_t window_size_right, double softcap, bool rotary_interleaved, const std::optional<at::Tensor>& alibi_slopes,
    int64_t num_splits) {
  check_attention_input(q, "q", 4);
  check_attention_input(k_cache, "k_cache", 4);
  check_attention_input(v_cache, "v_cache", 4);
  check_same(q, k_cache, "k_cache");
  check_same(q, v_cache, "v_cache");
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "k_cache and v_cache must have the same shape, got ",
              k_cache.sizes(), " and ", v_cache.sizes());
  const int64_t batch = q.size(0), seqlen_q = q.size(1), h = q.size(2), head_dim = q.size(3), h_k = k_cache.size(2);
  TORCH_CHECK(k_cache.size(3) == head_dim, "k_cache must have q's head dim ", head_dim);
  TORCH_CHECK(head_dim % 8 == 0 && head_dim <= 256 && flash::kernel_head_dim(head_dim) != 0,
              "head dim must be a multiple of 8 and at most 256 (and compiled into this build), got ", head_dim);
  TORCH_CHECK(h_k > 0 && h % h_k == 0, "nheads of q (", h, ") must be divisible by nheads of k_cache (", h_k, ")");
  TORCH_CHECK(batch <= 65535 && h <= 65535, "batch and nheads must be at most 65535");
  check_softmax_scale(softmax_scale);
  TORCH_CHECK(num_splits >= 0 && num_splits <= 128, "num_splits must be in [0, 128] (0: heuristic), got ", num_splits);
  TORCH_CHECK(k_new.has_value() == v_new.has_value(), "k and v must be given together");
  TORCH_CHECK(!rotary_cos.has_value() || k_new.has_value(), "rotary_cos/rotary_sin need the new k and v");
  TORCH_CHECK(rotary_cos.has_value() == rotary_sin.has_value(), "rotary_cos and rotary_sin must be given together");
  TORCH_CHECK(!k_new.has_value() || cache_seqlens.has_value(), "appending k and v needs cache_seqlens");

  const c10::cuda::CUDAGuard device_guard(q.device());
  flash::KvCacheParams params{};
  auto out = at::empty({batch, seqlen_q, h, head_dim}, q.options());
  auto softmax_lse = at::empty({batch, h, seqlen_q}, q.options().dtype(at::kFloat));

  // The cache: capacity per sequence, and the paging.
  int64_t capacity = k_cache.size(1);
  if (block_table.has_value()) {
    TORCH_CHECK(!cache_batch_idx.has_value(), "cache_batch_idx cannot be combined with block_table (the table "
                "already maps each batch element to its pages)");
    capacity = set_paged_kv_params(params, *block_table, k_cache, v_cache, batch, q, "k_cache");
  } else {
    TORCH_CHECK(cache_batch_idx.has_value() ? k_cache.size(0) >= 1 : k_cache.size(0) == batch,
                "k_cache must have q's batch size ", batch, " (or cache_batch_idx must pick its rows), got ",
                k_cache.size(0));
  }
  TORCH_CHECK(capacity < (1 << 30), "the cache capacity must be below 2^30 rows");

  int64_t seqlen_new = 0;
  if (k_new.has_value()) {
    check_attention_input(*k_new, "k", 4);
    check_attention_input(*v_new, "v", 4);
    check_same(q, *k_new, "k");
    check_same(q, *v_new, "v");
    seqlen_new = k_new->size(1);
    TORCH_CHECK(k_new->size(0) == batch && k_new->size(2) == h_k && k_new->size(3) == head_dim,
                "k must be [batch, seqlen_new, nheads_k, head_dim] = [", batch, ", *, ", h_k, ", ", head_dim, "], got ",
                k_new->sizes());
    check_same_shape(*v_new, *k_new, "v", "k");
    TORCH_CHECK(seqlen_new <= capacity, "k has ", seqlen_new, " new rows but the cache holds ", capacity);
  }

  // The attention reads q itself, or its rotated copy.
  at::Tensor q_attn = q;
  if (rotary_cos.has_value()) {
    TORCH_CHECK(rotary_cos->device() == q.device() && rotary_sin->device() == q.device(),
                "rotary_cos and rotary_sin must be on the device of q");
    q_attn = at::empty({batch, seqlen_q, h, head_dim}, q.options());
  }
  set_attention_params(params, q_attn, k_cache, v_cache, out, softmax_lse, softmax_scale);
  params.seqlen_k = static_cast<int>(capacity);
  const bool has_right_edge = set_window_params(params, is_causal, window_size_left, window_size_right);
  set_score_mod_params(params, softcap, alibi_slopes, q);
  params.has_dropout = false;

  params.cache_seqlens = batch_indices(cache_seqlens, "cache_seqlens", batch, q);
  params.cache_batch_idx = batch_indices(cache_batch_idx, "cache_batch_idx", batch, q);
  params.cache_leftpad = batch_indices(cache_leftpad, "cache_leftpad", batch, q);
  params.seqlen_new = static_cast<int>(seqlen_new);
  if (k_new.has_value()) {
    params.k_new = k_new->data_ptr(), params.v_new = v_new->data_ptr();
    params.knew_batch_stride = k_new->stride(0), params.knew_row_stride = k_new->stride(1);
    params.knew_head_stride = k_new->stride(2);
    params.vnew_batch_stride = v_new->stride(0), params.vnew_row_stride = v_new->stride(1);
    params.vnew_head_stride = v_new->stride(2);
  }
  at::Tensor cos, sin;
  if (rotary_cos.has_value()) {
    cos = rotary_cos->to(at::kFloat).contiguous();
    sin = rotary_sin->to(at::kFloat).contiguous();
    set_rotary_params(params, cos, sin, rotary_interleaved, has_right_edge || params.window_left != flash::kUnboundedWindow);
    params.q_unrotated = q.data_ptr();
    params.qsrc_batch_stride = q.stride(0), params.qsrc_row_stride = q.stride(1), params.qsrc_head_stride = q.stride(2);
  }
  params.nheads_q = static_cast<int>(h);
  params.seqlen_q_rows = static_cast<int>(seqlen_q);

  if (batch == 0 || seqlen_q == 0 || h == 0) return {out, softmax_lse};

  // One query row per sequence and no window or ALiBi: the query heads that share a KV head become
  // the rows of one block ([b, h_k, group] instead of [b, h, 1]), so the block reads each K and V
  // byte once for the whole group. Causal masks nothing for a single row (bottom-right aligned).
  const int64_t group = h / h_k;
  if (seqlen_q == 1 && group > 1 && params.window_left == flash::kUnboundedWindow && !alibi_slopes.has_value() &&
      (params.window_right == flash::kUnboundedWindow || params.window_right == 0)) {
    params.window_right = flash::kUnboundedWindow;
    params.seqlen_q = static_cast<int>(group);
    params.h = static_cast<int>(h_k);
    params.q_row_stride = params.q_head_stride, params.q_head_stride *= group;
    params.o_row_stride = params.o_head_stride, params.o_head_stride *= group;
    params.lse_batch_stride = h, params.lse_head_stride = group;
  }

  // Split-KV: partials in fp32, merged by the combine kernel.
  const int64_t m_blocks = (params.seqlen_q + flash::kKvCacheBlockM - 1) / flash::kKvCacheBlockM;
  const int key_blocks = static_cast<int>((capacity + flash::kKvCacheBlockN - 1) / flash::kKvCacheBlockN);
  int splits = static_cast<int>(num_splits);
  if (splits == 0) {
    const cudaDeviceProp* props = at::cuda::getCurrentDeviceProperties();
    const int slots = props->multiProcessorCount * (params.block_table != nullptr ? 2 : 1);
    splits = flash::kvcache_num_splits(int64_t(params.b) * params.h * m_blocks, key_blocks, slots);
  }
  params.num_splits = std::max(1, std::min(splits, key_blocks));
  at::Tensor o_accum, lse_accum;
  if (params.num_splits > 1) {
    const auto float_options = q.options().dtype(at::kFloat);
    o_accum = at::empty({params.num_splits, params.b, params.h, params.seqlen_q, flash::kernel_head_dim(params.d)},
                        float_options);
    lse_accum = at::empty({params.num_splits, params.b, params.h, params.seqlen_q}, float_options);
    params.o_accum = o_accum.data_ptr<float>();
    params.lse_accum = lse_accum.data_ptr<float>();
  }
  check_launch(flash::run_mha_fwd_kvcache(params, kernel_dtype(q), at::cuda::getCurrentCUDAStream().stream()),
               "fwd_kvcache");
  return {out, softmax_lse};
}

}  // namespace flash_api
