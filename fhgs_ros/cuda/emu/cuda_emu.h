// cuda_emu.h: a CPU execution harness for CUDA C++ kernels (issue 15).
//
// Lets the unmodified kernels of raster_cuda.cu compile with the host C++ compiler and execute
// on the CPU with the CUDA execution model's semantics, so that CI (no GPU) runs the kernel code
// itself: indices, barriers, shared-memory batching, warp shuffles and atomics. Written from the
// CUDA C++ Programming Guide's description of the model; no CUDA runtime code is copied.
//
// Model:
//   * a launch runs its blocks one after the other on the calling host thread (in random order in
//     the random-schedule mode); each CUDA thread of a block is a fiber with its own stack
//     (x86-64: a small assembly context switch; elsewhere ucontext);
//   * threadIdx / blockIdx / blockDim / gridDim are the running fiber's and launch's values;
//   * `__shared__` variables are function-local statics in one linker section: one copy per block
//     (blocks never overlap); at every block start the section is filled with 0xFF bytes (float
//     NaN, integer -1): shared memory is undefined until written, as on a GPU;
//   * __syncthreads / __syncthreads_count / _and / _or are real barriers: a fiber blocks until
//     every thread of its block that has not exited arrives (exited threads do not count, as on
//     sm_70+); the count is taken at the release;
//   * warp operations (__shfl_*_sync, __any/__all/__ballot_sync, __syncwarp) block the lane until
//     every lane of the mask arrives at a warp operation of the same kind and mask (the
//     convergence the *_sync intrinsics require), then every lane gets its result; a mask lane that
//     exited, a source lane outside the mask or two different pending masks are reported as errors;
//   * a block whose live fibers all wait on something that can never complete (a barrier inside
//     divergent code, a warp op vs a barrier) is a deadlock: the launch fails with a message;
//   * scheduling (see Schedule): FIFO, or seeded random orders redrawn at every barrier (warps
//     running ahead of each other in random order), or a uniformly random pick at every scheduling
//     point; the random ones also shuffle the block order. Results may only change by float
//     reassociation (atomics), so a missing barrier or a shared-memory race shows up as a
//     different result;
//   * atomics are real (__atomic builtins); the host API (malloc-backed "device" memory, copies,
//     streams, events) is synchronous.
// Errors inside a launch are reported through cudaGetLastError / cudaGetErrorString with a
// detailed message. Launches go through FHGS_LAUNCH(kernel, grid, block, smem, stream, args...),
// which raster_cuda.cu maps to kernel<<<grid, block, smem, stream>>>(args...) under nvcc.
//
// Limits: `__launch_bounds__` is accepted and ignored; one pending warp operation per warp;
// dynamic shared memory (extern __shared__) is not provided; no texture/surface/cooperative APIs.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emu.h is for host compilers only"
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <mutex>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#define CUDA_EMU_UCONTEXT 1
#endif

// ------------------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __constant__
#define __shared__ static __attribute__((section("cuda_emu_shared")))

// ------------------------------------------------------------------------------ vector types
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// ------------------------------------------------------------------------------ runtime types
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;
typedef struct cuda_emu_stream* cudaStream_t;
typedef struct cuda_emu_event* cudaEvent_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};

extern "C" char __start_cuda_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_cuda_emu_shared[] __attribute__((weak, visibility("hidden")));

