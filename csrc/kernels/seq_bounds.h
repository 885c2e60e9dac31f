// Where one batch element's sequences lie: dense batches start at row 0 with the common
// lengths; varlen batches read their rows from cu_seqlens. Offsets are clamped to the packed
// tensors, so a bad cu_seqlens can give wrong rows but never an out-of-bounds access.
#pragma once

#include "params.h"
#include "platform.h"

namespace flash {

struct SeqBounds {
  int q_start, k_start;    // first row in the (packed) tensors
  int seqlen_q, seqlen_k;  // rows of this batch element, at most the params' maxima

  FA_DEVICE SeqBounds(const FwdParams& params, int batch) {
    if (params.cu_seqlens_q != nullptr) {
      span(params.cu_seqlens_q, batch, params.total_q, params.seqlen_q, q_start, seqlen_q);
      span(params.cu_seqlens_k, batch, params.total_k, params.seqlen_k, k_start, seqlen_k);
    } else {
      q_start = k_start = 0;
      seqlen_q = params.seqlen_q;
      seqlen_k = params.seqlen_k;
    }
  }

  // Row `row` of this sequence in q (query head `head`), and row 0 in k and v (kv head `head_k`).
  template <class T>
  FA_DEVICE const T* q_row(const FwdParams& params, int batch, int head, int row) const {
    return static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
           (q_start + row) * params.q_row_stride;
  }
  template <class T>
  FA_DEVICE const T* k_rows(const FwdParams& params, int batch, int head_k) const {
    return static_cast<const T*>(params.k) + batch * params.k_batch_stride + head_k * params.k_head_stride +
           k_start * params.k_row_stride;
  }
  template <class T>
  FA_DEVICE const T* v_rows(const FwdParams& params, int batch, int head_k) const {
    return static_cast<const T*>(params.v) + batch * params.v_batch_stride + head_k * params.v_head_stride +
           k_start * params.v_row_stride;
  }

  // Index of row `row` of this sequence in softmax_lse (and softmax_d), for one head.
  FA_DEVICE int64_t lse_index(const FwdParams& params, int batch, int head, int row) const {
    return batch * params.lse_batch_stride + head * params.lse_head_stride + q_start + row;
  }

 private:
  static FA_DEVICE void span(const int* cu_seqlens, int batch, int total, int max_len, int& start, int& len) {
    start = min(max(cu_seqlens[batch], 0), total);
    const int end = min(max(cu_seqlens[batch + 1], start), total);
    len = min(end - start, max_len);
  }
};

}  // namespace flash
