// Python bindings of the native FHGS rasterizer (the only translation unit including torch).
//
// forward(...) and backward(...) allocate every buffer as a torch tensor on the inputs' device,
// call the CPU (raster_cpu.cpp) or CUDA (raster_cuda.cu, linked only when built with nvcc)
// stages declared in raster_api.h, and return outputs plus the state that the autograd Function
// (fhgs_ros/core/native.py) saves for the backward.
#include <c10/core/DeviceGuard.h>
#include <torch/extension.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <limits>
#include <map>
#include <cstdlib>
#include <string>
#include <vector>

#include "raster_api.h"

using at::Tensor;

namespace {

constexpr int kStateCount = 16;  // see state_names()

#ifdef FHGS_WITH_CUDA
constexpr bool kHasCuda = true;
#else
constexpr bool kHasCuda = false;
#endif

// FHGS_CUDA_EMU (the test extension fhgs_ros._native_cuda_emu, see emu/cuda_emu.h): the CUDA
// stages run on the CPU execution harness, with CPU tensors.
#ifdef FHGS_CUDA_EMU
constexpr bool kCudaEmu = true;
extern "C" void fhgs_cuda_emu_configure(int schedule, uint64_t seed, int poison_shared);
extern "C" void fhgs_cuda_emu_stats(int64_t* out, int reset);
#else
constexpr bool kCudaEmu = false;
#endif

// Which backend runs: the CUDA one for CUDA tensors (and always in the emulator build).
bool use_cuda(const Tensor& means) {
  TORCH_CHECK(!kCudaEmu || means.device().is_cpu(), "fhgs native: the CUDA emulator takes CPU tensors");
  return means.is_cuda() || kCudaEmu;
}

// Stage profile: every stage's wall time is accumulated per name (read and reset by
// stage_profile(); `fhgs-bench raster` prints the breakdown). FHGS_NATIVE_PROFILE=1 also prints the
// wall and process CPU time of every stage to stderr.
const char* const kStages[] = {"preprocess", "bin", "lever", "forward", "backward"};
constexpr int kNumStages = 5;
double g_stage_ms[kNumStages] = {0, 0, 0, 0, 0};
int64_t g_stage_calls[kNumStages] = {0, 0, 0, 0, 0};

struct StageTimer {
  bool on = std::getenv("FHGS_NATIVE_PROFILE") != nullptr;
  std::chrono::steady_clock::time_point t = std::chrono::steady_clock::now();
  std::clock_t c = std::clock();
  void mark(const char* name) {
    auto n = std::chrono::steady_clock::now();
    const double ms = std::chrono::duration<double, std::milli>(n - t).count();
    for (int i = 0; i < kNumStages; ++i)
      if (std::string(name) == kStages[i]) {
        g_stage_ms[i] += ms;
        g_stage_calls[i] += 1;
      }
    if (on) {
      std::clock_t cn = std::clock();
      std::fprintf(stderr, "[fhgs native] %-10s %8.2f ms wall %8.2f ms cpu\n", name, ms,
                   1000.0 * (double)(cn - c) / CLOCKS_PER_SEC);
      c = cn;
    }
    t = n;
  }
};

// Which CPU tile kernels run: the live ones (SIMD RGB path) or the frozen scalar copy kept as the
// bench baseline (raster_cpu_baseline.cpp). Switch only between iterations: the forward's saved
// state is laid out for the kernels of the same setting.
bool g_cpu_baseline = false;

// Debug aid for the tests: when on, every buffer the extension allocates without initializing is
// filled with NaN (floats) or a negative sentinel (integers) first, so an element a kernel forgets
// to write shows up in the outputs.
bool g_poison = false;

Tensor alloc(at::IntArrayRef shape, const at::TensorOptions& opt) {
  Tensor t = at::empty(shape, opt);
  if (g_poison && t.numel() > 0) {
    if (at::isFloatingType(opt.dtype().toScalarType())) t.fill_(std::numeric_limits<float>::quiet_NaN());
    else if (opt.dtype().toScalarType() != at::kByte) t.fill_(-1234567);
  }
  return t;
}

void check_f32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, "fhgs native: ", name, " must be float32");
  TORCH_CHECK(t.is_contiguous(), "fhgs native: ", name, " must be contiguous");
}

