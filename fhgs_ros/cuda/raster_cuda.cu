// CUDA backend of the FHGS surfel rasterizer: the twin of raster_cpu.cpp on the same math header.
//
// Pure CUDA (cuda_runtime + CUB only, no torch headers): compiled by nvcc into an object that
// setup_ext.py links into the CppExtension; bindings.cpp calls the C launchers declared in
// raster_api.h with raw device pointers (buffers are torch CUDA tensors) and the torch stream.
//
// Structure (as 2DGS / diff-surfel-rasterization):
//   preprocess   one thread per surfel (preprocess_surfel, lever cell box);
//   bin          duplicate each surfel once per overlapped tile with the 64-bit key
//                (tile << 32 | float bits of the centre depth), one stable CUB radix sort (ties keep
//                the surfel index order, as the reference's stable sort), per-tile ranges;
//   lever        Gram values of the GT grid (one thread per cell), 1/|bilinear GT| per pixel,
//                per-surfel tables f_i . F_c (one block per surfel);
//   forward      one 16x16 block per tile, batches of 256 list entries staged in shared memory,
//                one thread per pixel running the header's front-to-back compositing + NDFD; the
//                feature accumulator F of each pixel lives in F_tot (channel-major: coalesced);
//   backward     one block per tile, batches walked from the back; per-pair surfel gradients are
//                summed over each warp with shuffles and added with one atomicAdd per warp;
//                then one thread per surfel maps them to means, quaternions, scales.
#include <cuda_runtime.h>
#include <stdio.h>

#include <cub/device/device_radix_sort.cuh>

#include "raster_api.h"
#include "raster_math.h"

// Every kernel launch goes through FHGS_LAUNCH so that the same file also runs on the CPU
// execution harness (emu/cuda_emu.h defines its own FHGS_LAUNCH; see README.md).
#ifndef FHGS_LAUNCH
#define FHGS_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace fhgs {

namespace {

constexpr int BLOCK = TILE * TILE;

int fail(cudaError_t e, const char* what, char* err) {
  if (e == cudaSuccess) return 0;
  snprintf(err, 256, "%s: %s", what, cudaGetErrorString(e));
  return (int)e;
}

int launch_check(const char* what, char* err) { return fail(cudaGetLastError(), what, err); }

__global__ void k_preprocess(RasterArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= a.N) return;
  float* g = a.geom + (int64_t)i * GEOM_STRIDE;
  int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
  bool on = preprocess_surfel(a.means + 3 * (int64_t)i, a.quats + 4 * (int64_t)i, a.scales + 2 * (int64_t)i, a.cam,
                              g, b, a.radii + i);
  int64_t nt = 0;
  if (on) nt = (int64_t)(b[B_X1] / TILE - b[B_X0] / TILE + 1) * (b[B_Y1] / TILE - b[B_Y0] / TILE + 1);
  a.tiles_touched[i] = nt;
  if (a.D > 0 && a.col_c0 != nullptr) {
    lever_cell_box(b, a.col_c0, a.col_dx1, a.row_c0, a.row_dy1, b);
    a.lever_off[i] = (int64_t)b[B_NCX] * b[B_NCY];
  } else {
    b[B_CX0] = b[B_CY0] = b[B_NCX] = b[B_NCY] = 0;
    a.lever_off[i] = 0;
  }
}

// tiles_touched holds exclusive offsets here (bindings converted the counts).
__global__ void k_duplicate(RasterArgs a, int ntx) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= a.N) return;
  const int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
  if (b[B_X0] > b[B_X1]) return;
  int64_t k = a.tiles_touched[i];
  const uint32_t zbits = __float_as_uint(a.geom[(int64_t)i * GEOM_STRIDE + G_Z]);  // z > near > 0: monotone bits
  for (int ty = b[B_Y0] / TILE; ty <= b[B_Y1] / TILE; ++ty)
    for (int tx = b[B_X0] / TILE; tx <= b[B_X1] / TILE; ++tx) {
      a.keys_in[k] = (int64_t)(((uint64_t)(ty * ntx + tx) << 32) | (uint64_t)zbits);
      a.vals_in[k] = i;
      ++k;
    }
}