namespace cuda_emu {

constexpr int kWarp = 32;
constexpr int kMaxBlockThreads = 1024;

// Resume order of the runnable threads of a block:
//   SEQUENTIAL  FIFO (threads in index order, then in the order they became runnable);
//   RANDOM      seeded random priorities, drawn again at every block barrier: one random key per
//               warp and one per lane, and the runnable thread of highest priority runs. Between
//               two barriers a warp therefore runs as far ahead of the others as its warp
//               operations allow, in a random warp order and a random lane order: the schedule
//               that exposes a missing barrier between shared-memory writes and reads of other
//               warps (as the probabilistic concurrency-testing schedulers do);
//   UNIFORM     at every scheduling point a runnable thread picked uniformly at random (fine
//               interleavings, little drift between warps).
// RANDOM and UNIFORM also shuffle the block order.
enum Schedule { SEQUENTIAL = 0, RANDOM = 1, UNIFORM = 2 };

struct Config {
  int schedule = SEQUENTIAL;
  uint64_t seed = 0;
  bool poison_shared = true;  // fill shared memory with 0xFF at every block start
  size_t stack_bytes = 256 * 1024;
};

struct Stats {
  int64_t launches = 0, blocks = 0, threads = 0;
  int64_t barriers = 0;   // completed block barriers (one per block-wide release)
  int64_t warp_ops = 0;   // completed warp operations (one per warp-wide release)
  int64_t resumes = 0;    // fiber resumptions
  uint64_t schedule_hash = 1469598103934665603ull;  // FNV-1a over the order of resumptions
};

namespace detail {

enum FiberState { READY, WAIT_BARRIER, WAIT_WARP, DONE };
enum WarpKind { W_SHFL = 1, W_VOTE = 2, W_SYNC = 3 };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer (x86-64)
#ifdef CUDA_EMU_UCONTEXT
  ucontext_t uc;
#endif
  char* stack = nullptr;
  uint3 tid{0, 0, 0};
  int linear = 0, warp = 0, lane = 0;
  FiberState state = READY;
  int src = -1;          // warp op: source lane to read (-1: own value)
  uint64_t value = 0;    // warp op: contributed value
  uint64_t result = 0;   // warp op / barrier: result, written at the release
  uint32_t ballot = 0;
};

struct Warp {
  uint32_t exists = 0, exited = 0, arrived = 0, mask = 0;
  int kind = 0;
  uint64_t slot[kWarp];
};

struct Block {
  std::vector<Fiber>* fibers = nullptr;
  int n = 0, live = 0;
  int bar_arrived = 0, bar_pred = 0;
  std::vector<int> bar_waiters;
  std::vector<Warp> warps;
  std::vector<int> ready;  // runnable fibers (FIFO queue, pool, or heap by priority)
  size_t head = 0;         // FIFO read position (SEQUENTIAL)
  std::vector<uint32_t> prio;  // RANDOM: priority of each thread
  bool failed = false;
  std::string error;
};

struct State {
  Config cfg;
  Stats stats;
  std::mt19937_64 rng{0};
  uint3 block_idx{0, 0, 0};
  dim3 block_dim, grid_dim;
  Block* block = nullptr;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
#ifdef CUDA_EMU_UCONTEXT
  ucontext_t sched_uc;
#endif
  void* entry_ctx = nullptr;
  void (*entry)(void*) = nullptr;
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;
  size_t stack_bytes = 0;
  cudaError_t last_error = cudaSuccess;  // sticky until cudaGetLastError
  cudaError_t message_error = cudaSuccess;  // the error last_message describes
  std::string last_message;
};

inline State& st() {
  static State s;
  return s;
}
inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// ---- context switch -----------------------------------------------------------------------------
#ifndef CUDA_EMU_UCONTEXT
// cuda_emu_switch(&save_sp, new_sp): push the callee-saved registers (System V x86-64), store the
// stack pointer, load the other one, pop its registers and return into it. A fresh fiber's stack
// holds zeroed registers except rbx = argument and r12 = entry function, and returns into
// cuda_emu_trampoline, which calls entry(argument) on a 16-byte aligned stack.
extern "C" __attribute__((visibility("hidden"))) void cuda_emu_switch(void** save_sp, void* new_sp);
extern "C" __attribute__((visibility("hidden"))) void cuda_emu_trampoline();
__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl cuda_emu_switch\n"
    ".hidden cuda_emu_switch\n"
    ".type cuda_emu_switch,@function\n"
    "cuda_emu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size cuda_emu_switch, .-cuda_emu_switch\n"
    ".p2align 4\n"
    ".globl cuda_emu_trampoline\n"
    ".hidden cuda_emu_trampoline\n"
    ".type cuda_emu_trampoline,@function\n"
    "cuda_emu_trampoline:\n"
    "  movq %rbx, %rdi\n"
    "  callq *%r12\n"
    "  ud2\n"
    ".size cuda_emu_trampoline, .-cuda_emu_trampoline\n");
#endif

inline void fiber_main(void* arg);

#ifdef CUDA_EMU_UCONTEXT
inline void fiber_main_uc() { fiber_main(st().cur); }
#endif