template <typename T>
T* ptr_or_null(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

void cuda_check(int rc, const char* err, const char* stage) {
  TORCH_CHECK(rc == 0, "fhgs native CUDA backend failed in ", stage, ": ", err);
}

// Fill camera/NDFD/input fields common to forward and backward.
void fill_common(fhgs::RasterArgs& a, const Tensor& means, const Tensor& quats, const Tensor& scales,
                 const Tensor& opacity, const Tensor& colors, const Tensor& bg, const Tensor& camvec, int64_t width,
                 int64_t height, const Tensor& feats, const Tensor& grid, double lam, double ksign,
                 bool ext_use_sigma, const Tensor& col_c0, const Tensor& col_dx1, const Tensor& col_f,
                 const Tensor& row_c0, const Tensor& row_dy1, const Tensor& row_f) {
  check_f32(means, "means");
  check_f32(quats, "quats");
  check_f32(scales, "scales");
  check_f32(opacity, "opacity");
  check_f32(colors, "colors");
  TORCH_CHECK(camvec.numel() == 21 && camvec.scalar_type() == at::kFloat && camvec.device().is_cpu(),
              "fhgs native: camvec must be 21 float32 values on the CPU");
  TORCH_CHECK(bg.numel() == 3 && bg.scalar_type() == at::kFloat && bg.device().is_cpu(),
              "fhgs native: background must be 3 float32 values on the CPU");
  const int64_t N = means.size(0);
  TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be (N, 3)");
  TORCH_CHECK(quats.dim() == 2 && quats.size(0) == N && quats.size(1) == 4, "quats must be (N, 4)");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N && scales.size(1) == 2, "scales must be (N, 2)");
  TORCH_CHECK(opacity.numel() == N, "opacity must have N elements");
  TORCH_CHECK(colors.dim() == 2 && colors.size(0) == N && colors.size(1) == 3, "colors must be (N, 3)");
  TORCH_CHECK(N < (int64_t)1 << 31, "too many surfels");
  TORCH_CHECK(width >= 1 && height >= 1, "image size must be positive");
  a.N = (int)N;
  const float* cv = camvec.data_ptr<float>();
  for (int i = 0; i < 12; ++i) a.cam.P[i] = cv[i];
  for (int i = 0; i < 4; ++i) a.cam.w2c_z[i] = cv[12 + i];
  for (int i = 0; i < 3; ++i) a.cam.center[i] = cv[16 + i];
  a.cam.znear = cv[19];
  a.cam.zfar = cv[20];
  a.cam.width = (int)width;
  a.cam.height = (int)height;
  const float* b = bg.data_ptr<float>();
  for (int i = 0; i < 3; ++i) a.bg[i] = b[i];
  a.means = means.data_ptr<float>();
  a.quats = quats.data_ptr<float>();
  a.scales = scales.data_ptr<float>();
  a.opacity = opacity.data_ptr<float>();
  a.colors = colors.data_ptr<float>();
  a.nd.lam = (float)lam;
  a.nd.ksign = (float)ksign;
  a.nd.ext_use_sigma = ext_use_sigma ? 1 : 0;
  if (feats.defined() && feats.dim() == 2) {
    if (feats.scalar_type() != at::kHalf) check_f32(feats, "features_unit");
    TORCH_CHECK(feats.is_contiguous(), "fhgs native: features_unit must be contiguous");
    check_f32(grid, "grid");
    TORCH_CHECK(feats.dim() == 2 && feats.size(0) == N, "features_unit must be (N, D)");
    TORCH_CHECK(grid.dim() == 3 && grid.size(2) == feats.size(1), "grid must be (gh, gw, D) with the features' D");
    a.D = (int)feats.size(1);
    a.gh = (int)grid.size(0);
    a.gw = (int)grid.size(1);
    if (feats.scalar_type() == at::kHalf) {  // see features_for_kernels
      a.feats16 = feats.numel() > 0 ? reinterpret_cast<const uint16_t*>(feats.data_ptr<at::Half>()) : nullptr;
    } else {
      a.feats = ptr_or_null<float>(feats);
    }
    a.grid = ptr_or_null<float>(grid);
    TORCH_CHECK(col_c0.numel() == width && row_c0.numel() == height, "lever column/row tables have wrong sizes");
    a.col_c0 = col_c0.data_ptr<int>();
    a.col_dx1 = col_dx1.data_ptr<int>();
    a.col_f = col_f.data_ptr<float>();
    a.row_c0 = row_c0.data_ptr<int>();
    a.row_dy1 = row_dy1.data_ptr<int>();
    a.row_f = row_f.data_ptr<float>();
  }
  a.nthreads = at::get_num_threads();
}

