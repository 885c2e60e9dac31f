// Tile shapes of the forward kernel, one row per compiled head dim: the single table to tune.
// Each warp owns whole 16-row strips across the full kBlockN width, so the softmax never
// needs a reduction across warps. Numbers and their measurements: benchmarks/NOTES.md.
#pragma once

#include <type_traits>

#include "platform.h"

namespace flash {

template <int kHeadDim> struct FwdTile;
//                                  kBlockM        kBlockN        kNWarps
template <> struct FwdTile<32>  { static constexpr int kBlockM = 128, kBlockN = 128, kNWarps = 4; };
template <> struct FwdTile<64>  { static constexpr int kBlockM = 128, kBlockN = 128, kNWarps = 4; };
template <> struct FwdTile<96>  { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 4; };
template <> struct FwdTile<128> { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 4; };
template <> struct FwdTile<192> { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 8; };
template <> struct FwdTile<256> { static constexpr int kBlockM = 128, kBlockN = 64,  kNWarps = 8; };

template <class T_, int kHeadDim_>
struct FwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = FwdTile<kHeadDim>::kBlockM;
  static constexpr int kBlockN = FwdTile<kHeadDim>::kBlockN;
  static constexpr int kNWarps = FwdTile<kHeadDim>::kNWarps;
  static constexpr int kNThreads = kNWarps * kGroupSize;
  static constexpr int kMTiles = kBlockM / (16 * kNWarps);  // 16-row strips per warp
  static constexpr int kNTiles = kBlockN / 8;               // n8 tiles of S per strip
  static constexpr int kDTiles = kHeadDim / 8;              // n8 tiles of O per strip
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kHeadDim * int(sizeof(T));

  static_assert(kMTiles >= 1 && kMTiles * 16 * kNWarps == kBlockM, "kBlockM must split into 16-row strips");
  static_assert(kBlockN % 16 == 0 && kHeadDim % 32 == 0, "tiles must be whole mma steps");
};

// The Hopper forward (fwd_kernel_sm90.h): 128 query rows a block, kBlockN keys a step. Head dim
// 256: O alone takes 128 registers a thread, and a stage of 128 keys 128 KB, so the key blocks
// shrink to 80 and two stages fit (64 KB of Q + 2 x 80 KB). Head dim 64 takes kWideBlockN = 192
// keys a step (S 96 registers a thread, three stages of 48 KB: a step's products are half of
// d128's for the same softmax and barriers) without a right edge and from kWideMinSeqlenK = 4096
// keys on; shorter rows lose more to the last, partial block than the wider step saves, and the
// causal diagonal's masked blocks never paid for it (benchmarks/NOTES.md, session 10).
// The Hopper fp8 forward's V^T (fp8_vt_sm90.h): keys a block of the transposition takes, and the
// padding of V^T's keys (the op allocates it).
inline constexpr int kVtKeys = 64;

template <int kHeadDim> struct FwdTileSm90 {
  static constexpr int kBlockN = kHeadDim <= 128 ? 128 : 80, kWideBlockN = 0, kWideMinSeqlenK = 0;
  static constexpr int kFp8BlockN = 128;  // the fp8 forward: whole 128-byte rows of V^T's keys
};
template <> struct FwdTileSm90<64> {
  static constexpr int kBlockN = 128, kWideBlockN = 192, kWideMinSeqlenK = 4096, kFp8BlockN = 128;
};

// How the warps of a block share one product's output tile of kRows x kCols: kWarpRows warps
// along the rows, the rest along the columns; each warp owns kMT 16-row strips x kNT n8 tiles.
template <int kRows, int kCols, int kWarpRows, int kNWarps>
struct WarpGrid {
  static constexpr int kWarpCols = kNWarps / kWarpRows;
  static constexpr int kRowsPerWarp = kRows / kWarpRows, kColsPerWarp = kCols / kWarpCols;
  static constexpr int kMT = kRowsPerWarp / 16, kNT = kColsPerWarp / 8;
  static_assert(kWarpRows * kWarpCols == kNWarps && kMT * 16 * kWarpRows == kRows, "warps must tile the rows");
  static_assert(kColsPerWarp % 16 == 0 && kColsPerWarp * kWarpCols == kCols, "each warp takes whole x4 loads");
  static FA_HOST_DEVICE int row0(int warp) { return (warp % kWarpRows) * kRowsPerWarp; }
  static FA_HOST_DEVICE int col0(int warp) { return (warp / kWarpRows) * kColsPerWarp; }
};

