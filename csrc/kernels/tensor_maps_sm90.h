// The TMA descriptions (arch/tma_sm90.h) of an attention call's operands, as the Hopper kernels
// read (or, dq_accum, add to) them: one [batch, heads, rows, head dim] map per tensor, in boxes
// of 128 bytes x box_rows rows. Varlen tensors are one packed batch of total rows.
#pragma once

#include <type_traits>

#include "arch/tma_sm90.h"
#include "params.h"
#include "platform.h"

namespace flash {

// The map of a query-side operand (q, o, dout, dq_accum: seqlen_q or total_q rows, h heads) or a
// key-side one (k, v) of T = half_t, bf16_t or float; false when TMA cannot describe its
// strides (the dispatch checks hopper_operands_describable first).
template <class T>
bool encode_operand_map(CUtensorMap* map, const FwdParams& params, const void* base, bool query_side,
                        int64_t batch_stride, int64_t row_stride, int64_t head_stride, int box_rows) {
  const bool varlen = params.cu_seqlens_q != nullptr;
  const int64_t rows = query_side ? (varlen ? params.total_q : params.seqlen_q)
                                  : (varlen ? params.total_k : params.seqlen_k);
  const CUtensorMapDataType type = std::is_same<T, float>::value        ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                   : std::is_same<T, bf16_t>::value     ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                   : std::is_same<T, fp8_e4m3_t>::value ? CU_TENSOR_MAP_DATA_TYPE_UINT8
                                                                        : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  return TensorMap4d::encode(map, base, type, params.d, rows,
                             query_side ? params.h : params.h_k, varlen ? 1 : params.b, row_stride, head_stride,
                             batch_stride, box_rows);
}

// Whether TMA can describe a query-side or key-side operand (encode_operand_map's arguments).
inline bool operand_describable(const FwdParams& params, const void* base, bool query_side, int elem_bytes,
                                int64_t batch_stride, int64_t row_stride, int64_t head_stride) {
  const bool varlen = params.cu_seqlens_q != nullptr;
  const int64_t rows = query_side ? (varlen ? params.total_q : params.seqlen_q)
                                  : (varlen ? params.total_k : params.seqlen_k);
  return TensorMap4d::describable(base, elem_bytes, params.d, rows, query_side ? params.h : params.h_k,
                                  varlen ? 1 : params.b, row_stride, head_stride, batch_stride);
}

// Whether the Hopper forward (q, k, v) or backward (also dout) can take the call's operands as
// TMA maps; the dispatch sends the others to the portable kernels.
inline bool hopper_operands_describable(const FwdParams& params, const BwdParams* backward) {
  const bool qkv = operand_describable(params, params.q, true, 2, params.q_batch_stride, params.q_row_stride,
                                       params.q_head_stride) &&
                   operand_describable(params, params.k, false, 2, params.k_batch_stride, params.k_row_stride,
                                       params.k_head_stride) &&
                   operand_describable(params, params.v, false, 2, params.v_batch_stride, params.v_row_stride,
                                       params.v_head_stride);
  return qkv && (backward == nullptr ||
                 operand_describable(params, backward->dout, true, 2, backward->do_batch_stride,
                                     backward->do_row_stride, backward->do_head_stride));
}

// The Hopper fp8 forward's V^T (fp8_vt_sm90.h: [b, h_k, d, v_transposed_keys]) as a map whose rows
// are channels and whose elements are keys: boxes of 128 keys x box_channels channels.
inline bool encode_vt_map(CUtensorMap* map, const FwdParams& params, int box_channels) {
  const int64_t keys = params.v_transposed_keys;
  return TensorMap4d::encode(map, params.v_transposed, CU_TENSOR_MAP_DATA_TYPE_UINT8, static_cast<int>(keys),
                             params.d, params.h_k, params.b, keys, int64_t(params.d) * keys,
                             int64_t(params.h_k) * params.d * keys, box_channels);
}

// q in boxes of box_q rows, k and v in boxes of box_kv rows.
template <class T>
bool encode_qkv_maps(const FwdParams& params, int box_q, int box_kv, CUtensorMap* q, CUtensorMap* k,
                     CUtensorMap* v) {
  return encode_operand_map<T>(q, params, params.q, true, params.q_batch_stride, params.q_row_stride,
                               params.q_head_stride, box_q) &&
         encode_operand_map<T>(k, params, params.k, false, params.k_batch_stride, params.k_row_stride,
                               params.k_head_stride, box_kv) &&
         encode_operand_map<T>(v, params, params.v, false, params.v_batch_stride, params.v_row_stride,
                               params.v_head_stride, box_kv);
}

}  // namespace flash