// float16 unit features are read as such only by the CPU kernels of the subsampled NDFD path
// (nd_mask given, no lever tables); every other path (CUDA, the lever tables of full-resolution
// NDFD, the frozen baseline kernels) gets a float32 copy here.
Tensor features_for_kernels(const Tensor& feats, bool half_ok) {
  if (feats.defined() && feats.scalar_type() == at::kHalf && !half_ok) return feats.to(at::kFloat).contiguous();
  return feats;
}

std::vector<std::string> state_names() {
  return {"geom", "ibox", "tiles_off", "lever_off", "tile_start", "tile_list",
          "entry_pos", "lever", "invn", "pix_state", "pix_idx", "ftot", "contrib", "tile_coff", "pix_coff",
          "contrib_idx"};
}

// Returns [rgb, alpha, depth, median, normal, dist, ext, int, feat, radii, n_contrib] + state.
std::vector<Tensor> forward(Tensor means, Tensor quats, Tensor scales, Tensor opacity, Tensor colors, Tensor bg,
                            Tensor camvec, int64_t width, int64_t height, Tensor feats, Tensor grid, double lam,
                            double ksign, bool ext_use_sigma, Tensor col_c0, Tensor col_dx1, Tensor col_f,
                            Tensor row_c0, Tensor row_dy1, Tensor row_f, Tensor fvalues, bool need_backward,
                            int64_t stream, Tensor nd_mask, bool feat_grad) {
  fhgs::RasterArgs a;
  feats = features_for_kernels(feats, !use_cuda(means) && !g_cpu_baseline && nd_mask.defined() && nd_mask.numel() > 0);
  fill_common(a, means, quats, scales, opacity, colors, bg, camvec, width, height, feats, grid, lam, ksign,
              ext_use_sigma, col_c0, col_dx1, col_f, row_c0, row_dy1, row_f);
  const bool cuda = use_cuda(means);
  TORCH_CHECK(!cuda || kHasCuda,
              "fhgs native: CUDA tensors given but the extension was built without CUDA (no nvcc at build time)");
  c10::DeviceGuard guard(means.device());
  a.need_backward = need_backward ? 1 : 0;
  const int64_t N = a.N, H = height, W = width, npix = H * W;
  const int ntiles = fhgs::tiles_x((int)W) * fhgs::tiles_y((int)H);
  auto fopt = means.options();
  auto iopt = means.options().dtype(at::kInt);
  auto lopt = means.options().dtype(at::kLong);
  if (fvalues.defined() && fvalues.dim() == 2) {
    check_f32(fvalues, "feature_values");
    TORCH_CHECK(fvalues.dim() == 2 && fvalues.size(0) == N, "feature_values must be (N, Dr)");
    a.Dr = (int)fvalues.size(1);
    a.fvalues = ptr_or_null<float>(fvalues);
  }
  if (feat_grad && a.Dr > 0 && need_backward) {
    TORCH_CHECK(!cuda, "fhgs native: the feature-image gradient (bench-only Feature-3DGS kernel) has no CUDA version");
    TORCH_CHECK(!g_cpu_baseline, "fhgs native: the feature-image gradient needs the live CPU kernels, not 'baseline'");
    a.feat_grad = 1;
  }
  if (a.D > 0 && nd_mask.defined() && nd_mask.numel() > 0) {
    TORCH_CHECK(nd_mask.scalar_type() == at::kByte && nd_mask.is_contiguous() && nd_mask.numel() == npix &&
                    nd_mask.device() == means.device(),
                "fhgs native: ndfd mask must be a contiguous uint8 (H, W) tensor on the inputs' device");
    if (!cuda) a.nd_mask = nd_mask.data_ptr<uint8_t>();  // the CUDA kernels evaluate every pixel
  }
  char err[256] = {0};
  StageTimer timer;

  Tensor geom = alloc({N, fhgs::GEOM_STRIDE}, fopt);
  Tensor ibox = alloc({N, fhgs::IBOX_STRIDE}, iopt);
  Tensor radii = alloc({N}, iopt);
  Tensor tiles_off = alloc({N}, lopt);
  Tensor lever_off = at::zeros({N}, lopt);
  a.geom = ptr_or_null<float>(geom);
  a.ibox = ptr_or_null<int>(ibox);
  a.radii = ptr_or_null<int>(radii);
  a.tiles_touched = ptr_or_null<int64_t>(tiles_off);
  a.lever_off = ptr_or_null<int64_t>(lever_off);
  if (cuda) {
#ifdef FHGS_WITH_CUDA
    cuda_check(fhgs::cuda_preprocess(a, (intptr_t)stream, err), err, "preprocess");
#endif
  } else {
    fhgs::cpu_preprocess(a);
  }
  timer.mark("preprocess");
  // counts -> exclusive offsets, totals
  a.E = 0;
  a.lever_total = 0;
  if (N > 0) {
    Tensor incl = tiles_off.cumsum(0);
    a.E = incl[N - 1].item<int64_t>();
    tiles_off.copy_(incl - tiles_off);
    if (a.D > 0) {
      Tensor linc = lever_off.cumsum(0);
      a.lever_total = linc[N - 1].item<int64_t>();
      lever_off.copy_(linc - lever_off);
    }
  }
  TORCH_CHECK(a.E < ((int64_t)1 << 31), "fhgs native: too many tile entries (", a.E, ")");

  const bool records = !cuda && need_backward;  // CPU: per-contributor records for the backward
  Tensor tile_coff = alloc({records ? ntiles + 1 : 0}, lopt);
  a.tile_coff = ptr_or_null<int64_t>(tile_coff);
  Tensor tile_start = alloc({ntiles + 1}, lopt);
  Tensor tile_list = alloc({a.E}, iopt);
  Tensor entry_pos = alloc({cuda ? 0 : a.E}, iopt);
  a.tile_start = tile_start.data_ptr<int64_t>();
  a.tile_list = ptr_or_null<int>(tile_list);
  a.entry_pos = ptr_or_null<int>(entry_pos);
  if (cuda) {
#ifdef FHGS_WITH_CUDA
    Tensor keys_in = alloc({a.E}, lopt), keys_out = alloc({a.E}, lopt), vals_in = alloc({a.E}, iopt);
    int64_t tb = fhgs::cuda_sort_temp_bytes(a.E, ntiles, err);
    TORCH_CHECK(tb >= 0, "fhgs native CUDA sort: ", err);
    Tensor temp = alloc({std::max<int64_t>(tb, 1)}, means.options().dtype(at::kByte));
    a.keys_in = ptr_or_null<int64_t>(keys_in);
    a.keys_out = ptr_or_null<int64_t>(keys_out);
    a.vals_in = ptr_or_null<int>(vals_in);
    a.sort_temp = temp.data_ptr();
    a.sort_temp_bytes = tb;
    cuda_check(fhgs::cuda_bin(a, (intptr_t)stream, err), err, "bin");
#endif
  } else {
    fhgs::cpu_bin(a);
  }
  timer.mark("bin");

  Tensor lever = alloc({a.lever_total}, fopt);
  Tensor invn = alloc({a.D > 0 ? npix : 0}, fopt);
  if (a.D > 0 && a.nd_mask == nullptr) {  // subsampled NDFD (CPU) reads the GT per pixel instead
    Tensor gram = alloc({5, (int64_t)a.gh * a.gw}, fopt);
    a.lever = ptr_or_null<float>(lever);
    a.invn = invn.data_ptr<float>();
    a.gram = gram.data_ptr<float>();
    if (cuda) {
#ifdef FHGS_WITH_CUDA
      cuda_check(fhgs::cuda_lever(a, (intptr_t)stream, err), err, "lever");
#endif
    } else {
      fhgs::cpu_lever(a);
    }
    timer.mark("lever");
  }

  Tensor rgb = alloc({3, H, W}, fopt), alpha = alloc({H, W}, fopt), depth = alloc({H, W}, fopt);
  Tensor median = alloc({H, W}, fopt), normal = alloc({3, H, W}, fopt), dist = alloc({H, W}, fopt);
  Tensor ext = alloc({a.D > 0 ? H : 0, a.D > 0 ? W : 0}, fopt);
  Tensor intl = alloc({a.D > 0 ? H : 0, a.D > 0 ? W : 0}, fopt);
  Tensor feat = alloc({a.Dr, a.Dr > 0 ? H : 0, a.Dr > 0 ? W : 0}, fopt);
  Tensor ncontrib = alloc({H, W}, iopt);
  Tensor pix_state = alloc({5, H, W}, means.options().dtype(at::kDouble));
  Tensor pix_idx = alloc({3, H, W}, iopt);
  // CUDA: the kernel accumulates F in F_tot (channel-major), kept for the backward. CPU: F lives in
  // a per-thread buffer; the backward gets the per-contributor records instead (upper-bound sized:
  // untouched pages are never committed).
  Tensor ftot = alloc({(a.D > 0 && cuda) ? npix * a.D : 0}, fopt);
  const int64_t nrec = records ? tile_coff[ntiles].item<int64_t>() : 0;
  Tensor contrib = alloc({a.D > 0 ? 3 * nrec : 0}, fopt);
  Tensor contrib_idx = alloc({nrec}, iopt);
  Tensor pix_coff = alloc({records ? npix : 0}, lopt);
  a.contrib = ptr_or_null<float>(contrib);
  a.contrib_idx = records ? contrib_idx.data_ptr<int>() : nullptr;
  a.pix_coff = ptr_or_null<int64_t>(pix_coff);
  a.out_rgb = rgb.data_ptr<float>();
  a.out_alpha = alpha.data_ptr<float>();
  a.out_depth = depth.data_ptr<float>();
  a.out_median = median.data_ptr<float>();
  a.out_normal = normal.data_ptr<float>();
  a.out_dist = dist.data_ptr<float>();
  a.out_ext = ptr_or_null<float>(ext);
  a.out_int = ptr_or_null<float>(intl);
  a.out_feat = ptr_or_null<float>(feat);
  a.out_ncontrib = ncontrib.data_ptr<int>();
  a.pix_state = pix_state.data_ptr<double>();
  a.pix_idx = pix_idx.data_ptr<int>();
  a.ftot = ptr_or_null<float>(ftot);
  if (cuda) {
#ifdef FHGS_WITH_CUDA
    cuda_check(fhgs::cuda_forward(a, (intptr_t)stream, err), err, "forward");
#endif
  } else if (g_cpu_baseline) {
    fhgs::cpu_forward_baseline(a);
  } else {
    fhgs::cpu_forward(a);
  }
  timer.mark("forward");
  return {rgb, alpha, depth, median, normal, dist, ext, intl, feat, radii.to(at::kLong), ncontrib.to(at::kLong),
          geom, ibox, tiles_off, lever_off, tile_start, tile_list, entry_pos, lever, invn, pix_state, pix_idx, ftot,
          contrib, tile_coff, pix_coff, contrib_idx};
}

