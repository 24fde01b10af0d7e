#ifndef FHGS_RGB_VARIANT_INCLUDE
#error "raster_cpu_rgb.h is included only by raster_cpu.cpp"
#endif
// SIMD RGB tile kernels of the CPU backend, included by raster_cpu.cpp once per instruction-set
// variant (inside namespace rgb_v4 / rgb_v3 / rgb_base and the matching `#pragma GCC target`);
// see the comment there. Uses Ent, Scratch, pack_tile, build_rows of raster_cpu.cpp.
namespace simd {

typedef float f16v __attribute__((vector_size(64)));
typedef int32_t i16v __attribute__((vector_size(64)));
typedef double d8v __attribute__((vector_size(64)));
typedef int64_t l8v __attribute__((vector_size(64)));
typedef float f8v __attribute__((vector_size(32)));

FHGS_AI f16v splat(float c) { return (f16v){} + c; }
FHGS_AI i16v isplat(int c) { return (i16v){} + c; }
FHGS_AI f16v sel(i16v m, f16v a, f16v b) { return m ? a : b; }
FHGS_AI i16v seli(i16v m, i16v a, i16v b) { return m ? a : b; }
FHGS_AI f16v load16(const float* p) { f16v v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
FHGS_AI void store16(float* p, f16v v) { __builtin_memcpy(p, &v, sizeof(v)); }

// 16 doubles as two 8-lane halves (the distortion sums are kept in double like the scalar path).
struct d16 { d8v lo, hi; };
FHGS_AI d16 dsplat(double c) { return {(d8v){} + c, (d8v){} + c}; }
FHGS_AI d16 to_d(f16v x) {
  return {__builtin_convertvector(__builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7), d8v),
          __builtin_convertvector(__builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15), d8v)};
}
FHGS_AI f16v to_f(d16 x) {
  f8v a = __builtin_convertvector(x.lo, f8v), b = __builtin_convertvector(x.hi, f8v);
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
struct lm16 { l8v lo, hi; };
FHGS_AI lm16 to_lm(i16v m) {
  return {__builtin_convertvector(__builtin_shufflevector(m, m, 0, 1, 2, 3, 4, 5, 6, 7), l8v),
          __builtin_convertvector(__builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15), l8v)};
}
FHGS_AI d16 operator+(d16 a, d16 b) { return {a.lo + b.lo, a.hi + b.hi}; }
FHGS_AI d16 operator-(d16 a, d16 b) { return {a.lo - b.lo, a.hi - b.hi}; }
FHGS_AI d16 operator*(d16 a, d16 b) { return {a.lo * b.lo, a.hi * b.hi}; }
FHGS_AI d16 operator/(d16 a, d16 b) { return {a.lo / b.lo, a.hi / b.hi}; }
FHGS_AI d16 operator*(double a, d16 b) { return {a * b.lo, a * b.hi}; }
FHGS_AI d16 operator-(double a, d16 b) { return {a - b.lo, a - b.hi}; }
FHGS_AI d16 operator/(double a, d16 b) { return {a / b.lo, a / b.hi}; }
FHGS_AI d16 dsel(lm16 m, d16 a, d16 b) { return {m.lo ? a.lo : b.lo, m.hi ? a.hi : b.hi}; }

FHGS_AI d16 dload(const double* p) {
  d16 v;
  __builtin_memcpy(&v.lo, p, sizeof(v.lo));
  __builtin_memcpy(&v.hi, p + 8, sizeof(v.hi));
  return v;
}
FHGS_AI void dstore(double* p, d16 v) {
  __builtin_memcpy(p, &v.lo, sizeof(v.lo));
  __builtin_memcpy(p + 8, &v.hi, sizeof(v.hi));
}

const i16v kLane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
const i16v kBit = {1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7,
                   1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15};

// Lane mask (all-ones lanes) -> 16-bit integer; and back.
FHGS_AI unsigned bits(i16v m) {
  i16v q = m & kBit;
  typedef int32_t i8v __attribute__((vector_size(32)));
  typedef int32_t i4v __attribute__((vector_size(16)));
  i8v a = __builtin_shufflevector(q, q, 0, 1, 2, 3, 4, 5, 6, 7) | __builtin_shufflevector(q, q, 8, 9, 10, 11, 12, 13, 14, 15);
  i4v b = __builtin_shufflevector(a, a, 0, 1, 2, 3) | __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (unsigned)((b[0] | b[1]) | (b[2] | b[3]));
}
FHGS_AI i16v lanes(unsigned b) { return (kBit & (int)b) != 0; }

