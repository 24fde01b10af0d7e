// Per-surfel and per-pixel math of the FHGS 2DGS surfel rasterizer, shared by the C++/OpenMP
// CPU backend (raster_cpu.cpp) and the CUDA backend (raster_cuda.cu).
//
// Every function here is a plain inline function usable as __host__ __device__. The algorithm is
// the one of docs/METHOD.md §2-§4 and of fhgs_ros/core/reference.py, which is the ground
// truth these functions are tested against (test/test_native_equivalence.py):
//   * projection: T = P [s_u t_u, s_v t_v, p] (rows Tu, Tv, Tw), 2DGS screen bounds, culling;
//   * ray-surfel intersection (u, v) = (k x l).xy / (k x l).z, k = x Tw - Tu, l = y Tw - Tv;
//   * low-pass filter rho = min(u^2 + v^2, 2 |c - x|^2), alpha = min(0.99, op exp(-rho / 2));
//   * front-to-back compositing with early termination, median depth, 2DGS distortion;
//   * NDFD accumulation (external and internal terms) and the reverse-order backward that reuses
//     the forward prefix (W_{k-1} = 1 - T_k; F_{k-1} . f_k from the forward's record on the CPU,
//     from F_{k-1} = F_tot - sum_{i>=k} w_i f_i on the GPU);
//   * the derivatives of all of the above, down to means, raw quaternions, scales, opacity and
//     colours.
// No torch and no CUDA headers are needed to include this file.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FHGS_HD __host__ __device__ __forceinline__
#else
#define FHGS_HD inline
#endif

// `#pragma omp simd` on the host compiler only (vectorizes the feature-width loops with -fopenmp).
#if defined(__CUDA_ARCH__) || !defined(_OPENMP)
#define FHGS_SIMD_REDUCE1(a)
#define FHGS_SIMD_REDUCE2(a, b)
#define FHGS_SIMD
#else
#define FHGS_PRAGMA(x) _Pragma(#x)
#define FHGS_SIMD_REDUCE1(a) FHGS_PRAGMA(omp simd reduction(+ : a))
#define FHGS_SIMD_REDUCE2(a, b) FHGS_PRAGMA(omp simd reduction(+ : a, b))
#define FHGS_SIMD FHGS_PRAGMA(omp simd)
#endif

namespace fhgs {

// Constants: identical to fhgs_ros/core/raster_types.py.
constexpr int TILE = 16;
constexpr float CUTOFF = 3.0f;
constexpr float FILTER_SIZE = 0.7071068f;
constexpr float FILTER_INV_SQUARE = 2.0f;
constexpr float ALPHA_MIN = 1.0f / 255.0f;
constexpr float ALPHA_MAX = 0.99f;
constexpr float T_MIN = 1e-4f;

// Per-surfel record written by preprocess_surfel (floats).
enum GeomField {
  G_T = 0,        // 9 floats: rows Tu, Tv, Tw of the splat matrix
  G_CX = 9,       // screen centre x (pixels)
  G_CY = 10,      // screen centre y
  G_Z = 11,       // camera z of the centre (sort key)
  G_N = 12,       // 3 floats: world normal facing the camera
  G_NSIGN = 15,   // +1 or -1: the constant sign applied to t_w
  G_KL = 16,      // 8 floats: K_r = x_r Tw - Tu, L_r = y_r Tw - Tv (3 each), x_r, y_r (see below)
  GEOM_STRIDE = 24
};
// Per-surfel integer record: clipped pixel box (x0 > x1 when the surfel is culled or off-screen),
// tile box, feature-grid cell box of the NDFD lever table.
enum IBoxField {
  B_X0 = 0, B_X1, B_Y0, B_Y1,
  B_CX0, B_CY0, B_NCX, B_NCY,  // lever cell box (origin and size), 0 sizes when NDFD is off
  IBOX_STRIDE
};
// Per-surfel gradient accumulator (floats) filled by the per-pixel backward.
enum AccField {
  A_T = 0,       // 9: dL/dT (rows Tu, Tv, Tw)
  A_CX = 9,      // dL/d centre x (low-pass filter branch)
  A_CY = 10,
  A_OP = 11,     // dL/d opacity
  A_COL = 12,    // 3: dL/d colour
  A_N = 15,      // 3: dL/d (camera-facing) normal
  A_S = 18,      // 2: s_u dL/ds_u, s_v dL/ds_v through rho3d (see eval_pair_backward)
  ACC_STRIDE = 20
};

struct CameraParams {
  float P[12];      // 3x4 row-major world -> homogeneous pixel matrix K [R | t]
  float w2c_z[4];   // third row of world_to_cam (camera z of a world point)
  float center[3];  // camera centre in world
  float znear, zfar;
  int width, height;
};

struct NdfdParams {
  float lam;     // similarity threshold
  float ksign;   // +k for the decreasing gate of the paper, -k for sigma_increasing
  int ext_use_sigma;
};

// ------------------------------------------------------------------------------------------
// small helpers with torch semantics (NaN propagates through min/max like torch.minimum)
FHGS_HD float nan_min(float a, float b) { return (a != a || b != b) ? (a + b) : (a < b ? a : b); }
FHGS_HD float nan_max(float a, float b) { return (a != a || b != b) ? (a + b) : (a > b ? a : b); }

// Normalized quaternion (w, x, y, z) -> rotation matrix R (row-major); columns t_u, t_v, t_w.
// Mirrors surfels.quat_to_rotmat: q / max(|q|, 1e-12).
template <typename S>
FHGS_HD void quat_to_rot(const float* q, S* R, S* qn, S* qnorm) {
  S q0 = q[0], q1 = q[1], q2 = q[2], q3 = q[3];
  S n = sqrt(q0 * q0 + q1 * q1 + q2 * q2 + q3 * q3);
  *qnorm = n;
  S inv = S(1) / (n > S(1e-12) ? n : S(1e-12));
  S w = q0 * inv, x = q1 * inv, y = q2 * inv, z = q3 * inv;
  qn[0] = w; qn[1] = x; qn[2] = y; qn[3] = z;
  R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z); R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z); R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y); R[7] = 2 * (y * z + w * x); R[8] = 1 - 2 * (x * x + y * y);
}