// The forward with an NDFD pixel mask, without the feature-image gradient.
std::vector<Tensor> forward_mask(Tensor means, Tensor quats, Tensor scales, Tensor opacity, Tensor colors, Tensor bg,
                                 Tensor camvec, int64_t width, int64_t height, Tensor feats, Tensor grid, double lam,
                                 double ksign, bool ext_use_sigma, Tensor col_c0, Tensor col_dx1, Tensor col_f,
                                 Tensor row_c0, Tensor row_dy1, Tensor row_f, Tensor fvalues, bool need_backward,
                                 int64_t stream, Tensor nd_mask) {
  return forward(means, quats, scales, opacity, colors, bg, camvec, width, height, feats, grid, lam, ksign,
                 ext_use_sigma, col_c0, col_dx1, col_f, row_c0, row_dy1, row_f, fvalues, need_backward, stream,
                 nd_mask, false);
}

// The forward without an NDFD pixel mask (the original signature).
std::vector<Tensor> forward_all(Tensor means, Tensor quats, Tensor scales, Tensor opacity, Tensor colors, Tensor bg,
                                Tensor camvec, int64_t width, int64_t height, Tensor feats, Tensor grid, double lam,
                                double ksign, bool ext_use_sigma, Tensor col_c0, Tensor col_dx1, Tensor col_f,
                                Tensor row_c0, Tensor row_dy1, Tensor row_f, Tensor fvalues, bool need_backward,
                                int64_t stream) {
  return forward(means, quats, scales, opacity, colors, bg, camvec, width, height, feats, grid, lam, ksign,
                 ext_use_sigma, col_c0, col_dx1, col_f, row_c0, row_dy1, row_f, fvalues, need_backward, stream,
                 Tensor(), false);
}