// AMD (fwd_kernel_amd.h): the matrix-core family of the device decides the instruction and with it
// the tiles. A wave owns kMT instruction tiles of queries (32 rows each on CDNA, 16 on RDNA) and
// computes every key of a block against them; Q stays in registers where they hold it. Shared
// memory holds K [kBlockN][kHeadDim + 8] and V^T [kHeadDim][kBlockN + 8] (and Q without
// registers for it): at most 64 KB, the LDS of gfx90a, gfx942 and RDNA (gfx950 has 160).
// kCdna: gfx90a, gfx942 (MFMA 32x32x8); kCdna4: gfx950 (MFMA 32x32x16); kRdna3: gfx1100, kRdna4:
// gfx1201 (WMMA 16x16x16).
enum class AmdFamily { kCdna, kCdna4, kRdna3, kRdna4 };
constexpr bool is_cdna(AmdFamily family) { return family == AmdFamily::kCdna || family == AmdFamily::kCdna4; }
inline constexpr int kAmdLdsBytes = 64 * 1024;

template <AmdFamily kFamily, int kHeadDim> struct FwdTileAmd;
template <int kHeadDim> struct FwdTileAmd<AmdFamily::kCdna, kHeadDim> {
  static constexpr int kWaves = 4, kMT = 1, kBlockN = kHeadDim <= 128 ? 64 : 32, kDSplit = 1;
  static constexpr bool kQInRegisters = true;
};
template <int kHeadDim> struct FwdTileAmd<AmdFamily::kCdna4, kHeadDim> : FwdTileAmd<AmdFamily::kCdna, kHeadDim> {};
// RDNA has 256 VGPRs a lane and no AGPRs: 32 keys a step. RDNA3's operands take 16 values a lane
// per k16 step (RDNA4's 8), so on RDNA3 Q stays in LDS above head dim 64, where its fragments
// would crowd O's accumulators. Above head dim 128 O alone would take 128 VGPRs: two waves share a
// query tile (kDSplit), each holding half of O's channels and computing S over half of the head
// dim, and they add their partial S through LDS. On RDNA3 four such waves (32 query rows) keep Q
// beside K, V^T and the partial sums within 64 KB.
template <int kHeadDim> struct FwdTileAmd<AmdFamily::kRdna3, kHeadDim> {
  static constexpr int kWaves = 4, kMT = 1, kBlockN = 32, kDSplit = kHeadDim <= 128 ? 1 : 2;
  static constexpr bool kQInRegisters = kHeadDim <= 64;
};
template <int kHeadDim> struct FwdTileAmd<AmdFamily::kRdna4, kHeadDim> {
  static constexpr int kDSplit = kHeadDim <= 128 ? 1 : 2, kWaves = 4 * kDSplit, kMT = 1, kBlockN = 32;
  static constexpr bool kQInRegisters = true;
};

// The KV-cache forward on AMD: one wave a block (decode has few query rows), kBlockN keys a step;
// the blocks split the keys (split-KV) where the rows are too few to fill the device. Its 16 rows
// of Q cost little LDS, so on RDNA (no AGPRs) they stay there.
template <AmdFamily kFamily, int kHeadDim> struct KvCacheTileAmd {
  static constexpr int kWaves = 1, kMT = 1, kBlockN = 32, kDSplit = 1;
  static constexpr bool kQInRegisters = is_cdna(kFamily);
};
#if defined(FA_PLATFORM_HIP)
// RDNA above head dim 128: O alone would take 128 of a lane's 256 VGPRs, so two waves share the
// query tile, each with half of the head dim (the forward's kDSplit). LDS at d256: 49 KB.
template <int kHeadDim> struct KvCacheTileAmd<AmdFamily::kRdna3, kHeadDim> {
  static constexpr int kDSplit = kHeadDim <= 128 ? 1 : 2, kWaves = kDSplit, kMT = 1, kBlockN = 32;
  static constexpr bool kQInRegisters = false;
};
template <int kHeadDim>
struct KvCacheTileAmd<AmdFamily::kRdna4, kHeadDim> : KvCacheTileAmd<AmdFamily::kRdna3, kHeadDim> {};
#endif

