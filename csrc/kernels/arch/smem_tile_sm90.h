// A tile of kRows rows x kHeadDim 16-bit elements in shared memory, laid out as wgmma's 128-byte
// swizzle expects: the head dim is cut into 64-element (128-byte) column blocks, each a
// [kRows][64] array whose 16-byte chunks are XOR-swizzled with row % 8, so 8 rows make one
// 1024-byte swizzle atom. The hardware applies the XOR to address bits, so tiles start 1024-byte
// aligned. The same bytes serve as a K-major operand (rows are M or N, the head dim is k: Q, K)
// and as an N-major one (rows are k, the head dim is N: V, read transposed). The columns need
// not be a head dim: the backward keeps dS^T (keys x queries) in one too, the d256 backward dS.
#pragma once

#include "../mma.h"
#include "../platform.h"
#include "tma_sm90.h"
#include "wgmma_sm90.h"

namespace flash {

// kElemBytes 1: fp8 elements (the fp8 forward), 128 of them a swizzle row.
template <int kRows, int kHeadDim, int kElemBytes = 2>
struct GmmaTile {
  static constexpr int kRowElems = 128 / kElemBytes, kChunkElems = 16 / kElemBytes;  // a swizzle row, a chunk
  static_assert(kHeadDim % kRowElems == 0 && kRows % 8 == 0, "whole 128-byte rows and swizzle atoms");
  static constexpr int kChunks = kHeadDim / kChunkElems;  // 16-byte chunks per row
  static constexpr int kColBlockElems = kRows * kRowElems;
  static constexpr int kElems = kRows * kHeadDim;

  static FA_HOST_DEVICE int offset(int row, int chunk) {
    return (chunk / 8) * kColBlockElems + row * kRowElems + ((chunk % 8) ^ (row % 8)) * kChunkElems;
  }

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // Copies rows row .. row + kRows - 1 of (head, batch) from the map into the tile, one TMA box
  // per column block; the bytes count against bar.
  // column0: the first column (the fp8 forward's V^T tiles start at their key block's keys).
  template <class T>
  static FA_DEVICE void load_tma(T* tile, const CUtensorMap* map, uint64_t* bar, int row, int head, int batch,
                                 int column0 = 0) {
#pragma unroll
    for (int cb = 0; cb < kHeadDim / kRowElems; ++cb) {
      tma_load(tile + cb * kColBlockElems, map, bar, column0 + kRowElems * cb, row, head, batch);
    }
  }

  // Where lane `lane` points ldmatrix (x4) for the A fragments (mma.sync's layout) of rows
  // row0 .. row0 + 15 and head-dim elements 16 kk .. 16 kk + 15: row row0 + lane % 16, 16-byte
  // chunk 2 kk + lane / 16 (matrices: rows 0-7 / 8-15 of the low 8 columns, then of the high 8).
  template <class T>
  static FA_DEVICE const T* a_fragment_row(const T* tile, int row0, int kk, int lane) {
    return tile + offset(row0 + lane % 16, 2 * kk + lane / 16);
  }

  // Stores an A fragment (rows row0 .. row0 + 15, columns 16 kk .. 16 kk + 15) with stmatrix
  // (x4): lane l addresses a row of matrix l / 8, i.e. of row half (l / 8) % 2 and 16-byte
  // chunk 2 kk + l / 16.
  template <class T>
  static FA_DEVICE void store_a_fragment(T* tile, int row0, int kk, int lane, const uint32_t (&fragment)[4]) {
    const int matrix = lane / 8;
    stmatrix_x4(smem_u32(tile + offset(row0 + 8 * (matrix % 2) + lane % 8, 2 * kk + matrix / 2)), fragment);
  }

  // Stores the transpose of an A fragment: its rows row0 .. row0 + 15 (a multiple of 8) become
  // columns, its columns 16 kk .. 16 kk + 15 rows (stmatrix.trans: matrix m = lane / 8 holds
  // fragment rows 8 (m % 2) .., columns 8 (m / 2) ..; lane l addresses a row of matrix l / 8).
  template <class T>
  static FA_DEVICE void store_a_fragment_transposed(T* tile, int row0, int kk, int lane,
                                                    const uint32_t (&fragment)[4]) {
    const int matrix = lane / 8;
    stmatrix_x4_trans(smem_u32(tile + offset(16 * kk + 8 * (matrix / 2) + lane % 8, row0 / 8 + matrix % 2)), fragment);
  }

  // A descriptor for the tile plus a byte offset (a multiple of 16): the start address sits in the
  // low 14 bits in 16-byte units and never carries out of them (shared memory < 256 KB), so the
  // offset adds to the whole descriptor. The base is the same for every k step of a product, so
  // the compiler builds it once and each step costs one add.
  static FA_DEVICE uint64_t descriptor(uint32_t tile_addr, uint32_t leading_bytes, uint32_t offset_bytes) {
    return gmma_descriptor(tile_addr, leading_bytes, 1024) + (offset_bytes >> 4);
  }
  // K-major operand: rows row0 .. row0 + 63 (A) or all kRows (B), the k-step kk's 32 bytes of
  // head-dim elements (16 kk .. 16 kk + 15; fp8: 32 kk .. 32 kk + 31). Inside an atom the k offset
  // is a plain 32-byte step; the leading byte offset is unused.
  static FA_DEVICE uint64_t k_major(uint32_t tile_addr, int row0, int kk) {
    return descriptor(tile_addr, 16, kElemBytes * ((kk / 4) * kColBlockElems + row0 * kRowElems) + (kk % 4) * 32);
  }
  // N-major operand: rows (k) 16 kk .. 16 kk + 15, the columns (N) from column block col_block
  // on; the next 64 columns are a column block away (leading byte offset), the next 8 rows one
  // atom away (stride). An M-major A operand (64 columns) is read the same way.
  static FA_DEVICE uint64_t n_major(uint32_t tile_addr, int kk, int col_block = 0) {
    static_assert(kElemBytes == 2, "wgmma reads 16-bit operands only transposed");
    return descriptor(tile_addr, kColBlockElems * 2, 2 * (col_block * kColBlockElems + kk * 16 * 64));
  }
#endif
};

}  // namespace flash
