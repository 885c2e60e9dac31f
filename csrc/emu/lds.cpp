// The LDS of the running block and the race and overrun detector, fed by ThreadSanitizer's hooks:
// the kernels' translation units are compiled with -fsanitize=thread and call the __tsan_*
// functions at the end of this file for every memory access; only LDS accesses are checked.
//
// One arena holds the running block's LDS between two 64 KB red zones. The kernels declare
// `extern __shared__ char smem[]` in namespace flash (or globally): both names are aliases of the
// arena's middle, so no kernel source changes. An access that lands outside [0, dynamic LDS) is
// an overrun. Every byte of the block's LDS has a shadow cell: its last writer and reader, with
// the block's barrier count and the wavefront's collective count at the time. An access by
// another thread with no barrier since, and (same wavefront) no collective since, is a race.
#include <cinttypes>
#include <cstring>

#include "state.h"

namespace {
constexpr size_t kRedZone = 64 * 1024;
}  // namespace
extern "C" {
alignas(4096) char fa_emu_lds_arena[kRedZone + fa_emu::detail::kMaxLds + kRedZone];
}
asm(".globl _ZN5flash4smemE\n"
    ".type _ZN5flash4smemE, @object\n"
    ".set _ZN5flash4smemE, fa_emu_lds_arena + 65536\n"
    ".globl smem\n"
    ".type smem, @object\n"
    ".set smem, fa_emu_lds_arena + 65536\n");
static_assert(kRedZone == 65536, "the asm above hard-codes the red zone");

namespace fa_emu::detail {

char* lds() { return fa_emu_lds_arena + kRedZone; }

void poison_lds() { std::memset(fa_emu_lds_arena, 0xff, sizeof fa_emu_lds_arena); }

namespace {

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
  const intptr_t offset = static_cast<intptr_t>(address - reinterpret_cast<uintptr_t>(lds()));
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

}  // namespace
}  // namespace fa_emu::detail

// ---------------------------------------------------------------- ThreadSanitizer's hooks
// What clang's -fsanitize=thread instrumentation calls; only LDS accesses are checked here.
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
#define FA_EMU_TSAN_ACCESS(n)                                                                    \
  void __tsan_read##n(void* a) { fa_emu::detail::check_access(a, n, false); }                    \
  void __tsan_write##n(void* a) { fa_emu::detail::check_access(a, n, true); }                    \
  void __tsan_unaligned_read##n(void* a) { fa_emu::detail::check_access(a, n, false); }          \
  void __tsan_unaligned_write##n(void* a) { fa_emu::detail::check_access(a, n, true); }          \
  void __tsan_volatile_read##n(void* a) { fa_emu::detail::check_access(a, n, false); }           \
  void __tsan_volatile_write##n(void* a) { fa_emu::detail::check_access(a, n, true); }           \
  void __tsan_unaligned_volatile_read##n(void* a) { fa_emu::detail::check_access(a, n, false); } \
  void __tsan_unaligned_volatile_write##n(void* a) { fa_emu::detail::check_access(a, n, true); }
FA_EMU_TSAN_ACCESS(1)
FA_EMU_TSAN_ACCESS(2)
FA_EMU_TSAN_ACCESS(4)
FA_EMU_TSAN_ACCESS(8)
FA_EMU_TSAN_ACCESS(16)
#undef FA_EMU_TSAN_ACCESS
void __tsan_read_range(void* a, unsigned long size) { fa_emu::detail::check_access(a, size, false); }
void __tsan_write_range(void* a, unsigned long size) { fa_emu::detail::check_access(a, size, true); }
void __tsan_vptr_read(void**) {}
void __tsan_vptr_update(void**, void*) {}
void* __tsan_memcpy(void* dst, const void* src, unsigned long size) {
  fa_emu::detail::check_access(src, size, false);
  fa_emu::detail::check_access(dst, size, true);
  return std::memcpy(dst, src, size);
}
void* __tsan_memmove(void* dst, const void* src, unsigned long size) {
  fa_emu::detail::check_access(src, size, false);
  fa_emu::detail::check_access(dst, size, true);
  return std::memmove(dst, src, size);
}
void* __tsan_memset(void* dst, int value, unsigned long size) {
  fa_emu::detail::check_access(dst, size, true);
  return std::memset(dst, value, size);
}
}
