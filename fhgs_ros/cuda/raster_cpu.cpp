// CPU backend of the FHGS surfel rasterizer: plain C++ + OpenMP on raw pointers.
//
// Structure (docs/METHOD.md §2 and §4): project and cull every surfel, bin them into 16x16
// tiles (lists sorted by centre depth, ties by index), then one OpenMP task per tile runs the
// per-pixel front-to-back forward, and the backward visits each pixel's contributors in reverse,
// reusing the forward prefix (T_final, the distortion sums and, per kept contributor, its list
// index and its NDFD record (phi, sigma, F_{k-1} . f_k)).
// The backward accumulates surfel gradients per tile-list entry (the tile's thread owns them: no
// atomics), then a per-surfel pass reduces the entries in a fixed order (deterministic) and maps
// them to the surfel parameters. All per-pair math lives in raster_math.h (shared with CUDA).
// Without NDFD the tiles run the SIMD row kernels forward_tile_rgb / backward_tile_rgb (16 pixels
// per vector, see below); raster_cpu_baseline.cpp keeps the scalar kernels as the bench baseline.
// With subsampled NDFD (nd_hybrid) a tile runs the SIMD row kernels for the colour, depth, normal
// and distortion of all its pixels, then the scalar kernels in NDFD-only mode (nd_only) over its
// masked pixels: they composite the pixel again (same contributors up to the exp polynomial's
// 2e-7) for the weights, evaluate the NDFD terms and, backward, add only the NDFD part of
// dL/dalpha (the upstream colour/depth/... gradients set to zero; the alpha recursion is linear in
// them) to the same per-entry accumulators. The full-resolution (lever) path stays all-scalar.
// With feat_grad (the bench's Feature-3DGS-style step, CPU only: no CUDA version) the scalar
// kernels also blend a Dr-channel feature image (channel loop inside the pixel, as in Feature
// 3DGS) and the backward returns its gradient into the per-surfel features and, through the
// blending weights, into the geometry.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <numeric>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "raster_api.h"
#include "raster_math.h"

static_assert(fhgs::TILE == 16, "the SIMD RGB path maps one tile row to 16 lanes");

// The tile kernels are compiled for AVX-512 and AVX2+FMA as well as the baseline, picked at load
// time (GCC function multi-versioning): the feature-width loops are where NDFD spends its time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FHGS_NO_CLONES)
#define FHGS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FHGS_CLONES
#endif

