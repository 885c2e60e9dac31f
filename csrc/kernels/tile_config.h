// Tile shapes of the forward kernel, one row per compiled head dim: the single table to tune.
// Each warp owns whole 16-row strips across the full kBlockN width, so the softmax never
// needs a reduction across warps. Numbers and their measurements: benchmarks/NOTES.md.
#pragma once

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

// Backward: a thread block owns kBlockN keys (one 16-row strip per warp group) and walks the
// query blocks of kBlockM rows. Head dims above 128 halve kBlockN so that dK and dV (fp32, in
// registers) fit: two warps then share a key strip and split the head dim between them.
inline constexpr int kBwdBlockM = 64;  // the host sizes dq_semaphore with it
template <int kHeadDim> struct BwdTile {
  static constexpr int kBlockM = kBwdBlockM, kBlockN = kHeadDim <= 128 ? 128 : 64, kNWarps = 8;
};

template <class T_, int kHeadDim_>
struct BwdTraits {
  using T = T_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = BwdTile<kHeadDim>::kBlockM;
  static constexpr int kBlockN = BwdTile<kHeadDim>::kBlockN;
  static constexpr int kNWarps = BwdTile<kHeadDim>::kNWarps;
  static constexpr int kNThreads = kNWarps * kGroupSize;
  static constexpr int kKeyStrips = kBlockN / 16;          // warps w and w + kKeyStrips share a strip
  static constexpr int kStripSharers = kNWarps / kKeyStrips;
  static constexpr int kSColsPerWarp = kBlockM / kStripSharers;  // S^T columns a warp computes
  static constexpr int kDColsPerWarp = kHeadDim / kStripSharers; // dK/dV columns a warp owns
  static constexpr int kQueryStrips = kBlockM / 16;        // for dQ = dS K
  static constexpr int kDqColsPerWarp = kHeadDim / (kNWarps / kQueryStrips);

  // Shared memory, in elements: K, V; Q and dO double-buffered; P^T and dS^T; then floats.
  static constexpr int kKVElems = kBlockN * kHeadDim;
  static constexpr int kQElems = kBlockM * kHeadDim;
  static constexpr int kPElems = kBlockN * kBlockM;
  static constexpr int kSmemBytes = (2 * kKVElems + 4 * kQElems + 2 * kPElems) * int(sizeof(T)) +
                                    4 * kBlockM * int(sizeof(float));

  static_assert(kKeyStrips * kStripSharers == kNWarps && kNWarps % kQueryStrips == 0, "warps must tile the work");
  static_assert(kSColsPerWarp % 16 == 0 && kDColsPerWarp % 16 == 0 && kDqColsPerWarp % 16 == 0,
                "each warp's share must be whole x4 loads");
};

}  // namespace flash