// grads: [rgb, alpha, depth, median, normal, dist, ext, int]; returns
// [d_means, d_quats, d_scales, d_opacity, d_colors] and, with fvalues (N, Dr) and g_feat (Dr, H, W)
// (the forward ran with feat_grad), d_fvalues (N, Dr).
std::vector<Tensor> backward_feat(Tensor means, Tensor quats, Tensor scales, Tensor opacity, Tensor colors, Tensor bg,
                                  Tensor camvec, int64_t width, int64_t height, Tensor feats, Tensor grid, double lam,
                                  double ksign, bool ext_use_sigma, Tensor col_c0, Tensor col_dx1, Tensor col_f,
                                  Tensor row_c0, Tensor row_dy1, Tensor row_f, std::vector<Tensor> state,
                                  std::vector<Tensor> grads, int64_t stream, Tensor fvalues, Tensor g_feat) {
  fhgs::RasterArgs a;
  TORCH_CHECK((int)state.size() == kStateCount, "fhgs native backward: wrong state");
  // state[7] (lever tables) is empty exactly when the forward ran the subsampled path
  feats = features_for_kernels(feats, !use_cuda(means) && !g_cpu_baseline && state[7].numel() == 0);
  fill_common(a, means, quats, scales, opacity, colors, bg, camvec, width, height, feats, grid, lam, ksign,
              ext_use_sigma, col_c0, col_dx1, col_f, row_c0, row_dy1, row_f);
  TORCH_CHECK(grads.size() == 8, "fhgs native backward: expected 8 gradients");
  const bool cuda = use_cuda(means);
  TORCH_CHECK(!cuda || kHasCuda, "fhgs native: built without CUDA");
  c10::DeviceGuard guard(means.device());
  const int64_t N = a.N, npix = width * height;
  a.geom = ptr_or_null<float>(state[0]);
  a.ibox = ptr_or_null<int>(state[1]);
  a.tiles_touched = ptr_or_null<int64_t>(state[2]);
  a.lever_off = ptr_or_null<int64_t>(state[3]);
  a.tile_start = state[4].data_ptr<int64_t>();
  a.tile_list = ptr_or_null<int>(state[5]);
  a.E = state[5].numel();
  a.entry_pos = ptr_or_null<int>(state[6]);
  a.lever = ptr_or_null<float>(state[7]);
  a.lever_total = state[7].numel();
  a.invn = ptr_or_null<float>(state[8]);
  a.pix_state = state[9].data_ptr<double>();
  a.pix_idx = state[10].data_ptr<int>();
  a.ftot = ptr_or_null<float>(state[11]);
  a.contrib = ptr_or_null<float>(state[12]);
  a.tile_coff = ptr_or_null<int64_t>(state[13]);
  a.pix_coff = ptr_or_null<int64_t>(state[14]);
  a.contrib_idx = ptr_or_null<int>(state[15]);
  TORCH_CHECK(cuda || a.pix_coff != nullptr, "fhgs native backward: the forward ran without need_backward");
  std::vector<Tensor> g(8);
  for (int i = 0; i < 8; ++i) {
    if (grads[i].defined() && grads[i].numel() > 0) {
      g[i] = grads[i].to(means.options()).contiguous();
    }
  }
  auto need = [&](int i, std::vector<int64_t> shape) {
    if (!g[i].defined()) g[i] = at::zeros(shape, means.options());
    return g[i].data_ptr<float>();
  };
  a.g_rgb = need(0, {3, height, width});
  a.g_alpha = need(1, {height, width});
  a.g_depth = need(2, {height, width});
  a.g_median = need(3, {height, width});
  a.g_normal = need(4, {3, height, width});
  a.g_dist = need(5, {height, width});
  if (a.D > 0) {
    a.g_ext = need(6, {height, width});
    a.g_int = need(7, {height, width});
  }
  auto fopt = means.options();
  Tensor d_fvalues, facc;
  if (fvalues.defined() && fvalues.numel() > 0) {
    check_f32(fvalues, "feature_values");
    TORCH_CHECK(fvalues.dim() == 2 && fvalues.size(0) == N, "feature_values must be (N, Dr)");
    TORCH_CHECK(!cuda, "fhgs native: the feature-image gradient (bench-only Feature-3DGS kernel) has no CUDA version");
    TORCH_CHECK(!g_cpu_baseline, "fhgs native: the feature-image gradient needs the live CPU kernels, not 'baseline'");
    a.feat_grad = 1;
    a.Dr = (int)fvalues.size(1);
    a.fvalues = fvalues.data_ptr<float>();
    Tensor gf = g_feat.defined() && g_feat.numel() > 0 ? g_feat.to(fopt).contiguous()
                                                       : at::zeros({a.Dr, height, width}, fopt);
    TORCH_CHECK(gf.numel() == (int64_t)a.Dr * npix, "fhgs native: feature-image gradient must be (Dr, H, W)");
    g_feat = gf;
    a.g_feat = gf.data_ptr<float>();
    d_fvalues = alloc({N, a.Dr}, fopt);
    facc = alloc({a.E, a.Dr}, fopt);  // each tile zeroes its own rows
    a.d_fvalues = ptr_or_null<float>(d_fvalues);
    a.facc = ptr_or_null<float>(facc);
  }
  Tensor d_means = alloc({N, 3}, fopt), d_quats = alloc({N, 4}, fopt), d_scales = alloc({N, 2}, fopt);
  Tensor d_opacity = alloc({N}, fopt), d_colors = alloc({N, 3}, fopt);
  a.d_means = ptr_or_null<float>(d_means);
  a.d_quats = ptr_or_null<float>(d_quats);
  a.d_scales = ptr_or_null<float>(d_scales);
  a.d_opacity = ptr_or_null<float>(d_opacity);
  a.d_colors = ptr_or_null<float>(d_colors);
  if (cuda) {
#ifdef FHGS_WITH_CUDA
    char err[256] = {0};
    Tensor acc = at::zeros({N, fhgs::ACC_STRIDE}, fopt);
    Tensor scratch = alloc({a.D > 0 ? 2 * a.D * npix : 0}, fopt);
    a.acc = ptr_or_null<float>(acc);
    a.scratch = ptr_or_null<float>(scratch);
    cuda_check(fhgs::cuda_backward(a, (intptr_t)stream, err), err, "backward");
#endif
  } else {
    StageTimer timer;
    Tensor acc = at::zeros({a.E, fhgs::ACC_STRIDE}, fopt);
    a.acc = ptr_or_null<float>(acc);
    if (g_cpu_baseline) fhgs::cpu_backward_baseline(a);
    else fhgs::cpu_backward(a);
    timer.mark("backward");
  }
  (void)npix;
  if (a.feat_grad) return {d_means, d_quats, d_scales, d_opacity.reshape(opacity.sizes()), d_colors, d_fvalues};
  return {d_means, d_quats, d_scales, d_opacity.reshape(opacity.sizes()), d_colors};
}

