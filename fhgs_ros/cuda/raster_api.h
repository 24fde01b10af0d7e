// Plain C++ interface between bindings.cpp (the only translation unit that sees torch) and the
// two backends: raster_cpu.cpp (C++/OpenMP) and raster_cuda.cu (CUDA, built only when nvcc is
// present). Only raw pointers and sizes cross this boundary; all buffers are allocated by the
// caller (as torch tensors) so that the state saved for the backward lives in autograd's context.
//
// Stages, identical for both backends:
//   1. preprocess: per surfel splat matrix, screen box, radius, normal, tile count, lever cells;
//   2. bin: per 16x16 tile, the list of overlapping surfels sorted by (centre depth, index);
//   3. lever (NDFD only): per-pixel bilinear norm of the GT grid, per-surfel table f_i . F_c for
//      the feature-grid cells of its box;
//   4. forward: per tile, per pixel front-to-back compositing + NDFD;
//   5. backward: per tile, per pixel reverse traversal; per-surfel reduction and parameter grads.
#pragma once

#include <stdint.h>

#include "raster_math.h"

namespace fhgs {

struct RasterArgs {
  // sizes
  int N = 0;          // surfels
  int D = 0;          // unit feature width (NDFD), 0 when NDFD is off
  int Dr = 0;         // raw feature width of the blended feature image, 0 when not asked
  int gh = 0, gw = 0; // GT feature grid size
  int64_t E = 0;      // tile-list entries (after preprocess)
  int64_t lever_total = 0;
  int nthreads = 1;   // CPU threads
  int need_backward = 0;
  // Feature-image gradient (bench-only Feature-3DGS-style kernel, CPU only): the forward runs the
  // scalar per-pixel kernel (forward_tile) for the blended Dr-channel image so that its records fit
  // the scalar backward, which then also takes g_feat and returns d_fvalues (the feature image's
  // gradient reaches the geometry through the blending weights, like the colour's).
  int feat_grad = 0;
  // Subsampled NDFD on the CPU (nd_mask set, no feat_grad): every tile runs the SIMD RGB row
  // kernels for all its pixels, then the scalar per-pixel kernel for the NDFD terms of its masked
  // pixels only (raster_cpu.cpp). The forward binding sets it; the backward binding derives it from
  // the state (no lever tables with D > 0).
  int nd_hybrid = 0;
  CameraParams cam;
  NdfdParams nd;
  float bg[3] = {0.f, 0.f, 0.f};

  // inputs (contiguous float32)
  const float* means = nullptr;     // (N, 3)
  const float* quats = nullptr;     // (N, 4)
  const float* scales = nullptr;    // (N, 2)
  const float* opacity = nullptr;   // (N,)
  const float* colors = nullptr;    // (N, 3)
  const float* feats = nullptr;     // (N, D) unit features
  // (N, D) the unit features as float16 (IEEE binary16 bits), CPU subsampled-NDFD path only: read
  // instead of feats, each row converted to float32 as the kernel needs it (exact), so the
  // caller need not make a float32 copy of the map's float16 features every step.
  const uint16_t* feats16 = nullptr;
  const float* fvalues = nullptr;   // (N, Dr) raw features for the feature image
  const float* grid = nullptr;      // (gh * gw, D) GT feature cells (raw)
  const int* col_c0 = nullptr;      // (W,) lever: first grid column of each pixel column
  const int* col_dx1 = nullptr;     // (W,) 0/1
  const float* col_f = nullptr;     // (W,) bilinear fraction
  const int* row_c0 = nullptr;      // (H,)
  const int* row_dy1 = nullptr;     // (H,)
  const float* row_f = nullptr;     // (H,)
  // (H * W,) nonzero where the NDFD terms are evaluated (pixel subsampling); null: every pixel.
  // The CPU backend evaluates NDFD only there (ext / int are 0 elsewhere); the CUDA backend
  // evaluates every pixel and the caller masks its outputs.
  const uint8_t* nd_mask = nullptr;

  // per-surfel state
  float* geom = nullptr;            // (N, GEOM_STRIDE)
  int* ibox = nullptr;              // (N, IBOX_STRIDE)
  int* radii = nullptr;             // (N,)
  int64_t* tiles_touched = nullptr; // (N,) then its inclusive prefix sum (offsets) for bin
  int64_t* lever_off = nullptr;     // (N,) lever cell counts, then inclusive prefix sum

