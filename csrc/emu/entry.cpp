// The emulated library's C interface (tests/emu/library.py calls it through ctypes): fills the
// kernels' params from flat tensor views and calls the library's own entry points
// (flash::run_mha_fwd, run_mha_bwd, run_mha_fwd_kvcache: the generated dispatch and the launch
// code, compiled for the emulator), so the host side of each launch runs as it does on a GPU.
//
// The field-by-field filling mirrors csrc/api/attention_params.h and fwd_kvcache.cpp, which take
// ATen tensors; only their arithmetic is repeated here (window sides, score-mod scales, the keep
// threshold, the GQA decode folding), with the input checks left to the Python layer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../kernels/api.h"
#include "../kernels/arch/matrix_core_amd.h"  // FA_AMD_DEVICE_FAMILY
#include "../kernels/tile_config.h"
#include "emulator.h"

extern "C" {

// A view of a [b, s, h, d] tensor (varlen: [1, total, h, d]) with a contiguous last dim.
struct FaEmuTensor {
  void* data;
  int64_t batch_stride, row_stride, head_stride;  // in elements
};

// One attention call: flash_attn_rocm's op arguments.
struct FaEmuAttention {
  FaEmuTensor q, k, v, out;
  float* softmax_lse;
  int64_t lse_batch_stride, lse_head_stride;
  int batch, seqlen_q, seqlen_k, heads, heads_k, head_dim;
  int is_bf16;
  double softmax_scale;
  int is_causal, window_left, window_right;  // -1: unbounded
  double softcap;                            // 0: off
  const float* alibi_slopes;                 // [h] or [b, h]; nullptr: off
  int64_t alibi_batch_stride;
  double dropout_p;
  uint64_t philox_seed, philox_offset;
  int64_t* rng_state;                   // [2], written by the forward, read by the backward
  const int *cu_seqlens_q, *cu_seqlens_k;  // varlen: [batch + 1]; seqlen_q / seqlen_k are the maxima
  int total_q, total_k;
  // Paged K/V (varlen_fwd's block_table, [batch, width]; k and v [num_pages, page_size, h_k, d], their
  // batch_stride a page's); nullptr: contiguous. The KV cache passes its paging in FaEmuKvCache.
  const int* block_table;
  int64_t block_table_batch_stride;
  int block_table_width, num_pages, page_size;
  // fp8 q, k, v (the target's e4m3 bytes; out bf16) and their descales, fp32 [b, h_k] or one
  // value (descale_batch_stride 0, descale_per_head 0); nullptr: 1.
  int is_fp8;
  const float *q_descale, *k_descale, *v_descale;
  int64_t descale_batch_stride;
  int descale_per_head;
};

struct FaEmuBackward {
  FaEmuTensor dout, dk, dv;
  float* dq_accum;  // zeroed fp32, laid out like a contiguous q; dq = dq_accum * softmax_scale
  int deterministic;
};

struct FaEmuKvCache {
  const int *cache_seqlens, *cache_leftpad, *cache_batch_idx;  // [b] or nullptr
  const int* block_table;                                       // [b, width] or nullptr
  int64_t block_table_batch_stride;
  int block_table_width, num_pages, page_size, capacity;
  FaEmuTensor k_new, v_new;  // data nullptr: nothing to append
  int seqlen_new;
  const float *rotary_cos, *rotary_sin;  // [seqlen_ro, rotary_dim / 2] or nullptr
  int rotary_dim, seqlen_ro, rotary_interleaved;
  void* q_rotated;  // [b, sq, h, d] contiguous: where the rotated q goes
  int num_splits;   // >= 1
};

}  // extern "C"

