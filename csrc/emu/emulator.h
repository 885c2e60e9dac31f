// The wavefront emulator's runtime interface: what the HIP device-API emulation (hip_emu.h) and
// the launch in platform.h call. Implemented by scheduler.cpp, lds.cpp and matrix.cpp, compiled
// without the race detector's instrumentation; the kernels' translation units are compiled with it.
//
// One launch runs every thread of every block as a fiber on the calling OS thread. Threads run in
// a seeded random order between synchronisation points; a wavefront is 64 lanes on CDNA and 32 on
// RDNA, and its collectives (shuffles, ballots, matrix instructions) are one rendezvous of its
// lanes that have not exited; __syncthreads is a rendezvous of the block's threads that have not.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fa_emu {

struct Index3 {
  unsigned int x, y, z;
};

// What one emulated thread knows about itself; `current` is the running thread's.
struct ThreadCoordinates {
  Index3 thread_idx, block_idx, block_dim, grid_dim;
  int lane;  // inside its wavefront
  int wave;  // inside its block
};
extern const ThreadCoordinates* current;

// The emulated target: its name (gfx942, ...), wavefront size and LDS per workgroup.
const char* target_name();
int wave_size();
int lds_bytes();

// Runs body(context) as every thread of grid x block with `dynamic_lds` bytes of LDS. Returns 0
// or a hipError_t value; the reason is in last_error_message(). A launch over the target's LDS or
// 1024 threads is refused; a race, an LDS overrun or a deadlock fails it.
int launch(const void* kernel, Index3 grid, Index3 block, size_t dynamic_lds, void (*body)(void*), void* context);
int set_max_dynamic_lds(const void* kernel, int bytes);  // hipFuncSetAttribute's record of the request
const char* last_error_message();
// The seed of the block and thread orders (default: $FA_EMU_SEED, else 1); each launch after this
// draws its own from it.
void set_seed(uint64_t seed);
// How many times the last launch resumed a block it had set aside (its threads only polled).
int last_launch_resumed_blocks();

// Block and wavefront synchronisation.
void block_barrier();
void wave_barrier();                                     // orders a wavefront's LDS accesses
uint32_t wave_bpermute(int lane_index, uint32_t value);  // ds_bpermute: lane_index modulo the wave size
uint64_t wave_ballot(bool predicate);                    // bit per lane; exited lanes give 0
uint32_t wave_readfirstlane(uint32_t value);             // the lowest live lane's value

// D = A B + C for one matrix instruction (e.g. "v_mfma_f32_32x32x8f16"), by the target's register
// layouts of ../shared/amd_matrix_layouts: each lane passes its own A, B (raw 16- or 8-bit
// elements) and fp32 C registers and receives its D registers.
void matrix_op(const char* instruction, const void* a, const void* b, const float* c, float* d);
// Reads the golden layouts from `dir` from now on (nullptr: the default); clears the cache.
void set_layout_dir(const char* dir);

// Global-memory atomics. One that leaves memory as it was (a poll) lets the other threads run,
// and a block whose running threads only poll makes way for another block.
int atomic_add(int* p, int value);
unsigned int atomic_add(unsigned int* p, unsigned int value);
unsigned long long atomic_add(unsigned long long* p, unsigned long long value);
float atomic_add(float* p, float value);
int atomic_cas(int* p, int compare, int value);
unsigned int atomic_cas(unsigned int* p, unsigned int compare, unsigned int value);
int atomic_exch(int* p, int value);
unsigned int atomic_exch(unsigned int* p, unsigned int value);
float atomic_exch(float* p, float value);
int atomic_max(int* p, int value);
int atomic_min(int* p, int value);

}  // namespace fa_emu