inline void fiber_prepare(Fiber& f, size_t stack_bytes) {
#ifdef CUDA_EMU_UCONTEXT
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = f.stack;
  f.uc.uc_stack.ss_size = stack_bytes;
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, (void (*)())fiber_main_uc, 0);
#else
  uintptr_t top = ((uintptr_t)(f.stack + stack_bytes) & ~(uintptr_t)15) - 16;  // 16-aligned
  void** sp = (void**)(top - 7 * sizeof(void*));
  sp[0] = nullptr;                          // r15
  sp[1] = nullptr;                          // r14
  sp[2] = nullptr;                          // r13
  sp[3] = (void*)&fiber_main;               // r12: entry
  sp[4] = (void*)&f;                        // rbx: argument
  sp[5] = nullptr;                          // rbp
  sp[6] = (void*)&cuda_emu_trampoline;      // return address
  f.sp = (void*)sp;
#endif
}

inline void to_scheduler() {
  State& s = st();
  Fiber* f = s.cur;
#ifdef CUDA_EMU_UCONTEXT
  swapcontext(&f->uc, &s.sched_uc);
#else
  cuda_emu_switch(&f->sp, s.sched_sp);
#endif
}

inline void resume(Fiber& f) {
  State& s = st();
  s.cur = &f;
  ++s.stats.resumes;
  s.stats.schedule_hash = (s.stats.schedule_hash ^ (uint64_t)(f.linear + 1)) * 1099511628211ull;
#ifdef CUDA_EMU_UCONTEXT
  swapcontext(&s.sched_uc, &f.uc);
#else
  cuda_emu_switch(&s.sched_sp, f.sp);
#endif
  s.cur = nullptr;
}

// ---- failures inside a block: record, then park the fiber forever -------------------------------
[[noreturn]] inline void fail(const std::string& msg) {
  State& s = st();
  Block& b = *s.block;
  if (!b.failed) {
    b.failed = true;
    char where[160];
    snprintf(where, sizeof where, " (block (%u,%u,%u), thread (%u,%u,%u))", s.block_idx.x, s.block_idx.y,
             s.block_idx.z, s.cur->tid.x, s.cur->tid.y, s.cur->tid.z);
    b.error = msg + where;
  }
  s.cur->state = DONE;
  for (;;) to_scheduler();
}

struct PrioLess {
  const uint32_t* prio;
  bool operator()(int a, int b) const { return prio[a] != prio[b] ? prio[a] < prio[b] : a > b; }
};

inline void make_ready(Block& b, int id) {
  (*b.fibers)[id].state = READY;
  b.ready.push_back(id);
  if (st().cfg.schedule == RANDOM) std::push_heap(b.ready.begin(), b.ready.end(), PrioLess{b.prio.data()});
}

// RANDOM: new priorities (random key per warp, then per lane), at block start and every barrier.
inline void draw_priorities(Block& b) {
  State& s = st();
  b.prio.resize(b.n);
  std::vector<uint32_t> wkey((b.n + kWarp - 1) / kWarp);
  for (auto& k : wkey) k = (uint32_t)(s.rng() & 0xffff);
  for (int i = 0; i < b.n; ++i) b.prio[i] = (wkey[i / kWarp] << 16) | (uint32_t)(s.rng() & 0xffff);
}

// Give up the CPU at a scheduling point (the fiber is already queued or waiting).
inline void yield_now() { to_scheduler(); }

// ---- block barrier -------------------------------------------------------------------------------
inline void barrier_release(Block& b) {
  State& s = st();
  ++s.stats.barriers;
  const int cnt = b.bar_pred;
  if (s.cfg.schedule == RANDOM) draw_priorities(b);  // nothing else is runnable at a release
  for (int id : b.bar_waiters) {
    (*b.fibers)[id].result = (uint64_t)cnt;
    (*b.fibers)[id].ballot = (uint32_t)b.bar_arrived;  // participants
    make_ready(b, id);
  }
  b.bar_waiters.clear();
  b.bar_arrived = 0;
  b.bar_pred = 0;
}

// Returns (count of non-zero predicates, number of participants).
inline void barrier(int pred, int* count, int* participants) {
  State& s = st();
  Block& b = *s.block;
  Fiber& f = *s.cur;
  b.bar_arrived += 1;
  b.bar_pred += pred != 0;
  f.state = WAIT_BARRIER;
  b.bar_waiters.push_back(f.linear);
  if (b.bar_arrived == b.live) barrier_release(b);
  yield_now();
  if (count) *count = (int)f.result;
  if (participants) *participants = (int)f.ballot;
}

