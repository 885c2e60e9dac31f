// The kernel table: every instantiation this build compiled, one row per (head dim, dtype)
// family of a pass. tools/generate_kernels.py writes the rows (generated/kernel_table.cu) with the
// instantiation files, so the table cannot drift from what is built; dispatch.cu reads it and
// holds all the logic of which row and which variant a call runs.
#pragma once

#include "api.h"
#include "params.h"
#include "platform.h"

namespace flash {

template <class Params>
using Launcher = error_t (*)(const Params&, stream_t);

// A forward or backward family: the portable kernels by [has_right_edge][has_extras] and, where
// the build has them, the Hopper ones likewise (nullptr where not built), and whether the Hopper
// extras variants take dropout too (not at d256, where it spills).
template <class Params>
struct PassFamily {
  int head_dim;
  DType dtype;
  Launcher<Params> portable[2][2];
  Launcher<Params> hopper[2][2];
  bool hopper_dropout;
};

struct KvCacheFamily {
  int head_dim;
  DType dtype;
  Launcher<KvCacheParams> kernel;
};

struct KernelTable {
  const PassFamily<FwdParams>* fwd;
  int num_fwd;
  const PassFamily<BwdParams>* bwd;
  int num_bwd;
  const KvCacheFamily* kvcache;
  int num_kvcache;
};

extern const KernelTable kKernelTable;

}  // namespace flash