std::vector<Tensor> backward(Tensor means, Tensor quats, Tensor scales, Tensor opacity, Tensor colors, Tensor bg,
                             Tensor camvec, int64_t width, int64_t height, Tensor feats, Tensor grid, double lam,
                             double ksign, bool ext_use_sigma, Tensor col_c0, Tensor col_dx1, Tensor col_f,
                             Tensor row_c0, Tensor row_dy1, Tensor row_f, std::vector<Tensor> state,
                             std::vector<Tensor> grads, int64_t stream) {
  return backward_feat(means, quats, scales, opacity, colors, bg, camvec, width, height, feats, grid, lam, ksign,
                       ext_use_sigma, col_c0, col_dx1, col_f, row_c0, row_dy1, row_f, state, grads, stream, Tensor(),
                       Tensor());
}

bool has_cuda() { return kHasCuda; }

int64_t cuda_devices() {
#ifdef FHGS_WITH_CUDA
  char err[256] = {0};
  return fhgs::cuda_device_count(err);
#else
  return 0;
#endif
}

std::string build_info() {
  std::string s = "cpu";
#ifdef _OPENMP
  s += "+openmp";
#endif
#ifdef FHGS_CUDA_EMU
  s = "cuda-emu";
#elif defined(FHGS_WITH_CUDA)
  s += "+cuda";
#endif
  return s;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "FHGS native surfel rasterizer (C++/OpenMP CPU backend, optional CUDA backend)";
  m.def("forward", &forward_all, "rasterize forward");
  m.def("forward", &forward_mask, "rasterize forward; last argument: uint8 (H, W) NDFD pixel mask");
  m.def("forward", &forward, "rasterize forward; last arguments: NDFD pixel mask, feat_grad (the feature image "
        "is differentiable: CPU scalar kernel, bench-only)");
  m.def("backward", &backward, "rasterize backward");
  m.def("backward", &backward_feat, "rasterize backward; last arguments: feature_values (N, Dr) and the feature "
        "image's gradient (Dr, H, W) of a feat_grad forward; also returns d_feature_values");
  m.def("has_cuda", &has_cuda, "built with the CUDA backend");
  m.def("accepts_half_features", []() { return true; },
        "features_unit may be float16 (read directly by the CPU subsampled-NDFD kernels, copied for the others)");
  m.def("cuda_devices", &cuda_devices, "number of CUDA devices seen by the CUDA backend (0 or negative error)");
  m.def("build_info", &build_info, "backends compiled in");
  m.def("set_poison", [](bool on) { g_poison = on; }, "fill uninitialized buffers with NaN / sentinels (tests)");
  m.def("state_names", &state_names, "names of the state tensors saved for backward");
  m.def("set_cpu_kernel", [](const std::string& name) {
    TORCH_CHECK(name == "fast" || name == "baseline", "fhgs native: cpu kernel must be 'fast' or 'baseline'");
    g_cpu_baseline = name == "baseline";
  }, "CPU tile kernels: 'fast' (default) or 'baseline' (the frozen scalar copy, for benchmarks)");
  m.def("set_cpu_isa", [](const std::string& name) {
    TORCH_CHECK(fhgs::set_cpu_rgb_isa(name.c_str()), "fhgs native: cpu isa '", name,
                "' unknown or not supported by this CPU (auto, x86-64-v4, x86-64-v3, baseline)");
  }, "instruction-set variant of the SIMD RGB kernels: auto (default), x86-64-v4, x86-64-v3, baseline");
  m.def("cpu_isa", []() { return std::string(fhgs::cpu_rgb_isa()); }, "SIMD RGB kernel variant in use");
  m.def("cpu_kernel", []() { return std::string(g_cpu_baseline ? "baseline" : "fast"); }, "current CPU tile kernels");
  m.def("stage_profile", [](bool reset) {
    std::map<std::string, std::pair<double, int64_t>> out;
    for (int i = 0; i < kNumStages; ++i) {
      out[kStages[i]] = {g_stage_ms[i], g_stage_calls[i]};
      if (reset) { g_stage_ms[i] = 0.0; g_stage_calls[i] = 0; }
    }
    return out;
  }, "accumulated wall ms and call count per native stage (preprocess, bin, lever, forward, backward)");
#ifdef FHGS_CUDA_EMU
  m.def("emu_configure", [](int64_t schedule, int64_t seed, bool poison_shared) {
    TORCH_CHECK(schedule >= 0 && schedule <= 2, "schedule: 0 sequential, 1 random, 2 uniform");
    fhgs_cuda_emu_configure((int)schedule, (uint64_t)seed, poison_shared ? 1 : 0);
  }, "CUDA emulator: schedule (0 FIFO, 1 random priorities per barrier, 2 uniform random), seed, 0xFF-filled "
     "shared memory per block");
  m.def("emu_stats", [](bool reset) {
    std::vector<int64_t> v(7);
    fhgs_cuda_emu_stats(v.data(), reset ? 1 : 0);
    return v;
  }, "CUDA emulator counters: launches, blocks, threads, barriers, warp_ops, resumes, schedule_hash");
#endif
}