// ---- warp operations -----------------------------------------------------------------------------
inline void warp_release(Block& b, Warp& w) {
  State& s = st();
  ++s.stats.warp_ops;
  const uint32_t m = w.mask & w.exists;
  uint32_t ballot = 0;
  for (int l = 0; l < kWarp; ++l)
    if ((m >> l & 1u) && w.slot[l] != 0) ballot |= 1u << l;
  const int base = (int)(&w - &b.warps[0]) * kWarp;
  for (int l = 0; l < kWarp; ++l) {
    if (!(m >> l & 1u)) continue;
    Fiber& f = (*b.fibers)[base + l];
    f.result = f.src >= 0 ? w.slot[f.src] : w.slot[l];
    f.ballot = ballot;
    make_ready(b, base + l);
  }
  w.arrived = 0;
  w.mask = 0;
  w.kind = 0;
}

inline void warp_check_complete(Block& b, Warp& w) {
  const uint32_t m = w.mask & w.exists;
  if (w.arrived != 0 && (w.arrived & m) == m) warp_release(b, w);
}

// Contribute `value`, wait for the mask's lanes, return the value of lane `src` (-1: own).
inline uint64_t warp_exchange(uint32_t mask, int kind, uint64_t value, int src, uint32_t* ballot) {
  State& s = st();
  Block& b = *s.block;
  Fiber& f = *s.cur;
  Warp& w = b.warps[f.warp];
  if (!(mask >> f.lane & 1u)) fail("warp operation called by a lane outside its mask");
  if (mask & w.exited & w.exists) fail("warp operation names a lane that has exited");
  if (src >= 0 && !((mask & w.exists) >> src & 1u)) fail("warp shuffle reads a lane outside the mask");
  if (w.arrived != 0 && (w.mask != mask || w.kind != kind))
    fail("divergent warp operations: lanes of one warp wait at different warp operations or masks");
  w.mask = mask;
  w.kind = kind;
  w.slot[f.lane] = value;
  w.arrived |= 1u << f.lane;
  f.src = src;
  f.state = WAIT_WARP;
  warp_check_complete(b, w);
  yield_now();
  if (ballot) *ballot = f.ballot;
  return f.result;
}

inline void thread_exit() {
  State& s = st();
  Block& b = *s.block;
  Fiber& f = *s.cur;
  f.state = DONE;
  b.live -= 1;
  Warp& w = b.warps[f.warp];
  w.exited |= 1u << f.lane;
  if (w.arrived != 0 && (w.mask >> f.lane & 1u)) fail("a lane exited while its warp waits for it in a warp operation");
  if (b.bar_arrived > 0 && b.bar_arrived == b.live) barrier_release(b);
}

inline void fiber_main(void* arg) {
  (void)arg;
  State& s = st();
  s.entry(s.entry_ctx);
  thread_exit();
  for (;;) to_scheduler();
}

// ---- scheduler -----------------------------------------------------------------------------------
inline int next_ready(Block& b) {
  State& s = st();
  if (s.cfg.schedule == RANDOM) {
    if (b.ready.empty()) return -1;
    std::pop_heap(b.ready.begin(), b.ready.end(), PrioLess{b.prio.data()});
    int id = b.ready.back();
    b.ready.pop_back();
    return id;
  }
  if (s.cfg.schedule == UNIFORM) {
    if (b.ready.empty()) return -1;
    size_t k = (size_t)(s.rng() % b.ready.size());
    int id = b.ready[k];
    b.ready[k] = b.ready.back();
    b.ready.pop_back();
    return id;
  }
  if (b.head >= b.ready.size()) {
    b.ready.clear();
    b.head = 0;
    return -1;
  }
  int id = b.ready[b.head++];
  if (b.head > 4096 && b.head * 2 > b.ready.size()) {
    b.ready.erase(b.ready.begin(), b.ready.begin() + (std::ptrdiff_t)b.head);
    b.head = 0;
  }
  return id;
}

