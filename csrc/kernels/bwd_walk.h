// What the backward kernels (bwd_kernel.h, bwd_kernel_sm90.h, bwd_kernel_amd.h) share: a thread
// block owns kBlockN keys of one kv head and walks the query blocks of kBlockM rows whose windows
// reach them, for every query head of the group; in deterministic mode it adds its dQ in
// key-block order behind a per-query-block semaphore.
#pragma once

#include "mask.h"
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

// Deterministic dQ: the key blocks that touch a query block are a contiguous run from the one
// holding its first row's first key; each adds after those before it. All the threads that add
// call these; `leader` is one of them, `sync` a barrier among them. With kParts blocks a key
// block (each adding its own columns: the Hopper d256 backward) a key block waits for all the
// parts of those before it; its own parts add in either order.
template <int kBlockM, int kBlockN, int kParts = 1, bool Has_right_edge, class Sync>
FA_DEVICE int* dq_semaphore_acquire(const BwdParams& params, const KeyWindow<Has_right_edge>& window, int batch,
                                    int head, int m_block, int n_block, bool leader, Sync&& sync) {
  const int m_blocks_max = (params.seqlen_q + kBlockM - 1) / kBlockM;  // dq_semaphore's row length
  int* semaphore = params.dq_semaphore + (static_cast<int64_t>(batch) * params.h + head) * m_blocks_max + m_block;
  const int n_block_first = window.begin(m_block * kBlockM) / kBlockN;
  if (leader) {
    // The count never passes this block's turn before it adds: "<" waits as "!=" would.
    while (atomicAdd(semaphore, 0) < kParts * (n_block - n_block_first)) {}
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
