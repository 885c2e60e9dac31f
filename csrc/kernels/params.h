// What the host hands a forward kernel: raw pointers, element strides and sizes. No ATen types,
// so the kernel library builds on its own (and with hipcc for the AMD compile check).
#pragma once

#include <cstdint>

namespace flash {

inline constexpr int kUnboundedWindow = 1 << 28;  // a window side that is open: far past any sequence,
                                                  // small enough that row arithmetic cannot overflow

struct FwdParams {
  const void* __restrict__ q;  // [b, seqlen_q, h, d]
  const void* __restrict__ k;  // [b, seqlen_k, h_k, d]
  const void* __restrict__ v;  // [b, seqlen_k, h_k, d]
  void* __restrict__ o;        // [b, seqlen_q, h, d]
  float* __restrict__ softmax_lse;  // [b, h, seqlen_q], contiguous, natural log

  // Strides in elements; the last dim is contiguous for all four tensors.
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;
  int64_t o_batch_stride, o_row_stride, o_head_stride;

  int b;          // batch
  int seqlen_q;   // >= 1
  int seqlen_k;   // >= 1
  int h;          // query heads
  int h_k;        // key/value heads; h % h_k == 0, query head i reads kv head i / (h / h_k)
  int d;          // head dim actually present, <= the kernel's kHeadDim, multiple of 8

  float scale_softmax;       // applied to q.k; the gradients' scale
  float logit_scale;         // the kernels' scores times this are logits: scale_softmax, or softcap (score_mod.h)
  float scale_softmax_log2;  // logit_scale * log2(e): the softmax works in base 2

  // Score modifiers (score_mod.h): softcap as scale_softmax / softcap (0: off), and ALiBi slopes,
  // fp32 [b, h] (alibi_batch_stride h) or [h] (stride 0); nullptr: off.
  float softcap_prescale;
  const float* __restrict__ alibi_slopes;
  int64_t alibi_batch_stride;

  // fp8 q, k, v (DType::kFloat8E4m3, the AMD fp8 forward): their values times these fp32 factors
  // are the attention's inputs, one per (batch, kv head) at b * descale_batch_stride + h_k
  // (descale_batch_stride h_k) or one per tensor (stride 0, and head 0 read); nullptr: 1.
  const float* __restrict__ q_descale;
  const float* __restrict__ k_descale;
  const float* __restrict__ v_descale;
  int64_t descale_batch_stride;
  bool descale_per_head;
  // The Hopper fp8 forward reads V transposed, [b, h_k, d, v_transposed_keys] (fp8_vt_sm90.h
  // writes it from v before the attention kernel; the op allocates it).
  void* __restrict__ v_transposed;
  int64_t v_transposed_keys;

  // Dropout (dropout.h): a score is kept when its Philox draw is below keep_threshold, i.e. with
  // probability 1 - dropout_p, and kept scores are scaled by rp_keep = 1 / (1 - dropout_p).
  bool has_dropout;
  uint32_t keep_threshold;
  float rp_keep;
  // PyTorch's generator state: values, or pointers read at replay under CUDA graph capture
  // (philox_offset is then added to *philox_offset_ptr).
  uint64_t philox_seed, philox_offset;
  const int64_t* philox_seed_ptr;
  const int64_t* philox_offset_ptr;
  // [2]: the forward writes the (seed, offset) it drew with, the backward reads them back.
  int64_t* rng_state;

  // Sliding window (flash-attn's window_size): row i sees keys i + sk - sq - window_left ..
  // i + sk - sq + window_right; kUnboundedWindow where a side is open. The right side
  // is enforced by the Has_right_edge instantiations (causal sets it to 0).
  int window_left, window_right;

  // softmax_lse[batch * lse_batch_stride + head * lse_head_stride + q_start + row]:
  // dense [b, h, seqlen_q] (h * seqlen_q, seqlen_q), varlen [h, total_q] (0, total_q).
  int64_t lse_batch_stride, lse_head_stride;

  // Varlen: when set, sequence b is rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] of packed
  // [total_q, h, d] tensors (batch strides 0), and seqlen_q / seqlen_k are the maxima.
  const int* __restrict__ cu_seqlens_q;  // [b + 1] or nullptr
  const int* __restrict__ cu_seqlens_k;  // [b + 1] or nullptr
  int total_q, total_k;                  // rows of the packed tensors: bounds for cu_seqlens

