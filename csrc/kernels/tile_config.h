// Tile shapes of the forward kernel, one row per compiled head dim: the single table to tune.
// Each warp owns whole 16-row strips across the full kBlockN width, so the softmax never
// needs a reduction across warps. Numbers and their measurements: benchmarks/NOTES.md.
#pragma once

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

}  // namespace flash
