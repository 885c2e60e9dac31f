// Where a sequence's keys live in a KV cache, the kernel that appends new rows to it, and the one
// that merges split-KV partials: the vendor-neutral parts of the KV-cache forward.
//
// Every index read from device memory (cache_seqlens, cache_leftpad, cache_batch_idx,
// block_table) is clamped to the tensors the host sized: bad values give wrong rows, never an
// access outside the caches.
#pragma once

#include "mask.h"
#include "params.h"
#include "platform.h"
#include "score_mod.h"
#include "seq_bounds.h"

namespace flash {

// One batch element's view of the cache: logical key j is cache row first_row + j, for j < seqlen_k.
struct CacheSeq {
  int cache_batch;  // batch row of a contiguous cache
  int filled;       // rows in the cache before the append
  int first_row;    // cache_leftpad: rows below are padding
  int seqlen_k;     // keys after the append

  FA_DEVICE CacheSeq(const KvCacheParams& params, int batch) {
    cache_batch = params.cache_batch_idx == nullptr ? batch : params.cache_batch_idx[batch];
    const int capacity = params.seqlen_k;
    filled = params.cache_seqlens == nullptr ? capacity : min(max(params.cache_seqlens[batch], 0), capacity);
    const int end = min(filled + params.seqlen_new, capacity);
    first_row = params.cache_leftpad == nullptr ? 0 : min(max(params.cache_leftpad[batch], 0), end);
    seqlen_k = end - first_row;
  }

  // Rotary position of new row t (and of query rows): its cache row, as in flash-attn 2.8, whose
  // rotary ignores cache_leftpad (the masks and ALiBi count keys from first_row).
  FA_DEVICE int position(int t) const { return filled + t; }
};

// The keys of sequence `batch` in the K and V caches, for kv head head_k.
template <class T>
FA_DEVICE KvRows<T> key_rows(const KvCacheParams& params, const CacheSeq& seq, int batch, int head_k) {
  return KvRows<T>(params, params.k, params.k_batch_stride, params.k_row_stride, params.k_head_stride, batch, head_k,
                   seq.cache_batch * params.k_batch_stride);
}
template <class T>
FA_DEVICE KvRows<T> value_rows(const KvCacheParams& params, const CacheSeq& seq, int batch, int head_k) {
  return KvRows<T>(params, params.v, params.v_batch_stride, params.v_row_stride, params.v_head_stride, batch, head_k,
                   seq.cache_batch * params.v_batch_stride);
}

// Split `split`'s slice [begin, end) of the block_n-key blocks that rows [row_begin, row_end) see.
struct KeyBlockSplit {
  int begin, end;

  template <class Window>
  FA_DEVICE KeyBlockSplit(const Window& window, int row_begin, int row_end, int block_n, int split, int num_splits) {
    const int begin_all = window.n_block_begin(row_begin, block_n);
    const int blocks = max(window.n_block_end(row_end, block_n) - begin_all, 0);
    const int per_split = (blocks + num_splits - 1) / num_splits;
    begin = begin_all + split * per_split;
    end = begin_all + min((split + 1) * per_split, blocks);
  }
};

// What query rows [row_begin, row_end) of (batch, head) attend to in the cache: the sequence,
// its K and V rows, the key window and score modifier, and split `split`'s key blocks [n_begin,
// n_end) of block_n keys.
template <class T>
struct KvCacheBlock {
  CacheSeq seq;
  KvRows<T> k_rows, v_rows;
  KeyWindow<true> window;  // non-causal calls pass an unbounded right side (one instantiation)
  ScoreMod score_mod;
  bool has_score_mod;
  int n_begin, n_end;

  FA_DEVICE KvCacheBlock(const KvCacheParams& params, int batch, int head, int head_k, int row_begin, int row_end,
                         int block_n, int split)
      : seq(params, batch),
        k_rows(key_rows<T>(params, seq, batch, head_k)),
        v_rows(value_rows<T>(params, seq, batch, head_k)),
        window{params.seqlen_q, seq.seqlen_k, params.window_left, params.window_right},
        score_mod(params, batch, head, params.seqlen_q, seq.seqlen_k),
        has_score_mod(params.softcap_prescale != 0.f || params.alibi_slopes != nullptr) {
    const KeyBlockSplit slice(window, row_begin, row_end, block_n, split, params.num_splits);
    n_begin = slice.begin;
    n_end = slice.end;
  }