  // Paged K/V: k, v [num_pages, 1 << page_shift, h_k, d], k/v_batch_stride step one page; row r of
  // sequence b lives in page block_table[b][r >> page_shift]. Used by the KV cache (KvCacheParams)
  // and by the varlen forward (chunked prefill), where every sequence's keys start at row 0 of its
  // pages and cu_seqlens_k give only their counts. nullptr: contiguous K/V.
  const int* __restrict__ block_table;  // [b, block_table_width], rows block_table_batch_stride apart
  int64_t block_table_batch_stride;
  int block_table_width, num_pages, page_shift;
};

// The smallest page the ops accept (set_paged_kv_params): the kernels' copies may take a page's
// first rows as one step of all threads.
inline constexpr int kMinPageRows = 16;

// Whether the kernels need the instantiation with the extras: softcap, ALiBi, dropout.
inline bool has_extras(const FwdParams& params) {
  return params.softcap_prescale != 0.f || params.alibi_slopes != nullptr || params.has_dropout;
}

// Attention over a KV cache (flash_attn_with_kvcache). FwdParams's k and v are the caches (paged
// through FwdParams's block_table, or contiguous) and seqlen_k is one sequence's capacity: its
// cache rows, or block_table_width pages.
struct KvCacheParams : FwdParams {
  // Sequence b attends to the cache rows cache_leftpad[b] .. cache_seqlens[b] + seqlen_new - 1;
  // its keys are numbered from the first of them (the masks and ALiBi count from there).
  const int* __restrict__ cache_seqlens;    // [b] rows filled before the append; nullptr: all
  const int* __restrict__ cache_leftpad;    // [b] or nullptr
  const int* __restrict__ cache_batch_idx;  // [b] or nullptr: which cache batch row b uses

  // New rows k_new, v_new [b, seqlen_new, h_k, d], written into the caches at cache_seqlens[b]
  // (rotated, for k, when rotary_cos is set) before the attention reads them.
  const void* __restrict__ k_new;
  const void* __restrict__ v_new;
  int64_t knew_batch_stride, knew_row_stride, knew_head_stride;
  int64_t vnew_batch_stride, vnew_row_stride, vnew_head_stride;
  int seqlen_new;

  // Rotary embedding, fp32 cos/sin [seqlen_ro, rotary_dim / 2]: new key row t of sequence b sits at
  // position cache_seqlens[b] + t (flash-attn's: cache_leftpad does not shift it). q_unrotated [b, sq, nheads_q, d] is rotated
  // into FwdParams's q (contiguous) at that position, + its row when rotary_q_per_row (causal or
  // local attention), else all rows at the first new position. Interleaved: pairs (2i, 2i + 1);
  // otherwise (i, i + rotary_dim / 2).
  const float* __restrict__ rotary_cos;
  const float* __restrict__ rotary_sin;
  int rotary_dim, seqlen_ro;
  bool rotary_interleaved, rotary_q_per_row;
  const void* __restrict__ q_unrotated;
  int64_t qsrc_batch_stride, qsrc_row_stride, qsrc_head_stride;
  int nheads_q, seqlen_q_rows;  // q's own head count and rows (FwdParams's may be a GQA-packed view)

  // Split-KV: each of num_splits blocks per row block takes a slice of the key blocks and writes
  // fp32 partials o_accum [num_splits, b, h, seqlen_q, kHeadDim] and lse_accum [num_splits, b, h,
  // seqlen_q]; a combine kernel merges them into o and softmax_lse. num_splits 1: o directly.
  int num_splits;
  float* __restrict__ o_accum;
  float* __restrict__ lse_accum;
};

// The backward reads q, k, v, o (the forward's output) and softmax_lse through FwdParams.
struct BwdParams : FwdParams {
  const void* __restrict__ dout;  // [b, seqlen_q, h, d]
  void* __restrict__ dk;          // [b, seqlen_k, h_k, d]
  void* __restrict__ dv;          // [b, seqlen_k, h_k, d]
  float* __restrict__ dq_accum;   // like q ([b, seqlen_q, h, d] or [total_q, h, d]) contiguous fp32, zeroed;
                                  // dq = dq_accum * scale
  float* __restrict__ softmax_d;  // laid out like softmax_lse: rowsum(dout * o), written by the preprocess
  int* __restrict__ dq_semaphore; // [b, h, ceil(seqlen_q / kBlockM)] zeroed; only when deterministic

  int64_t do_batch_stride, do_row_stride, do_head_stride;
  int64_t dk_batch_stride, dk_row_stride, dk_head_stride;
  int64_t dv_batch_stride, dv_row_stride, dv_head_stride;
  int64_t dq_accum_batch_stride;  // seqlen_q * h * d, or 0 for varlen (rows are h * d apart)

  // Adds each key block's dq contribution in key-block order (bitwise reproducible) instead of
  // in whatever order the atomics land.
  bool deterministic;
};

}  // namespace flash
