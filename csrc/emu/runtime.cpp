// The wavefront emulator: fibers, the scheduler, LDS, the race detector and the atomics.
// Compiled without -fsanitize=thread; the kernels' translation units are compiled with it and
// call the __tsan_* hooks at the end of this file for every memory access they make.
//
// Scheduling. A launch runs its blocks one at a time, in a seeded random order. Inside a block
// the running thread keeps the CPU until it reaches a synchronisation point (a barrier, a wave
// collective, an atomic that polls, its exit); the next thread is drawn at random from the ready
// ones. A block whose ready threads only poll global memory that no thread of it changes (the
// deterministic backward's semaphore) is set aside, its LDS saved, and another block runs, as
// on a GPU with several resident blocks; it resumes once some other block made progress.
//
// Race detection. Every byte of the running block's LDS has a shadow cell: its last writer and
// reader, with the block's barrier count and the wavefront's collective count at the time. An
// access by another thread with no barrier since, and (same wavefront) no collective since,
// fails the launch, as does an access outside [0, dynamic LDS size).
#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/context/detail/fcontext.hpp>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "emulator.h"
#include "target.h"

namespace fctx = boost::context::detail;

// ---------------------------------------------------------------- LDS: one arena, red zones around
// The kernels declare `extern __shared__ char smem[]` in namespace flash (or globally); both names
// are aliases of the arena's middle, so no kernel source changes. Accesses that land in the red
// zones are overruns.
namespace {
constexpr size_t kRedZone = 64 * 1024;
constexpr size_t kMaxLds = FA_EMU_LDS_BYTES;
}  // namespace
extern "C" {
alignas(4096) char fa_emu_lds_arena[kRedZone + kMaxLds + kRedZone];
}
asm(".globl _ZN5flash4smemE\n"
    ".type _ZN5flash4smemE, @object\n"
    ".set _ZN5flash4smemE, fa_emu_lds_arena + 65536\n"
    ".globl smem\n"
    ".type smem, @object\n"
    ".set smem, fa_emu_lds_arena + 65536\n");
static_assert(kRedZone == 65536, "the asm above hard-codes the red zone");

