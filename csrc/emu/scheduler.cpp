// The wavefront emulator's scheduler: fibers, blocks, wavefront collectives, barriers, atomics
// and the launch. Compiled without -fsanitize=thread (lds.cpp holds the race detector).
//
// A launch runs its blocks one at a time, in a seeded random order. Inside a block the running
// thread keeps the CPU until it reaches a synchronisation point (a barrier, a wave collective, an
// atomic that polls, its exit); the next thread is drawn at random from the ready ones. A
// collective is one rendezvous: the last lane to arrive computes every lane's result and goes on.
// A block whose ready threads only poll global memory that no thread of it changes (the
// deterministic backward's semaphore) is set aside, its LDS saved, and another block runs, as on
// a GPU with several resident blocks; it resumes once some other block made progress.
#include <cxxabi.h>
#include <dlfcn.h>

#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "state.h"

namespace fa_emu {

const ThreadCoordinates* current = nullptr;

// matrix.cpp: D = A B + C over a whole wavefront, each lane's registers given by pointer.
void complete_matrix_op(const char* instruction, int lanes, const void* const* a, const void* const* b,
                        const float* const* c, float* const* d, std::string& error);

const char* target_name() { return FA_EMU_TARGET_NAME; }
int wave_size() { return FA_EMU_WAVE_SIZE; }
int lds_bytes() { return FA_EMU_LDS_BYTES; }

namespace detail {

Launch* launch_state = nullptr;

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

namespace {
std::string last_error;
}  // namespace

void fail(const std::string& message) {
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

namespace {

constexpr int kMaxThreads = 1024;

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

uint64_t base_seed = seed_from_environment();
int resumed_blocks = 0;  // in the last launch
uint64_t launch_count = 0;
std::vector<std::unique_ptr<Stack>> free_stacks;

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
  Fiber* first = take_ready(b);
  run_fiber(first);
  on_resume(fctx::jump_fcontext(first->context, nullptr));
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
}  // namespace detail

// ---------------------------------------------------------------- the interface

using namespace detail;

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
      if (lds_owner != nullptr) lds_owner->lds_image.assign(lds(), lds() + dynamic_lds);
      live.push_back(make_block(index));
      b = live.back().get();
      poison_lds();
      lds_owner = b;
    } else {
      b = candidates[pick];
      b->state = BlockState::kRunnable;
      ++resumed_blocks;
      ++b->progress;  // its spinners poll afresh
      if (lds_owner != b) {
        if (lds_owner != nullptr) lds_owner->lds_image.assign(lds(), lds() + dynamic_lds);
        std::memcpy(lds(), b->lds_image.data(), dynamic_lds);
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