template <class T_, AmdFamily kFamily_, int kHeadDim_, class Tile_ = FwdTileAmd<kFamily_, kHeadDim_>>
struct AmdTraits {
  using T = T_;
  // fp8 q, k, v (the CDNA3/4 fp8 forward) give a bf16 output; otherwise out has the inputs' type.
  static constexpr bool kFp8 = std::is_same_v<T, fp8_e4m3_t>;
  using OutT = std::conditional_t<kFp8, bf16_t, T>;
  static constexpr AmdFamily kFamily = kFamily_;
  static constexpr int kHeadDim = kHeadDim_;
  using Tile = Tile_;
  static constexpr int kWaveSize = is_cdna(kFamily) ? 64 : 32;
  static constexpr int kTileRows = is_cdna(kFamily) ? 32 : 16;  // queries per instruction tile
  static constexpr int kWaves = Tile::kWaves, kMT = Tile::kMT, kBlockN = Tile::kBlockN;
  static constexpr int kDSplit = Tile::kDSplit;  // waves sharing a query tile, each a part of the head dim
  static constexpr bool kQInRegisters = Tile::kQInRegisters;
  static constexpr int kNThreads = kWaves * kWaveSize;
  static constexpr int kRowsPerWave = kMT * kTileRows, kBlockM = kWaves / kDSplit * kRowsPerWave;
  static constexpr int kKStride = kHeadDim + 8;   // K and Q rows, padded against bank conflicts
  static constexpr int kVtStride = kBlockN + 8;   // V^T rows
  // With the head dim split, each wave's partial S: kRowsPerWave x kBlockN floats.
  static constexpr int kSwapFloats = kDSplit > 1 ? kWaves * kRowsPerWave * kBlockN : 0;
  static constexpr int kSmemBytes =
      (kBlockN * kKStride + kHeadDim * kVtStride + (kQInRegisters ? 0 : kBlockM * kKStride)) * int(sizeof(T)) +
      kSwapFloats * int(sizeof(float));
  static_assert(kSmemBytes <= kAmdLdsBytes, "the AMD kernels' tiles must fit 64 KB of LDS");
  static_assert(kHeadDim % kTileRows == 0 && kBlockN % 32 == 0, "whole instruction tiles");
  static_assert(kWaves % kDSplit == 0 && kHeadDim % (16 * kDSplit) == 0, "whole k-steps in each wave's part");
};
template <class T, AmdFamily kFamily, int kHeadDim>
using FwdTraitsAmd = AmdTraits<T, kFamily, kHeadDim>;

