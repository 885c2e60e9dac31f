// What the two backward kernels (bwd_kernel.h, bwd_kernel_sm90.h) share: a thread block owns
// kBlockN keys of one kv head and walks the query blocks of kBlockM rows whose windows reach
// them, for every query head of the group; step by step it loads a query block's Q, dO, lse and
// D, and in deterministic mode adds its dQ in key-block order behind a per-query-block semaphore.
#pragma once

#include "mask.h"
#include "mma.h"
#include "params.h"
#include "platform.h"
#include "seq_bounds.h"

namespace flash {

template <int kBlockM, int kBlockN, bool Has_right_edge>
struct BwdQueryWalk {
  int m_block_begin;  // the first query block whose rows see one of the keys
  int m_per_head;     // query blocks per query head
  int steps;          // group * m_per_head: (query head, query block) pairs, head-major

  FA_DEVICE BwdQueryWalk(const KeyWindow<Has_right_edge>& window, int key0, int group) {
    // The rows whose windows reach the keys (mask.h): [first_row, last_row].
    const int shift = window.seqlen_k - window.seqlen_q;
    const int first_row = Has_right_edge ? max(0, key0 - shift - window.right) : 0;
    const int last_row = min(window.seqlen_q - 1, key0 + kBlockN - 1 - shift + window.left);
    m_block_begin = first_row / kBlockM;
    const int m_block_end = last_row < first_row ? m_block_begin : last_row / kBlockM + 1;
    m_per_head = m_block_end - m_block_begin;
    steps = group * m_per_head;
  }
};

// The (query head, query block) of consecutive steps of a walk that starts at work item `first`
// (a walk may start mid-way: it wraps around), without a division per step.
struct BwdStepCursor {
  int head, m_block;

  template <class Walk>
  FA_DEVICE BwdStepCursor(const Walk& walk, int head_begin, int first)
      : head(head_begin + first / walk.m_per_head), m_block(walk.m_block_begin + first % walk.m_per_head) {}

  template <class Walk>
  FA_DEVICE void next(const Walk& walk, int head_begin, int group) {
    if (++m_block == walk.m_block_begin + walk.m_per_head) {
      m_block = walk.m_block_begin;
      if (++head == head_begin + group) head = head_begin;
    }
  }
};

// Starts the loads of K and V rows key0 .. key0 + kBlockN - 1 (zeros past the end).
template <class KVTile, int kBlockN, int kNThreads, class T>
FA_DEVICE void load_key_block(const BwdParams& params, const SeqBounds& seq, int batch, int head_k, int key0,
                              T* sK, T* sV, int tid) {
  const int keys_valid = min(kBlockN, seq.seqlen_k - key0);
  KVTile::template load_async<kNThreads>(
      sK, static_cast<const T*>(params.k) + batch * params.k_batch_stride + head_k * params.k_head_stride +
              (seq.k_start + key0) * params.k_row_stride, params.k_row_stride, keys_valid, params.d, tid);
  KVTile::template load_async<kNThreads>(
      sV, static_cast<const T*>(params.v) + batch * params.v_batch_stride + head_k * params.v_head_stride +
              (seq.k_start + key0) * params.v_row_stride, params.v_row_stride, keys_valid, params.d, tid);
}

// Starts the loads of query rows row0 .. row0 + kBlockM - 1 of `head`: Q and dO (zeros past the
// end), and stores their lse (log2 units) and D.
template <class QTile, int kBlockM, int kNThreads, class T>
FA_DEVICE void load_query_block(const BwdParams& params, const SeqBounds& seq, int batch, int head, int row0,
                                T* sQ, T* sdO, float* sLse, float* sD, int tid) {
  const int rows_valid = min(kBlockM, seq.seqlen_q - row0);
  QTile::template load_async<kNThreads>(
      sQ, static_cast<const T*>(params.q) + batch * params.q_batch_stride + head * params.q_head_stride +
              (seq.q_start + row0) * params.q_row_stride, params.q_row_stride, rows_valid, params.d, tid);
  QTile::template load_async<kNThreads>(
      sdO, static_cast<const T*>(params.dout) + batch * params.do_batch_stride + head * params.do_head_stride +
               (seq.q_start + row0) * params.do_row_stride, params.do_row_stride, rows_valid, params.d, tid);
  if (tid < kBlockM) {
    const int64_t idx = seq.lse_index(params, batch, head, row0 + tid);
    // Rows past the end, and rows that saw no key (lse = -inf), get lse = +inf: P = 0 there.
    const float lse = tid < rows_valid ? params.softmax_lse[idx] : INFINITY;
    sLse[tid] = lse == -INFINITY ? INFINITY : lse * float(M_LOG2E);
    sD[tid] = tid < rows_valid ? params.softmax_d[idx] : 0.f;
  }
}

// Deterministic dQ: the key blocks that touch a query block are a contiguous run from the one
// holding its first row's first key; each adds after those before it. All the threads that add
// call these; `leader` is one of them, `sync` a barrier among them.
template <int kBlockM, int kBlockN, bool Has_right_edge, class Sync>
FA_DEVICE int* dq_semaphore_acquire(const BwdParams& params, const KeyWindow<Has_right_edge>& window, int batch, int head,
                                    int m_block, int n_block, bool leader, Sync&& sync) {
  const int m_blocks_max = (params.seqlen_q + kBlockM - 1) / kBlockM;  // dq_semaphore's row length
  int* semaphore = params.dq_semaphore + (static_cast<int64_t>(batch) * params.h + head) * m_blocks_max + m_block;
  const int n_block_first = window.begin(m_block * kBlockM) / kBlockN;
  if (leader) {
    while (atomicAdd(semaphore, 0) != n_block - n_block_first) {}
  }
  sync();
  __threadfence();
  return semaphore;
}

template <class Sync>
FA_DEVICE void dq_semaphore_release(int* semaphore, bool leader, Sync&& sync) {
  __threadfence();
  sync();
  if (leader) atomicAdd(semaphore, 1);
}

}  // namespace flash
