"""C source of the CfC element-wise kernels (backbone activation and the gated tail).

Why: per CfC step the GEMMs are done by torch (MKL), but the element-wise parts are ~10 ATen
calls forward and ~15 backward, and torch's CPU tanh costs ~2 ns/element here; one C loop per
part replaces them. Rows are independent, so each kernel is a flat OpenMP loop over rows.

tanh_f32 is Cephes tanhf (odd polynomial below |x| = 0.625, 1 - 2/(e^{2x}+1) above; < 2 ulp);
doubles use libm. Instantiated by _fused_csrc.source() with REAL / SFX.

Modes: 0 default (gated), 1 no_gate, 2 pure. Activations: 0 lecun_tanh, 1 tanh.
"""

CFC_HEADER = r"""
static inline float tanh_f32(float x) {
    float ax = x < 0 ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
                    1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
    float big = 1.0f - 2.0f / (exp_f32(2.0f * ax) + 1.0f);
    big = x < 0 ? -big : big;
    return ax < 0.625f ? small : big;
}

static inline double tanh_f64(double x) { return tanh(x); }
"""

CFC_TEMPLATE = r"""

/* Element-wise loops over n items: one SIMD loop per call, threads only when n is large (the
   per-step calls at B=64 are ~8k elements, below a thread team's wake-up cost). */
#define PAR_MIN 65536
/* mode flag: the heads are [ff1 | ff2 | time_a + time_b] (3U wide), valid when dt = 1 */
#define MERGED_GATE 4

/* Rows lo..hi of y = act(pre + add): `add` is a (rows, cols) matrix (add_stride = cols), a bias
   row broadcast over rows (add_stride = 0), or NULL. Adding here spares torch's addmm a copy of
   its bias into the output before every GEMM. */
static void act_fwd_range_SFX(int64_t lo, int64_t hi, int64_t cols, int kind, const REAL* pre,
                              const REAL* add, int64_t add_stride, REAL* y) {
    const REAL outer = kind == 0 ? (REAL)1.7159 : (REAL)1;
    const REAL inner = kind == 0 ? (REAL)0.666 : (REAL)1;
    for (int64_t r = lo; r < hi; r++) {
        const REAL* p = pre + r * cols;
        const REAL* a = add ? add + r * add_stride : NULL;
        REAL* yr = y + r * cols;
        if (a) {
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) yr[c] = outer * tanh_SFX(inner * (p[c] + a[c]));
        } else {
#pragma omp simd
            for (int64_t c = 0; c < cols; c++) yr[c] = outer * tanh_SFX(inner * p[c]);
        }
    }
}

static void act_bwd_range_SFX(int64_t lo, int64_t hi, int kind, const REAL* y, const REAL* gy,
                              REAL* gpre) {
    const REAL outer = kind == 0 ? (REAL)1.7159 : (REAL)1;
    const REAL scale = kind == 0 ? (REAL)(1.7159 * 0.666) : (REAL)1;
#pragma omp simd
    for (int64_t i = lo; i < hi; i++) {
        REAL t = y[i] / outer;
        gpre[i] = gy[i] * scale * ((REAL)1 - t * t);
    }
}

/* y = act(pre + add) over a (rows, cols) block (may be in place; see act_fwd_range). */
void cfc_act_fwd_SFX(int64_t rows, int64_t cols, int kind, const REAL* pre, const REAL* add,
                     int64_t add_stride, REAL* y) {
    if (rows * cols < PAR_MIN) {
        act_fwd_range_SFX(0, rows, cols, kind, pre, add, add_stride, y);
        return;
    }
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t chunk = (rows + nt - 1) / nt;
        int64_t lo = id * chunk, hi = lo + chunk < rows ? lo + chunk : rows;
        if (lo < hi) act_fwd_range_SFX(lo, hi, cols, kind, pre, add, add_stride, y);
    }
}

/* gpre = gy * act'(.), written from the activation's output y. */
void cfc_act_bwd_SFX(int64_t n, int kind, const REAL* y, const REAL* gy, REAL* gpre) {
    if (n < PAR_MIN) { act_bwd_range_SFX(0, n, kind, y, gy, gpre); return; }
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t chunk = (n + nt - 1) / nt;
        int64_t lo = id * chunk, hi = lo + chunk < n ? lo + chunk : n;
        if (lo < hi) act_bwd_range_SFX(lo, hi, kind, y, gy, gpre);
    }
}

/* heads[B][4U] = [ff1 | ff2 | time_a | time_b] (pure: [ff1]); dt[B] or NULL for 1.
   Writes h[B][U] and the activations the backward needs, acts[B][3U]:
   gated: [tanh ff1 | tanh ff2 | σ]; pure: [ff1 | decay | -]. */
static void tail_fwd_rows_SFX(int64_t b_lo, int64_t b_hi, int64_t U, int mode, const REAL* heads, int64_t hstride,
                      const REAL* hbias, const REAL* dt, const REAL* wtau, const REAL* A, REAL* h, REAL* acts) {
    const int merged = mode & MERGED_GATE;
    mode &= 3;
    REAL* row = (REAL*)malloc(sizeof(REAL) * 4 * U);  /* head row + bias */
    for (int64_t b = b_lo; b < b_hi; b++) {
        const REAL* hd = heads + b * hstride;
        if (hbias) {
            int64_t X = mode == 2 ? U : (merged ? 3 * U : 4 * U);
#pragma omp simd
            for (int64_t k = 0; k < X; k++) row[k] = hd[k] + hbias[k];
            hd = row;
        }
        REAL* hb = h + b * U;
        REAL* ab = acts + b * 3 * U;
        REAL t = dt ? dt[b] : (REAL)1;
        if (mode == 2) {
#pragma omp simd
            for (int64_t u = 0; u < U; u++) {
                REAL f = hd[u];
                REAL aw = wtau[u] < 0 ? -wtau[u] : wtau[u];
                REAL af = f < 0 ? -f : f;
                REAL e = exp_SFX(-t * (aw + af));
                hb[u] = -A[u] * e * f + A[u];
                ab[u] = f;
                ab[U + u] = e;
            }
        } else if (merged) { /* heads [ff1 | ff2 | time_a + time_b] with dt = 1 */
#pragma omp simd
            for (int64_t u = 0; u < U; u++) {
                REAL t1 = tanh_SFX(hd[u]);
                REAL t2 = tanh_SFX(hd[U + u]);
                REAL s = (REAL)1 / ((REAL)1 + exp_SFX(-hd[2 * U + u]));
                hb[u] = mode == 0 ? t1 * ((REAL)1 - s) + s * t2 : t1 + s * t2;
                ab[u] = t1;
                ab[U + u] = t2;
                ab[2 * U + u] = s;
            }
        } else {
#pragma omp simd
            for (int64_t u = 0; u < U; u++) {
                REAL t1 = tanh_SFX(hd[u]);
                REAL t2 = tanh_SFX(hd[U + u]);
                REAL s = (REAL)1 / ((REAL)1 + exp_SFX(-(hd[2 * U + u] * t + hd[3 * U + u])));
                hb[u] = mode == 0 ? t1 * ((REAL)1 - s) + s * t2 : t1 + s * t2;
                ab[u] = t1;
                ab[U + u] = t2;
                ab[2 * U + u] = s;
            }
        }
    }
    free(row);
}

void cfc_tail_fwd_SFX(int64_t B, int64_t U, int mode, const REAL* heads, int64_t hstride,
                      const REAL* hbias, const REAL* dt, const REAL* wtau, const REAL* A, REAL* h,
                      REAL* acts) {
    if (B * U < PAR_MIN) {
        tail_fwd_rows_SFX(0, B, U, mode, heads, hstride, hbias, dt, wtau, A, h, acts);
        return;
    }
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t chunk = (B + nt - 1) / nt;
        int64_t lo = id * chunk, hi = lo + chunk < B ? lo + chunk : B;
        if (lo < hi) tail_fwd_rows_SFX(lo, hi, U, mode, heads, hstride, hbias, dt, wtau, A, h, acts);
    }
}

/* g = g_carry + g_out (g_out may be NULL; row b at g_out + b * g_out_stride); writes g_heads[B][4U]
   (pure: [B][U] in column block 0)
   and, for pure, adds dL/dA and dL/dw_tau per row into gA[B][U], gw[B][U]. */
static void tail_bwd_rows_SFX(int64_t b_lo, int64_t b_hi, int64_t U, int mode, const REAL* acts, const REAL* dt,
                      const REAL* wtau, const REAL* A, const REAL* g_carry, const REAL* g_out,
                      int64_t g_out_stride, REAL* g_heads, int64_t gstride, REAL* gA, REAL* gw) {
    const int merged = mode & MERGED_GATE;
    mode &= 3;
    for (int64_t b = b_lo; b < b_hi; b++) {
        const REAL* ab = acts + b * 3 * U;
        const REAL* gc = g_carry + b * U;
        const REAL* go = g_out ? g_out + b * g_out_stride : gc;
        REAL* gh = g_heads + b * gstride;
        REAL t = dt ? dt[b] : (REAL)1;
        REAL go_scale = g_out ? (REAL)1 : (REAL)0;
        if (mode == 2) {
#pragma omp simd
            for (int64_t u = 0; u < U; u++) {
                REAL g = gc[u] + go_scale * go[u];
                REAL f = ab[u], e = ab[U + u];
                REAL af = f < 0 ? -f : f;
                REAL sw = wtau[u] > 0 ? (REAL)1 : (wtau[u] < 0 ? (REAL)-1 : (REAL)0);
                gh[u] = -A[u] * g * e * ((REAL)1 - t * af);
                gA[b * U + u] += g * ((REAL)1 - e * f);
                gw[b * U + u] += g * A[u] * f * e * t * sw;
            }
        } else {
#pragma omp simd
            for (int64_t u = 0; u < U; u++) {
                REAL g = gc[u] + go_scale * go[u];
                REAL t1 = ab[u], t2 = ab[U + u], s = ab[2 * U + u];
                REAL g1 = mode == 0 ? g * ((REAL)1 - s) : g;
                REAL g2 = g * s;
                REAL gs = mode == 0 ? g * (t2 - t1) : g * t2;
                REAL gz = gs * s * ((REAL)1 - s);
                gh[u] = g1 * ((REAL)1 - t1 * t1);
                gh[U + u] = g2 * ((REAL)1 - t2 * t2);
                if (merged) {
                    gh[2 * U + u] = gz;
                } else {
                    gh[2 * U + u] = gz * t;
                    gh[3 * U + u] = gz;
                }
            }
        }
    }
}

void cfc_tail_bwd_SFX(int64_t B, int64_t U, int mode, const REAL* acts, const REAL* dt,
                      const REAL* wtau, const REAL* A, const REAL* g_carry, const REAL* g_out,
                      int64_t g_out_stride, REAL* g_heads, int64_t gstride, REAL* gA, REAL* gw) {
    if (B * U < PAR_MIN) {
        tail_bwd_rows_SFX(0, B, U, mode, acts, dt, wtau, A, g_carry, g_out, g_out_stride, g_heads,
                          gstride, gA, gw);
        return;
    }
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t chunk = (B + nt - 1) / nt;
        int64_t lo = id * chunk, hi = lo + chunk < B ? lo + chunk : B;
        if (lo < hi)
            tail_bwd_rows_SFX(lo, hi, U, mode, acts, dt, wtau, A, g_carry, g_out, g_out_stride,
                              g_heads, gstride, gA, gw);
    }
}
"""