// tile_start[t] = first sorted entry with tile id >= t (binary search), t in [0, ntiles].
__global__ void k_ranges(RasterArgs a, int ntiles) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t > ntiles) return;
  const uint64_t key = (uint64_t)t << 32;
  int64_t lo = 0, hi = a.E;
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if ((uint64_t)a.keys_out[mid] < key) lo = mid + 1; else hi = mid;
  }
  a.tile_start[t] = lo;
}

__global__ void k_gram(RasterArgs a) {
  const int64_t ncell = (int64_t)a.gh * a.gw;
  const int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= ncell) return;
  const int D = a.D, gw = a.gw, gh = a.gh;
  const int y = (int)(c / gw), x = (int)(c % gw);
  const float* Fc = a.grid + c * D;
  const bool r = x + 1 < gw, dn = y + 1 < gh;
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f;
  for (int d = 0; d < D; ++d) {
    float f = Fc[d];
    s0 += f * f;
    if (r) s1 += f * Fc[D + d];
    if (dn) s2 += f * Fc[(int64_t)gw * D + d];
    if (r && dn) {
      s3 += f * Fc[(int64_t)(gw + 1) * D + d];
      s4 += Fc[D + d] * Fc[(int64_t)gw * D + d];
    }
  }
  a.gram[c] = s0;
  a.gram[ncell + c] = s1;
  a.gram[2 * ncell + c] = s2;
  a.gram[3 * ncell + c] = s3;
  a.gram[4 * ncell + c] = s4;
}

__global__ void k_invn(RasterArgs a) {
  const int W = a.cam.width, H = a.cam.height;
  const int64_t pix = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (pix >= (int64_t)W * H) return;
  const int64_t ncell = (int64_t)a.gh * a.gw;
  const int y = (int)(pix / W), x = (int)(pix % W);
  PixLever pl;
  pl.c0x = a.col_c0[x]; pl.dx1 = a.col_dx1[x]; pl.fx = a.col_f[x];
  pl.c0y = a.row_c0[y]; pl.dy1 = a.row_dy1[y]; pl.fy = a.row_f[y];
  a.invn[pix] = lever_invnorm(a.gram, a.gram + ncell, a.gram + 2 * ncell, a.gram + 3 * ncell, a.gram + 4 * ncell,
                              a.gw, pl);
}

// One block per surfel: its lever table f_i . F_c over the cells of its cell box.
__global__ void k_lever_table(RasterArgs a) {
  const int i = blockIdx.x;
  const int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
  const int ncx = b[B_NCX], ncy = b[B_NCY];
  const int n = ncx * ncy;
  if (n == 0) return;
  float* Pi = a.lever + a.lever_off[i];
  const float* f = a.feats + (int64_t)i * a.D;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    const int cy = c / ncx, cx = c % ncx;
    const float* Fc = a.grid + ((int64_t)(b[B_CY0] + cy) * a.gw + (b[B_CX0] + cx)) * a.D;
    float s = 0.f;
    for (int d = 0; d < a.D; ++d) s += f[d] * Fc[d];
    Pi[c] = s;
  }
}

struct SharedBatch {
  float T[BLOCK][9];
  float KL[BLOCK][8];
  float cx[BLOCK], cy[BLOCK], op[BLOCK], rho_cut[BLOCK];
  int box[BLOCK][4];
  int sid[BLOCK];
  int lcx0[BLOCK], lcy0[BLOCK], lncx[BLOCK];
  int64_t loff[BLOCK];
};

__device__ void load_entry(const RasterArgs& a, SharedBatch& sb, int slot, int64_t j) {
  const int sid = a.tile_list[j];
  const float* g = a.geom + (int64_t)sid * GEOM_STRIDE;
  const int* b = a.ibox + (int64_t)sid * IBOX_STRIDE;
  for (int i = 0; i < 9; ++i) sb.T[slot][i] = g[G_T + i];
  for (int i = 0; i < 8; ++i) sb.KL[slot][i] = g[G_KL + i];
  sb.cx[slot] = g[G_CX];
  sb.cy[slot] = g[G_CY];
  sb.op[slot] = a.opacity[sid];
  sb.rho_cut[slot] = rho_cutoff(sb.op[slot]);
  sb.box[slot][0] = b[B_X0]; sb.box[slot][1] = b[B_X1]; sb.box[slot][2] = b[B_Y0]; sb.box[slot][3] = b[B_Y1];
  sb.sid[slot] = sid;
  sb.lcx0[slot] = b[B_CX0]; sb.lcy0[slot] = b[B_CY0]; sb.lncx[slot] = b[B_NCX];
  sb.loff[slot] = a.lever_off ? a.lever_off[sid] : 0;
}