namespace {

flash::DType dtype_of(const FaEmuAttention& a) {
  return a.is_fp8 ? flash::DType::kFloat8E4m3 : a.is_bf16 ? flash::DType::kBFloat16 : flash::DType::kFloat16;
}

// attention_params.h: set_attention_params, set_window_params, set_score_mod_params and the
// dropout's keep probability. Returns whether the rows have a right edge (Is_causal).
bool fill_attention(flash::FwdParams& p, const FaEmuAttention& a) {
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data, p.o = a.out.data;
  p.softmax_lse = a.softmax_lse;
  p.q_batch_stride = a.q.batch_stride, p.q_row_stride = a.q.row_stride, p.q_head_stride = a.q.head_stride;
  p.k_batch_stride = a.k.batch_stride, p.k_row_stride = a.k.row_stride, p.k_head_stride = a.k.head_stride;
  p.v_batch_stride = a.v.batch_stride, p.v_row_stride = a.v.row_stride, p.v_head_stride = a.v.head_stride;
  p.o_batch_stride = a.out.batch_stride, p.o_row_stride = a.out.row_stride, p.o_head_stride = a.out.head_stride;
  p.b = a.batch, p.seqlen_q = a.seqlen_q, p.seqlen_k = a.seqlen_k, p.h = a.heads, p.h_k = a.heads_k, p.d = a.head_dim;
  p.scale_softmax = p.logit_scale = static_cast<float>(a.softmax_scale);
  p.scale_softmax_log2 = static_cast<float>(a.softmax_scale * M_LOG2E);
  p.lse_batch_stride = a.lse_batch_stride, p.lse_head_stride = a.lse_head_stride;
  p.cu_seqlens_q = a.cu_seqlens_q, p.cu_seqlens_k = a.cu_seqlens_k;
  p.total_q = a.total_q, p.total_k = a.total_k;
  if (a.block_table != nullptr) {  // attention_params.h: set_paged_kv_params
    p.block_table = a.block_table;
    p.block_table_batch_stride = a.block_table_batch_stride;
    p.block_table_width = a.block_table_width;
    p.num_pages = a.num_pages;
    p.page_shift = static_cast<int>(std::log2(static_cast<double>(a.page_size)));
  }

  auto side = [](int size) { return size < 0 || size >= flash::kUnboundedWindow ? flash::kUnboundedWindow : size; };
  p.window_left = side(a.window_left);
  p.window_right = a.is_causal ? 0 : side(a.window_right);

  if (a.softcap > 0) {
    p.logit_scale = static_cast<float>(a.softcap);
    p.scale_softmax_log2 = static_cast<float>(a.softcap * M_LOG2E);
    p.softcap_prescale = static_cast<float>(a.softmax_scale / a.softcap);
  }
  p.alibi_slopes = a.alibi_slopes;
  p.alibi_batch_stride = a.alibi_batch_stride;
  p.q_descale = a.q_descale, p.k_descale = a.k_descale, p.v_descale = a.v_descale;
  p.descale_batch_stride = a.descale_batch_stride;
  p.descale_per_head = a.descale_per_head != 0;

  p.has_dropout = a.dropout_p > 0;
  if (p.has_dropout) {
    const double keep = 1.0 - a.dropout_p;
    p.keep_threshold = static_cast<uint32_t>(std::min(keep * 4294967296.0, 4294967295.0));
    p.rp_keep = static_cast<float>(1.0 / keep);
    p.philox_seed = a.philox_seed, p.philox_offset = a.philox_offset;
    p.rng_state = a.rng_state;
  }
  return p.window_right != flash::kUnboundedWindow;
}

}  // namespace