  // binning
  int64_t* tile_start = nullptr;    // (ntiles + 1,)
  int* tile_list = nullptr;         // (E,) surfel ids
  int* entry_pos = nullptr;         // CPU: (E,) for each surfel's entries (CSR by surfel), list positions
  // CUDA sort buffers
  int64_t* keys_in = nullptr;
  int64_t* keys_out = nullptr;
  int* vals_in = nullptr;
  void* sort_temp = nullptr;
  int64_t sort_temp_bytes = 0;

  // lever
  float* lever = nullptr;           // (lever_total,) f_i . F_c tables
  float* invn = nullptr;            // (H * W,) 1 / |bilinear GT feature|
  float* gram = nullptr;            // (5, gh * gw) neighbour Gram values of the grid

  // outputs (channels first)
  float* out_rgb = nullptr;         // (3, H, W)
  float* out_alpha = nullptr;       // (H, W)
  float* out_depth = nullptr;
  float* out_median = nullptr;
  float* out_normal = nullptr;      // (3, H, W)
  float* out_dist = nullptr;
  float* out_ext = nullptr;         // (H, W) or null
  float* out_int = nullptr;
  float* out_feat = nullptr;        // (Dr, H, W) or null
  int* out_ncontrib = nullptr;      // (H, W)

  // per-pixel state saved for the backward
  double* pix_state = nullptr;      // (5, H, W) float64: T_final, distortion m0, W, M1, M2
  int* pix_idx = nullptr;           // (3, H, W): last kept list index, median list index, n_contrib
  int* pix_idx3 = nullptr;          // alias of pix_idx row 2 (n_contrib), CPU
  float* ftot = nullptr;            // CUDA: F_tot = sum_i w_i f_i, (D, H*W) channel-major
  // CPU: per kept contributor, in forward order, its list index and (NDFD) the record
  // (phi, sigma, F_{i-1} . f_i): the forward prefix the backward needs (what the CUDA backend
  // recovers from F_tot). Laid out per tile at tile_coff[t] (an upper bound: the tile's in-box
  // pairs), per pixel at pix_coff[pix]. Without NDFD (D = 0) the SIMD RGB path stores instead, per
  // tile at tile_coff[t] and per (row, row-list entry), the uint16 mask of the row's 16 pixels that
  // kept the entry (see raster_cpu.cpp); pix_coff is then unused. With nd_hybrid a tile holds
  // both: the SIMD masks first, then for each masked pixel a header (contributor count, T_final as
  // float bits) and its records; pix_coff is the header's offset, -1 for the other pixels.
  float* contrib = nullptr;         // (3 * tile_coff[ntiles],) NDFD records, null without NDFD
  int* contrib_idx = nullptr;       // (tile_coff[ntiles],) list index of each kept contributor
  int64_t* tile_coff = nullptr;     // (ntiles + 1,)
  int64_t* pix_coff = nullptr;      // (H * W,)

