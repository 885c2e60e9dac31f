// The emulator's state while a launch runs: the launch, its blocks, their wavefronts and their
// threads (fibers). Shared by scheduler.cpp, which runs them, and lds.cpp, which checks their LDS
// accesses; both are compiled without the race detector's instrumentation.
#pragma once

#include <sys/mman.h>

#include <boost/context/detail/fcontext.hpp>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "emulator.h"
#include "target.h"

namespace fa_emu::detail {

namespace fctx = boost::context::detail;

constexpr int kWave = FA_EMU_WAVE_SIZE;
constexpr size_t kMaxLds = FA_EMU_LDS_BYTES;
constexpr size_t kStackBytes = 256 * 1024;

// xorshift64*: the seeded order of blocks and threads.
struct Random {
  uint64_t state;
  uint64_t next() {
    state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>((next() >> 32) * n >> 32); }
};

// A fiber stack with a guard page below it.
struct Stack {
  char* base = nullptr;
  Stack() {
    base = static_cast<char*>(
        mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (base == MAP_FAILED) std::abort();
    mprotect(base, 4096, PROT_NONE);
  }
  ~Stack() { munmap(base, kStackBytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  void* top() const { return base + kStackBytes; }
};

enum class Op : uint8_t { kNone, kPermute, kBallot, kReadFirstLane, kWaveBarrier, kMatrix };
inline const char* op_name(Op op) {
  switch (op) {
    case Op::kPermute: return "a shuffle (ds_bpermute)";
    case Op::kBallot: return "a ballot";
    case Op::kReadFirstLane: return "readfirstlane";
    case Op::kWaveBarrier: return "a wave barrier";
    case Op::kMatrix: return "a matrix instruction";
    case Op::kNone: break;
  }
  return "nothing";
}

enum class Wait : uint8_t { kNone, kCollective, kBarrier };

struct Block;

struct Fiber {
  ThreadCoordinates coords{};
  fctx::fcontext_t context = nullptr;
  std::unique_ptr<Stack> stack;
  Block* block = nullptr;
  int tid = 0;
  bool exited = false;
  Wait waiting = Wait::kNone;
  // Polling: the last poll's address, value and the block's progress count then.
  const void* poll_address = nullptr;
  uint64_t poll_value = 0, poll_progress = ~0ull;
  bool spinning = false;
  // A collective's operands and result.
  uint32_t in_value = 0;
  int in_index = 0;
  uint64_t out = 0;
  const void *matrix_a = nullptr, *matrix_b = nullptr;
  const float* matrix_c = nullptr;
  float* matrix_d = nullptr;
};

struct Wave {
  int first_tid = 0, lanes = 0, live = 0, arrived = 0;
  uint32_t epoch = 1;  // collectives completed (+1)
  Op op = Op::kNone;
  const char* instruction = nullptr;
};

// The race detector's view of one LDS byte. Threads are stored as tid + 1 (0: none).
struct ShadowCell {
  uint32_t write_barrier, write_collective, read_barrier, read_collective;
  uint16_t writer, reader;
};

enum class BlockState { kRunnable, kStuck };

struct Block {
  Index3 index{};
  std::vector<Fiber> fibers;
  std::vector<Wave> waves;
  std::vector<Fiber*> ready;
  std::vector<ShadowCell> shadow;
  std::vector<char> lds_image;  // the LDS while another block runs
  int live = 0, barrier_arrived = 0;
  uint32_t barrier_epoch = 1;
  uint64_t progress = 0;
  BlockState state = BlockState::kRunnable;
  uint64_t stuck_at_activity = 0;
};

struct Launch {
  const void* kernel = nullptr;
  Index3 grid{}, block{};
  size_t lds_size = 0;
  int nthreads = 0;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  Random random{1};
  Fiber* running = nullptr;
  fctx::fcontext_t scheduler = nullptr;
  uint64_t activity = 0;  // progress events of every block: a stuck block waits for one
  bool failed = false;
};

extern Launch* launch_state;  // the launch that runs, or nullptr

std::string format(const char* fmt, ...);
std::string kernel_name(const void* kernel);
std::string thread_description(const Block& b, int tid);

// Records the launch's first failure and returns to the scheduler, never to the caller.
[[noreturn]] void fail(const std::string& message);

// lds.cpp: the arena that holds the running block's LDS.
char* lds();
void poison_lds();  // a block starts: every byte, red zones included, reads as NaN

}  // namespace fa_emu::detail
