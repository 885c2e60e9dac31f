// A tile of `kRows` rows x kHeadDim 16-bit elements in shared memory, row-major in 16-byte
// chunks with an XOR swizzle on the chunk index so that the eight row addresses of one
// load_matrix (same logical chunk, eight consecutive rows) hit eight different bank groups:
//
//   chunks per row % 8 == 0:  physical = chunk ^ (row % 8)          (rows of >= 128 bytes)
//   chunks per row % 8 == 4:  physical = chunk ^ ((row / 2) % 4)    (64- or 192-byte rows:
//                             two rows share a 128-byte line, row parity already splits them)
//
// The XOR only touches the low bits of the chunk index, so it never leaves the row.
#pragma once

#include "platform.h"
#include "mma.h"

namespace flash {

template <int kRows, int kHeadDim, bool kXorOffsets = false>
struct SmemTile {
  static constexpr int kChunks = kHeadDim / 8;
  static_assert(kChunks % 4 == 0, "the swizzle needs rows of a multiple of 64 bytes");

  static FA_HOST_DEVICE int swizzle_bits(int row) { return kChunks % 8 == 0 ? (row & 7) : ((row >> 1) & 3); }
  static FA_HOST_DEVICE int offset(int row, int chunk) { return row * kHeadDim + ((chunk ^ swizzle_bits(row)) << 3); }

  // Fragment loads address offset(row0 + row, chunk) for a lane-dependent `row`, a row0 that is a
  // multiple of 8 (the swizzle ignores it) and an even chunk plus a lane-dependent 0/1.
  // With kXorOffsets and rows of a multiple of 64 elements (bits 3-5 of row * kHeadDim clear)
  // the swizzle is an XOR on one per-lane offset: one register and one instruction per load.
  // Otherwise the four per-lane offsets the XOR can take are precomputed and fold into the
  // loads' immediates. Which spills less depends on the kernel (benchmarks/NOTES.md).
  struct LaneOffsets {
    static constexpr bool kXor = kXorOffsets && kHeadDim % 64 == 0;
    int base[kXor ? 1 : 4];
    FA_DEVICE int at(int row0, int chunk_even) const {
      const int fixed = row0 * kHeadDim + ((chunk_even & ~7) << 3);
      if constexpr (kXor) return (base[0] ^ ((chunk_even & 7) << 3)) + fixed;
      else return base[(chunk_even & 7) >> 1] + fixed;
    }
  };
  static FA_DEVICE LaneOffsets lane_offsets(int row, int chunk_bit) {
    LaneOffsets offsets;
    const int x = chunk_bit ^ swizzle_bits(row);
#pragma unroll
    for (int j = 0; j < (LaneOffsets::kXor ? 1 : 4); ++j) offsets.base[j] = row * kHeadDim + (((2 * j) ^ x) << 3);
    return offsets;
  }

  // Global -> shared, 16 bytes per copy, all threads of the block cooperating. Rows at or past
  // rows_valid and chunks at or past head_dim read as zeros, so padding never carries NaN/Inf.
  template <int kNThreads, class T>
  static FA_DEVICE void load_async(T* smem, const T* gmem, int64_t row_stride, int rows_valid, int head_dim, int tid) {
    constexpr int kCopies = kRows * kChunks;
    static_assert(kCopies % kNThreads == 0, "every thread issues the same number of copies");
    if constexpr (kNThreads % kChunks == 0 && (kNThreads / kChunks) % 8 == 0) {
      // Each thread keeps one chunk column and steps down the rows: one pointer, one add per copy.
      constexpr int kRowStep = kNThreads / kChunks;
      const int row0 = tid / kChunks, chunk = tid % kChunks;
      const bool chunk_valid = chunk * 8 < head_dim;
      const T* src = gmem + row0 * row_stride + chunk * 8;
      T* dst = smem + offset(row0, chunk);
#pragma unroll
      for (int i = 0; i < kCopies / kNThreads; ++i) {
        const bool valid = chunk_valid && row0 + i * kRowStep < rows_valid;
        copy_async_16(dst + i * kRowStep * kHeadDim, valid ? src : gmem, valid);
        src += kRowStep * row_stride;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kCopies / kNThreads; ++i) {
        const int idx = tid + i * kNThreads;
        const int row = idx / kChunks, chunk = idx % kChunks;
        const bool valid = row < rows_valid && chunk * 8 < head_dim;
        copy_async_16(smem + offset(row, chunk), valid ? gmem + row * row_stride + chunk * 8 : gmem, valid);
      }
    }
  }

