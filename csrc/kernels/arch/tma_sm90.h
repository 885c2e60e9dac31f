// NVIDIA sm_90a tensor memory accelerator (TMA): one thread copies a whole tile from global to
// shared memory, described by a tensor map that the host encodes once per call. The copy lands
// in wgmma's 128-byte swizzle (the map says so) and completes on an mbarrier that expects its
// bytes, so the consumers wait on the barrier alone: no copy instructions on the SM, no fence.
//
// Host: TensorMap4d describes a [batch, heads, rows, head dim] tensor (any strides that are
// multiples of 16 bytes) in boxes of 128 bytes of a row (64 16-bit or 32 fp32 elements) x
// box_rows rows, in the 128-byte swizzle; a tile of kHeadDim columns is several boxes, one per
// column block. Rows and columns past the tensor read as zeros, and reductions skip them.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include "../platform.h"
#include "mma_sm80.h"  // smem_u32

namespace flash {

struct TensorMap4d {
  // Whether TMA can describe the tensor: strides in multiples of 16 bytes (the packed stride is
  // taken for a dimension of one index, which is never stepped along), none 0 on a dimension of
  // more than one index (a broadcast), a 16-byte aligned base, and a driver that encodes maps.
  // Strides are in elements. encode() then succeeds; the dispatch asks this first.
  static bool describable(const void* base, int elem_bytes, int head_dim, int64_t rows, int heads, int batches,
                          int64_t row_stride, int64_t head_stride, int64_t batch_stride) {
    cuuint64_t dims[4], strides[3];
    return encode_function() != nullptr && reinterpret_cast<uintptr_t>(base) % 16 == 0 &&
           shape(elem_bytes, head_dim, rows, heads, batches, row_stride, head_stride, batch_stride, dims, strides);
  }

  // Encodes the map; false where describable() is.
  static bool encode(CUtensorMap* map, const void* base, CUtensorMapDataType type, int head_dim, int64_t rows,
                     int heads, int batches, int64_t row_stride, int64_t head_stride, int64_t batch_stride,
                     int box_rows) {
    const int elem_bytes = type == CU_TENSOR_MAP_DATA_TYPE_FLOAT32 ? 4 : type == CU_TENSOR_MAP_DATA_TYPE_UINT8 ? 1 : 2;
    if (!describable(base, elem_bytes, head_dim, rows, heads, batches, row_stride, head_stride, batch_stride)) {
      return false;
    }
    cuuint64_t dims[4], strides[3];
    shape(elem_bytes, head_dim, rows, heads, batches, row_stride, head_stride, batch_stride, dims, strides);
    const cuuint32_t box[4] = {cuuint32_t(128 / elem_bytes), cuuint32_t(box_rows), 1, 1};
    const cuuint32_t element_strides[4] = {1, 1, 1, 1};
    return encode_function()(map, type, 4, const_cast<void*>(base), dims, strides, box, element_strides,
                             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
  }

 private:
  static PFN_cuTensorMapEncodeTiled_v12000 encode_function() {
    static const auto encode_tiled = []() -> PFN_cuTensorMapEncodeTiled_v12000 {
      void* fn = nullptr;
      cudaDriverEntryPointQueryResult found;
      if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
              cudaSuccess ||
          found != cudaDriverEntryPointSuccess) {
        return nullptr;
      }
      return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
    }();
    return encode_tiled;
  }

  // The map's dims and byte strides; false for strides TMA cannot take.
  static bool shape(int elem_bytes, int head_dim, int64_t rows, int heads, int batches, int64_t row_stride,
                    int64_t head_stride, int64_t batch_stride, cuuint64_t (&dims)[4], cuuint64_t (&strides)[3]) {
    const cuuint64_t bytes = elem_bytes;
    dims[0] = cuuint64_t(head_dim), dims[1] = cuuint64_t(rows), dims[2] = cuuint64_t(heads), dims[3] = cuuint64_t(batches);
    strides[0] = cuuint64_t(row_stride) * bytes, strides[1] = cuuint64_t(head_stride) * bytes;
    strides[2] = cuuint64_t(batch_stride) * bytes;
    for (int i = 0; i < 3; ++i) {
      if (dims[i + 1] == 1) strides[i] = (i == 0 ? dims[0] * bytes : strides[i - 1] * dims[i]);
      if (strides[i] == 0 || strides[i] % 16 != 0 || strides[i] >= (cuuint64_t(1) << 40)) return false;
    }
    return true;
  }
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Arrives on the barrier and raises the bytes its current phase waits for.
FA_DEVICE void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(
                   smem_u32(bar)),
               "r"(bytes)
               : "memory");
}

// Copies the box at (column, row, head, batch) of the map into shared memory (1024-byte
// aligned for the swizzle); its bytes count against the barrier's expected ones.
FA_DEVICE void tma_load(void* smem, const CUtensorMap* map, uint64_t* bar, int column, int row, int head, int batch) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_u32(smem)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(column), "r"(row), "r"(head), "r"(batch), "r"(smem_u32(bar))
      : "memory");
}

// Adds the fp32 box in shared memory (1024-byte aligned, in the map's swizzle) to the box at
// (column, row, head, batch) of the map, in the TMA unit; elements past the tensor are skipped.
// Completion is tracked in this thread's bulk groups (wgmma_sm90.h: bulk_commit, bulk_wait_read).
FA_DEVICE void tma_reduce_add(const CUtensorMap* map, const void* smem, int column, int row, int head, int batch) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%1, %2, %3, %4}], [%5];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(column), "r"(row), "r"(head), "r"(batch), "r"(smem_u32(smem))
      : "memory");
}

// Starts bringing the box at (column, row, head, batch) into L2, for a tma_load of it later.
FA_DEVICE void tma_prefetch_l2(const CUtensorMap* map, int column, int row, int head, int batch) {
  asm volatile("cp.async.bulk.prefetch.tensor.4d.L2.global.tile [%0, {%1, %2, %3, %4}];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(column), "r"(row), "r"(head), "r"(batch)
               : "memory");
}

FA_DEVICE void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

}  // namespace flash