// The AMD backward (bwd_kernel_amd.h): a block owns kBlockN keys, kN (the instruction's N: 32 on
// CDNA, 16 on RDNA) per wave, and walks query blocks of kM rows (the instruction's M). LDS holds
// K and V [kBlockN][kHeadDim + 8] -- V not above head dim 128 -- Q and dO [kBlockM][kHeadDim
// + 8] and dS [kBlockM][kBlockN + 8], with lse and D: within 64 KB.
template <AmdFamily kFamily, int kHeadDim> struct BwdTileAmd {
  // Above head dim 128 one wave cannot hold dK and dV for every channel (256 accumulators a lane
  // at d256): two waves share the block's keys, each with half of the channels of dK and dV and
  // half of the head dim of S and dP, whose partial sums they swap through LDS. And V's operands
  // come straight from global memory (L1 and L2 serve the repeats): in LDS they would not fit
  // beside K, Q and dO.
  static constexpr int kKeyWaves = kHeadDim <= 128 ? 2 : 1, kDSplit = kHeadDim <= 128 ? 1 : 2;
  static constexpr bool kVFromGlobal = kHeadDim > 128;
};
// RDNA has 256 VGPRs a lane and no AGPRs: dK and dV together take 2 kHeadDim / 16 tiles of 8
// floats, so above head dim 64 the channels split over two waves, above 128 over four (each wave
// then holds at most 64 accumulators, as at d64). Split four ways the block's keys are one tile,
// so K and V fit LDS at every head dim. RDNA3's operands are twice RDNA4's (16 values a lane): its
// split starts above head dim 32.
template <int kHeadDim, int kUnsplitHeadDim> struct BwdTileAmdRdna {
  static constexpr int kKeyWaves = kHeadDim <= 128 ? 2 : 1;
  static constexpr int kDSplit = kHeadDim <= kUnsplitHeadDim ? 1 : kHeadDim <= 128 ? 2 : 4;
  static constexpr bool kVFromGlobal = false;
};
template <int kHeadDim> struct BwdTileAmd<AmdFamily::kRdna3, kHeadDim> : BwdTileAmdRdna<kHeadDim, 32> {};
template <int kHeadDim> struct BwdTileAmd<AmdFamily::kRdna4, kHeadDim> : BwdTileAmdRdna<kHeadDim, 64> {};

template <class T_, AmdFamily kFamily_, int kHeadDim_>
struct BwdTraitsAmd {
  using T = T_;
  static constexpr AmdFamily kFamily = kFamily_;
  static constexpr int kHeadDim = kHeadDim_;
  using Tile = BwdTileAmd<kFamily, kHeadDim>;
  static constexpr int kWaveSize = is_cdna(kFamily) ? 64 : 32;
  static constexpr int kTile = is_cdna(kFamily) ? 32 : 16;  // the instruction's M and N
  static constexpr int kKeyWaves = Tile::kKeyWaves, kDSplit = Tile::kDSplit;
  static constexpr int kWaves = kKeyWaves * kDSplit, kNThreads = kWaves * kWaveSize;
  static constexpr int kBlockN = kKeyWaves * kTile, kBlockM = kTile, kMinBlocksPerSm = 1;
  static constexpr bool kVFromGlobal = Tile::kVFromGlobal;
  static constexpr int kRowStride = kHeadDim + 8, kDsStride = kBlockN + 8;
  static constexpr int kKVElems = kBlockN * kRowStride, kQElems = kBlockM * kRowStride;
  // With the head dim split, S's (then dP's) partial sums: a tile a wave.
  static constexpr int kSwapFloats = kDSplit > 1 ? kWaves * kTile * kTile : 0;
  static constexpr int kSmemBytes = ((kVFromGlobal ? 1 : 2) * kKVElems + 2 * kQElems + kBlockM * kDsStride) *
                                        int(sizeof(T)) + (2 * kBlockM + kSwapFloats) * int(sizeof(float));
  static_assert(kSmemBytes <= kAmdLdsBytes, "the AMD backward's tiles must fit 64 KB of LDS");
  static_assert(kHeadDim % (kTile * kDSplit) == 0, "whole instruction tiles in each wave's channels");
};
template <class T, AmdFamily kFamily, int kHeadDim>
using KvCacheTraitsAmd = AmdTraits<T, kFamily, kHeadDim, KvCacheTileAmd<kFamily, kHeadDim>>;

// KV-cache attention (decode): a handful of query rows against a long cache, so the block is
// sized for streaming keys, not for math. One 16-row strip of queries; the warps split every key
// tile between them (kBlockN / kNWarps keys each, with their own softmax state, merged at the end)
// and kStages tiles of K and V are in flight. Shared memory also has to hold the merge: each
// warp's O strip in fp32 (rows padded by 4 floats against bank conflicts).
inline constexpr int kKvCacheBlockM = 16, kKvCacheBlockN = 64;  // every head dim: the host sizes splits by them
template <int kHeadDim> struct KvCacheTile {
  static constexpr int kBlockN = kKvCacheBlockN, kStages = kHeadDim <= 128 ? 3 : 2;
};