inline void ensure_stacks(int n) {
  State& s = st();
  const size_t page = (size_t)sysconf(_SC_PAGESIZE);
  const size_t bytes = (s.cfg.stack_bytes + page - 1) / page * page;
  if (bytes != s.stack_bytes) {  // stack size changed: drop the pool
    for (char* p : s.stacks) munmap(p - page, s.stack_bytes + page);
    s.stacks.clear();
    s.stack_bytes = bytes;
  }
  while ((int)s.stacks.size() < n) {
    char* base = (char*)mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                             -1, 0);
    if (base == MAP_FAILED) {
      fprintf(stderr, "cuda_emu: cannot map a fiber stack\n");
      abort();
    }
    mprotect(base, page, PROT_NONE);  // guard page below the stack
    s.stacks.push_back(base + page);
  }
}

inline std::string describe_deadlock(Block& b) {
  int at_bar = 0, at_warp = 0;
  for (int i = 0; i < b.n; ++i) {
    at_bar += (*b.fibers)[i].state == WAIT_BARRIER;
    at_warp += (*b.fibers)[i].state == WAIT_WARP;
  }
  char buf[200];
  snprintf(buf, sizeof buf,
           "deadlock: %d live threads, %d wait at a block barrier, %d at a warp operation (barrier or warp op in "
           "divergent code)",
           b.live, at_bar, at_warp);
  return buf;
}

// Run one block to completion; returns false (with b.error) on a failure.
inline bool run_block(Block& b) {
  State& s = st();
  const int n = b.n;
  std::vector<Fiber>& fib = *b.fibers;
  const unsigned bx = s.block_dim.x, by = s.block_dim.y;
  for (int i = 0; i < n; ++i) {
    Fiber& f = fib[i];
    f.stack = s.stacks[i];
    f.linear = i;
    f.tid = uint3{(unsigned)i % bx, ((unsigned)i / bx) % by, (unsigned)i / (bx * by)};
    f.warp = i / kWarp;
    f.lane = i % kWarp;
    f.src = -1;
    f.result = 0;
    f.ballot = 0;
    fiber_prepare(f, s.stack_bytes);
  }
  const int nw = (n + kWarp - 1) / kWarp;
  b.warps.assign(nw, Warp());
  for (int w = 0; w < nw; ++w) {
    const int lanes = std::min(kWarp, n - w * kWarp);
    b.warps[w].exists = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  }
  b.live = n;
  b.bar_arrived = b.bar_pred = 0;
  b.bar_waiters.clear();
  b.ready.clear();
  b.head = 0;
  b.failed = false;
  b.error.clear();
  if (s.cfg.schedule == RANDOM) draw_priorities(b);
  for (int i = 0; i < n; ++i) make_ready(b, i);
  if (s.cfg.poison_shared && __start_cuda_emu_shared != nullptr)
    memset(__start_cuda_emu_shared, 0xff, (size_t)(__stop_cuda_emu_shared - __start_cuda_emu_shared));
  for (;;) {
    const int id = next_ready(b);
    if (id < 0) break;
    resume(fib[id]);
    if (b.failed) return false;
  }
  if (b.live > 0) {
    b.error = describe_deadlock(b);
    char where[80];
    snprintf(where, sizeof where, " in block (%u,%u,%u)", s.block_idx.x, s.block_idx.y, s.block_idx.z);
    b.error += where;
    return false;
  }
  return true;
}

template <typename F>
void entry_thunk(void* ctx) {
  (*(F*)ctx)();
}

inline void set_error(cudaError_t e, const std::string& msg) {
  State& s = st();
  s.last_error = e;
  s.message_error = e;
  s.last_message = msg;
}

}  // namespace detail

// ---- configuration and statistics (used by the test backend) ------------------------------------
inline void configure(const Config& c) {
  std::lock_guard<std::mutex> lock(detail::launch_mutex());
  detail::st().cfg = c;
  detail::st().rng.seed(c.seed);
}
inline Config config() { return detail::st().cfg; }
inline Stats stats() { return detail::st().stats; }
inline void reset_stats() { detail::st().stats = Stats(); }