extern "C" {

const char* fa_emu_target() { return fa_emu::target_name(); }
int fa_emu_wave_size() { return fa_emu::wave_size(); }
int fa_emu_lds_bytes() { return fa_emu::lds_bytes(); }
const char* fa_emu_last_error() { return fa_emu::last_error_message(); }
void fa_emu_set_layout_dir(const char* dir) { fa_emu::set_layout_dir(dir); }
void fa_emu_set_seed(uint64_t seed) { fa_emu::set_seed(seed); }
int fa_emu_last_launch_resumed_blocks() { return fa_emu::last_launch_resumed_blocks(); }

int fa_emu_compiled_head_dims(int* out, int capacity) {
  const std::vector<int> dims = flash::compiled_head_dims();
  for (size_t i = 0; i < dims.size() && static_cast<int>(i) < capacity; ++i) out[i] = dims[i];
  return static_cast<int>(dims.size());
}

// Dynamic LDS of each kernel family at a compiled head dim (tile_config.h), the same for fp16 and
// bf16: what decides whether it can launch on the target. -1: no such head dim.
int fa_emu_lds_of(const char* kernel, int head_dim) {
  int bytes = -1;
  auto pick = [&](auto dim) {
    constexpr int d = decltype(dim)::value;
    if (head_dim != d) return;
    // The AMD kernels of the target's matrix-core family (tile_config.h).
    constexpr flash::AmdFamily family = FA_AMD_DEVICE_FAMILY;
    if (std::strcmp(kernel, "fwd") == 0) bytes = flash::FwdTraitsAmd<flash::half_t, family, d>::kSmemBytes;
    if (std::strcmp(kernel, "bwd") == 0) bytes = flash::BwdTraitsAmd<flash::half_t, family, d>::kSmemBytes;
    if (std::strcmp(kernel, "kvcache") == 0) bytes = flash::KvCacheTraitsAmd<flash::half_t, family, d>::kSmemBytes;
  };
  pick(std::integral_constant<int, 32>{}), pick(std::integral_constant<int, 64>{});
  pick(std::integral_constant<int, 96>{}), pick(std::integral_constant<int, 128>{});
  pick(std::integral_constant<int, 192>{}), pick(std::integral_constant<int, 256>{});
  return bytes;
}

int fa_emu_fwd(const FaEmuAttention* a) {
  flash::FwdParams p{};
  const bool has_right_edge = fill_attention(p, *a);
  return flash::run_mha_fwd(p, dtype_of(*a), has_right_edge, nullptr);
}

// run_backward of attention_params.h: dq_accum comes zeroed; softmax_d and the semaphore live here.
int fa_emu_bwd(const FaEmuAttention* a, const FaEmuBackward* g) {
  flash::BwdParams p{};
  const bool has_right_edge = fill_attention(p, *a);
  const int64_t lse_rows = a->cu_seqlens_q != nullptr ? int64_t(a->heads) * a->total_q
                                                      : int64_t(a->batch) * a->heads * a->seqlen_q;
  std::vector<float> softmax_d(static_cast<size_t>(lse_rows));
  const int64_t m_blocks = (a->seqlen_q + flash::kDqSemaphoreBlockM - 1) / flash::kDqSemaphoreBlockM;
  std::vector<int> semaphore(g->deterministic ? static_cast<size_t>(a->batch) * a->heads * m_blocks : 0, 0);
  p.dout = g->dout.data;
  p.do_batch_stride = g->dout.batch_stride, p.do_row_stride = g->dout.row_stride;
  p.do_head_stride = g->dout.head_stride;
  p.dk = g->dk.data, p.dv = g->dv.data;
  p.dk_batch_stride = g->dk.batch_stride, p.dk_row_stride = g->dk.row_stride, p.dk_head_stride = g->dk.head_stride;
  p.dv_batch_stride = g->dv.batch_stride, p.dv_row_stride = g->dv.row_stride, p.dv_head_stride = g->dv.head_stride;
  p.dq_accum = g->dq_accum;
  p.dq_accum_batch_stride = a->cu_seqlens_q != nullptr ? 0 : int64_t(a->seqlen_q) * a->heads * a->head_dim;
  p.softmax_d = softmax_d.data();
  p.dq_semaphore = g->deterministic ? semaphore.data() : nullptr;
  p.deterministic = g->deterministic != 0;
  return flash::run_mha_bwd(p, dtype_of(*a), has_right_edge, nullptr);
}

// fwd_kvcache.cpp from the cache's geometry on: paging, append, rotary, the GQA decode folding,
// and the split-KV partials.
int fa_emu_fwd_kvcache(const FaEmuAttention* a, const FaEmuKvCache* c) {
  flash::KvCacheParams p{};
  FaEmuAttention attention = *a;
  if (c->rotary_cos != nullptr) attention.q.data = c->q_rotated;
  const bool has_right_edge = fill_attention(p, attention);
  if (c->rotary_cos != nullptr) {  // the rotated copy is contiguous
    p.q_head_stride = a->head_dim, p.q_row_stride = int64_t(a->heads) * a->head_dim;
    p.q_batch_stride = int64_t(a->seqlen_q) * p.q_row_stride;
  }
  p.seqlen_k = c->capacity;
  p.has_dropout = false;
  if (c->block_table != nullptr) {
    p.block_table = c->block_table;
    p.block_table_batch_stride = c->block_table_batch_stride;
    p.block_table_width = c->block_table_width;
    p.num_pages = c->num_pages;
    p.page_shift = static_cast<int>(std::log2(static_cast<double>(c->page_size)));
  }
  p.cache_seqlens = c->cache_seqlens, p.cache_batch_idx = c->cache_batch_idx, p.cache_leftpad = c->cache_leftpad;
  p.seqlen_new = c->seqlen_new;
  if (c->seqlen_new > 0) {
    p.k_new = c->k_new.data, p.v_new = c->v_new.data;
    p.knew_batch_stride = c->k_new.batch_stride, p.knew_row_stride = c->k_new.row_stride;
    p.knew_head_stride = c->k_new.head_stride;
    p.vnew_batch_stride = c->v_new.batch_stride, p.vnew_row_stride = c->v_new.row_stride;
    p.vnew_head_stride = c->v_new.head_stride;
  }
  if (c->rotary_cos != nullptr) {
    p.rotary_cos = c->rotary_cos, p.rotary_sin = c->rotary_sin;
    p.rotary_dim = c->rotary_dim, p.seqlen_ro = c->seqlen_ro;
    p.rotary_interleaved = c->rotary_interleaved != 0;
    p.rotary_q_per_row = has_right_edge || p.window_left != flash::kUnboundedWindow;
    p.q_unrotated = a->q.data;
    p.qsrc_batch_stride = a->q.batch_stride, p.qsrc_row_stride = a->q.row_stride, p.qsrc_head_stride = a->q.head_stride;
  }
  p.nheads_q = a->heads;
  p.seqlen_q_rows = a->seqlen_q;

  const int group = a->heads / a->heads_k;
  if (a->seqlen_q == 1 && group > 1 && p.window_left == flash::kUnboundedWindow && a->alibi_slopes == nullptr &&
      (p.window_right == flash::kUnboundedWindow || p.window_right == 0)) {
    p.window_right = flash::kUnboundedWindow;
    p.seqlen_q = group;
    p.h = a->heads_k;
    p.q_row_stride = p.q_head_stride, p.q_head_stride *= group;
    p.o_row_stride = p.o_head_stride, p.o_head_stride *= group;
    p.lse_batch_stride = a->heads, p.lse_head_stride = group;
  }

  const int key_blocks = (c->capacity + flash::kKvCacheBlockN - 1) / flash::kKvCacheBlockN;
  p.num_splits = std::max(1, std::min(c->num_splits, key_blocks));
  std::vector<float> o_accum, lse_accum;
  if (p.num_splits > 1) {
    const int64_t rows = int64_t(p.num_splits) * p.b * p.h * p.seqlen_q;
    o_accum.resize(static_cast<size_t>(rows * flash::kernel_head_dim(p.d)));
    lse_accum.resize(static_cast<size_t>(rows));
    p.o_accum = o_accum.data();
    p.lse_accum = lse_accum.data();
  }
  return flash::run_mha_fwd_kvcache(p, dtype_of(*a), nullptr);
}

}  // extern "C"