template <class T_, int kHeadDim_>
struct KvCacheTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kKvCacheBlockM, kNWarps = 4, kNThreads = kNWarps * kGroupSize;
  static constexpr int kBlockN = KvCacheTile<kHeadDim>::kBlockN, kStages = KvCacheTile<kHeadDim>::kStages;
  static constexpr int kWarpKeys = kBlockN / kNWarps;
  static constexpr int kDTiles = kHeadDim / 8;
  static constexpr int kMergeRowFloats = kHeadDim + 4;
  static constexpr int kLoopSmemBytes = (kBlockM + 2 * kStages * kBlockN) * kHeadDim * int(sizeof(T));
  static constexpr int kMergeSmemBytes = (kNWarps * kBlockM * (2 + kMergeRowFloats) + kBlockM) * int(sizeof(float));
  static constexpr int kSmemBytes = kLoopSmemBytes > kMergeSmemBytes ? kLoopSmemBytes : kMergeSmemBytes;
  static_assert(kWarpKeys % 16 == 0 && kHeadDim % 32 == 0, "each warp takes whole k16 steps of keys");
};

// Backward: a thread block owns kBlockN keys and walks the query blocks of kBlockM rows; dK
// and dV (fp32) stay in registers throughout, which is why head dims above 128 halve kBlockN.
// Warps tile each product in near-square pieces: fewer shared-memory fragment loads per mma
// than strips. dQ may go in column passes to bound the registers it holds beside dK and dV.
// Small head dims take 128 queries a step: the per-step costs (barriers, softmax terms) then
// spread over twice the math.
inline constexpr int kBwdBlockM = 64;
// The deterministic backward's dq_semaphore has one counter per query block: the host sizes it
// with the smallest kBlockM of any backward (the AMD kernels' RDNA tiles have 16 rows).
inline constexpr int kDqSemaphoreBlockM = 16;
template <int kHeadDim> struct BwdTile {
  static constexpr int kBlockM = kHeadDim <= 64 ? 128 : kBwdBlockM;
  static constexpr int kBlockN = kHeadDim <= 128 ? 128 : 64, kNWarps = 8, kMinBlocksPerSm = 1;
  static constexpr int kSdpWarpRows = kBlockN / 32;                      // S^T, dP^T: keys x queries
  static constexpr int kDkvWarpRows = kBlockN / 32;                      // dK, dV: keys x head dim
  static constexpr int kDqWarpRows = kBlockM == 128 || (kHeadDim / 4) % 16 != 0 ? 4 : 2;  // dQ: queries x head dim
  static constexpr int kDqPasses = 1;
};

template <class T_, int kHeadDim_>
struct BwdTraits {
  using T = T_;
  using Tile = BwdTile<kHeadDim_>;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = Tile::kBlockM, kBlockN = Tile::kBlockN, kNWarps = Tile::kNWarps;
  static constexpr int kNThreads = kNWarps * kGroupSize;
  using SdpGrid = WarpGrid<kBlockN, kBlockM, Tile::kSdpWarpRows, kNWarps>;
  using DkvGrid = WarpGrid<kBlockN, kHeadDim, Tile::kDkvWarpRows, kNWarps>;
  using DqGrid = WarpGrid<kBlockM, kHeadDim / Tile::kDqPasses, Tile::kDqWarpRows, kNWarps>;  // one pass
  static constexpr int kDqPasses = Tile::kDqPasses, kMinBlocksPerSm = Tile::kMinBlocksPerSm;

  // Shared memory, in elements: K, V; Q and dO double-buffered; P^T and dS^T; then floats.
  static constexpr int kKVElems = kBlockN * kHeadDim;
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kPElems = kBlockN * kBlockM;
  static constexpr int kSmemBytes = (2 * kKVElems + 4 * kQElems + 2 * kPElems) * int(sizeof(T)) +
                                    4 * kBlockM * int(sizeof(float));
};

}  // namespace flash