__global__ void __launch_bounds__(BLOCK) k_forward(RasterArgs a) {
  __shared__ SharedBatch sb;
  const int W = a.cam.width, H = a.cam.height;
  const int64_t npix = (int64_t)W * H;
  const int ntx = tiles_x(W);
  const int tile = blockIdx.y * ntx + blockIdx.x;
  const int px = blockIdx.x * TILE + threadIdx.x, py = blockIdx.y * TILE + threadIdx.y;
  const int tid = threadIdx.y * TILE + threadIdx.x;
  const bool inside = px < W && py < H;
  const int64_t pix = inside ? (int64_t)py * W + px : 0;
  const float fx = (float)px, fy = (float)py;
  const int D = a.D, Dr = a.Dr;
  const float zn = a.cam.znear, zf = a.cam.zfar;
  const int64_t s = a.tile_start[tile], e = a.tile_start[tile + 1];

  PixelState st;
  pixel_init(st);
  PixLever pl;
  float* F = D > 0 ? a.ftot + pix : nullptr;     // channel stride npix
  float* FV = Dr > 0 ? a.out_feat + pix : nullptr;
  if (inside) {
    if (D > 0) {
      pl = pixel_lever(a, px, py, pix);
      for (int d = 0; d < D; ++d) F[d * npix] = 0.f;
    }
    for (int d = 0; d < Dr; ++d) FV[d * npix] = 0.f;
  }
  bool done = !inside;
  for (int64_t base = s; base < e; base += BLOCK) {
    __syncthreads();
    if (__syncthreads_count(done) == BLOCK) break;
    if (base + tid < e) load_entry(a, sb, tid, base + tid);
    __syncthreads();
    const int cnt = (int)min((int64_t)BLOCK, e - base);
    for (int k = 0; k < cnt && !done; ++k) {
      if (px < sb.box[k][0] || px > sb.box[k][1] || py < sb.box[k][2] || py > sb.box[k][3]) continue;
      PairEval pe;
      if (!eval_pair(sb.T[k], sb.KL[k], sb.cx[k], sb.cy[k], sb.op[k], fx, fy, zn, sb.rho_cut[k], pe)) continue;
      if (!pixel_accepts(st, pe.alpha)) { done = true; break; }
      const int sid = sb.sid[k];
      const float Tprev = st.T;
      const float w = pixel_composite(st, pe.alpha, pe.z, a.colors + (int64_t)sid * 3,
                                      a.geom + (int64_t)sid * GEOM_STRIDE + G_N, (int)(base + k), zn, zf);
      if (D > 0) {
        const float phi = lever_phi(a.lever + sb.loff[k], sb.lcx0[k], sb.lcy0[k], sb.lncx[k], pl);
        const float sig = ndfd_sigma(a.nd, phi);
        const float gate = a.nd.ext_use_sigma ? sig : 1.0f;
        st.ext += gate * w * (1.0f - phi);
        const float dotp = ndfd_forward_pass(F, npix, a.feats + (int64_t)sid * D, D, w);
        st.intl += sig * w * ((1.0f - Tprev) - dotp);
      }
      if (Dr > 0) feature_blend_pass(FV, npix, a.fvalues + (int64_t)sid * Dr, Dr, w);
    }
  }
  if (!inside) return;
  store_pixel(a, st, pix, npix);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

__global__ void __launch_bounds__(BLOCK) k_backward(RasterArgs a) {
  __shared__ SharedBatch sb;
  __shared__ int s_maxlast;
  const int W = a.cam.width, H = a.cam.height;
  const int64_t npix = (int64_t)W * H;
  const int ntx = tiles_x(W);
  const int tile = blockIdx.y * ntx + blockIdx.x;
  const int px = blockIdx.x * TILE + threadIdx.x, py = blockIdx.y * TILE + threadIdx.y;
  const int tid = threadIdx.y * TILE + threadIdx.x;
  const int lane = tid & 31;
  const bool inside = px < W && py < H;
  const int64_t pix = inside ? (int64_t)py * W + px : 0;
  const float fx = (float)px, fy = (float)py;
  const int D = a.D;
  const float zn = a.cam.znear, zf = a.cam.zfar;
  const int64_t s = a.tile_start[tile], e = a.tile_start[tile + 1];
  const int last = inside ? a.pix_idx[pix] : -1;
  const int med = inside ? a.pix_idx[npix + pix] : -1;
  if (tid == 0) s_maxlast = -1;
  __syncthreads();
  atomicMax(&s_maxlast, last);
  __syncthreads();
  const int64_t top = min(e - 1, (int64_t)s_maxlast);  // block-uniform

  PixelGrads g;
  PixelBack b;
  PixLever pl;
  bool nd_phi = false, nd_pass = false;
  float* V = nullptr;
  float* S = nullptr;
  if (inside && last >= 0) {
    load_pixel_grads(a, pix, npix, g);
    nd_phi = D > 0 && (g.ext != 0.f || g.intl != 0.f);
    nd_pass = D > 0 && g.intl != 0.f;
    pixel_back_init(b, g, a.bg, (float)a.pix_state[pix], a.pix_state[npix + pix], a.pix_state[2 * npix + pix],
                    a.pix_state[3 * npix + pix], a.pix_state[4 * npix + pix]);
    if (nd_phi) pl = pixel_lever(a, px, py, pix);
    if (nd_pass) {
      V = a.scratch + pix;
      S = a.scratch + (int64_t)D * npix + pix;
      for (int d = 0; d < D; ++d) {
        V[d * npix] = a.ftot[d * npix + pix];
        S[d * npix] = 0.f;
      }
    }
  }
  for (int64_t hi = top; hi >= s; hi -= BLOCK) {  // batch covers entries (hi - BLOCK, hi]
    __syncthreads();
    if (hi - tid >= s) load_entry(a, sb, tid, hi - tid);
    __syncthreads();
    const int cnt = (int)min((int64_t)BLOCK, hi - s + 1);
    for (int k = 0; k < cnt; ++k) {
      const int64_t j = hi - k;
      float acc[ACC_STRIDE];
      bool act = inside && j <= last && !(px < sb.box[k][0] || px > sb.box[k][1] || py < sb.box[k][2] ||
                                           py > sb.box[k][3]);
      PairEval pe;
      if (act) act = eval_pair(sb.T[k], sb.KL[k], sb.cx[k], sb.cy[k], sb.op[k], fx, fy, zn, sb.rho_cut[k], pe);
      if (act) {
        for (int c = 0; c < ACC_STRIDE; ++c) acc[c] = 0.f;
        const int sid = sb.sid[k];
        const float w = pixel_back_weight(b, pe.alpha);
        float gk = pixel_back_g(b, g, a.colors + (int64_t)sid * 3, a.geom + (int64_t)sid * GEOM_STRIDE + G_N,
                                pe.z, zn, zf);
        if (nd_phi) {
          const float phi = lever_phi(a.lever + sb.loff[k], sb.lcx0[k], sb.lcy0[k], sb.lncx[k], pl);
          const float sig = ndfd_sigma(a.nd, phi);
          float da = 0.f, db = 0.f;
          if (nd_pass) ndfd_backward_pass(V, S, npix, a.feats + (int64_t)sid * D, D, w, sig * w, &da, &db);
          gk += pixel_back_g_ndfd(b, g, a.nd, phi, sig, w, da, db);
        }
        pixel_back_finish(b, g, sb.T[k], sb.cx[k], sb.cy[k], sb.op[k], fx, fy, pe, w, gk, j == med, zn, zf, acc);
      }
      // warp reduction of the pair gradients, one atomicAdd per warp and field
      if (__any_sync(0xffffffffu, act)) {
        const int sid = sb.sid[k];
        for (int c = 0; c < ACC_STRIDE; ++c) {
          float v = warp_sum(act ? acc[c] : 0.f);
          if (lane == 0 && v != 0.f) atomicAdd(a.acc + (int64_t)sid * ACC_STRIDE + c, v);
        }
      }
    }
  }
}

__global__ void k_surfel_backward(RasterArgs a) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= a.N) return;
  const float* acc = a.acc + (int64_t)i * ACC_STRIDE;
  surfel_backward(a.means + 3 * (int64_t)i, a.quats + 4 * (int64_t)i, a.scales + 2 * (int64_t)i, a.cam,
                  a.geom + (int64_t)i * GEOM_STRIDE, acc, a.d_means + 3 * (int64_t)i, a.d_quats + 4 * (int64_t)i,
                  a.d_scales + 2 * (int64_t)i);
  a.d_opacity[i] = acc[A_OP];
  for (int c = 0; c < 3; ++c) a.d_colors[3 * (int64_t)i + c] = acc[A_COL + c];
}