// ---- kernel launch --------------------------------------------------------------------------------
template <typename F>
void launch(const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t stream, F body) {
  (void)stream;
  using namespace detail;
  std::lock_guard<std::mutex> lock(launch_mutex());
  State& s = st();
  const uint64_t nthreads = (uint64_t)block.x * block.y * block.z;
  const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
  if (nthreads == 0 || nthreads > (uint64_t)kMaxBlockThreads || block.z > 64 || nblocks == 0 || grid.y > 65535 ||
      grid.z > 65535 || smem > 0) {
    char buf[200];
    snprintf(buf, sizeof buf, "invalid configuration for %s: grid (%u,%u,%u) block (%u,%u,%u) dynamic smem %zu",
             name, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem);
    set_error(cudaErrorInvalidConfiguration, buf);
    return;
  }
  ++s.stats.launches;
  ensure_stacks((int)nthreads);
  if (s.fibers.size() < nthreads) s.fibers.resize(nthreads);
  s.grid_dim = grid;
  s.block_dim = block;
  s.entry = &entry_thunk<F>;
  s.entry_ctx = (void*)&body;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  if (s.cfg.schedule != SEQUENTIAL) std::shuffle(order.begin(), order.end(), s.rng);
  Block b;
  b.fibers = &s.fibers;
  b.n = (int)nthreads;
  s.block = &b;
  for (uint64_t k = 0; k < nblocks; ++k) {
    const uint64_t i = order[k];
    s.block_idx = uint3{(unsigned)(i % grid.x), (unsigned)((i / grid.x) % grid.y), (unsigned)(i / ((uint64_t)grid.x * grid.y))};
    ++s.stats.blocks;
    s.stats.threads += (int64_t)nthreads;
    if (!run_block(b)) {
      set_error(cudaErrorLaunchFailure, std::string("kernel ") + name + ": " + b.error);
      break;
    }
  }
  s.block = nullptr;
}

}  // namespace cuda_emu

#define FHGS_LAUNCH(kernel, grid, block, smem, stream, ...)                                                  \
  ::cuda_emu::launch(#kernel, dim3(grid), dim3(block), (size_t)(smem), (cudaStream_t)(stream), \
                     [=]() { kernel(__VA_ARGS__); })

// ------------------------------------------------------------------------------ built-in variables
#define threadIdx (::cuda_emu::detail::st().cur->tid)
#define blockIdx (::cuda_emu::detail::st().block_idx)
#define blockDim (::cuda_emu::detail::st().block_dim)
#define gridDim (::cuda_emu::detail::st().grid_dim)
#define warpSize 32

// ------------------------------------------------------------------------------ synchronization
inline void __syncthreads() { ::cuda_emu::detail::barrier(0, nullptr, nullptr); }
inline int __syncthreads_count(int pred) {
  int c = 0;
  ::cuda_emu::detail::barrier(pred, &c, nullptr);
  return c;
}
inline int __syncthreads_and(int pred) {
  int c = 0, n = 0;
  ::cuda_emu::detail::barrier(pred, &c, &n);
  return c == n;
}
inline int __syncthreads_or(int pred) {
  int c = 0;
  ::cuda_emu::detail::barrier(pred, &c, nullptr);
  return c != 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cuda_emu::detail::warp_exchange(mask, ::cuda_emu::detail::W_SYNC, 0, -1, nullptr);
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ------------------------------------------------------------------------------ warp intrinsics
namespace cuda_emu {
namespace detail {
template <typename T>
T shfl_from(unsigned mask, T var, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
  uint64_t v = 0;
  memcpy(&v, &var, sizeof(T));
  uint64_t r = warp_exchange(mask, W_SHFL, v, src, nullptr);
  T out;
  memcpy(&out, &r, sizeof(T));
  return out;
}
inline int lane_id() { return st().cur->lane; }
}  // namespace detail
}  // namespace cuda_emu

// Width-w segments of the warp: a lane reads within its own segment, otherwise keeps its value.
template <typename T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  const int lane = ::cuda_emu::detail::lane_id();
  const int src = (lane / width) * width + (srcLane % width + width) % width;
  return ::cuda_emu::detail::shfl_from(mask, var, src);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = ::cuda_emu::detail::lane_id();
  const int seg = (lane / width) * width;
  const int src = lane - (int)delta;
  return ::cuda_emu::detail::shfl_from(mask, var, src >= seg ? src : -1);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const int lane = ::cuda_emu::detail::lane_id();
  const int seg = (lane / width) * width;
  const int src = lane + (int)delta;
  return ::cuda_emu::detail::shfl_from(mask, var, src < seg + width ? src : -1);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  const int lane = ::cuda_emu::detail::lane_id();
  const int src = lane ^ laneMask;
  return ::cuda_emu::detail::shfl_from(mask, var, src < (lane / width + 1) * width ? src : -1);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  uint32_t b = 0;
  ::cuda_emu::detail::warp_exchange(mask, ::cuda_emu::detail::W_VOTE, pred != 0, -1, &b);
  return b;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  const ::cuda_emu::detail::Block& b = *::cuda_emu::detail::st().block;
  const unsigned m = mask & b.warps[::cuda_emu::detail::st().cur->warp].exists;
  return __ballot_sync(mask, pred) == m;
}
inline unsigned __activemask() {
  const ::cuda_emu::detail::Block& b = *::cuda_emu::detail::st().block;
  const ::cuda_emu::detail::Warp& w = b.warps[::cuda_emu::detail::st().cur->warp];
  return w.exists & ~w.exited;
}