namespace fa_emu {

const ThreadCoordinates* current = nullptr;

// matrix.cpp: D = A B + C over a whole wavefront, each lane's registers given by pointer.
void complete_matrix_op(const char* instruction, int lanes, const void* const* a, const void* const* b,
                        const float* const* c, float* const* d, std::string& error);

const char* target_name() { return FA_EMU_TARGET_NAME; }
int wave_size() { return FA_EMU_WAVE_SIZE; }
int lds_bytes() { return FA_EMU_LDS_BYTES; }

namespace {

constexpr int kWave = FA_EMU_WAVE_SIZE;
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr unsigned char kPoison = 0xff;  // NaN as fp16, bf16 and fp32
char* const lds = fa_emu_lds_arena + kRedZone;

// xorshift64*: the seeded order of blocks and threads.
struct Random {
  uint64_t state;
  uint64_t next() {
    state ^= state >> 12, state ^= state << 25, state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>((next() >> 32) * n >> 32); }
};

// splitmix64's finaliser: nearby seeds give unrelated orders.
uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t seed_from_environment() {
  const char* value = std::getenv("FA_EMU_SEED");
  return value != nullptr && *value != '\0' ? std::strtoull(value, nullptr, 0) : 1;
}

// A fiber stack with a guard page below it.
struct Stack {
  char* base = nullptr;
  Stack() {
    base = static_cast<char*>(mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                   -1, 0));
    if (base == MAP_FAILED) std::abort();
    mprotect(base, 4096, PROT_NONE);
  }
  ~Stack() { munmap(base, kStackBytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  void* top() const { return base + kStackBytes; }
};

enum class Op : uint8_t { kNone, kPermute, kBallot, kReadFirstLane, kWaveBarrier, kMatrix };
const char* op_name(Op op) {
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

enum class BlockState { kRunnable, kStuck, kDone };

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
  Block* running_block = nullptr;
  Fiber* running = nullptr;
  fctx::fcontext_t scheduler = nullptr;
  uint64_t activity = 0;  // progress events of every block: a stuck block waits for one
  bool failed = false;
};

Launch* launch_state = nullptr;
std::string last_error;
uint64_t base_seed = seed_from_environment();
int resumed_blocks = 0;  // in the last launch
uint64_t launch_count = 0;
std::vector<std::unique_ptr<Stack>> free_stacks;

std::string format(const char* fmt, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

std::string kernel_name(const void* kernel) {
  Dl_info info{};
  if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr) return format("kernel at %p", kernel);
  int status = 0;
  char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : info.dli_sname;
  std::free(demangled);
  return name;
}

std::string thread_description(const Block& b, int tid) {
  return format("thread %d (wave %d, lane %d) of block (%u, %u, %u)", tid, tid / kWave, tid % kWave, b.index.x,
                b.index.y, b.index.z);
}

// ---------------------------------------------------------------- switching between fibers

void on_resume(fctx::transfer_t from) {
  if (from.data != nullptr) static_cast<Fiber*>(from.data)->context = from.fctx;
  else launch_state->scheduler = from.fctx;
}

void run_fiber(Fiber* next) {
  launch_state->running = next;
  current = &next->coords;
}

// From a fiber to another fiber, or (next == nullptr) back to the scheduler.
void switch_from(Fiber* self, Fiber* next) {
  Launch& L = *launch_state;
  fctx::fcontext_t target;
  if (next != nullptr) {
    run_fiber(next);
    target = next->context;
  } else {
    L.running = nullptr;
    current = nullptr;
    target = L.scheduler;
  }
  on_resume(fctx::jump_fcontext(target, self));
}

// Records the launch's first failure and returns to the scheduler, never to the caller.
[[noreturn]] void fail(const std::string& message) {
  Launch& L = *launch_state;
  if (!L.failed) {
    L.failed = true;
    last_error = format("%s: %s", kernel_name(L.kernel).c_str(), message.c_str());
  }
  Fiber* self = L.running;
  L.running = nullptr;
  current = nullptr;
  fctx::jump_fcontext(L.scheduler, self);
  std::abort();  // a failed launch never resumes its fibers
}


Fiber* take_ready(Block& b) {
  const uint32_t i = launch_state->random.below(static_cast<uint32_t>(b.ready.size()));
  Fiber* f = b.ready[i];
  b.ready[i] = b.ready.back();
  b.ready.pop_back();
  return f;
}

// The running fiber waits (it is not ready): another ready fiber of the block runs, or, with none,
// the scheduler decides (the block is done, stuck or deadlocked).
void wait_here(Fiber* self) {
  Block& b = *self->block;
  switch_from(self, b.ready.empty() ? nullptr : take_ready(b));
}

// The running fiber may go on, but another ready one may be drawn instead.
void yield_here(Fiber* self) {
  Block& b = *self->block;
  if (b.ready.empty()) return;
  b.ready.push_back(self);
  Fiber* next = take_ready(b);
  if (next != self) switch_from(self, next);
}

void note_progress(Block& b) {
  ++b.progress;
  ++launch_state->activity;
}

void wake(Block& b, Fiber& f, Fiber* self) {
  f.waiting = Wait::kNone;
  if (&f != self) b.ready.push_back(&f);
}

// ---------------------------------------------------------------- wave collectives

void complete_collective(Block& b, Wave& w, Fiber* self) {
  Fiber* lane0 = &b.fibers[w.first_tid];
  switch (w.op) {
    case Op::kPermute:
      for (int l = 0; l < w.lanes; ++l) {
        Fiber& f = lane0[l];
        if (f.exited) continue;
        const int src = ((f.in_index % kWave) + kWave) % kWave;  // ds_bpermute reads index mod wave size
        // A lane that has exited (or does not exist) reads as 0, like a disabled source lane.
        f.out = src < w.lanes && !lane0[src].exited ? lane0[src].in_value : 0u;
      }
      break;
    case Op::kBallot: {
      uint64_t bits = 0;
      for (int l = 0; l < w.lanes; ++l) {
        if (!lane0[l].exited && lane0[l].in_value != 0) bits |= uint64_t(1) << l;
      }
      for (int l = 0; l < w.lanes; ++l) lane0[l].out = bits;
      break;
    }
    case Op::kReadFirstLane: {
      int first = 0;
      while (lane0[first].exited) ++first;
      for (int l = 0; l < w.lanes; ++l) lane0[l].out = lane0[first].in_value;
      break;
    }
    case Op::kMatrix: {
      if (w.live != kWave) {
        fail(format("%s in block (%u, %u, %u), wave %d: only %d of %d lanes are there (the others exited or "
                    "do not exist); a matrix instruction reads every lane's registers",
                    w.instruction, b.index.x, b.index.y, b.index.z, w.first_tid / kWave, w.live, kWave));
      }
      const void* a[kWave];
      const void* bb[kWave];
      const float* c[kWave];
      float* d[kWave];
      for (int l = 0; l < kWave; ++l) {
        a[l] = lane0[l].matrix_a, bb[l] = lane0[l].matrix_b, c[l] = lane0[l].matrix_c, d[l] = lane0[l].matrix_d;
      }
      std::string error;
      complete_matrix_op(w.instruction, kWave, a, bb, c, d, error);
      if (!error.empty()) fail(error);
      break;
    }
    case Op::kWaveBarrier:
    case Op::kNone:
      break;
  }
  w.arrived = 0;
  ++w.epoch;
  note_progress(b);
  for (int l = 0; l < w.lanes; ++l) {
    Fiber& f = lane0[l];
    if (!f.exited && f.waiting == Wait::kCollective) wake(b, f, self);
  }
}

// The running lane arrives at a collective; returns once every live lane of its wave has.
void collective(Op op, const char* instruction = nullptr) {
  Fiber* self = launch_state->running;
  Block& b = *self->block;
  Wave& w = b.waves[self->tid / kWave];
  if (w.arrived > 0 && (w.op != op || (op == Op::kMatrix && std::strcmp(w.instruction, instruction) != 0))) {
    fail(format("divergent wave collective: %s reaches %s%s%s while other lanes of its wave wait at %s%s%s",
                thread_description(b, self->tid).c_str(), op_name(op), instruction ? " " : "",
                instruction ? instruction : "", op_name(w.op), w.instruction ? " " : "",
                w.instruction ? w.instruction : ""));
  }
  w.op = op;
  w.instruction = instruction;
  self->waiting = Wait::kCollective;
  if (++w.arrived == w.live) {
    complete_collective(b, w, self);
    self->waiting = Wait::kNone;
    return;
  }
  wait_here(self);
}

void complete_barrier(Block& b, Fiber* self) {
  b.barrier_arrived = 0;
  ++b.barrier_epoch;
  note_progress(b);
  for (Fiber& f : b.fibers) {
    if (!f.exited && f.waiting == Wait::kBarrier) wake(b, f, self);
  }
}

// ---------------------------------------------------------------- fibers' lives

[[noreturn]] void exit_fiber(Fiber* self) {
  Block& b = *self->block;
  Wave& w = b.waves[self->tid / kWave];
  self->exited = true;
  --w.live;
  --b.live;
  note_progress(b);
  if (w.arrived > 0 && w.arrived == w.live) complete_collective(b, w, self);
  if (b.barrier_arrived > 0 && b.barrier_arrived == b.live) complete_barrier(b, self);
  free_stacks.push_back(std::move(self->stack));  // not reused before this launch's next block starts
  switch_from(self, b.ready.empty() ? nullptr : take_ready(b));
  std::abort();
}

void fiber_main(fctx::transfer_t from) {
  on_resume(from);
  Fiber* self = launch_state->running;
  launch_state->body(launch_state->context);
  exit_fiber(self);
}

std::unique_ptr<Stack> take_stack() {
  if (free_stacks.empty()) return std::make_unique<Stack>();
  std::unique_ptr<Stack> s = std::move(free_stacks.back());
  free_stacks.pop_back();
  return s;
}

std::unique_ptr<Block> make_block(Index3 index) {
  Launch& L = *launch_state;
  auto b = std::make_unique<Block>();
  b->index = index;
  b->fibers.resize(L.nthreads);
  b->waves.resize((L.nthreads + kWave - 1) / kWave);
  for (size_t w = 0; w < b->waves.size(); ++w) {
    Wave& wave = b->waves[w];
    wave.first_tid = static_cast<int>(w) * kWave;
    wave.lanes = wave.live = std::min(kWave, L.nthreads - wave.first_tid);
  }
  for (int tid = 0; tid < L.nthreads; ++tid) {
    Fiber& f = b->fibers[tid];
    f.block = b.get();
    f.tid = tid;
    f.coords.thread_idx = Index3{tid % L.block.x, tid / L.block.x % L.block.y, tid / (L.block.x * L.block.y)};
    f.coords.block_idx = index;
    f.coords.block_dim = L.block;
    f.coords.grid_dim = L.grid;
    f.coords.lane = tid % kWave;
    f.coords.wave = tid / kWave;
    f.stack = take_stack();
    f.context = fctx::make_fcontext(f.stack->top(), kStackBytes - 4096, fiber_main);
    b->ready.push_back(&f);
  }
  b->live = L.nthreads;
  b->shadow.assign(L.lds_size, ShadowCell{});
  return b;
}

// Runs `b` until it is done, stuck or deadlocked (or the launch fails).
void run_block(Block& b) {
  Launch& L = *launch_state;
  L.running_block = &b;
  Fiber* first = take_ready(b);
  run_fiber(first);
  on_resume(fctx::jump_fcontext(first->context, nullptr));
  L.running_block = nullptr;
}

std::string deadlock_report(const Block& b) {
  int at_barrier = 0, at_collective = 0;
  std::string where;
  for (const Fiber& f : b.fibers) {
    if (f.exited) continue;
    if (f.waiting == Wait::kBarrier) ++at_barrier;
    if (f.waiting == Wait::kCollective) {
      if (at_collective++ == 0) {
        where = format("; e.g. %s waits at %s", thread_description(b, f.tid).c_str(),
                       op_name(b.waves[f.tid / kWave].op));
      }
    }
  }
  return format("deadlock in block (%u, %u, %u): %d threads wait at __syncthreads, %d lanes at a wave collective "
                "that some lane of their wave never reaches%s",
                b.index.x, b.index.y, b.index.z, at_barrier, at_collective, where.c_str());
}

// ---------------------------------------------------------------- LDS accesses (from the hooks)

// Which barrier and collective counts the running thread is at.
struct Position {
  Block* block;
  int tid, wave;
  uint32_t barrier, collective;
};

[[noreturn]] void report_overrun(const Position& p, intptr_t offset, size_t size, bool write) {
  fail(format("LDS overrun: %s %s %zu bytes at LDS offset %" PRIdPTR ", outside the launch's %zu bytes of dynamic LDS",
              thread_description(*p.block, p.tid).c_str(), write ? "writes" : "reads", size, offset,
              launch_state->lds_size));
}

[[noreturn]] void report_race(const Position& p, size_t offset, bool write, int other, bool other_wrote) {
  const char* kind = other_wrote ? (write ? "write after write" : "read after write") : "write after read";
  const bool same_wave = other / kWave == p.wave;
  fail(format("LDS race (%s) at LDS offset %zu: %s %s it; %s %s it with no %s in between", kind, offset,
              thread_description(*p.block, p.tid).c_str(), write ? "writes" : "reads",
              thread_description(*p.block, other).c_str(), other_wrote ? "wrote" : "read",
              same_wave ? "__syncthreads or wave collective" : "__syncthreads"));
}

// Whether an access by `p` conflicts with one by thread `other` at (barrier, collective) counts.
bool unordered(const Position& p, int other, uint32_t barrier, uint32_t collective) {
  if (other == p.tid || barrier != p.barrier) return false;
  return other / kWave != p.wave || collective == p.collective;
}

void lds_access(uintptr_t address, size_t size, bool write) {
  Launch& L = *launch_state;
  Fiber* self = L.running;
  const intptr_t offset = static_cast<intptr_t>(address - reinterpret_cast<uintptr_t>(lds));
  Block& b = *self->block;
  const Position p{&b, self->tid, self->tid / kWave, b.barrier_epoch, b.waves[self->tid / kWave].epoch};
  if (offset < 0 || static_cast<size_t>(offset) + size > L.lds_size) report_overrun(p, offset, size, write);
  const uint16_t me = static_cast<uint16_t>(self->tid + 1);
  for (size_t i = 0; i < size; ++i) {
    ShadowCell& cell = b.shadow[offset + i];
    if (cell.writer != 0 && unordered(p, cell.writer - 1, cell.write_barrier, cell.write_collective)) {
      report_race(p, offset + i, write, cell.writer - 1, true);
    }
    if (write) {
      if (cell.reader != 0 && unordered(p, cell.reader - 1, cell.read_barrier, cell.read_collective)) {
        report_race(p, offset + i, write, cell.reader - 1, false);
      }
      cell.writer = me, cell.write_barrier = p.barrier, cell.write_collective = p.collective;
      cell.reader = 0;
    } else {
      cell.reader = me, cell.read_barrier = p.barrier, cell.read_collective = p.collective;
    }
  }
}

constexpr uintptr_t kArenaSize = sizeof(fa_emu_lds_arena);

inline void check_access(const void* address, size_t size, bool write) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  if (a - reinterpret_cast<uintptr_t>(fa_emu_lds_arena) >= kArenaSize) return;  // not LDS
  if (launch_state == nullptr || launch_state->running == nullptr) return;      // the emulator's own copies
  lds_access(a, size, write);
}

// ---------------------------------------------------------------- atomics

// A poll: memory stays as it was. The thread makes way for the others; when every ready thread of
// the block has polled the same value twice with no progress of the block in between, the block
// is stuck and another one runs.
void poll(const void* address, uint64_t value) {
  Launch& L = *launch_state;
  Fiber* self = L.running;
  if (self == nullptr) return;
  Block& b = *self->block;
  self->spinning = self->poll_address == address && self->poll_value == value && self->poll_progress == b.progress;
  self->poll_address = address, self->poll_value = value, self->poll_progress = b.progress;
  if (self->spinning) {
    bool all_spinning = true;
    for (Fiber* f : b.ready) all_spinning = all_spinning && f->spinning && f->poll_progress == b.progress;
    if (all_spinning) {
      b.state = BlockState::kStuck;
      b.stuck_at_activity = L.activity;
      b.ready.push_back(self);
      switch_from(self, nullptr);
      return;
    }
  }
  yield_here(self);
}

void modified() {
  if (launch_state != nullptr && launch_state->running != nullptr) note_progress(*launch_state->running->block);
}

template <class T, class F>
T atomic_update(T* p, F&& update) {
  const T old = *p;
  const T value = update(old);
  if (std::memcmp(&old, &value, sizeof(T)) != 0) {
    *p = value;
    modified();
  } else {
    uint64_t bits = 0;
    std::memcpy(&bits, &old, sizeof(T));
    poll(p, bits);
  }
  return old;
}

}  // namespace

// ---------------------------------------------------------------- the interface

int atomic_add(int* p, int v) {
  return atomic_update(p, [v](int x) { return static_cast<int>(static_cast<unsigned>(x) + static_cast<unsigned>(v)); });
}
unsigned int atomic_add(unsigned int* p, unsigned int v) { return atomic_update(p, [v](unsigned x) { return x + v; }); }
unsigned long long atomic_add(unsigned long long* p, unsigned long long v) {
  return atomic_update(p, [v](unsigned long long x) { return x + v; });
}
float atomic_add(float* p, float v) { return atomic_update(p, [v](float x) { return x + v; }); }
int atomic_cas(int* p, int compare, int v) { return atomic_update(p, [&](int x) { return x == compare ? v : x; }); }
unsigned int atomic_cas(unsigned int* p, unsigned int compare, unsigned int v) {
  return atomic_update(p, [&](unsigned x) { return x == compare ? v : x; });
}
int atomic_exch(int* p, int v) { return atomic_update(p, [v](int) { return v; }); }
unsigned int atomic_exch(unsigned int* p, unsigned int v) { return atomic_update(p, [v](unsigned) { return v; }); }
float atomic_exch(float* p, float v) { return atomic_update(p, [v](float) { return v; }); }
int atomic_max(int* p, int v) { return atomic_update(p, [v](int x) { return x > v ? x : v; }); }
int atomic_min(int* p, int v) { return atomic_update(p, [v](int x) { return x < v ? x : v; }); }

void block_barrier() {
  Fiber* self = launch_state->running;
  Block& b = *self->block;
  self->waiting = Wait::kBarrier;
  if (++b.barrier_arrived == b.live) {
    complete_barrier(b, self);
    self->waiting = Wait::kNone;
    return;
  }
  wait_here(self);
}

void wave_barrier() { collective(Op::kWaveBarrier); }

uint32_t wave_bpermute(int lane_index, uint32_t value) {
  Fiber* self = launch_state->running;
  self->in_index = lane_index;
  self->in_value = value;
  collective(Op::kPermute);
  return static_cast<uint32_t>(self->out);
}

uint64_t wave_ballot(bool predicate) {
  Fiber* self = launch_state->running;
  self->in_value = predicate;
  collective(Op::kBallot);
  return self->out;
}

uint32_t wave_readfirstlane(uint32_t value) {
  Fiber* self = launch_state->running;
  self->in_value = value;
  collective(Op::kReadFirstLane);
  return static_cast<uint32_t>(self->out);
}

void matrix_op(const char* instruction, const void* a, const void* b, const float* c, float* d) {
  Fiber* self = launch_state->running;
  self->matrix_a = a, self->matrix_b = b, self->matrix_c = c, self->matrix_d = d;
  collective(Op::kMatrix, instruction);
}

int set_max_dynamic_lds(const void*, int bytes) {
  // Recorded only: the launch checks its dynamic LDS against the target, as the GPU would.
  return bytes < 0 ? 1 /* hipErrorInvalidValue */ : 0;
}

const char* last_error_message() { return last_error.c_str(); }

int last_launch_resumed_blocks() { return resumed_blocks; }

void set_seed(uint64_t seed) {
  base_seed = seed;
  launch_count = 0;
}

int launch(const void* kernel, Index3 grid, Index3 block, size_t dynamic_lds, void (*body)(void*), void* context) {
  constexpr int kOutOfResources = 701, kInvalidConfiguration = 9, kLaunchFailure = 719;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  last_error.clear();
  if (threads == 0 || threads > kMaxThreads || grid.x == 0 || grid.y == 0 || grid.z == 0) {
    last_error = format("%s: launch refused on %s: grid (%u, %u, %u) x block (%u, %u, %u) (%" PRIu64
                        " threads; at most %d per block)",
                        kernel_name(kernel).c_str(), FA_EMU_TARGET_NAME, grid.x, grid.y, grid.z, block.x, block.y,
                        block.z, threads, kMaxThreads);
    return kInvalidConfiguration;
  }
  if (dynamic_lds > kMaxLds) {
    last_error = format("%s: launch refused on %s: %zu bytes of dynamic LDS exceed the target's %zu bytes per "
                        "workgroup",
                        kernel_name(kernel).c_str(), FA_EMU_TARGET_NAME, dynamic_lds, kMaxLds);
    return kOutOfResources;
  }

  resumed_blocks = 0;
  Launch L;
  L.kernel = kernel, L.grid = grid, L.block = block, L.lds_size = dynamic_lds, L.body = body, L.context = context;
  L.nthreads = static_cast<int>(threads);
  L.random.state = mix(base_seed ^ mix(++launch_count)) | 1;
  launch_state = &L;

  // Blocks start in a random order; a stuck block waits for another block's progress.
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  for (uint64_t i = nblocks; i > 1; --i) std::swap(order[i - 1], order[L.random.next() % i]);
  uint64_t started = 0;
  std::vector<std::unique_ptr<Block>> live;
  Block* lds_owner = nullptr;  // whose LDS the arena holds

  while (!L.failed && (started < nblocks || !live.empty())) {
    std::vector<Block*> candidates;
    for (auto& b : live) {
      if (b->stuck_at_activity != L.activity) candidates.push_back(b.get());
    }
    const bool can_start = started < nblocks;
    if (candidates.empty() && !can_start) {
      last_error = format("%s: deadlock: %zu blocks spin on global memory that no block changes (first: block "
                          "(%u, %u, %u))",
                          kernel_name(kernel).c_str(), live.size(), live[0]->index.x, live[0]->index.y,
                          live[0]->index.z);
      L.failed = true;
      break;
    }
    const uint32_t pick = L.random.below(static_cast<uint32_t>(candidates.size() + (can_start ? 1 : 0)));
    Block* b;
    if (pick == candidates.size()) {
      const uint64_t i = order[started++];
      const Index3 index{static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                         static_cast<unsigned>(i / (uint64_t(grid.x) * grid.y))};
      if (lds_owner != nullptr) lds_owner->lds_image.assign(lds, lds + dynamic_lds);
      live.push_back(make_block(index));
      b = live.back().get();
      std::memset(fa_emu_lds_arena, kPoison, sizeof fa_emu_lds_arena);
      lds_owner = b;
    } else {
      b = candidates[pick];
      b->state = BlockState::kRunnable;
      ++resumed_blocks;
      ++b->progress;  // its spinners poll afresh
      if (lds_owner != b) {
        if (lds_owner != nullptr) lds_owner->lds_image.assign(lds, lds + dynamic_lds);
        std::memcpy(lds, b->lds_image.data(), dynamic_lds);
        lds_owner = b;
      }
    }
    run_block(*b);
    if (L.failed) break;
    if (b->live == 0) {
      if (lds_owner == b) lds_owner = nullptr;
      for (auto it = live.begin(); it != live.end(); ++it) {
        if (it->get() == b) {
          live.erase(it);
          break;
        }
      }
    } else if (b->state != BlockState::kStuck) {
      last_error = format("%s: %s", kernel_name(kernel).c_str(), deadlock_report(*b).c_str());
      L.failed = true;
    }
  }

  // Fibers of a failed launch never finish: their stacks go back to the pool as they are.
  for (auto& b : live) {
    for (Fiber& f : b->fibers) {
      if (f.stack) free_stacks.push_back(std::move(f.stack));
    }
  }
  launch_state = nullptr;
  current = nullptr;
  return L.failed ? kLaunchFailure : 0;
}

}  // namespace fa_emu