int tile_bits(int ntiles) {
  int bits = 1;
  while ((1ll << bits) < (long long)ntiles + 1) ++bits;
  return bits;
}

}  // namespace

int cuda_device_count(char* err) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    snprintf(err, 256, "%s", cudaGetErrorString(e));
    cudaGetLastError();
    return 0;
  }
  return n;
}

int cuda_preprocess(RasterArgs& a, intptr_t stream, char* err) {
  if (a.N == 0) return 0;
  cudaStream_t st = (cudaStream_t)stream;
  FHGS_LAUNCH(k_preprocess, (a.N + 255) / 256, 256, 0, st, a);
  return launch_check("preprocess", err);
}

int64_t cuda_sort_temp_bytes(int64_t E, int ntiles, char* err) {
  size_t bytes = 0;
  if (E == 0) return 0;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, bytes, (const uint64_t*)nullptr, (uint64_t*)nullptr,
                                                  (const int*)nullptr, (int*)nullptr, (int)E, 0,
                                                  32 + tile_bits(ntiles));
  if (fail(e, "sort temp size", err)) return -1;
  return (int64_t)bytes;
}

int cuda_bin(RasterArgs& a, intptr_t stream, char* err) {
  cudaStream_t st = (cudaStream_t)stream;
  const int W = a.cam.width, H = a.cam.height;
  const int ntx = tiles_x(W), ntiles = ntx * tiles_y(H);
  if (a.E > 0) {
    FHGS_LAUNCH(k_duplicate, (a.N + 255) / 256, 256, 0, st, a, ntx);
    if (launch_check("duplicate", err)) return 1;
    size_t bytes = (size_t)a.sort_temp_bytes;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(a.sort_temp, bytes, (const uint64_t*)a.keys_in,
                                                    (uint64_t*)a.keys_out, (const int*)a.vals_in, a.tile_list,
                                                    (int)a.E, 0, 32 + tile_bits(ntiles), st);
    if (fail(e, "radix sort", err)) return 1;
  }
  FHGS_LAUNCH(k_ranges, (ntiles + 1 + 255) / 256, 256, 0, st, a, ntiles);
  return launch_check("ranges", err);
}

