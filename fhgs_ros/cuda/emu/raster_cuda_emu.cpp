// The CUDA backend (../raster_cuda.cu, unchanged) compiled by the host compiler against the CPU
// execution harness cuda_emu.h: the translation unit of the test extension
// fhgs_ros._native_cuda_emu (setup_ext.py), together with bindings_emu.cpp.
#include "cuda_emu.h"

#include "raster_cuda.cu"

// The emulator extension has no CPU backend: bindings.cpp routes every call to the CUDA stages
// (FHGS_CUDA_EMU), so these are never reached.
namespace fhgs {
[[noreturn]] static void no_cpu_backend() {
  fprintf(stderr, "fhgs_ros._native_cuda_emu has no CPU backend\n");
  abort();
}
void cpu_preprocess(RasterArgs&) { no_cpu_backend(); }
void cpu_bin(RasterArgs&) { no_cpu_backend(); }
void cpu_lever(RasterArgs&) { no_cpu_backend(); }
void cpu_forward(RasterArgs&) { no_cpu_backend(); }
void cpu_backward(RasterArgs&) { no_cpu_backend(); }
void cpu_forward_baseline(RasterArgs&) { no_cpu_backend(); }
void cpu_backward_baseline(RasterArgs&) { no_cpu_backend(); }
const char* cpu_rgb_isa() { return "none"; }
bool set_cpu_rgb_isa(const char*) { return false; }
}  // namespace fhgs

// Plain C entry points for bindings.cpp (which does not include the harness).
// schedule: 0 sequential, 1 random (priorities redrawn per barrier), 2 uniform (see cuda_emu.h)
extern "C" void fhgs_cuda_emu_configure(int schedule, uint64_t seed, int poison_shared) {
  cuda_emu::Config c = cuda_emu::config();
  c.schedule = schedule;
  c.seed = seed;
  c.poison_shared = poison_shared != 0;
  cuda_emu::configure(c);
}

// launches, blocks, threads, barriers, warp_ops, resumes, schedule_hash (as int64 bits)
extern "C" void fhgs_cuda_emu_stats(int64_t* out, int reset) {
  const cuda_emu::Stats s = cuda_emu::stats();
  out[0] = s.launches;
  out[1] = s.blocks;
  out[2] = s.threads;
  out[3] = s.barriers;
  out[4] = s.warp_ops;
  out[5] = s.resumes;
  out[6] = (int64_t)s.schedule_hash;
  if (reset) cuda_emu::reset_stats();
}