// ------------------------------------------------------------------------------ atomics
template <typename T>
T cuda_emu_atomic_add_int(T* p, T v) {
  return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
inline int atomicAdd(int* p, int v) { return cuda_emu_atomic_add_int(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return cuda_emu_atomic_add_int(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return cuda_emu_atomic_add_int(p, v); }
inline float atomicAdd(float* p, float v) {
  float old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  for (;;) {
    float nv = old + v;
    if (__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
  }
}
inline double atomicAdd(double* p, double v) {
  double old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  for (;;) {
    double nv = old + v;
    if (__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
  }
}
inline int atomicMax(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline int atomicMin(int* p, int v) {
  int old = __atomic_load_n(p, __ATOMIC_RELAXED);
  while (old > v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline int atomicCAS(int* p, int cmp, int v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return cmp;
}

// ------------------------------------------------------------------------------ device functions
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  memcpy(&u, &f, 4);
  return u;
}
inline int __float_as_int(float f) {
  int u;
  memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned int u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline float __int_as_float(int u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
// CUDA's integer/float min and max overloads (same-type and mixed arguments).
template <typename A, typename B>
inline typename std::common_type<A, B>::type min(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  return (C)b < (C)a ? (C)b : (C)a;
}
template <typename A, typename B>
inline typename std::common_type<A, B>::type max(A a, B b) {
  typedef typename std::common_type<A, B>::type C;
  return (C)a < (C)b ? (C)b : (C)a;
}

// ------------------------------------------------------------------------------ host runtime API
inline const char* cudaGetErrorString(cudaError_t e) {
  ::cuda_emu::detail::State& s = ::cuda_emu::detail::st();
  if (e != cudaSuccess && e == s.message_error && !s.last_message.empty()) return s.last_message.c_str();
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
inline cudaError_t cudaPeekAtLastError() { return ::cuda_emu::detail::st().last_error; }
inline cudaError_t cudaGetLastError() {
  ::cuda_emu::detail::State& s = ::cuda_emu::detail::st();
  cudaError_t e = s.last_error;
  s.last_error = cudaSuccess;  // the message stays readable through cudaGetErrorString(e)
  return e;
}
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = nullptr;
  if (posix_memalign(p, 256, bytes ? bytes : 1) != 0) return cudaErrorMemoryAllocation;
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) memmove(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind k, cudaStream_t = 0) {
  return cudaMemcpy(dst, src, bytes, k);
}
inline cudaError_t cudaMemset(void* p, int v, size_t bytes) {
  if (bytes) memset(p, v, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t = 0) { return cudaMemset(p, v, bytes); }
inline cudaError_t cudaStreamCreate(cudaStream_t* s) {
  static char token;  // any non-null handle; work is synchronous
  *s = (cudaStream_t)&token;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = (cudaEvent_t) new std::chrono::steady_clock::time_point();
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = 0) {
  *(std::chrono::steady_clock::time_point*)e = std::chrono::steady_clock::now();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  auto d = *(std::chrono::steady_clock::time_point*)b - *(std::chrono::steady_clock::time_point*)a;
  *ms = std::chrono::duration<float, std::milli>(d).count();
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete (std::chrono::steady_clock::time_point*)e;
  return cudaSuccess;
}