int cuda_lever(RasterArgs& a, intptr_t stream, char* err) {
  cudaStream_t st = (cudaStream_t)stream;
  const int64_t ncell = (int64_t)a.gh * a.gw;
  const int64_t npix = (int64_t)a.cam.width * a.cam.height;
  FHGS_LAUNCH(k_gram, (unsigned)((ncell + 127) / 128), 128, 0, st, a);
  if (launch_check("lever gram", err)) return 1;
  FHGS_LAUNCH(k_invn, (unsigned)((npix + 255) / 256), 256, 0, st, a);
  if (launch_check("lever norm", err)) return 1;
  if (a.N > 0 && a.lever_total > 0) {
    FHGS_LAUNCH(k_lever_table, a.N, 64, 0, st, a);
    if (launch_check("lever table", err)) return 1;
  }
  return 0;
}

int cuda_forward(RasterArgs& a, intptr_t stream, char* err) {
  cudaStream_t st = (cudaStream_t)stream;
  dim3 grid(tiles_x(a.cam.width), tiles_y(a.cam.height)), block(TILE, TILE);
  FHGS_LAUNCH(k_forward, grid, block, 0, st, a);
  return launch_check("forward", err);
}

int cuda_backward(RasterArgs& a, intptr_t stream, char* err) {
  cudaStream_t st = (cudaStream_t)stream;
  dim3 grid(tiles_x(a.cam.width), tiles_y(a.cam.height)), block(TILE, TILE);
  FHGS_LAUNCH(k_backward, grid, block, 0, st, a);
  if (launch_check("backward", err)) return 1;
  if (a.N > 0) {
    FHGS_LAUNCH(k_surfel_backward, (a.N + 255) / 256, 256, 0, st, a);
    if (launch_check("surfel backward", err)) return 1;
  }
  return 0;
}

}  // namespace fhgs