// Gradient of quat_to_rot: dR (row-major) -> dq for the raw (un-normalized) quaternion.
template <typename S>
FHGS_HD void quat_to_rot_backward(const S* qn, S qnorm, const S* dR, S* dq) {
  S w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  S dw = 2 * (-z * dR[1] + y * dR[2] + z * dR[3] - x * dR[5] - y * dR[6] + x * dR[7]);
  S dx = 2 * (y * dR[1] + z * dR[2] + y * dR[3] - 2 * x * dR[4] - w * dR[5] + z * dR[6] + w * dR[7] - 2 * x * dR[8]);
  S dy = 2 * (-2 * y * dR[0] + x * dR[1] + w * dR[2] + x * dR[3] + z * dR[5] - w * dR[6] + z * dR[7] - 2 * y * dR[8]);
  S dz = 2 * (-2 * z * dR[0] - w * dR[1] + x * dR[2] + w * dR[3] - 2 * z * dR[4] + y * dR[5] + x * dR[6] + y * dR[7]);
  if (qnorm > S(1e-12)) {  // d(q / |q|): (dqn - qn (qn . dqn)) / |q|
    S dot = w * dw + x * dx + y * dy + z * dz;
    S inv = S(1) / qnorm;
    dq[0] = (dw - w * dot) * inv; dq[1] = (dx - x * dot) * inv;
    dq[2] = (dy - y * dot) * inv; dq[3] = (dz - z * dot) * inv;
  } else {  // clamped norm: q / 1e-12 is linear in q
    dq[0] = dw * S(1e12); dq[1] = dx * S(1e12); dq[2] = dy * S(1e12); dq[3] = dz * S(1e12);
  }
}

// ------------------------------------------------------------------------------------------
// Projection: splat matrix, 2DGS screen bounds (compute_aabb), culling, clipped pixel box.
// Writes geom[GEOM_STRIDE], ibox[B_X0..B_Y1] and the integer radius (0 when culled).
// Returns true when the surfel covers at least one pixel (box non-empty).
//
// Per-surfel work is done in double (it is O(N), negligible next to the per-pixel work), so that
// T, the centre and the box are the correctly rounded values of the reference's formulas, and
// the per-pixel rows k = x Tw - Tu, l = y Tw - Tv are evaluated as K_r + (x - x_r) Tw with
// K_r = x_r Tw - Tu precomputed in double at x_r = floor(centre): the same numbers without the
// float32 cancellation of x Tw - Tu near the surfel (which is where its pixels are).
FHGS_HD bool is_finite_d(double a) { return a == a && a - a == 0.0; }

FHGS_HD bool preprocess_surfel(const float* mean, const float* quat, const float* scale, const CameraParams& cam,
                               float* geom, int* ibox, int* radius_out) {
  double R[9], qn[4], qnorm;
  quat_to_rot<double>(quat, R, qn, &qnorm);
  const float* P = cam.P;
  double su = scale[0], sv = scale[1];
  double T[9];
  for (int r = 0; r < 3; ++r) {
    const float* pr = P + 4 * r;
    // columns: P3 (s_u t_u), P3 (s_v t_v), P3 p + pt
    T[3 * r + 0] = (double)pr[0] * (su * R[0]) + (double)pr[1] * (su * R[3]) + (double)pr[2] * (su * R[6]);
    T[3 * r + 1] = (double)pr[0] * (sv * R[1]) + (double)pr[1] * (sv * R[4]) + (double)pr[2] * (sv * R[7]);
    T[3 * r + 2] = (double)pr[0] * mean[0] + (double)pr[1] * mean[1] + (double)pr[2] * mean[2] + (double)pr[3];
  }
  for (int i = 0; i < 9; ++i) geom[G_T + i] = (float)T[i];
  const double* Tu = T;
  const double* Tv = T + 3;
  const double* Tw = T + 6;
  const double tv0 = CUTOFF * CUTOFF, tv1 = CUTOFF * CUTOFF, tv2 = -1.0;
  double d = tv0 * Tw[0] * Tw[0] + tv1 * Tw[1] * Tw[1] + tv2 * Tw[2] * Tw[2];
  bool ok = d != 0.0;
  double dd = ok ? d : 1.0;
  double f0 = tv0 / dd, f1 = tv1 / dd, f2 = tv2 / dd;
  double cx = f0 * Tu[0] * Tw[0] + f1 * Tu[1] * Tw[1] + f2 * Tu[2] * Tw[2];
  double cy = f0 * Tv[0] * Tw[0] + f1 * Tv[1] * Tw[1] + f2 * Tv[2] * Tw[2];
  double hx = cx * cx - (f0 * Tu[0] * Tu[0] + f1 * Tu[1] * Tu[1] + f2 * Tu[2] * Tu[2]);
  double hy = cy * cy - (f0 * Tv[0] * Tv[0] + f1 * Tv[1] * Tv[1] + f2 * Tv[2] * Tv[2]);
  double mx = (hx != hx || hy != hy) ? hx + hy : (hx > hy ? hx : hy);  // NaN propagates like torch
  double ext = sqrt(mx < 1e-4 ? 1e-4 : mx);
  const double rmin = (double)(CUTOFF * FILTER_SIZE);
  double radius = ceil(ext < rmin ? rmin : ext);
  geom[G_CX] = (float)cx;
  geom[G_CY] = (float)cy;
  double zc = (double)cam.w2c_z[0] * mean[0] + (double)cam.w2c_z[1] * mean[1] + (double)cam.w2c_z[2] * mean[2] +
              (double)cam.w2c_z[3];
  geom[G_Z] = (float)zc;
  // normal t_w, flipped to face the camera (constant sign for the backward)
  double n0 = R[2], n1 = R[5], n2 = R[8];
  double dot = n0 * ((double)mean[0] - cam.center[0]) + n1 * ((double)mean[1] - cam.center[1]) +
               n2 * ((double)mean[2] - cam.center[2]);
  double sgn = dot > 0.0 ? -1.0 : 1.0;
  geom[G_N + 0] = (float)(sgn * n0);
  geom[G_N + 1] = (float)(sgn * n1);
  geom[G_N + 2] = (float)(sgn * n2);
  geom[G_NSIGN] = (float)sgn;
  // reference pixel of the per-pixel rows
  double xr = (is_finite_d(cx) && cx > -1e6 && cx < 1e6) ? floor(cx) : 0.0;
  double yr = (is_finite_d(cy) && cy > -1e6 && cy < 1e6) ? floor(cy) : 0.0;
  for (int i = 0; i < 3; ++i) {
    geom[G_KL + i] = (float)(xr * Tw[i] - Tu[i]);
    geom[G_KL + 3 + i] = (float)(yr * Tw[i] - Tv[i]);
  }
  geom[G_KL + 6] = (float)xr;
  geom[G_KL + 7] = (float)yr;

  bool visible = ok && zc > (double)cam.znear && is_finite_d(cx) && is_finite_d(cy) && is_finite_d(radius);
  *radius_out = visible ? (int)radius : 0;
  int W = cam.width, H = cam.height;
  bool inside = visible && (cx + radius >= 0.0) && (cx - radius <= (double)(W - 1)) && (cy + radius >= 0.0) &&
                (cy - radius <= (double)(H - 1));
  if (!inside) {
    ibox[B_X0] = 1; ibox[B_X1] = 0; ibox[B_Y0] = 1; ibox[B_Y1] = 0;
    return false;
  }
  auto clampd = [](double v, double lo, double hi) { return v < lo ? lo : (v > hi ? hi : v); };
  ibox[B_X0] = (int)clampd(floor(cx - radius), 0.0, (double)(W - 1));
  ibox[B_X1] = (int)clampd(ceil(cx + radius), 0.0, (double)(W - 1));
  ibox[B_Y0] = (int)clampd(floor(cy - radius), 0.0, (double)(H - 1));
  ibox[B_Y1] = (int)clampd(ceil(cy + radius), 0.0, (double)(H - 1));
  return true;
}

