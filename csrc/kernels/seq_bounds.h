// Where one batch element's sequences lie: dense batches start at row 0 with the common
// lengths; varlen batches read their rows from cu_seqlens; paged K/V (FwdParams's block_table)
// from the pages of the block table. Offsets and page numbers are clamped to the tensors, so a bad
// cu_seqlens or block table can give wrong rows but never an out-of-bounds access.
#pragma once

#include "params.h"
#include "platform.h"

namespace flash {

// Address of row `row` of one (sequence, kv head) of K or V, contiguous or paged: shared by the
// forward kernels (varlen chunked prefill) and the KV cache (kvcache.h).
//
//   contiguous: base + row * row_stride
//   paged:      base + page_of[row >> page_shift] * page_stride + (row % page_size) * row_stride
template <class T>
struct KvRows {
  const T* base;           // row 0 of this sequence and head (paged: of page 0)
  int64_t row_stride, page_stride;
  const int* page_of;      // this sequence's block_table row; nullptr: contiguous
  int pages_in_table, num_pages, page_shift;

  // kv: params.k or params.v with its strides (batch_stride: a page's when paged);
  // contiguous_offset: where the sequence's row 0 starts when not paged.
  FA_DEVICE KvRows(const FwdParams& params, const void* kv, int64_t batch_stride, int64_t row_stride_,
                   int64_t head_stride, int batch, int head_k, int64_t contiguous_offset)
      : row_stride(row_stride_), page_stride(batch_stride), page_of(nullptr), pages_in_table(params.block_table_width),
        num_pages(params.num_pages), page_shift(params.page_shift) {
    base = static_cast<const T*>(kv) + head_k * head_stride;
    if (params.block_table != nullptr) page_of = params.block_table + batch * params.block_table_batch_stride;
    else base += contiguous_offset;
  }

  FA_DEVICE int64_t offset(int row) const { return page_of == nullptr ? row * row_stride : paged_offset(row); }
  FA_DEVICE int64_t paged_offset(int row) const {  // offset(row) where page_of is set
    const int page = min(max(page_of[min(row >> page_shift, pages_in_table - 1)], 0), num_pages - 1);
    return page * page_stride + (row & ((1 << page_shift) - 1)) * row_stride;
  }
  FA_DEVICE const T* operator()(int row) const { return base + offset(row); }

  // Whether the block_n rows from any multiple of block_n (a power of two) are row_stride apart:
  // contiguous K/V, or pages of at least block_n rows (powers of two, so a block never straddles
  // two). Otherwise each row needs its own page lookup.
  FA_DEVICE bool strided_blocks(int block_n) const { return page_of == nullptr || (block_n >> page_shift) == 0; }
};

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

  // Row `row` of this sequence in q (query head `head`), and its rows in k and v (kv head
  // `head_k`): from k_start of the packed or dense tensors, or through the block table.
  template <class T>
  FA_DEVICE const T* q_row(const FwdParams& params, int batch, int head, int row) const {
    return static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
           (q_start + row) * params.q_row_stride;
  }
  template <class T>
  FA_DEVICE KvRows<T> k_rows(const FwdParams& params, int batch, int head_k) const {
    return KvRows<T>(params, params.k, params.k_batch_stride, params.k_row_stride, params.k_head_stride, batch, head_k,
                     batch * params.k_batch_stride + k_start * params.k_row_stride);
  }
  template <class T>
  FA_DEVICE KvRows<T> v_rows(const FwdParams& params, int batch, int head_k) const {
    return KvRows<T>(params, params.v, params.v_batch_stride, params.v_row_stride, params.v_head_stride, batch, head_k,
                     batch * params.v_batch_stride + k_start * params.v_row_stride);
  }

  // Row 0 of this sequence in contiguous k and v (the AMD forward has no paged K/V; the portable one
  // keeps these for its contiguous calls).
  template <class T>
  FA_DEVICE const T* k_contiguous(const FwdParams& params, int batch, int head_k) const {
    return static_cast<const T*>(params.k) + batch * params.k_batch_stride + head_k * params.k_head_stride +
           k_start * params.k_row_stride;
  }
  template <class T>
  FA_DEVICE const T* v_contiguous(const FwdParams& params, int batch, int head_k) const {
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