  // Whether load_pages_async serves pages of kPageRows rows and up: every copy step of the strided
  // load above moves all threads kRowStep rows on, so with pages of >= kRowStep rows a step's rows
  // never straddle two pages.
  template <int kNThreads, int kPageRows>
  static constexpr bool kPagedRowSteps =
      kNThreads % kChunks == 0 && (kNThreads / kChunks) % 8 == 0 && kNThreads / kChunks <= kPageRows;

  // Global -> shared for rows that lie in pages of page_rows (a power of two >= kRowStep, see
  // kPagedRowSteps) rows each, row_stride apart inside a page: load_async's copies with its one
  // pointer a thread, re-based only at the steps that start a page. page_offset(r): the offset of
  // row r of the tile from `base`, called with r a multiple of kRowStep (the same for every thread,
  // so the page lookup is uniform); for pages of >= kRows rows, once. The tile's first row must be
  // a multiple of kRows (a key block), so that r = 0 mod page_rows is where a page starts.
  template <int kNThreads, class T, class PageOffset>
  static FA_DEVICE void load_pages_async(T* smem, const T* base, const PageOffset& page_offset, int64_t row_stride,
                                         int page_rows, int rows_valid, int head_dim, int tid) {
    constexpr int kRowStep = kNThreads / kChunks;
    static_assert(kPagedRowSteps<kNThreads, kRowStep>, "load_pages_async needs load_async's strided copies");
    const int row0 = tid / kChunks, chunk = tid % kChunks;
    const T* thread_base = base + (row0 * row_stride + chunk * 8);
    const T* src = thread_base;
    T* dst = smem + offset(row0, chunk);
    int rows_left = chunk * 8 < head_dim ? rows_valid - row0 : 0;  // this thread's rows from dst on
#pragma unroll 1
    for (int r = 0; r < kRows; r += kRowStep) {
      if ((r & (page_rows - 1)) == 0) src = thread_base + page_offset(r);
      copy_async_16(dst, rows_left > 0 ? src : thread_base, rows_left > 0);
      src += kRowStep * row_stride;
      dst += kRowStep * kHeadDim;
      rows_left -= kRowStep;
    }
  }

  // Global -> shared for rows that need not be evenly strided (a paged KV cache): row_ptr(row)
  // gives row `row`'s address, for row < rows_valid (>= 1); other rows and chunks read as zeros.
  // kUnroll 1 issues the copies from a loop: fewer registers where a kernel's peak is.
  template <int kNThreads, class T, class RowPtr, int kUnroll = kRows * kChunks>
  static FA_DEVICE void load_rows_async(T* smem, const RowPtr& row_ptr, int rows_valid, int head_dim, int tid) {
    constexpr int kCopies = kRows * kChunks;
#pragma unroll kUnroll
    for (int i = 0; i < (kCopies + kNThreads - 1) / kNThreads; ++i) {
      const int idx = tid + i * kNThreads;
      if (kCopies % kNThreads != 0 && idx >= kCopies) break;
      const int row = idx / kChunks, chunk = idx % kChunks;
      const bool valid = row < rows_valid && chunk * 8 < head_dim;
      copy_async_16(smem + offset(row, chunk), row_ptr(valid ? row : 0) + (valid ? chunk * 8 : 0), valid);
    }
  }
};

}  // namespace flash