// ------------------------------------------------------------------------------------------
// Ray-surfel intersection, low-pass filter and alpha for pixel (px, py).
struct PairEval {
  float k[3], l[3], p[3];
  float u, v, z;
  float rho3d, rho2d, G, opG, alpha;
};

// Conservative early-out bound of a surfel: any rho > rho_cut gives op exp(-rho/2) well below
// 1/255 (margin 1e-3 in rho, far above float rounding), so the exp can be skipped without changing
// any decision; -1 when op < 1/255 (the surfel can never contribute).
FHGS_HD float rho_cutoff(float op) {
  float t = op * 255.0f;
  return t >= 1.0f ? 2.0f * logf(t) + 1e-3f : -1.0f;
}

// Returns true when the pair contributes (same skip rules as the reference: (k x l).z != 0,
// intersection depth >= near, alpha >= 1/255). rho_cut: see rho_cutoff (pass INFINITY to disable).
// KL: the surfel's geom[G_KL..] (k = K_r + (px - x_r) Tw, l = L_r + (py - y_r) Tw).
FHGS_HD bool eval_pair(const float* T, const float* KL, float cx, float cy, float op, float px, float py, float znear,
                       float rho_cut, PairEval& e) {
  const float* Tw = T + 6;
  const float ox = px - KL[6], oy = py - KL[7];
  for (int i = 0; i < 3; ++i) {
    e.k[i] = KL[i] + ox * Tw[i];
    e.l[i] = KL[3 + i] + oy * Tw[i];
  }
  e.p[0] = e.k[1] * e.l[2] - e.k[2] * e.l[1];
  e.p[1] = e.k[2] * e.l[0] - e.k[0] * e.l[2];
  e.p[2] = e.k[0] * e.l[1] - e.k[1] * e.l[0];
  if (e.p[2] == 0.0f) return false;
  const float ip = 1.0f / e.p[2];
  e.u = e.p[0] * ip;
  e.v = e.p[1] * ip;
  e.rho3d = e.u * e.u + e.v * e.v;
  float dx = cx - px, dy = cy - py;
  e.rho2d = FILTER_INV_SQUARE * (dx * dx + dy * dy);
  float rho = nan_min(e.rho3d, e.rho2d);
  if (rho > rho_cut) return false;
  e.z = e.u * Tw[0] + e.v * Tw[1] + Tw[2];
  e.G = expf(-0.5f * rho);
  e.opG = op * e.G;
  e.alpha = e.opG > ALPHA_MAX ? ALPHA_MAX : e.opG;  // all fields set before the verdict
  if (!(e.opG >= ALPHA_MIN)) return false;         // also rejects NaN
  if (!(e.z >= znear)) return false;
  return true;
}