  // Key block n: its first cache row and how many of its block_n keys exist.
  FA_DEVICE int first_row(int n, int block_n) const { return seq.first_row + n * block_n; }
  FA_DEVICE int keys(int n, int block_n) const { return min(block_n, seq.seqlen_k - n * block_n); }
};

// One row of d elements (16-bit, 4-byte aligned) from src to dst, rotated over its first
// rotary_dim channels at `position` when cos is set, by one warp.
template <class T>
FA_DEVICE void rotate_row(const T* src, T* dst, const KvCacheParams& params, const float* cos, int position,
                          int lane) {
  const uint32_t* in = reinterpret_cast<const uint32_t*>(src);
  uint32_t* out = reinterpret_cast<uint32_t*>(dst);
  const int words = params.d / 2, rotary_words = cos == nullptr ? 0 : params.rotary_dim / 2;
  const int half = params.rotary_dim / 2;  // cos/sin entries per position
  const float* cos_row = cos == nullptr ? nullptr : cos + min(max(position, 0), params.seqlen_ro - 1) * half;
  const float* sin_row = cos == nullptr ? nullptr : params.rotary_sin + (cos_row - cos);
  for (int w = lane; w < words; w += kGroupSize) {
    if (w >= rotary_words) {
      out[w] = in[w];
    } else if (params.rotary_interleaved) {  // the pair is this word: angle w
      const float2 x = unpack2<T>(in[w]);
      const float c = cos_row[w], s = sin_row[w];
      out[w] = pack2<T>(x.x * c - x.y * s, x.x * s + x.y * c);
    } else if (w < rotary_words / 2) {  // channels 2w, 2w + 1 pair with 2w + half, 2w + 1 + half
      const int partner = w + rotary_words / 2;
      const float2 a = unpack2<T>(in[w]), b = unpack2<T>(in[partner]);
      const float c0 = cos_row[2 * w], c1 = cos_row[2 * w + 1], s0 = sin_row[2 * w], s1 = sin_row[2 * w + 1];
      out[w] = pack2<T>(a.x * c0 - b.x * s0, a.y * c1 - b.y * s1);
      out[partner] = pack2<T>(a.x * s0 + b.x * c0, a.y * s1 + b.y * c1);
    }
  }
}

// Before the attention: blockIdx.y = 0 rotates q into params.q (when rotary_cos is set),
// 1 and 2 append k_new (rotated) and v_new to the caches. One warp per row.
template <class T>
__global__ void __launch_bounds__(128) kvcache_prepare_kernel(const KvCacheParams params) {
  const int role = blockIdx.y, lane = threadIdx.x % kGroupSize;
  allow_dependents();  // the attention kernel may start; it waits for this grid before reading
  if (role == 0 && params.rotary_cos == nullptr) return;  // q is read as it is
  const int row_id = blockIdx.x * (blockDim.x / kGroupSize) + threadIdx.x / kGroupSize;
  const int heads = role == 0 ? params.nheads_q : params.h_k;
  const int rows = role == 0 ? params.seqlen_q_rows : params.seqlen_new;
  if (row_id >= params.b * rows * heads) return;
  const int head = row_id % heads, t = (row_id / heads) % rows, batch = row_id / (heads * rows);
  const CacheSeq seq(params, batch);

  if (role == 0) {
    const T* src = static_cast<const T*>(params.q_unrotated) + batch * params.qsrc_batch_stride +
                   t * params.qsrc_row_stride + head * params.qsrc_head_stride;
    T* dst = const_cast<T*>(static_cast<const T*>(params.q)) + ((int64_t(batch) * rows + t) * heads + head) * params.d;
    rotate_row(src, dst, params, params.rotary_cos, seq.position(params.rotary_q_per_row ? t : 0), lane);
    return;
  }
  const int row = seq.filled + t;
  if (row >= params.seqlen_k) return;  // past the capacity: dropped (the host rejects it when it can tell)
  const bool is_k = role == 1;
  const T* src = static_cast<const T*>(is_k ? params.k_new : params.v_new) +
                 batch * (is_k ? params.knew_batch_stride : params.vnew_batch_stride) +
                 t * (is_k ? params.knew_row_stride : params.vnew_row_stride) +
                 head * (is_k ? params.knew_head_stride : params.vnew_head_stride);
  const int64_t batch_stride = is_k ? params.k_batch_stride : params.v_batch_stride;
  const KvRows<T> cache(params, is_k ? params.k : params.v, batch_stride,
                        is_k ? params.k_row_stride : params.v_row_stride,
                        is_k ? params.k_head_stride : params.v_head_stride, batch, head,
                        seq.cache_batch * batch_stride);
  rotate_row(src, const_cast<T*>(cache(row)), params, is_k ? params.rotary_cos : nullptr, seq.position(t), lane);
}

// Merges the num_splits partials of each (batch, head, row), one warp per row:
//   lse = log sum_s exp(lse_s),   o = sum_s exp(lse_s - lse) o_s
template <class T, int kHeadDim>
__global__ void __launch_bounds__(128) flash_kvcache_combine_kernel(const KvCacheParams params) {
  wait_for_previous_grid();  // every split's partial is written
  const int lane = threadIdx.x % kGroupSize;
  const int64_t row_id = int64_t(blockIdx.x) * (blockDim.x / kGroupSize) + threadIdx.x / kGroupSize;
  const int64_t rows = int64_t(params.b) * params.h * params.seqlen_q;  // one split's partials
  if (row_id >= rows) return;
  const int row = row_id % params.seqlen_q, head = (row_id / params.seqlen_q) % params.h;
  const int batch = row_id / (int64_t(params.seqlen_q) * params.h);

  float m = -INFINITY;
  for (int s = lane; s < params.num_splits; s += kGroupSize) m = fmaxf(m, params.lse_accum[s * rows + row_id]);
#pragma unroll
  for (int mask = kGroupSize / 2; mask > 0; mask /= 2) m = fmaxf(m, shfl_xor(m, mask));
  float sum = 0.f;
  if (m != -INFINITY) {
    for (int s = lane; s < params.num_splits; s += kGroupSize) sum += __expf(params.lse_accum[s * rows + row_id] - m);
  }
#pragma unroll
  for (int mask = kGroupSize / 2; mask > 0; mask /= 2) sum += shfl_xor(sum, mask);
  const float lse = m == -INFINITY || sum == 0.f ? -INFINITY : m + __logf(sum);

  constexpr int kPairs = kHeadDim / 2, kPairsPerLane = (kPairs + kGroupSize - 1) / kGroupSize;
  float2 acc[kPairsPerLane];
#pragma unroll
  for (int p = 0; p < kPairsPerLane; ++p) acc[p] = make_float2(0.f, 0.f);
  for (int s = 0; s < params.num_splits && lse != -INFINITY; ++s) {
    const float weight = __expf(params.lse_accum[s * rows + row_id] - lse);
    if (weight == 0.f) continue;
    const float2* part = reinterpret_cast<const float2*>(params.o_accum + (s * rows + row_id) * kHeadDim);
#pragma unroll
    for (int p = 0; p < kPairsPerLane; ++p) {
      const int pair = lane + p * kGroupSize;
      if (pair < kPairs) {
        const float2 x = part[pair];
        acc[p].x += weight * x.x, acc[p].y += weight * x.y;
      }
    }
  }
  T* o = static_cast<T*>(params.o) + batch * params.o_batch_stride + head * params.o_head_stride +
         row * params.o_row_stride;
#pragma unroll
  for (int p = 0; p < kPairsPerLane; ++p) {
    const int pair = lane + p * kGroupSize;
    if (pair < kPairs && 2 * pair < params.d) *reinterpret_cast<uint32_t*>(o + 2 * pair) = pack2<T>(acc[p].x, acc[p].y);
  }
  if (lane == 0) params.softmax_lse[batch * params.lse_batch_stride + head * params.lse_head_stride + row] = lse;
}

}  // namespace flash