namespace fhgs {

namespace {

struct Ent {  // one tile-list entry, packed for the per-pixel loops
  float T[9];
  float KL[8];
  float cx, cy, op, rho_cut;
  int x0, x1, y0, y1;
  int sid;
  int lcx0, lcy0, lncx;
  int64_t loff;
};

// Image size and the tile's place: W, H (pixels), npix = W H, tile column / row (tx, ty) and its
// list range [s, e) in tile_list.
struct TileSpan {
  int W, H;
  int64_t npix;
  int tx, ty;
  int64_t s, e;
};

inline TileSpan tile_span(const RasterArgs& a, int tile) {
  const int W = a.cam.width, H = a.cam.height, ntx = tiles_x(W);
  return {W, H, (int64_t)W * H, tile % ntx, tile / ntx, a.tile_start[tile], a.tile_start[tile + 1]};
}

void pack_tile(const RasterArgs& a, int64_t s, int64_t e, std::vector<Ent>& ents) {
  ents.resize((size_t)(e - s));
  for (int64_t j = s; j < e; ++j) {
    int sid = a.tile_list[j];
    const float* g = a.geom + (int64_t)sid * GEOM_STRIDE;
    const int* b = a.ibox + (int64_t)sid * IBOX_STRIDE;
    Ent& en = ents[(size_t)(j - s)];
    for (int i = 0; i < 9; ++i) en.T[i] = g[G_T + i];
    for (int i = 0; i < 8; ++i) en.KL[i] = g[G_KL + i];
    en.cx = g[G_CX];
    en.cy = g[G_CY];
    en.op = a.opacity[sid];
    en.rho_cut = rho_cutoff(en.op);
    en.x0 = b[B_X0]; en.x1 = b[B_X1]; en.y0 = b[B_Y0]; en.y1 = b[B_Y1];
    en.sid = sid;
    en.lcx0 = b[B_CX0]; en.lcy0 = b[B_CY0]; en.lncx = b[B_NCX];
    en.loff = a.lever_off ? a.lever_off[sid] : 0;
  }
}

// Per-row entry lists of a tile: for row r, the (tile-relative) indices of the entries whose box
// covers that row, in list order. The per-pixel loops then only test the column range.
void build_rows(const std::vector<Ent>& ents, int y0, int nrows, std::vector<int>& rows, int* row_start) {
  rows.clear();
  for (int r = 0; r < nrows; ++r) {
    row_start[r] = (int)rows.size();
    const int py = y0 + r;
    for (int k = 0; k < (int)ents.size(); ++k)
      if (py >= ents[k].y0 && py <= ents[k].y1) rows.push_back(k);
  }
  row_start[nrows] = (int)rows.size();
}

struct Scratch {
  std::vector<Ent> ents;         // the current tile's packed list entries (pack_tile)
  std::vector<int> rows;         // and its per-row entry lists (build_rows) ...
  int row_start[TILE + 1];       // ... with their starts; nd_only reuses what the SIMD rows built
  std::vector<float> F, S, FV;
  std::vector<float> GF;         // feature-image gradient of one pixel (feat_grad)
  std::vector<float> FR;         // one unit feature row converted from float16 (feats16)
  std::vector<float> G;          // unit GT feature of a subsampled NDFD pixel
  std::vector<int> nd_sid;       // its kept contributors (surfel id, w, T before), front to back
  std::vector<float> nd_w, nd_T;
};

// Unit feature row of surfel sid as float32: a.feats in place, or the float16 row of a.feats16
// converted into buf (exact: every binary16 value is a float32 value). Inlined into the ISA clones
// (F16C conversions under x86-64-v3/v4).
#if defined(__FLT16_MAX__)
inline __attribute__((always_inline)) const float* feat_row(const RasterArgs& a, int sid, float* buf) {
  if (a.feats16 == nullptr) return a.feats + (int64_t)sid * a.D;
  const _Float16* h = reinterpret_cast<const _Float16*>(a.feats16) + (int64_t)sid * a.D;
  for (int d = 0; d < a.D; ++d) buf[d] = (float)h[d];
  return buf;
}
#else
inline float half_to_float(uint16_t h) {  // IEEE binary16 -> binary32, without compiler support
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, bits;
  if (e == 0x1f) bits = sign | 0x7f800000u | (m << 13);
  else if (e != 0) bits = sign | ((e + 112u) << 23) | (m << 13);
  else if (m == 0) bits = sign;
  else {  // subnormal: normalize
    e = 113u;
    while (!(m & 0x400u)) { m <<= 1; --e; }
    bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}
inline const float* feat_row(const RasterArgs& a, int sid, float* buf) {
  if (a.feats16 == nullptr) return a.feats + (int64_t)sid * a.D;
  const uint16_t* h = a.feats16 + (int64_t)sid * a.D;
  for (int d = 0; d < a.D; ++d) buf[d] = half_to_float(h[d]);
  return buf;
}
#endif

// Prefetch surfel sid's unit feature row (float32 or float16).
inline void prefetch_feat(const RasterArgs& a, int sid) {
  if (a.feats16 == nullptr) {
    prefetch_row(a.feats + (int64_t)sid * a.D, a.D);
    return;
  }
  const char* p = reinterpret_cast<const char*>(a.feats16 + (int64_t)sid * a.D);
  for (int b = 0; b < 2 * a.D; b += 64) __builtin_prefetch(p + b, 0, 1);
}

// Unit GT feature of pixel (x, y): bilinear sample of the raw grid (reference.sample_grid), then
// divided by max(|.|, 1e-12) (reference.sample_feature_target).
void pixel_gt(const RasterArgs& a, int x, int y, float* G) {
  const int D = a.D;
  const int c0x = a.col_c0[x], c1x = c0x + a.col_dx1[x], c0y = a.row_c0[y], c1y = c0y + a.row_dy1[y];
  const float fx = a.col_f[x], fy = a.row_f[y];
  const float* g00 = a.grid + ((int64_t)c0y * a.gw + c0x) * D;
  const float* g01 = a.grid + ((int64_t)c0y * a.gw + c1x) * D;
  const float* g10 = a.grid + ((int64_t)c1y * a.gw + c0x) * D;
  const float* g11 = a.grid + ((int64_t)c1y * a.gw + c1x) * D;
  float n2 = 0.0f;
  for (int d = 0; d < D; ++d) {
    const float top = g00[d] * (1.0f - fx) + g01[d] * fx;
    const float bot = g10[d] * (1.0f - fx) + g11[d] * fx;
    const float v = top * (1.0f - fy) + bot * fy;
    G[d] = v;
    n2 += v * v;
  }
  const float n = sqrtf(n2);
  const float inv = 1.0f / (n > 1e-12f ? n : 1e-12f);
  for (int d = 0; d < D; ++d) G[d] *= inv;
}

FHGS_CLONES
void forward_tile(const RasterArgs& a, int tile, Scratch& sc, bool nd_only) {
  const auto [W, H, npix, tx, ty, s, e] = tile_span(a, tile);
  if (!nd_only) pack_tile(a, s, e, sc.ents);  // nd_only: forward_tile_rgb packed this tile
  const Ent* ents = sc.ents.data();
  // nd_only (nd_hybrid, after the SIMD rows): masked pixels only, NDFD outputs and records only
  const int D = a.D, Dr = nd_only ? 0 : a.Dr;
  const bool ndfd = D > 0;
  const bool nd_direct = ndfd && a.nd_mask != nullptr;  // subsampled NDFD: GT per pixel, no lever
  const float zn = a.cam.znear, zf = a.cam.zfar;
  float* F = ndfd ? sc.F.data() : nullptr;
  float* FV = Dr > 0 ? sc.FV.data() : nullptr;
  const int nrows = std::min(H, (ty + 1) * TILE) - ty * TILE;
  const int* row_start = sc.row_start;
  if (!nd_only) build_rows(sc.ents, ty * TILE, nrows, sc.rows, sc.row_start);
  const int* rows = sc.rows.data();
  // contributor records written in this tile so far (nd_only: after the SIMD rows' uint16 masks)
  int64_t coff = nd_only ? (row_start[nrows] + 1) / 2 : 0;
  // nd_only with records: the SIMD forward's per-(row, entry) lane masks name each pixel's kept
  // contributors, so only those are evaluated again (and no keep decision is re-taken)
  const uint16_t* kept =
      nd_only && a.contrib_idx != nullptr ? reinterpret_cast<const uint16_t*>(a.contrib_idx + a.tile_coff[tile]) : nullptr;
  for (int py = ty * TILE; py < std::min(H, (ty + 1) * TILE); ++py) {
    const int r0 = row_start[py - ty * TILE], r1 = row_start[py - ty * TILE + 1];
    for (int px = tx * TILE; px < std::min(W, (tx + 1) * TILE); ++px) {
      const int64_t pix = (int64_t)py * W + px;
      const float fx = (float)px, fy = (float)py;
      PixelState st;
      pixel_init(st);
      PixLever pl;
      const bool nd_px = ndfd && (a.nd_mask == nullptr || a.nd_mask[pix] != 0);
      int* hdr = nullptr;  // nd_only: (contributor count, T_final bits) ahead of the pixel's records
      if (nd_only) {
        if (!nd_px) {
          a.out_ext[pix] = 0.0f;
          a.out_int[pix] = 0.0f;
          if (a.pix_coff != nullptr) a.pix_coff[pix] = -1;
          continue;
        }
        if (a.contrib_idx != nullptr) {
          hdr = a.contrib_idx + a.tile_coff[tile] + coff;
          coff += 2;
        }
      }
      const bool nd_lever = nd_px && !nd_direct;  // NDFD inside the compositing loop (lever tables)
      if (nd_px) memset(F, 0, sizeof(float) * D);
      if (nd_lever) pl = pixel_lever(a, px, py, pix);
      if (nd_px && nd_direct) {
        sc.nd_sid.clear();
        sc.nd_w.clear();
        sc.nd_T.clear();
      }
      if (Dr > 0) memset(FV, 0, sizeof(float) * Dr);
      float* rec = nullptr;  // this pixel's contributor records
      int* ridx = nullptr;
      if (a.contrib_idx != nullptr) {
        a.pix_coff[pix] = a.tile_coff[tile] + coff;
        ridx = a.contrib_idx + a.tile_coff[tile] + coff;
        if (a.contrib != nullptr) rec = a.contrib + 3 * (a.tile_coff[tile] + coff);
      }
      const unsigned lane = (unsigned)(px - tx * TILE);
      for (int r = r0; r < r1; ++r) {
        if (kept != nullptr && !((kept[r] >> lane) & 1u)) continue;
        const int64_t j = s + rows[r];
        const Ent& en = ents[rows[r]];
        if ((unsigned)(px - en.x0) > (unsigned)(en.x1 - en.x0)) continue;
        PairEval pe;
        if (!eval_pair(en.T, en.KL, en.cx, en.cy, en.op, fx, fy, zn, en.rho_cut, pe)) continue;
        if (!pixel_accepts(st, pe.alpha)) break;
        const float Tprev = st.T;
        const float* col = a.colors + (int64_t)en.sid * 3;
        const float* nrm = a.geom + (int64_t)en.sid * GEOM_STRIDE + G_N;
        const float w = pixel_composite(st, pe.alpha, pe.z, col, nrm, (int)j, zn, zf);
        if (ridx != nullptr) *ridx++ = (int)j;
        if (nd_px && nd_direct) {  // deferred: the feature passes run after the compositing
          sc.nd_sid.push_back(en.sid);
          sc.nd_w.push_back(w);
          sc.nd_T.push_back(Tprev);
        } else if (nd_lever) {
          const float phi = lever_phi(a.lever + en.loff, en.lcx0, en.lcy0, en.lncx, pl);
          const float sig = ndfd_sigma(a.nd, phi);
          const float gate = a.nd.ext_use_sigma ? sig : 1.0f;
          st.ext += gate * w * (1.0f - phi);
          const float dotp = ndfd_forward_pass_host(F, feat_row(a, en.sid, sc.FR.data()), D, w);
          st.intl += sig * w * ((1.0f - Tprev) - dotp);
          if (rec != nullptr) {
            rec[0] = phi;
            rec[1] = sig;
            rec[2] = dotp;
            rec += 3;
          }
        }
        if (Dr > 0) feature_blend_pass_host(FV, a.fvalues + (int64_t)en.sid * Dr, Dr, w);
      }
      if (nd_px && nd_direct && !sc.nd_sid.empty()) {
        // Subsampled NDFD pixel: phi_i = G . f_i with the pixel's unit GT G, fused into the
        // F_{i-1} . f_i pass; the contributors' feature rows are prefetched two ahead (each row
        // is a cache miss: this is a sparse set of pixels).
        float* G = sc.G.data();
        pixel_gt(a, px, py, G);
        const int n = (int)sc.nd_sid.size();
        prefetch_feat(a, sc.nd_sid[0]);
        if (n > 1) prefetch_feat(a, sc.nd_sid[1]);
        for (int k = 0; k < n; ++k) {
          if (k + 2 < n) prefetch_feat(a, sc.nd_sid[k + 2]);
          const float w = sc.nd_w[k];
          float phi;
          const float dotp = ndfd_forward_pass_gt_host(F, G, feat_row(a, sc.nd_sid[k], sc.FR.data()), D, w, &phi);
          const float sig = ndfd_sigma(a.nd, phi);
          const float gate = a.nd.ext_use_sigma ? sig : 1.0f;
          st.ext += gate * w * (1.0f - phi);
          st.intl += sig * w * ((1.0f - sc.nd_T[k]) - dotp);
          if (rec != nullptr) {
            rec[0] = phi;
            rec[1] = sig;
            rec[2] = dotp;
            rec += 3;
          }
        }
      }
      if (nd_only) {
        a.out_ext[pix] = st.ext;
        a.out_int[pix] = st.intl;
        if (hdr != nullptr) {
          a.pix_coff[pix] = hdr - a.contrib_idx;
          hdr[0] = st.n_contrib;
          memcpy(&hdr[1], &st.T, sizeof(float));
        }
      } else {
        store_pixel(a, st, pix, npix);
      }
      coff += st.n_contrib;
      if (Dr > 0)
        for (int d = 0; d < Dr; ++d) a.out_feat[d * npix + pix] = FV[d];
    }
  }
}

FHGS_CLONES
void backward_tile(const RasterArgs& a, int tile, Scratch& sc, bool nd_only) {
  const auto [W, H, npix, tx, ty, s, e] = tile_span(a, tile);
  if (e == s) return;
  if (!nd_only) pack_tile(a, s, e, sc.ents);  // nd_only: backward_tile_rgb packed this tile
  const Ent* ents = sc.ents.data();
  const int D = a.D;
  const float zn = a.cam.znear, zf = a.cam.zfar;
  float* S = D > 0 ? sc.S.data() : nullptr;
  // Feature image (feat_grad): with g the pixel's upstream gradient, contributor k gets
  // dL/dw_k += f_k . g (enters the same dL/dalpha recursion as the colour) and dL/df_k += w_k g,
  // summed per tile-list entry in facc (this tile's rows: the tile's thread owns them).
  const int Dr = a.feat_grad ? a.Dr : 0;
  float* GF = Dr > 0 ? sc.GF.data() : nullptr;
  if (Dr > 0) memset(a.facc + s * Dr, 0, sizeof(float) * (size_t)(e - s) * Dr);
  for (int py = ty * TILE; py < std::min(H, (ty + 1) * TILE); ++py) {
    for (int px = tx * TILE; px < std::min(W, (tx + 1) * TILE); ++px) {
      const int64_t pix = (int64_t)py * W + px;
      // nd_only: the NDFD part of a masked pixel; its header holds (count, T_final bits) and the
      // other upstream gradients are zero here (the SIMD rows took them)
      const int64_t hoff = nd_only ? a.pix_coff[pix] : 0;
      if (hoff < 0) continue;
      const int n = nd_only ? a.contrib_idx[hoff] : a.pix_idx[2 * npix + pix];
      if (n <= 0) continue;
      const int med = nd_only ? -1 : a.pix_idx[npix + pix];
      const float fx = (float)px, fy = (float)py;
      PixelGrads g = {};
      if (nd_only) {  // D > 0
        g.ext = a.g_ext[pix];
        g.intl = a.g_int[pix];
      } else {
        load_pixel_grads(a, pix, npix, g);
      }
      const bool nd_phi = D > 0 && (g.ext != 0.0f || g.intl != 0.0f);
      const bool nd_pass = D > 0 && g.intl != 0.0f;  // the feature passes only feed the internal term
      bool fg = false;  // nonzero feature-image gradient at this pixel
      for (int d = 0; d < Dr; ++d) {
        GF[d] = a.g_feat[d * npix + pix];
        fg = fg || GF[d] != 0.0f;
      }
      if (nd_only && !nd_phi) continue;
      PixelBack b;
      if (nd_only) {
        float t_final;
        memcpy(&t_final, &a.contrib_idx[hoff + 1], sizeof(float));
        pixel_back_init(b, g, a.bg, t_final, 0.0, 0.0, 0.0, 0.0);
      } else {
        pixel_back_init(b, g, a.bg, (float)a.pix_state[pix], a.pix_state[npix + pix], a.pix_state[2 * npix + pix],
                        a.pix_state[3 * npix + pix], a.pix_state[4 * npix + pix]);
      }
      if (nd_pass) memset(S, 0, sizeof(float) * D);
      // The forward's records of this pixel: the list index of every kept contributor and, with
      // NDFD, (phi, sigma, F_{k-1} . f_k). Walking them in reverse visits exactly the forward's
      // contributors (no validity decision is re-taken) and skips every other list entry.
      const int64_t base = nd_only ? hoff + 2 : a.pix_coff[pix];
      if (nd_pass) prefetch_feat(a, ents[a.contrib_idx[base + n - 1] - s].sid);
      for (int r = n - 1; r >= 0; --r) {
        const int64_t j = a.contrib_idx[base + r];
        const Ent& en = ents[j - s];
        if (nd_pass && r > 0) prefetch_feat(a, ents[a.contrib_idx[base + r - 1] - s].sid);
        PairEval pe;
        eval_pair(en.T, en.KL, en.cx, en.cy, en.op, fx, fy, zn, INFINITY, pe);
        if (pe.p[2] == 0.0f) continue;  // cannot happen for a forward contributor
        const float w = pixel_back_weight(b, pe.alpha);
        const float* col = a.colors + (int64_t)en.sid * 3;
        const float* nrm = a.geom + (int64_t)en.sid * GEOM_STRIDE + G_N;
        float gk = nd_only ? 0.0f : pixel_back_g(b, g, col, nrm, pe.z, zn, zf);
        if (fg) {
          gk += dot_host(a.fvalues + (int64_t)en.sid * Dr, GF, Dr);
          feature_blend_pass_host(a.facc + j * Dr, GF, Dr, w);
        }
        if (nd_phi) {
          const float* rec = a.contrib + 3 * (base + r);
          const float phi = rec[0], sig = rec[1], da = rec[2];
          const float db =
              nd_pass ? ndfd_backward_pass_s_host(S, feat_row(a, en.sid, sc.FR.data()), D, sig * w) : 0.0f;
          gk += pixel_back_g_ndfd(b, g, a.nd, phi, sig, w, da, db);
        }
        pixel_back_finish(b, g, en.T, en.cx, en.cy, en.op, fx, fy, pe, w, gk, j == med, zn, zf,
                          a.acc + j * ACC_STRIDE);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// SIMD RGB path (issue 13): without NDFD (D = 0) a tile is processed row by row, one surfel
// against the row's 16 pixels at once (the classic CPU rasterization layout: a tile row is one
// 16-lane vector; with the row fixed, the ray row l = L_r + (y - y_r) Tw of the ray-surfel
// intersection is a scalar per (row, surfel), only k varies across the lanes). Per lane it is
// the same arithmetic as eval_pair / pixel_composite / the pixel_back_* steps of raster_math.h
// in the same order, except exp (vexp below, a Cephes-style polynomial, max relative error about
// 2e-7 against expf on the used range). Lanes keep their own early termination (a bit mask);
// a row stops when all its lanes are done. Per (row, list entry) the forward stores the uint16
// mask of the lanes that kept the entry; the backward walks the row list in reverse with these
// masks, so it re-takes no decision, and reduces the 16 lanes' 20 accumulator values with one
// transposed tree reduction per (row, entry) into the entry's accumulator (no atomics, fixed
// order: deterministic).
//
// The vectors are GCC vector extensions (16 x float = 64 bytes). The code (raster_cpu_rgb.h) is
// compiled three times, under `#pragma GCC target` x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and
// the baseline (SSE2), and the variant is picked once at run time from the CPU's features
// (cpu_rgb_isa()), so one binary runs on any x86-64 and uses AVX-512 where present. Not
// target_clones: GCC lowers generic vector code for the default target before it clones, which
// turns every vector select and compare into scalar branches. Other compilers / architectures
// compile the one generic variant.
#define FHGS_RGB_VARIANT_INCLUDE 1
#ifndef FHGS_AI
#define FHGS_AI inline __attribute__((always_inline))
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(FHGS_NO_CLONES)
#define FHGS_RGB_VARIANTS 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace rgb_v4 {
#include "raster_cpu_rgb.h"
}  // namespace rgb_v4
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace rgb_v3 {
#include "raster_cpu_rgb.h"
}  // namespace rgb_v3
#pragma GCC pop_options
#endif
namespace rgb_base {
#include "raster_cpu_rgb.h"
}  // namespace rgb_base

typedef void (*RgbTileFn)(const RasterArgs&, int, Scratch&);
struct RgbKernels {
  RgbTileFn fwd, bwd;
  const char* isa;
};

int g_isa_choice = 0;  // 0 auto, 1 v4, 2 v3, 3 base (set_cpu_isa)

bool cpu_has(int level) {
#ifdef FHGS_RGB_VARIANTS
  __builtin_cpu_init();
  if (level == 1)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  if (level == 2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2") &&
           __builtin_cpu_supports("f16c");
#endif
  return level == 3;
}

RgbKernels rgb_kernels() {
  int lvl = g_isa_choice;
  if (lvl == 0) lvl = cpu_has(1) ? 1 : (cpu_has(2) ? 2 : 3);
#ifdef FHGS_RGB_VARIANTS
  if (lvl == 1) return {rgb_v4::forward_tile_rgb, rgb_v4::backward_tile_rgb, "x86-64-v4"};
  if (lvl == 2) return {rgb_v3::forward_tile_rgb, rgb_v3::backward_tile_rgb, "x86-64-v3"};
#endif
  return {rgb_base::forward_tile_rgb, rgb_base::backward_tile_rgb, "baseline"};
}

inline int64_t count_of(const int64_t* excl, int64_t total, int n, int i) {
  return (i + 1 < n ? excl[i + 1] : total) - excl[i];
}

// d_fvalues of surfel i: the sum of its tile-list entries' rows of facc, in entry order.
FHGS_CLONES
void feature_grad_reduce(const RasterArgs& a, int i, int64_t k0, int64_t kn) {
  const int Dr = a.Dr;
  float* out = a.d_fvalues + (int64_t)i * Dr;
  memset(out, 0, sizeof(float) * Dr);
  for (int64_t k = k0; k < k0 + kn; ++k) feature_blend_pass_host(out, a.facc + (int64_t)a.entry_pos[k] * Dr, Dr, 1.0f);
}

}  // namespace

void cpu_preprocess(RasterArgs& a) {
  const bool lever = a.D > 0 && a.col_c0 != nullptr && a.nd_mask == nullptr;  // subsampled: no lever
#pragma omp parallel for num_threads(a.nthreads) schedule(static)
  for (int i = 0; i < a.N; ++i) {
    float* g = a.geom + (int64_t)i * GEOM_STRIDE;
    int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
    bool on = preprocess_surfel(a.means + 3 * (int64_t)i, a.quats + 4 * (int64_t)i, a.scales + 2 * (int64_t)i,
                                a.cam, g, b, a.radii + i);
    int64_t nt = 0;
    if (on) nt = (int64_t)(b[B_X1] / TILE - b[B_X0] / TILE + 1) * (b[B_Y1] / TILE - b[B_Y0] / TILE + 1);
    a.tiles_touched[i] = nt;
    if (lever) {
      lever_cell_box(b, a.col_c0, a.col_dx1, a.row_c0, a.row_dy1, b);
      a.lever_off[i] = (int64_t)b[B_NCX] * b[B_NCY];
    } else {
      b[B_CX0] = b[B_CY0] = b[B_NCX] = b[B_NCY] = 0;
      if (a.lever_off) a.lever_off[i] = 0;
    }
  }
}

// Expects a.tiles_touched to hold exclusive offsets (and a.E the total).
void cpu_bin(RasterArgs& a) {
  const int W = a.cam.width, H = a.cam.height;
  const int ntx = tiles_x(W), nty = tiles_y(H), ntiles = ntx * nty;
  std::vector<int> order;
  order.reserve(a.N);
  for (int i = 0; i < a.N; ++i)
    if (count_of(a.tiles_touched, a.E, a.N, i) > 0) order.push_back(i);
  const float* geom = a.geom;
  std::stable_sort(order.begin(), order.end(),
                   [geom](int i, int j) { return geom[(int64_t)i * GEOM_STRIDE + G_Z] < geom[(int64_t)j * GEOM_STRIDE + G_Z]; });
  std::vector<int64_t> cnt(ntiles + 1, 0);
  for (int i : order) {
    const int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
    for (int ty = b[B_Y0] / TILE; ty <= b[B_Y1] / TILE; ++ty)
      for (int tx = b[B_X0] / TILE; tx <= b[B_X1] / TILE; ++tx) cnt[ty * ntx + tx] += 1;
  }
  a.tile_start[0] = 0;
  for (int t = 0; t < ntiles; ++t) a.tile_start[t + 1] = a.tile_start[t] + cnt[t];
  if (a.tile_coff != nullptr) {  // upper bound of the contributors of each tile: its in-box pairs
    std::vector<int64_t> pairs(ntiles, 0), rowents(ntiles, 0);
    for (int i : order) {
      const int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
      for (int ty = b[B_Y0] / TILE; ty <= b[B_Y1] / TILE; ++ty)
        for (int tx = b[B_X0] / TILE; tx <= b[B_X1] / TILE; ++tx) {
          const int64_t w = std::min(b[B_X1], tx * TILE + TILE - 1) - std::max(b[B_X0], tx * TILE) + 1;
          const int64_t h = std::min(b[B_Y1], ty * TILE + TILE - 1) - std::max(b[B_Y0], ty * TILE) + 1;
          pairs[ty * ntx + tx] += w * h;
          rowents[ty * ntx + tx] += h;
        }
    }
    // nd_hybrid: the SIMD rows' uint16 masks (one per row-list entry) and a 2-int header per pixel
    // come before the scalar NDFD records
    a.tile_coff[0] = 0;
    for (int t = 0; t < ntiles; ++t)
      a.tile_coff[t + 1] = a.tile_coff[t] + pairs[t] + (a.nd_hybrid ? (rowents[t] + 1) / 2 + 2 * TILE * TILE : 0);
  }
  std::vector<int64_t> cur(a.tile_start, a.tile_start + ntiles);
  for (int i : order) {
    const int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
    int64_t k = a.tiles_touched[i];
    for (int ty = b[B_Y0] / TILE; ty <= b[B_Y1] / TILE; ++ty)
      for (int tx = b[B_X0] / TILE; tx <= b[B_X1] / TILE; ++tx) {
        int64_t pos = cur[ty * ntx + tx]++;
        a.tile_list[pos] = i;
        a.entry_pos[k++] = (int)pos;
      }
  }
}

namespace {

FHGS_CLONES
void lever_gram_cell(const RasterArgs& a, int64_t c) {
  const int gh = a.gh, gw = a.gw, D = a.D;
  const int64_t ncell = (int64_t)gh * gw;
  const int y = (int)(c / gw), x = (int)(c % gw);
  const float* Fc = a.grid + c * D;
  a.gram[c] = dot_host(Fc, Fc, D);
  a.gram[ncell + c] = x + 1 < gw ? dot_host(Fc, Fc + D, D) : 0.0f;
  a.gram[2 * ncell + c] = y + 1 < gh ? dot_host(Fc, Fc + (int64_t)gw * D, D) : 0.0f;
  a.gram[3 * ncell + c] = (x + 1 < gw && y + 1 < gh) ? dot_host(Fc, Fc + (int64_t)(gw + 1) * D, D) : 0.0f;
  a.gram[4 * ncell + c] = (x + 1 < gw && y + 1 < gh) ? dot_host(Fc + D, Fc + (int64_t)gw * D, D) : 0.0f;
}

FHGS_CLONES
void lever_surfel(const RasterArgs& a, int i) {
  const int* b = a.ibox + (int64_t)i * IBOX_STRIDE;
  const int ncx = b[B_NCX], ncy = b[B_NCY], D = a.D;
  float* Pi = a.lever + a.lever_off[i];
  const float* f = a.feats + (int64_t)i * D;
  const int n = ncx * ncy;
  int c = 0;
  for (; c < n; ++c) {
    const int cy = c / ncx, cx = c % ncx;
    Pi[c] = dot_host(f, a.grid + ((int64_t)(b[B_CY0] + cy) * a.gw + b[B_CX0] + cx) * D, D);
  }
}

}  // namespace

// Expects a.lever_off to hold exclusive offsets (a.lever_total the total).
void cpu_lever(RasterArgs& a) {
  const int W = a.cam.width, H = a.cam.height;
  const int gw = a.gw;
  const int64_t ncell = (int64_t)a.gh * gw;
  const float* gram = a.gram;
  // surfels in the order of their cell boxes, so that neighbouring grid rows stay in cache
  std::vector<int> order;
  order.reserve(a.N);
  for (int i = 0; i < a.N; ++i)
    if (a.ibox[(int64_t)i * IBOX_STRIDE + B_NCX] > 0) order.push_back(i);
  std::sort(order.begin(), order.end(), [&a](int i, int j) {
    const int* bi = a.ibox + (int64_t)i * IBOX_STRIDE;
    const int* bj = a.ibox + (int64_t)j * IBOX_STRIDE;
    return bi[B_CY0] != bj[B_CY0] ? bi[B_CY0] < bj[B_CY0] : (bi[B_CX0] != bj[B_CX0] ? bi[B_CX0] < bj[B_CX0] : i < j);
  });
  const int nord = (int)order.size();
#pragma omp parallel num_threads(a.nthreads)
  {
#pragma omp for schedule(static)
    for (int64_t c = 0; c < ncell; ++c) lever_gram_cell(a, c);
#pragma omp for schedule(static)
    for (int64_t pix = 0; pix < (int64_t)W * H; ++pix) {
      const int y = (int)(pix / W), x = (int)(pix % W);
      PixLever pl;
      pl.c0x = a.col_c0[x]; pl.dx1 = a.col_dx1[x]; pl.fx = a.col_f[x];
      pl.c0y = a.row_c0[y]; pl.dy1 = a.row_dy1[y]; pl.fy = a.row_f[y];
      a.invn[pix] = lever_invnorm(gram, gram + ncell, gram + 2 * ncell, gram + 3 * ncell, gram + 4 * ncell, gw, pl);
    }
#pragma omp for schedule(dynamic, 32)
    for (int k = 0; k < nord; ++k) lever_surfel(a, order[k]);
  }
}

const char* cpu_rgb_isa() { return rgb_kernels().isa; }

bool set_cpu_rgb_isa(const char* name) {
  const char* names[4] = {"auto", "x86-64-v4", "x86-64-v3", "baseline"};
  for (int i = 0; i < 4; ++i)
    if (strcmp(name, names[i]) == 0) {
      if (i > 0 && !cpu_has(i)) return false;
      g_isa_choice = i;
      return true;
    }
  return false;
}

void cpu_forward(RasterArgs& a) {
  const RgbKernels rgb = rgb_kernels();
  const int ntiles = tiles_x(a.cam.width) * tiles_y(a.cam.height);
#pragma omp parallel num_threads(a.nthreads)
  {
    Scratch sc;
    sc.F.assign((size_t)std::max(a.D, 1), 0.0f);
    sc.G.assign((size_t)std::max(a.D, 1), 0.0f);
    sc.FR.assign((size_t)std::max(a.D, 1), 0.0f);
    sc.FV.assign((size_t)std::max(a.D > 0 && !a.nd_hybrid ? a.Dr : TILE * a.Dr, 1), 0.0f);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntiles; ++t) {
      if (a.nd_hybrid) {  // subsampled NDFD: SIMD rows for every pixel, scalar NDFD on the masked ones
        rgb.fwd(a, t, sc);
        forward_tile(a, t, sc, true);
      } else if (a.D > 0 || a.feat_grad) {
        forward_tile(a, t, sc, false);
      } else {
        rgb.fwd(a, t, sc);  // no NDFD: the SIMD row path
      }
    }
  }
}

void cpu_backward(RasterArgs& a) {
  const RgbKernels rgb = rgb_kernels();
  const int ntiles = tiles_x(a.cam.width) * tiles_y(a.cam.height);
#pragma omp parallel num_threads(a.nthreads)
  {
    Scratch sc;
    sc.F.assign((size_t)std::max(a.D, 1), 0.0f);
    sc.S.assign((size_t)std::max(a.D, 1), 0.0f);
    sc.GF.assign((size_t)std::max(a.feat_grad ? a.Dr : 0, 1), 0.0f);
    sc.FR.assign((size_t)std::max(a.D, 1), 0.0f);
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntiles; ++t) {
      if (a.nd_hybrid) {
        rgb.bwd(a, t, sc);
        backward_tile(a, t, sc, true);
      } else if (a.D > 0 || a.feat_grad) {
        backward_tile(a, t, sc, false);
      } else {
        rgb.bwd(a, t, sc);
      }
    }
    // per-surfel reduction of the entry accumulators (fixed order) and parameter gradients
#pragma omp for schedule(static)
    for (int i = 0; i < a.N; ++i) {
      float acc[ACC_STRIDE];
      for (int c = 0; c < ACC_STRIDE; ++c) acc[c] = 0.0f;
      const int64_t k0 = a.tiles_touched[i], kn = count_of(a.tiles_touched, a.E, a.N, i);
      for (int64_t k = k0; k < k0 + kn; ++k) {
        const float* src = a.acc + (int64_t)a.entry_pos[k] * ACC_STRIDE;
        for (int c = 0; c < ACC_STRIDE; ++c) acc[c] += src[c];
      }
      if (a.feat_grad && a.Dr > 0) feature_grad_reduce(a, i, k0, kn);
      float* dm = a.d_means + 3 * (int64_t)i;
      float* dq = a.d_quats + 4 * (int64_t)i;
      float* ds = a.d_scales + 2 * (int64_t)i;
      if (kn == 0) {
        dm[0] = dm[1] = dm[2] = 0.0f;
        dq[0] = dq[1] = dq[2] = dq[3] = 0.0f;
        ds[0] = ds[1] = 0.0f;
        a.d_opacity[i] = 0.0f;
        a.d_colors[3 * (int64_t)i] = a.d_colors[3 * (int64_t)i + 1] = a.d_colors[3 * (int64_t)i + 2] = 0.0f;
        continue;
      }
      surfel_backward(a.means + 3 * (int64_t)i, a.quats + 4 * (int64_t)i, a.scales + 2 * (int64_t)i, a.cam,
                      a.geom + (int64_t)i * GEOM_STRIDE, acc, dm, dq, ds);
      a.d_opacity[i] = acc[A_OP];
      for (int c = 0; c < 3; ++c) a.d_colors[3 * (int64_t)i + c] = acc[A_COL + c];
    }
  }
}

}  // namespace fhgs