// Backward of eval_pair: upstream dL/dalpha and dL/dz (intersection depth) of one pair,
// accumulated into the surfel's accumulator acc[ACC_STRIDE] (T, centre, opacity).
FHGS_HD void eval_pair_backward(const float* T, float cx, float cy, float op, float px, float py,
                                const PairEval& e, float dL_dalpha, float dL_dz, float* acc) {
  const float* Tw = T + 6;
  float dG = 0.0f;
  if (e.opG <= ALPHA_MAX) {  // alpha clamped at 0.99 passes no gradient
    acc[A_OP] += dL_dalpha * e.G;
    dG = dL_dalpha * op;
  }
  float drho = -0.5f * e.G * dG;
  float du = dL_dz * Tw[0], dv = dL_dz * Tw[1];
  if (e.rho3d <= e.rho2d) {
    du += 2.0f * e.u * drho;
    dv += 2.0f * e.v * drho;
    // The scale gradient, accumulated directly: u = (X - p) . t_u / s_u for the ray's fixed
    // intersection X, so s_u du/ds_u = -u, and z does not depend on the scales. Through T the
    // same value is a sum of terms that cancel (badly for sub-pixel surfels) in float32.
    acc[A_S + 0] -= 2.0f * e.u * e.u * drho;
    acc[A_S + 1] -= 2.0f * e.v * e.v * drho;
  } else {  // low-pass filter branch: the gradient goes to the screen centre
    acc[A_CX] += 2.0f * FILTER_INV_SQUARE * (cx - px) * drho;
    acc[A_CY] += 2.0f * FILTER_INV_SQUARE * (cy - py) * drho;
  }
  // z = u Tw0 + v Tw1 + Tw2
  acc[A_T + 6] += dL_dz * e.u;
  acc[A_T + 7] += dL_dz * e.v;
  acc[A_T + 8] += dL_dz;
  // u = p0 / p2, v = p1 / p2
  float ip = 1.0f / e.p[2];
  float dp0 = du * ip, dp1 = dv * ip, dp2 = -(du * e.u + dv * e.v) * ip;
  // p = k x l: dk = l x dp, dl = dp x k
  float dk0 = e.l[1] * dp2 - e.l[2] * dp1, dk1 = e.l[2] * dp0 - e.l[0] * dp2, dk2 = e.l[0] * dp1 - e.l[1] * dp0;
  float dl0 = dp1 * e.k[2] - dp2 * e.k[1], dl1 = dp2 * e.k[0] - dp0 * e.k[2], dl2 = dp0 * e.k[1] - dp1 * e.k[0];
  // k = x Tw - Tu, l = y Tw - Tv
  acc[A_T + 0] -= dk0; acc[A_T + 1] -= dk1; acc[A_T + 2] -= dk2;
  acc[A_T + 3] -= dl0; acc[A_T + 4] -= dl1; acc[A_T + 5] -= dl2;
  acc[A_T + 6] += px * dk0 + py * dl0;
  acc[A_T + 7] += px * dk1 + py * dl1;
  acc[A_T + 8] += px * dk2 + py * dl2;
}

// Surfel backward: accumulated dL/dT, dL/dcentre, dL/dnormal -> means, raw quats, scales.
// Evaluated in double (O(N)); T and the centre are recomputed exactly as in preprocess_surfel.
FHGS_HD void surfel_backward(const float* mean, const float* quat, const float* scale, const CameraParams& cam,
                             const float* geom, const float* acc, float* dmean, float* dquat, float* dscale) {
  double R[9], qn[4], qnorm;
  quat_to_rot<double>(quat, R, qn, &qnorm);
  const float* P = cam.P;
  double su = scale[0], sv = scale[1];
  double T[9];
  for (int r = 0; r < 3; ++r) {
    const float* pr = P + 4 * r;
    T[3 * r + 0] = (double)pr[0] * (su * R[0]) + (double)pr[1] * (su * R[3]) + (double)pr[2] * (su * R[6]);
    T[3 * r + 1] = (double)pr[0] * (sv * R[1]) + (double)pr[1] * (sv * R[4]) + (double)pr[2] * (sv * R[7]);
    T[3 * r + 2] = (double)pr[0] * mean[0] + (double)pr[1] * mean[1] + (double)pr[2] * mean[2] + (double)pr[3];
  }
  double dT[9], dTc[9];  // all contributions; centre contributions only
  for (int i = 0; i < 9; ++i) { dT[i] = acc[A_T + i]; dTc[i] = 0.0; }
  // centre (cx, cy) = (sum tvec Tu Tw, sum tvec Tv Tw) / d,  d = sum tvec Tw^2
  const double tv[3] = {CUTOFF * CUTOFF, CUTOFF * CUTOFF, -1.0};
  double d = tv[0] * T[6] * T[6] + tv[1] * T[7] * T[7] + tv[2] * T[8] * T[8];
  double dcx = acc[A_CX], dcy = acc[A_CY];
  if (d != 0.0 && (dcx != 0.0 || dcy != 0.0)) {
    double id = 1.0 / d;
    double cx = (tv[0] * T[0] * T[6] + tv[1] * T[1] * T[7] + tv[2] * T[2] * T[8]) * id;
    double cy = (tv[0] * T[3] * T[6] + tv[1] * T[4] * T[7] + tv[2] * T[5] * T[8]) * id;
    for (int i = 0; i < 3; ++i) {
      dTc[0 + i] = dcx * tv[i] * T[6 + i] * id;
      dTc[3 + i] = dcy * tv[i] * T[6 + i] * id;
      dTc[6 + i] = (dcx * (tv[i] * T[0 + i] - 2.0 * cx * tv[i] * T[6 + i]) +
                    dcy * (tv[i] * T[3 + i] - 2.0 * cy * tv[i] * T[6 + i])) * id;
    }
    for (int i = 0; i < 9; ++i) dT[i] += dTc[i];
  }
  // T[r][0] = (P3 s_u t_u)_r, T[r][1] = (P3 s_v t_v)_r, T[r][2] = (P3 p + pt)_r
  double gu[3], gv[3], gp[3], gcu[3], gcv[3];
  for (int c = 0; c < 3; ++c) {
    gu[c] = (double)P[0 + c] * dT[0] + (double)P[4 + c] * dT[3] + (double)P[8 + c] * dT[6];
    gv[c] = (double)P[0 + c] * dT[1] + (double)P[4 + c] * dT[4] + (double)P[8 + c] * dT[7];
    gp[c] = (double)P[0 + c] * dT[2] + (double)P[4 + c] * dT[5] + (double)P[8 + c] * dT[8];
    gcu[c] = (double)P[0 + c] * dTc[0] + (double)P[4 + c] * dTc[3] + (double)P[8 + c] * dTc[6];
    gcv[c] = (double)P[0 + c] * dTc[1] + (double)P[4 + c] * dTc[4] + (double)P[8 + c] * dTc[7];
  }
  for (int c = 0; c < 3; ++c) dmean[c] = (float)gp[c];
  // scales: the direct rho3d term (A_S) plus the centre's dependence on T; equal to the T-path
  // value gu . t_u (used only for a zero scale, where the direct form is undefined)
  if (su != 0.0 && sv != 0.0) {
    dscale[0] = (float)((double)acc[A_S + 0] / su + gcu[0] * R[0] + gcu[1] * R[3] + gcu[2] * R[6]);
    dscale[1] = (float)((double)acc[A_S + 1] / sv + gcv[0] * R[1] + gcv[1] * R[4] + gcv[2] * R[7]);
  } else {
    dscale[0] = (float)(gu[0] * R[0] + gu[1] * R[3] + gu[2] * R[6]);
    dscale[1] = (float)(gv[0] * R[1] + gv[1] * R[4] + gv[2] * R[7]);
  }
  double sgn = geom[G_NSIGN];
  double dR[9];
  for (int r = 0; r < 3; ++r) {
    dR[3 * r + 0] = su * gu[r];
    dR[3 * r + 1] = sv * gv[r];
    dR[3 * r + 2] = sgn * acc[A_N + r];
  }
  double dq[4];
  quat_to_rot_backward<double>(qn, qnorm, dR, dq);
  for (int i = 0; i < 4; ++i) dquat[i] = (float)dq[i];
}