  // backward
  const float* g_rgb = nullptr;     // (3, H, W)
  const float* g_alpha = nullptr;
  const float* g_depth = nullptr;
  const float* g_median = nullptr;
  const float* g_normal = nullptr;  // (3, H, W)
  const float* g_dist = nullptr;
  const float* g_ext = nullptr;     // null when NDFD is off
  const float* g_int = nullptr;
  const float* g_feat = nullptr;    // (Dr, H, W) with feat_grad, else null
  float* facc = nullptr;            // CPU, feat_grad: (E, Dr) per-entry sum_pix w g_feat
  float* d_fvalues = nullptr;       // (N, Dr) with feat_grad
  float* acc = nullptr;             // CPU: (E, ACC_STRIDE) per entry; CUDA: (N, ACC_STRIDE) per surfel
  float* scratch = nullptr;         // CUDA: (2, D, H*W) V and S
  float* d_means = nullptr;         // (N, 3)
  float* d_quats = nullptr;         // (N, 4)
  float* d_scales = nullptr;        // (N, 2)
  float* d_opacity = nullptr;       // (N,)
  float* d_colors = nullptr;        // (N, 3)
};

// ---- per-pixel steps shared by both backends' forward / backward loops
// The lever of pixel (x, y): its bilinear GT-grid cells and 1 / |F_gt| (0 before cpu/cuda_lever).
FHGS_HD PixLever pixel_lever(const RasterArgs& a, int x, int y, int64_t pix) {
  PixLever pl;
  pl.c0x = a.col_c0[x]; pl.dx1 = a.col_dx1[x]; pl.fx = a.col_f[x];
  pl.c0y = a.row_c0[y]; pl.dy1 = a.row_dy1[y]; pl.fy = a.row_f[y];
  pl.invn = a.invn ? a.invn[pix] : 0.0f;
  return pl;
}

// Write a composited pixel: the output images and the state the backward needs.
FHGS_HD void store_pixel(const RasterArgs& a, const PixelState& st, int64_t pix, int64_t npix) {
  for (int c = 0; c < 3; ++c) {
    a.out_rgb[c * npix + pix] = st.rgb[c] + st.T * a.bg[c];
    a.out_normal[c * npix + pix] = st.normal[c];
  }
  a.out_alpha[pix] = 1.0f - st.T;
  a.out_depth[pix] = st.depth;
  a.out_median[pix] = st.med_z;
  a.out_dist[pix] = (float)st.dist;
  a.out_ncontrib[pix] = st.n_contrib;
  a.pix_state[pix] = st.T;
  a.pix_state[npix + pix] = st.m0;
  a.pix_state[2 * npix + pix] = st.W;
  a.pix_state[3 * npix + pix] = st.M1;
  a.pix_state[4 * npix + pix] = st.M2;
  a.pix_idx[pix] = st.last;
  a.pix_idx[npix + pix] = st.med_idx;
  a.pix_idx[2 * npix + pix] = st.n_contrib;
  if (a.D > 0) {
    a.out_ext[pix] = st.ext;
    a.out_int[pix] = st.intl;
  }
}

// Read one pixel's upstream gradients (the backward's counterpart of store_pixel's outputs);
// ext / intl are zero without NDFD.
FHGS_HD void load_pixel_grads(const RasterArgs& a, int64_t pix, int64_t npix, PixelGrads& g) {
  for (int c = 0; c < 3; ++c) {
    g.rgb[c] = a.g_rgb[c * npix + pix];
    g.normal[c] = a.g_normal[c * npix + pix];
  }
  g.alpha = a.g_alpha[pix];
  g.depth = a.g_depth[pix];
  g.median = a.g_median[pix];
  g.dist = a.g_dist[pix];
  g.ext = a.D > 0 ? a.g_ext[pix] : 0.0f;
  g.intl = a.D > 0 ? a.g_int[pix] : 0.0f;
}

// ---- CPU backend (raster_cpu.cpp)
void cpu_preprocess(RasterArgs& a);
void cpu_bin(RasterArgs& a);
void cpu_lever(RasterArgs& a);
void cpu_forward(RasterArgs& a);
void cpu_backward(RasterArgs& a);
// Frozen copy of the scalar per-pixel tile kernels before the SIMD RGB path (raster_cpu_baseline.cpp),
// kept as the side-by-side baseline of `fhgs-bench raster`; same state layout as the NDFD path.
void cpu_forward_baseline(RasterArgs& a);
// Instruction-set variant of the SIMD RGB kernels in use ("x86-64-v4", "x86-64-v3", "baseline");
// set_cpu_rgb_isa forces one ("auto": the best the CPU has); false when unknown or unsupported.
const char* cpu_rgb_isa();
bool set_cpu_rgb_isa(const char* name);
void cpu_backward_baseline(RasterArgs& a);

// ---- CUDA backend (raster_cuda.cu); every function returns 0 or a CUDA error code and fills
// `err` (256 chars) with a message. `stream` is a cudaStream_t passed as an integer.
int cuda_device_count(char* err);
int cuda_preprocess(RasterArgs& a, intptr_t stream, char* err);
int64_t cuda_sort_temp_bytes(int64_t E, int ntiles, char* err);
int cuda_bin(RasterArgs& a, intptr_t stream, char* err);
int cuda_lever(RasterArgs& a, intptr_t stream, char* err);
int cuda_forward(RasterArgs& a, intptr_t stream, char* err);
int cuda_backward(RasterArgs& a, intptr_t stream, char* err);

}  // namespace fhgs