// exp(x) for the Gaussian falloff (x = -rho/2 in [-5.6, 0] for every kept pair): Cody-Waite
// reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-7 polynomial (expf of Cephes: relative
// error below 2e-7 on the whole float range); inputs clamped to [-87, 88] (other lanes are masked).
FHGS_AI f16v vexp(f16v x) {
  x = sel(x < -87.0f, splat(-87.0f), x);
  x = sel(x > 88.0f, splat(88.0f), x);
  const f16v magic = splat(12582912.0f);  // 1.5 * 2^23: round to nearest
  f16v n = (x * 1.44269504088896341f + magic) - magic;
  f16v r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  f16v p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  i16v e = (__builtin_convertvector(n, i16v) + 127) << 23;
  f16v s;
  __builtin_memcpy(&s, &e, sizeof(s));
  return p * s;
}

// torch.minimum semantics (NaN propagates), as nan_min.
FHGS_AI f16v vnan_min(f16v a, f16v b) {
  i16v nan = (a != a) | (b != b);
  return sel(nan, a + b, sel(a < b, a, b));
}

// Transposed tree reduction: lane L of the result is the sum of the lanes of v[kPerm[L]] (kPerm is
// the 4-bit reversal, an involution); 15 shuffles + 15 adds for 16 sums.
constexpr int kPerm[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
FHGS_AI f16v reduce16(const f16v* v) {
  f16v t[8], u[4], x[2];
  for (int i = 0; i < 8; ++i)
    t[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[2 * i], v[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)
    u[i] = __builtin_shufflevector(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           __builtin_shufflevector(t[2 * i], t[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    x[i] = __builtin_shufflevector(u[2 * i], u[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           __builtin_shufflevector(u[2 * i], u[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  return __builtin_shufflevector(x[0], x[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         __builtin_shufflevector(x[0], x[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}
FHGS_AI float hsum(f16v v) {
  typedef float f4v __attribute__((vector_size(16)));
  f8v s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  f4v s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// One surfel against the 16 pixels (fx lanes, row fy): eval_pair's quantities.
struct Pair16 {
  f16v k0, k1, k2, p2, u, v, rho3, rho2, rho, z, G, opG, alpha;
  float l0, l1, l2;
};

FHGS_AI void eval16(const Ent& en, f16v fx, float fy, Pair16& e) {
  const float* Tw = en.T + 6;
  const f16v ox = fx - en.KL[6];
  const float oy = fy - en.KL[7];
  e.k0 = en.KL[0] + ox * Tw[0];
  e.k1 = en.KL[1] + ox * Tw[1];
  e.k2 = en.KL[2] + ox * Tw[2];
  e.l0 = en.KL[3] + oy * Tw[0];
  e.l1 = en.KL[4] + oy * Tw[1];
  e.l2 = en.KL[5] + oy * Tw[2];
  const f16v p0 = e.k1 * e.l2 - e.k2 * e.l1;
  const f16v p1 = e.k2 * e.l0 - e.k0 * e.l2;
  e.p2 = e.k0 * e.l1 - e.k1 * e.l0;
  const f16v ip = 1.0f / e.p2;
  e.u = p0 * ip;
  e.v = p1 * ip;
  e.rho3 = e.u * e.u + e.v * e.v;
  const f16v dx = en.cx - fx;
  const float dy = en.cy - fy;
  e.rho2 = FILTER_INV_SQUARE * (dx * dx + dy * dy);
  e.rho = vnan_min(e.rho3, e.rho2);
  e.z = e.u * Tw[0] + e.v * Tw[1] + Tw[2];
  e.G = vexp(-0.5f * e.rho);
  e.opG = en.op * e.G;
  e.alpha = sel(e.opG > ALPHA_MAX, splat(ALPHA_MAX), e.opG);
}

}  // namespace simd

void forward_tile_rgb(const RasterArgs& a, int tile, Scratch& sc) {
  using namespace simd;
  const auto [W, H, npix, tx, ty, s, e] = tile_span(a, tile);
  pack_tile(a, s, e, sc.ents);
  const Ent* ents = sc.ents.data();
  const int Dr = a.Dr;
  float* FV = Dr > 0 ? sc.FV.data() : nullptr;  // 16 x Dr
  const float zn = a.cam.znear, zf = a.cam.zfar;
  const double mk = (double)zf / ((double)zf - zn), znd = zn;  // dist_m = mk (1 - zn / z)
  const int nrows = std::min(H, (ty + 1) * TILE) - ty * TILE;
  const int* row_start = sc.row_start;
  build_rows(sc.ents, ty * TILE, nrows, sc.rows, sc.row_start);
  const int* rows = sc.rows.data();
  uint16_t* masks = a.contrib_idx != nullptr ? reinterpret_cast<uint16_t*>(a.contrib_idx + a.tile_coff[tile]) : nullptr;
  const int xt = tx * TILE, nx = std::min(TILE, W - xt);
  const unsigned all = nx == 16 ? 0xFFFFu : (1u << nx) - 1u;
  const f16v fx = __builtin_convertvector(kLane, f16v) + (float)xt;
  for (int rr = 0; rr < nrows; ++rr) {
    const int py = ty * TILE + rr;
    const float fy = (float)py;
    f16v T = splat(1.0f), cr = {}, cg = {}, cb = {}, dep = {}, n0 = {}, n1 = {}, n2 = {}, medz = {};
    i16v medi = isplat(-1), last = isplat(-1), cnt = {};
    d16 m0 = dsplat(0.0), Wd = dsplat(0.0), M1 = dsplat(0.0), M2 = dsplat(0.0), dist = dsplat(0.0);
    if (Dr > 0) memset(FV, 0, sizeof(float) * 16 * Dr);
    unsigned active = all;
    int r = row_start[rr];
    const int r1 = row_start[rr + 1];
    for (; r < r1 && active != 0; ++r) {
      const Ent& en = ents[rows[r]];
      const int lo = std::max(en.x0 - xt, 0), hi = std::min(en.x1 - xt, 15);
      const unsigned box = lo > hi ? 0u : (((2u << hi) - (1u << lo)) & active);
      if (box == 0) {
        if (masks) masks[r] = 0;
        continue;
      }
      Pair16 pe;
      eval16(en, fx, fy, pe);
      const i16v ok = (pe.p2 != 0.0f) & (pe.rho <= en.rho_cut) & (pe.opG >= ALPHA_MIN) & (pe.z >= zn) & lanes(box);
      const unsigned okb = bits(ok);
      if (okb == 0) {
        if (masks) masks[r] = 0;
        continue;
      }
      const f16v Tn = T * (1.0f - pe.alpha);
      const unsigned term = bits(Tn < T_MIN) & okb;  // pixel_accepts fails: the lane stops here
      const unsigned keep = okb & ~term;
      active &= ~term;
      if (masks) masks[r] = (uint16_t)keep;
      if (keep == 0) continue;
      const i16v kv = lanes(keep);
      const int j = (int)(s + rows[r]);
      const f16v w = pe.alpha * T;
      const float* col = a.colors + (int64_t)en.sid * 3;
      const float* nrm = a.geom + (int64_t)en.sid * GEOM_STRIDE + G_N;
      cr = sel(kv, cr + w * col[0], cr);
      cg = sel(kv, cg + w * col[1], cg);
      cb = sel(kv, cb + w * col[2], cb);
      dep = sel(kv, dep + w * pe.z, dep);
      n0 = sel(kv, n0 + w * nrm[0], n0);
      n1 = sel(kv, n1 + w * nrm[1], n1);
      n2 = sel(kv, n2 + w * nrm[2], n2);
      const i16v med = kv & (T > 0.5f);
      medz = sel(med, pe.z, medz);
      medi = seli(med, isplat(j), medi);
      const d16 m = mk * (1.0 - znd / to_d(pe.z));
      m0 = dsel(to_lm(kv & (cnt == 0)), m, m0);
      const lm16 kd = to_lm(kv);
      const d16 ms = m - m0, wd = to_d(w);
      dist = dsel(kd, dist + (ms * ms * Wd + M2 - 2.0 * ms * M1) * wd, dist);
      Wd = dsel(kd, Wd + wd, Wd);
      M1 = dsel(kd, M1 + wd * ms, M1);
      M2 = dsel(kd, M2 + wd * ms * ms, M2);
      T = sel(kv, Tn, T);
      last = seli(kv, isplat(j), last);
      cnt -= kv;  // kv lanes are -1
      if (Dr > 0) {
        const float* fvr = a.fvalues + (int64_t)en.sid * Dr;
        for (unsigned b = keep; b != 0; b &= b - 1) {
          const int l = __builtin_ctz(b);
          feature_blend_pass_host(FV + l * Dr, fvr, Dr, w[l]);
        }
      }
    }
    if (masks)
      for (; r < r1; ++r) masks[r] = 0;
    // store (store_pixel of raster_api.h, per lane)
    double tm0[16], tW[16], tM1[16], tM2[16], tdist[16];
    dstore(tm0, m0);
    dstore(tW, Wd);
    dstore(tM1, M1);
    dstore(tM2, M2);
    dstore(tdist, dist);
    for (int l = 0; l < nx; ++l) {
      const int64_t pix = (int64_t)py * W + xt + l;
      const float Tl = T[l];
      a.out_rgb[pix] = cr[l] + Tl * a.bg[0];
      a.out_rgb[npix + pix] = cg[l] + Tl * a.bg[1];
      a.out_rgb[2 * npix + pix] = cb[l] + Tl * a.bg[2];
      a.out_normal[pix] = n0[l];
      a.out_normal[npix + pix] = n1[l];
      a.out_normal[2 * npix + pix] = n2[l];
      a.out_alpha[pix] = 1.0f - Tl;
      a.out_depth[pix] = dep[l];
      a.out_median[pix] = medz[l];
      a.out_dist[pix] = (float)tdist[l];
      a.out_ncontrib[pix] = cnt[l];
      a.pix_state[pix] = Tl;
      a.pix_state[npix + pix] = tm0[l];
      a.pix_state[2 * npix + pix] = tW[l];
      a.pix_state[3 * npix + pix] = tM1[l];
      a.pix_state[4 * npix + pix] = tM2[l];
      a.pix_idx[pix] = last[l];
      a.pix_idx[npix + pix] = medi[l];
      a.pix_idx[2 * npix + pix] = cnt[l];
      if (Dr > 0)
        for (int d = 0; d < Dr; ++d) a.out_feat[d * npix + pix] = FV[l * Dr + d];
    }
  }
}

void backward_tile_rgb(const RasterArgs& a, int tile, Scratch& sc) {
  using namespace simd;
  const auto [W, H, npix, tx, ty, s, e] = tile_span(a, tile);
  if (e == s) return;
  pack_tile(a, s, e, sc.ents);
  const Ent* ents = sc.ents.data();
  const float zn = a.cam.znear, zf = a.cam.zfar;
  const double mk = (double)zf / ((double)zf - zn), znd = zn;
  const int nrows = std::min(H, (ty + 1) * TILE) - ty * TILE;
  const int* row_start = sc.row_start;
  build_rows(sc.ents, ty * TILE, nrows, sc.rows, sc.row_start);
  const int* rows = sc.rows.data();
  const uint16_t* masks = reinterpret_cast<const uint16_t*>(a.contrib_idx + a.tile_coff[tile]);
  const int xt = tx * TILE, nx = std::min(TILE, W - xt);
  const f16v fx = __builtin_convertvector(kLane, f16v) + (float)xt;
  for (int rr = 0; rr < nrows; ++rr) {
    const int py = ty * TILE + rr;
    const float fy = (float)py;
    // the row's upstream gradients and forward state (lanes past the image edge stay 0: no mask
    // bit is ever set for them)
    float buf[14][16] = {};
    double dbuf[4][16] = {};
    int medb[16];
    for (int l = 0; l < 16; ++l) medb[l] = -1;
    const int64_t p0 = (int64_t)py * W + xt;
    for (int l = 0; l < nx; ++l) {
      const int64_t pix = p0 + l;
      for (int c = 0; c < 3; ++c) {
        buf[c][l] = a.g_rgb[c * npix + pix];
        buf[3 + c][l] = a.g_normal[c * npix + pix];
      }
      buf[6][l] = a.g_alpha[pix];
      buf[7][l] = a.g_depth[pix];
      buf[8][l] = a.g_median[pix];
      buf[9][l] = a.g_dist[pix];
      buf[10][l] = (float)a.pix_state[pix];
      for (int c = 0; c < 4; ++c) dbuf[c][l] = a.pix_state[(1 + c) * npix + pix];
      medb[l] = a.pix_idx[npix + pix];
    }
    const f16v gr = load16(buf[0]), gg = load16(buf[1]), gb = load16(buf[2]);
    const f16v gn0 = load16(buf[3]), gn1 = load16(buf[4]), gn2 = load16(buf[5]);
    const f16v ga = load16(buf[6]), gdep = load16(buf[7]), gmed = load16(buf[8]), gdist = load16(buf[9]);
    f16v T = load16(buf[10]);
    const d16 m0 = dload(dbuf[0]), Wt = dload(dbuf[1]), M1 = dload(dbuf[2]), M2 = dload(dbuf[3]);
    i16v medi;
    __builtin_memcpy(&medi, medb, sizeof(medi));
    const f16v G_T = gr * a.bg[0] + gg * a.bg[1] + gb * a.bg[2] - ga;
    f16v B = {};
    for (int r = row_start[rr + 1] - 1; r >= row_start[rr]; --r) {
      const unsigned keep = masks[r];
      if (keep == 0) continue;
      const int j = (int)(s + rows[r]);
      const Ent& en = ents[rows[r]];
      const float* Tw = en.T + 6;
      Pair16 pe;
      eval16(en, fx, fy, pe);
      const i16v kv = lanes(keep);
      T = sel(kv, T / (1.0f - pe.alpha), T);  // pixel_back_weight
      const f16v w = pe.alpha * T;
      const float* col = a.colors + (int64_t)en.sid * 3;
      const float* nrm = a.geom + (int64_t)en.sid * GEOM_STRIDE + G_N;
      const d16 zd = to_d(pe.z);
      const d16 ms = mk * (1.0 - znd / zd) - m0;
      const f16v gd = to_f(ms * ms * Wt - 2.0 * ms * M1 + M2);
      const f16v gk = gr * col[0] + gg * col[1] + gb * col[2] + gdep * pe.z + gn0 * nrm[0] + gn1 * nrm[1] +
                      gn2 * nrm[2] + gdist * gd - G_T;  // pixel_back_g
      const f16v dLda = T * (gk - B);                  // pixel_back_finish
      B = sel(kv, gk * pe.alpha + (1.0f - pe.alpha) * B, B);
      const d16 dmdz = (mk * znd) / (zd * zd);
      f16v dz = w * gdep + gdist * to_f(2.0 * to_d(w) * (ms * Wt - M1) * dmdz);
      dz = sel(medi == j, dz + gmed, dz);
      // eval_pair_backward
      const i16v unclamped = pe.opG <= ALPHA_MAX;
      const f16v aop = sel(unclamped, dLda * pe.G, splat(0.0f));
      const f16v dG = sel(unclamped, dLda * en.op, splat(0.0f));
      const f16v drho = -0.5f * pe.G * dG;
      f16v du = dz * Tw[0], dv = dz * Tw[1];
      const i16v b3 = pe.rho3 <= pe.rho2;
      du = sel(b3, du + 2.0f * pe.u * drho, du);
      dv = sel(b3, dv + 2.0f * pe.v * drho, dv);
      const f16v zero = {};
      const f16v as0 = sel(b3, -(2.0f * pe.u * pe.u * drho), zero);
      const f16v as1 = sel(b3, -(2.0f * pe.v * pe.v * drho), zero);
      const f16v acx = sel(b3, zero, 2.0f * FILTER_INV_SQUARE * (en.cx - fx) * drho);
      const f16v acy = sel(b3, zero, 2.0f * FILTER_INV_SQUARE * (en.cy - fy) * drho);
      const f16v ip = 1.0f / pe.p2;
      const f16v dp0 = du * ip, dp1 = dv * ip, dp2 = -(du * pe.u + dv * pe.v) * ip;
      const f16v dk0 = pe.l1 * dp2 - pe.l2 * dp1, dk1 = pe.l2 * dp0 - pe.l0 * dp2, dk2 = pe.l0 * dp1 - pe.l1 * dp0;
      const f16v dl0 = dp1 * pe.k2 - dp2 * pe.k1, dl1 = dp2 * pe.k0 - dp0 * pe.k2, dl2 = dp0 * pe.k1 - dp1 * pe.k0;
      f16v fld[20];
      fld[A_T + 0] = -dk0;
      fld[A_T + 1] = -dk1;
      fld[A_T + 2] = -dk2;
      fld[A_T + 3] = -dl0;
      fld[A_T + 4] = -dl1;
      fld[A_T + 5] = -dl2;
      fld[A_T + 6] = dz * pe.u + (fx * dk0 + fy * dl0);
      fld[A_T + 7] = dz * pe.v + (fx * dk1 + fy * dl1);
      fld[A_T + 8] = dz + (fx * dk2 + fy * dl2);
      fld[A_CX] = acx;
      fld[A_CY] = acy;
      fld[A_OP] = aop;
      fld[A_COL + 0] = w * gr;
      fld[A_COL + 1] = w * gg;
      fld[A_COL + 2] = w * gb;
      fld[A_N + 0] = w * gn0;
      fld[A_N + 1] = w * gn1;
      fld[A_N + 2] = w * gn2;
      fld[A_S + 0] = as0;
      fld[A_S + 1] = as1;
      f16v v16[16];
      for (int i = 0; i < 16; ++i) v16[i] = sel(kv, fld[kPerm[i]], zero);
      float* acc = a.acc + (int64_t)j * ACC_STRIDE;
      store16(acc, load16(acc) + reduce16(v16));
      for (int c = 16; c < ACC_STRIDE; ++c) acc[c] += hsum(sel(kv, fld[c], zero));
    }
  }
}