// ------------------------------------------------------------------------------------------
// Front-to-back compositing of one pixel.
struct PixelState {
  float T;            // transmittance before the next contributor
  float rgb[3], depth, normal[3];
  float med_z;
  int med_idx;        // list index of the median contributor (-1: none)
  int last;           // list index of the last kept contributor (-1: none)
  int n_contrib;
  // distortion, in double (a few scalar operations per contributor): m shifted by the first
  // contributor's m0 (the sum is shift-invariant), prefix sums of w, w m, w m^2
  double m0, W, M1, M2;
  double dist;
  float ext, intl;    // NDFD per-pixel losses
};

FHGS_HD void pixel_init(PixelState& s) {
  s.T = 1.0f;
  s.rgb[0] = s.rgb[1] = s.rgb[2] = 0.0f;
  s.depth = 0.0f;
  s.normal[0] = s.normal[1] = s.normal[2] = 0.0f;
  s.med_z = 0.0f;
  s.med_idx = -1;
  s.last = -1;
  s.n_contrib = 0;
  s.m0 = 0.0; s.W = 0.0; s.M1 = 0.0; s.M2 = 0.0;
  s.dist = 0.0;
  s.ext = 0.0f; s.intl = 0.0f;
}

// 2DGS distortion depth m(z) = far/(far-near) (1 - near/z) and its derivative.
FHGS_HD double dist_m(float z, float zn, float zf) {
  return (double)zf / ((double)zf - zn) * (1.0 - (double)zn / z);
}
FHGS_HD double dist_dm_dz(float z, float zn, float zf) {
  return (double)zf / ((double)zf - zn) * zn / ((double)z * z);
}

// Early termination test: false when T (1 - alpha) < T_MIN (the contributor is not kept).
FHGS_HD bool pixel_accepts(const PixelState& s, float alpha) { return !(s.T * (1.0f - alpha) < T_MIN); }

// Composite one kept contributor; returns its blending weight w = alpha T.
// The distortion sum_{j<i} w_i w_j (m_i - m_j)^2 is evaluated with m shifted by the first
// contributor's m (it is shift-invariant), which avoids float32 cancellation.
FHGS_HD float pixel_composite(PixelState& s, float alpha, float z, const float* color, const float* normal, int idx,
                              float zn, float zf) {
  float T = s.T;
  float w = alpha * T;
  s.rgb[0] += w * color[0]; s.rgb[1] += w * color[1]; s.rgb[2] += w * color[2];
  s.depth += w * z;
  s.normal[0] += w * normal[0]; s.normal[1] += w * normal[1]; s.normal[2] += w * normal[2];
  if (T > 0.5f) { s.med_z = z; s.med_idx = idx; }
  double m = dist_m(z, zn, zf);
  if (s.n_contrib == 0) s.m0 = m;
  double ms = m - s.m0;
  s.dist += (ms * ms * s.W + s.M2 - 2.0 * ms * s.M1) * w;
  s.W += w;
  s.M1 += w * ms;
  s.M2 += w * ms * ms;
  s.T = T * (1.0f - alpha);
  s.last = idx;
  s.n_contrib += 1;
  return w;
}

// ------------------------------------------------------------------------------------------
// NDFD: similarity gate, lever (GT similarity per surfel and feature-grid cell), feature passes.
FHGS_HD float ndfd_sigma(const NdfdParams& nd, float phi) { return 1.0f / (1.0f + expf(nd.ksign * (phi - nd.lam))); }

