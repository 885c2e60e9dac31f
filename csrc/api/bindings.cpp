// Registration only: op schemas, their CUDA kernels, and a Python module to import.
// Fake (meta) implementations live in flash_attn_rocm/_ops.py.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../kernels/api.h"
#include "ops.h"

namespace {

std::vector<int64_t> compiled_head_dims() {
  const std::vector<int> dims = flash::compiled_head_dims();
  return {dims.begin(), dims.end()};
}

}  // namespace

TORCH_LIBRARY(flash_attn_rocm, m) {
  // Every op ends in flash-attn's extras: softcap (0: off), alibi_slopes, dropout_p. The forward
  // returns the (seed, offset) its dropout drew with as rng_state (int64 [2], or [0] without
  // dropout); the backward takes it back. varlen_fwd's block_table (int32 [batch, max_pages]) makes
  // k and v paged [num_pages, page_size, h_k, d] (chunked prefill; forward only).
  m.def(
      "fwd(Tensor q, Tensor k, Tensor v, float softmax_scale, bool is_causal, int window_size_left=-1, "
      "int window_size_right=-1, float softcap=0.0, Tensor? alibi_slopes=None, float dropout_p=0.0) "
      "-> (Tensor out, Tensor softmax_lse, Tensor rng_state)");
  // fp8 q, k, v (the device's e4m3) with fp32 descales; out bf16. AMD gfx942/gfx950 only.
  m.def(
      "fwd_fp8(Tensor q, Tensor k, Tensor v, Tensor? q_descale, Tensor? k_descale, Tensor? v_descale, "
      "float softmax_scale, bool is_causal, int window_size_left=-1, int window_size_right=-1) "
      "-> (Tensor out, Tensor softmax_lse)");
  m.def(
      "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, float softmax_scale, "
      "bool is_causal, bool deterministic, int window_size_left=-1, int window_size_right=-1, float softcap=0.0, "
      "Tensor? alibi_slopes=None, float dropout_p=0.0, Tensor? rng_state=None) -> (Tensor dq, Tensor dk, Tensor dv)");
  m.def(
      "varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, "
      "int max_seqlen_k, float softmax_scale, bool is_causal, int window_size_left=-1, int window_size_right=-1, "
      "float softcap=0.0, Tensor? alibi_slopes=None, float dropout_p=0.0, Tensor? block_table=None) "
      "-> (Tensor out, Tensor softmax_lse, Tensor rng_state)");
  m.def(
      "varlen_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor softmax_lse, Tensor cu_seqlens_q, "
      "Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float softmax_scale, bool is_causal, "
      "bool deterministic, int window_size_left=-1, int window_size_right=-1, float softcap=0.0, "
      "Tensor? alibi_slopes=None, float dropout_p=0.0, Tensor? rng_state=None) -> (Tensor dq, Tensor dk, Tensor dv)");
  // Appends k, v into the caches in place (hence the mutation annotations), then attends.
  m.def(
      "fwd_kvcache(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor? k=None, Tensor? v=None, "
      "Tensor? rotary_cos=None, Tensor? rotary_sin=None, Tensor? cache_seqlens=None, Tensor? cache_batch_idx=None, "
      "Tensor? cache_leftpad=None, Tensor? block_table=None, float softmax_scale=1.0, bool is_causal=False, "
      "int window_size_left=-1, int window_size_right=-1, float softcap=0.0, bool rotary_interleaved=True, "
      "Tensor? alibi_slopes=None, int num_splits=0) -> (Tensor out, Tensor softmax_lse)");
  m.def("compiled_head_dims() -> int[]", &compiled_head_dims);
  // Whether fwd_fp8 has a kernel for head_dim on the current device.
  m.def("fp8_forward_available(int head_dim) -> bool", &flash_api::fp8_forward_available);
  // Tests and benchmarks switch the Hopper kernels off to compare them with the portable ones.
  m.def("set_hopper_kernels(bool enabled) -> bool", &flash::set_hopper_kernels);
  m.def("set_unverified_kernels(bool enabled) -> bool", &flash::set_unverified_kernels);
  m.def("kernel_family(bool backward, int head_dim, bool bf16, bool extras, Tensor? q=None, Tensor? k=None, "
        "Tensor? v=None, Tensor? dout=None, bool paged=False, bool dropout=False) -> str[]",
        &flash_api::kernel_family);
}

TORCH_LIBRARY_IMPL(flash_attn_rocm, CUDA, m) {
  m.impl("fwd", &flash_api::fwd);
  m.impl("fwd_fp8", &flash_api::fwd_fp8);
  m.impl("bwd", &flash_api::bwd);
  m.impl("varlen_fwd", &flash_api::varlen_fwd);
  m.impl("varlen_bwd", &flash_api::varlen_bwd);
  m.impl("fwd_kvcache", &flash_api::fwd_kvcache);
}

// `import flash_attn_rocm._C` loads the library, which runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "flash_attn_rocm kernels (ops in torch.ops.flash_attn_rocm)", -1, nullptr};
  return PyModule_Create(&module);
}