// ---------------------------------------------------------------- ThreadSanitizer's hooks
// What clang's -fsanitize=thread instrumentation calls; only LDS accesses are checked here.
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
#define FA_EMU_TSAN_ACCESS(n)                                                                              \
  void __tsan_read##n(void* a) { fa_emu::check_access(a, n, false); }                                     \
  void __tsan_write##n(void* a) { fa_emu::check_access(a, n, true); }                                     \
  void __tsan_unaligned_read##n(void* a) { fa_emu::check_access(a, n, false); }                           \
  void __tsan_unaligned_write##n(void* a) { fa_emu::check_access(a, n, true); }                           \
  void __tsan_volatile_read##n(void* a) { fa_emu::check_access(a, n, false); }                            \
  void __tsan_volatile_write##n(void* a) { fa_emu::check_access(a, n, true); }                            \
  void __tsan_unaligned_volatile_read##n(void* a) { fa_emu::check_access(a, n, false); }                  \
  void __tsan_unaligned_volatile_write##n(void* a) { fa_emu::check_access(a, n, true); }
FA_EMU_TSAN_ACCESS(1)
FA_EMU_TSAN_ACCESS(2)
FA_EMU_TSAN_ACCESS(4)
FA_EMU_TSAN_ACCESS(8)
FA_EMU_TSAN_ACCESS(16)
#undef FA_EMU_TSAN_ACCESS
void __tsan_read_range(void* a, unsigned long size) { fa_emu::check_access(a, size, false); }
void __tsan_write_range(void* a, unsigned long size) { fa_emu::check_access(a, size, true); }
void __tsan_vptr_read(void**) {}
void __tsan_vptr_update(void**, void*) {}
void* __tsan_memcpy(void* dst, const void* src, unsigned long size) {
  fa_emu::check_access(src, size, false);
  fa_emu::check_access(dst, size, true);
  return std::memcpy(dst, src, size);
}
void* __tsan_memmove(void* dst, const void* src, unsigned long size) {
  fa_emu::check_access(src, size, false);
  fa_emu::check_access(dst, size, true);
  return std::memmove(dst, src, size);
}
void* __tsan_memset(void* dst, int value, unsigned long size) {
  fa_emu::check_access(dst, size, true);
  return std::memset(dst, value, size);
}
}