// Bilinear sample of the GT grid at one pixel, as indices into the grid and weights:
// cell (c0y, c0x), right neighbour c0x + dx1, lower neighbour c0y + dy1 (dx1, dy1 in {0, 1},
// 0 at the clamped border), fractions fx, fy, and 1 / max(|bilinear feature|, 1e-12).
struct PixLever {
  int c0x, c0y, dx1, dy1;
  float fx, fy, invn;
};

// phi = f_i . normalize(bilinear(grid)) = (sum_c b_c (f_i . F_c)) / |sum_c b_c F_c| using the
// surfel's lever table Pi (f_i . F_c for the cells of the surfel's cell box cx0, cy0, ncx).
FHGS_HD float lever_phi(const float* Pi, int cx0, int cy0, int ncx, const PixLever& pl) {
  const float* p = Pi + (pl.c0y - cy0) * ncx + (pl.c0x - cx0);
  float p00 = p[0], p01 = p[pl.dx1], p10 = p[pl.dy1 * ncx], p11 = p[pl.dy1 * ncx + pl.dx1];
  float top = p00 * (1.0f - pl.fx) + p01 * pl.fx;
  float bot = p10 * (1.0f - pl.fx) + p11 * pl.fx;
  return (top * (1.0f - pl.fy) + bot * pl.fy) * pl.invn;
}

// Squared norm of the bilinear feature from the grid's neighbour Gram values:
// gself (|F_c|^2), gright (F_c . F_{c+x}), gdown (F_c . F_{c+y}), gdiag (F_c . F_{c+x+y}),
// ganti (F_{c+x} . F_{c+y}), all (gh, gw) arrays.
FHGS_HD float grid_gram(const float* gself, const float* gright, const float* gdown, const float* gdiag,
                        const float* ganti, int gw, int y1, int x1, int y2, int x2) {
  if (y1 > y2 || (y1 == y2 && x1 > x2)) { int t = y1; y1 = y2; y2 = t; t = x1; x1 = x2; x2 = t; }
  int dy = y2 - y1, dx = x2 - x1;
  if (dy == 0 && dx == 0) return gself[y1 * gw + x1];
  if (dy == 0) return gright[y1 * gw + x1];
  if (dx == 0) return gdown[y1 * gw + x1];
  if (dx == 1) return gdiag[y1 * gw + x1];
  return ganti[y1 * gw + x2];  // dx == -1: F_{(y1,x1)} . F_{(y1+1,x1-1)}
}

FHGS_HD float lever_invnorm(const float* gself, const float* gright, const float* gdown, const float* gdiag,
                            const float* ganti, int gw, const PixLever& pl) {
  int ys[4] = {pl.c0y, pl.c0y, pl.c0y + pl.dy1, pl.c0y + pl.dy1};
  int xs[4] = {pl.c0x, pl.c0x + pl.dx1, pl.c0x, pl.c0x + pl.dx1};
  float b[4] = {(1.0f - pl.fx) * (1.0f - pl.fy), pl.fx * (1.0f - pl.fy), (1.0f - pl.fx) * pl.fy, pl.fx * pl.fy};
  float q = 0.0f;
  for (int i = 0; i < 4; ++i) {
    q += b[i] * b[i] * grid_gram(gself, gright, gdown, gdiag, ganti, gw, ys[i], xs[i], ys[i], xs[i]);
    for (int j = i + 1; j < 4; ++j)
      q += 2.0f * b[i] * b[j] * grid_gram(gself, gright, gdown, gdiag, ganti, gw, ys[i], xs[i], ys[j], xs[j]);
  }
  float n = sqrtf(q > 0.0f ? q : 0.0f);
  return 1.0f / (n > 1e-12f ? n : 1e-12f);
}

// Forward feature pass of one contributor: returns F_{i-1} . f_i and updates F += w f_i.
// F has stride `fs` between feature channels (1 on the CPU, the pixel count on the GPU).
FHGS_HD float ndfd_forward_pass(float* F, int64_t fs, const float* f, int D, float w) {
  float a = 0.0f;
  FHGS_SIMD_REDUCE1(a)
  for (int d = 0; d < D; ++d) {
    float Fd = F[d * fs];
    a += Fd * f[d];
    F[d * fs] = Fd + w * f[d];
  }
  return a;
}

// Backward feature pass of contributor k (visited in reverse order):
// V holds F_{k} on entry and F_{k-1} = V - w_k f_k on exit; S holds S^F_k = sum_{i>k} sigma_i w_i f_i
// on entry and S^F_{k-1} on exit. Returns a = F_{k-1} . f_k and b = S^F_k . f_k.
FHGS_HD void ndfd_backward_pass(float* V, float* S, int64_t fs, const float* f, int D, float w, float sw, float* a_out,
                                float* b_out) {
  float a = 0.0f, b = 0.0f;
  FHGS_SIMD_REDUCE2(a, b)
  for (int d = 0; d < D; ++d) {
    float fd = f[d];
    float v = V[d * fs] - w * fd;
    V[d * fs] = v;
    a += v * fd;
    float s = S[d * fs];
    b += s * fd;
    S[d * fs] = s + sw * fd;
  }
  *a_out = a;
  *b_out = b;
}

// Alpha-blended raw feature image: out += w f (forward only).
FHGS_HD void feature_blend_pass(float* out, int64_t fs, const float* f, int D, float w) {
  FHGS_SIMD
  for (int d = 0; d < D; ++d) out[d * fs] += w * f[d];
}

#if !defined(__CUDACC__) && defined(__GNUC__)
// Host-only versions of the three feature passes above for contiguous vectors (stride 1): the
// same arithmetic written with GCC vector extensions and two independent 16-lane accumulators,
// so that the dot products are not bound by the latency of one FMA chain. Compiled for the
// baseline, AVX2+FMA and AVX-512 (see FHGS_CLONES in raster_cpu.cpp).
typedef float fv16 __attribute__((vector_size(64), aligned(4)));
inline fv16 fv_load(const float* p) { fv16 v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
inline void fv_store(float* p, fv16 v) { __builtin_memcpy(p, &v, sizeof(v)); }
inline float fv_sum(fv16 v) {  // tree reduction (a scalar loop would be a 16-deep add chain)
#if __GNUC__ >= 12
  typedef float fv8 __attribute__((vector_size(32)));
  typedef float fv4 __attribute__((vector_size(16)));
  fv8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  fv4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
#else
  float s = 0.0f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
#endif
}

inline float dot_host(const float* x, const float* y, int D) {
  fv16 a0 = {}, a1 = {};
  int d = 0;
  for (; d + 32 <= D; d += 32) {
    a0 += fv_load(x + d) * fv_load(y + d);
    a1 += fv_load(x + d + 16) * fv_load(y + d + 16);
  }
  for (; d + 16 <= D; d += 16) a0 += fv_load(x + d) * fv_load(y + d);
  float s = fv_sum(a0 + a1);
  for (; d < D; ++d) s += x[d] * y[d];
  return s;
}

inline float ndfd_forward_pass_host(float* F, const float* f, int D, float w) {
  fv16 a0 = {}, a1 = {};
  int d = 0;
  for (; d + 32 <= D; d += 32) {
    fv16 F0 = fv_load(F + d), F1 = fv_load(F + d + 16), f0 = fv_load(f + d), f1 = fv_load(f + d + 16);
    a0 += F0 * f0;
    a1 += F1 * f1;
    fv_store(F + d, F0 + w * f0);
    fv_store(F + d + 16, F1 + w * f1);
  }
  for (; d + 16 <= D; d += 16) {
    fv16 F0 = fv_load(F + d), f0 = fv_load(f + d);
    a0 += F0 * f0;
    fv_store(F + d, F0 + w * f0);
  }
  float a = fv_sum(a0 + a1);
  for (; d < D; ++d) {
    float Fd = F[d];
    a += Fd * f[d];
    F[d] = Fd + w * f[d];
  }
  return a;
}

inline void ndfd_backward_pass_host(float* V, float* S, const float* f, int D, float w, float sw, float* a_out,
                                    float* b_out) {
  fv16 a0 = {}, a1 = {}, b0 = {}, b1 = {};
  int d = 0;
  for (; d + 32 <= D; d += 32) {
    fv16 f0 = fv_load(f + d), f1 = fv_load(f + d + 16);
    fv16 v0 = fv_load(V + d) - w * f0, v1 = fv_load(V + d + 16) - w * f1;
    fv_store(V + d, v0);
    fv_store(V + d + 16, v1);
    a0 += v0 * f0;
    a1 += v1 * f1;
    fv16 s0 = fv_load(S + d), s1 = fv_load(S + d + 16);
    b0 += s0 * f0;
    b1 += s1 * f1;
    fv_store(S + d, s0 + sw * f0);
    fv_store(S + d + 16, s1 + sw * f1);
  }
  for (; d + 16 <= D; d += 16) {
    fv16 f0 = fv_load(f + d);
    fv16 v0 = fv_load(V + d) - w * f0;
    fv_store(V + d, v0);
    a0 += v0 * f0;
    fv16 s0 = fv_load(S + d);
    b0 += s0 * f0;
    fv_store(S + d, s0 + sw * f0);
  }
  float a = fv_sum(a0 + a1), b = fv_sum(b0 + b1);
  for (; d < D; ++d) {
    float fd = f[d];
    float v = V[d] - w * fd;
    V[d] = v;
    a += v * fd;
    float sv = S[d];
    b += sv * fd;
    S[d] = sv + sw * fd;
  }
  *a_out = a;
  *b_out = b;
}

// Forward feature pass of a subsampled NDFD pixel, which reads its GT directly (no lever table):
// returns F_{i-1} . f_i, writes G . f_i (G: the pixel's unit GT feature) to *gdot, F += w f_i.
inline float ndfd_forward_pass_gt_host(float* F, const float* G, const float* f, int D, float w, float* gdot) {
  fv16 a0 = {}, a1 = {}, g0 = {}, g1 = {};
  int d = 0;
  for (; d + 32 <= D; d += 32) {
    fv16 F0 = fv_load(F + d), F1 = fv_load(F + d + 16), f0 = fv_load(f + d), f1 = fv_load(f + d + 16);
    a0 += F0 * f0;
    a1 += F1 * f1;
    g0 += fv_load(G + d) * f0;
    g1 += fv_load(G + d + 16) * f1;
    fv_store(F + d, F0 + w * f0);
    fv_store(F + d + 16, F1 + w * f1);
  }
  for (; d + 16 <= D; d += 16) {
    fv16 F0 = fv_load(F + d), f0 = fv_load(f + d);
    a0 += F0 * f0;
    g0 += fv_load(G + d) * f0;
    fv_store(F + d, F0 + w * f0);
  }
  float a = fv_sum(a0 + a1), g = fv_sum(g0 + g1);
  for (; d < D; ++d) {
    float Fd = F[d];
    a += Fd * f[d];
    g += G[d] * f[d];
    F[d] = Fd + w * f[d];
  }
  *gdot = g;
  return a;
}

// Prefetch a feature row (D floats) into the cache ahead of its pass.
inline void prefetch_row(const float* f, int D) {
  for (int d = 0; d < D; d += 16) __builtin_prefetch(f + d, 0, 1);
}

// CPU backward pass when F_{k-1} . f_k is known from the forward record: returns
// b = S^F_k . f_k and updates S += sw f_k (the forward pass's dot-then-accumulate, on S).
inline float ndfd_backward_pass_s_host(float* S, const float* f, int D, float sw) {
  return ndfd_forward_pass_host(S, f, D, sw);
}

inline void feature_blend_pass_host(float* out, const float* f, int D, float w) {
  int d = 0;
  for (; d + 16 <= D; d += 16) fv_store(out + d, fv_load(out + d) + w * fv_load(f + d));
  for (; d < D; ++d) out[d] += w * f[d];
}
#endif

// ------------------------------------------------------------------------------------------
// Per-pixel backward (reverse order). The upstream gradients of one pixel:
struct PixelGrads {
  float rgb[3], alpha, depth, median, normal[3], dist, ext, intl;
};

struct PixelBack {
  float T;      // T_{k+1} on entry of a step, T_k after
  float B;      // B_k of the recursion dL/dalpha_k = T_k (g_k - B_k)
  float SW;     // sum_{i>k} sigma_i w_i
  float G_T;    // dL/dT_final = dL/drgb . bg - dL/dalpha_out (enters every g_k as -G_T)
  double Wtot, M1, M2, m0;  // distortion totals (double, from the forward)
};

FHGS_HD void pixel_back_init(PixelBack& b, const PixelGrads& g, const float* bg, float T_final, double m0, double W,
                             double M1, double M2) {
  b.T = T_final;
  b.B = 0.0f;
  b.SW = 0.0f;
  b.G_T = g.rgb[0] * bg[0] + g.rgb[1] * bg[1] + g.rgb[2] * bg[2] - g.alpha;
  b.Wtot = W;
  b.M1 = M1;
  b.M2 = M2;
  b.m0 = m0;
}

// Step 1 of a reverse step: recover T_k and w_k. Returns w_k.
FHGS_HD float pixel_back_weight(PixelBack& b, float alpha) {
  b.T = b.T / (1.0f - alpha);
  return alpha * b.T;
}

// dL/dw_k of the non-NDFD outputs (colour, depth, normal, distortion, T_final via sum w = 1 - T).
FHGS_HD float pixel_back_g(const PixelBack& b, const PixelGrads& g, const float* color, const float* normal, float z,
                           float zn, float zf) {
  double ms = dist_m(z, zn, zf) - b.m0;
  float gd = (float)(ms * ms * b.Wtot - 2.0 * ms * b.M1 + b.M2);  // sum_j w_j (m - m_j)^2
  return g.rgb[0] * color[0] + g.rgb[1] * color[1] + g.rgb[2] * color[2] + g.depth * z + g.normal[0] * normal[0] +
         g.normal[1] * normal[1] + g.normal[2] * normal[2] + g.dist * gd - b.G_T;
}

// NDFD part of dL/dw_k given phi_k, the gate, a = F_{k-1} . f_k and bdot = S^F_k . f_k; updates S^W.
FHGS_HD float pixel_back_g_ndfd(PixelBack& b, const PixelGrads& g, const NdfdParams& nd, float phi, float sig,
                                float w, float a, float bdot) {
  float gate = nd.ext_use_sigma ? sig : 1.0f;
  float g_ext = gate * (1.0f - phi);
  float g_int = sig * ((1.0f - b.T) - a) + b.SW - bdot;
  b.SW += sig * w;
  return g.ext * g_ext + g.intl * g_int;
}

// Final part of a reverse step: dL/dalpha_k from the total g_k, the B recursion, the direct
// gradients (colour, normal, z) and the pair backward into the surfel accumulator acc.
FHGS_HD void pixel_back_finish(PixelBack& b, const PixelGrads& g, const float* T, float cx, float cy, float op,
                               float px, float py, const PairEval& e, float w, float gk, bool is_median, float zn,
                               float zf, float* acc) {
  float dL_dalpha = b.T * (gk - b.B);
  b.B = gk * e.alpha + (1.0f - e.alpha) * b.B;
  acc[A_COL + 0] += w * g.rgb[0];
  acc[A_COL + 1] += w * g.rgb[1];
  acc[A_COL + 2] += w * g.rgb[2];
  acc[A_N + 0] += w * g.normal[0];
  acc[A_N + 1] += w * g.normal[1];
  acc[A_N + 2] += w * g.normal[2];
  double ms = dist_m(e.z, zn, zf) - b.m0;
  float dz = w * g.depth + g.dist * (float)(2.0 * w * (ms * b.Wtot - b.M1) * dist_dm_dz(e.z, zn, zf));
  if (is_median) dz += g.median;
  eval_pair_backward(T, cx, cy, op, px, py, e, dL_dalpha, dz, acc);
}

// ------------------------------------------------------------------------------------------
// Tiles and lever geometry shared by the backends.
FHGS_HD int tiles_x(int W) { return (W + TILE - 1) / TILE; }
FHGS_HD int tiles_y(int H) { return (H + TILE - 1) / TILE; }

// Lever cell box of a surfel's pixel box, from per-column / per-row cell indices
// (col_c0[x] = first cell of pixel column x, col_dx1[x] in {0, 1}; same for rows).
FHGS_HD void lever_cell_box(const int* ibox, const int* col_c0, const int* col_dx1, const int* row_c0,
                            const int* row_dy1, int* out) {
  if (ibox[B_X0] > ibox[B_X1]) {
    out[B_CX0] = 0; out[B_CY0] = 0; out[B_NCX] = 0; out[B_NCY] = 0;
    return;
  }
  int cx0 = col_c0[ibox[B_X0]], cx1 = col_c0[ibox[B_X1]] + col_dx1[ibox[B_X1]];
  int cy0 = row_c0[ibox[B_Y0]], cy1 = row_c0[ibox[B_Y1]] + row_dy1[ibox[B_Y1]];
  out[B_CX0] = cx0; out[B_CY0] = cy0; out[B_NCX] = cx1 - cx0 + 1; out[B_NCY] = cy1 - cy0 + 1;
}

}  // namespace fhgs
