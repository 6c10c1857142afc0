"""C source of the CPU kernels behind ltc_fused and cfc_fused (compiled by _fused_native).

Why C and not torch ops: on CPU the LTC synapse math is ~30 element-wise passes over
(B, pairs) tensors per ODE unfold, each a separate ATen call (~3-10 µs of dispatch plus a full
memory pass), and torch's CPU tanh runs at ~2 ns/element. One C loop per synapse keeps the
tile in L1, calls the vectorised libmvec exp (gcc emits _ZGVdN8v_expf for the `omp simd` loops
under -ffast-math) and shares torch's OpenMP runtime (the dynamic linker reuses the libgomp.so.1
torch already loaded, so torch.set_num_threads governs these loops too).

Layout: a batch tile of L sequences is processed together, state stored lane-minor as
[unit][lane], so every synapse is a short SIMD loop over lanes with scalar (broadcast)
parameters. Synapses are a CSR list sorted by postsynaptic neuron: post_ptr[U+1] offsets into
pre[P] and the per-synapse parameters w, mu, sigma, erev [P]. A dense layer is simply the list of
all its nonzero-mask pairs, so there is one code path for dense and sparse wirings.

REAL / SFX are replaced by (float, f32) and (double, f64) to instantiate both precisions.
"""

KERNEL_TEMPLATE = r"""
/* ---------------------------------------------------------------- one synapse layer, one tile */

static inline REAL sigm_SFX(REAL z) { return (REAL)1 / ((REAL)1 + exp_SFX(-z)); }

/* numt[u][l] = sum_p w σ(sig (x[pre]-mu)) erev,  dent[u][l] = sum_p w σ(...) over p into u. */
/* With sc != NULL, also stores σ of every synapse and lane into sc[P][L] for the backward. */
static void tile_fwd_SFX(int nl, int64_t U, const int64_t* ptr, const int64_t* pre, const REAL* w,
                         const REAL* mu, const REAL* sg, const REAL* ev, const REAL* xt,
                         REAL* numt, REAL* dent, REAL* sc) {
    for (int64_t u = 0; u < U; u++) {
        REAL an[SLANES], ad[SLANES];
        for (int l = 0; l < nl; l++) { an[l] = 0; ad[l] = 0; }
        for (int64_t p = ptr[u]; p < ptr[u + 1]; p++) {
            const REAL* xp = xt + pre[p] * nl;
            const REAL wp = w[p], mp = mu[p], sp = sg[p], ep = ev[p];
            if (sc) {
                REAL* sp_out = sc + p * nl;
#pragma omp simd
                for (int l = 0; l < nl; l++) {
                    REAL s = sigm_SFX(sp * (xp[l] - mp));
                    sp_out[l] = s;
                    an[l] += wp * s * ep;
                    ad[l] += wp * s;
                }
            } else {
#pragma omp simd
                for (int l = 0; l < nl; l++) {
                    REAL a = wp * sigm_SFX(sp * (xp[l] - mp));
                    an[l] += a * ep;
                    ad[l] += a;
                }
            }
        }
        for (int l = 0; l < nl; l++) { numt[u * nl + l] = an[l]; dent[u * nl + l] = ad[l]; }
    }
}

/* Backward of tile_fwd given gn = dL/dnum, gd = dL/dden ([U][L]); adds dL/dx into gxt ([S][L])
   and the lane sums of the synapse-parameter gradients into acc[4][P] (w, mu, sigma, erev). */
static void tile_bwd_SFX(int nl, int64_t U, int64_t P, const int64_t* ptr, const int64_t* pre,
                         const REAL* w, const REAL* mu, const REAL* sg, const REAL* ev,
                         const REAL* xt, const REAL* gn, const REAL* gd, REAL* gxt,
                         double* acc) {
    for (int64_t u = 0; u < U; u++) {
        const REAL* gnu = gn + u * nl;
        const REAL* gdu = gd + u * nl;
        for (int64_t p = ptr[u]; p < ptr[u + 1]; p++) {
            const REAL* xp = xt + pre[p] * nl;
            REAL* gxp = gxt + pre[p] * nl;
            const REAL wp = w[p], mp = mu[p], sp = sg[p], ep = ev[p];
            REAL sw = 0, sm = 0, ss = 0, se = 0;
#pragma omp simd reduction(+ : sw, sm, ss, se)
            for (int l = 0; l < nl; l++) {
                REAL d = xp[l] - mp;
                REAL s = sigm_SFX(sp * d);
                REAL da = gnu[l] * ep + gdu[l];          /* dL/d(w σ) */
                REAL dz = da * wp * s * ((REAL)1 - s);   /* dL/dz, z = sig (x - mu) */
                se += gnu[l] * wp * s;
                sw += da * s;
                ss += dz * d;
                sm += dz;
                gxp[l] += dz * sp;
            }
            acc[p] += sw;
            acc[P + p] -= sp * sm;
            acc[2 * P + p] += ss;
            acc[3 * P + p] += se;
        }
    }
}

/* tile_bwd for the recurrence: σ read from the forward's cache sc[P][L], parameter gradients
   kept per lane in accl[4][P][L] (summed over lanes once per tile, not once per unfold). */
static void tile_bwd_cached_SFX(int64_t U, int64_t P, const int64_t* ptr, const int64_t* pre,
                                const REAL* w, const REAL* mu, const REAL* sg, const REAL* ev,
                                const REAL* xt, const REAL* sc, const REAL* gn, const REAL* gd,
                                REAL* gxt, REAL* accl) {
    for (int64_t u = 0; u < U; u++) {
        const REAL* gnu = gn + u * LANES;
        const REAL* gdu = gd + u * LANES;
        for (int64_t p = ptr[u]; p < ptr[u + 1]; p++) {
            const REAL* xp = xt + pre[p] * LANES;
            const REAL* sp_in = sc + p * LANES;
            REAL* gxp = gxt + pre[p] * LANES;
            REAL *aw = accl + p * LANES, *am = aw + P * LANES, *as = am + P * LANES;
            REAL *ae = as + P * LANES;
            const REAL wp = w[p], mp = mu[p], sp = sg[p], ep = ev[p];
#pragma omp simd
            for (int l = 0; l < LANES; l++) {
                REAL s = sp_in[l];
                REAL da = gnu[l] * ep + gdu[l];
                REAL dz = da * wp * s * ((REAL)1 - s);
                ae[l] += gnu[l] * wp * s;
                aw[l] += da * s;
                as[l] += dz * (xp[l] - mp);
                am[l] -= dz * sp;
                gxp[l] += dz * sp;
            }
        }
    }
}

/* --------------------------------------------------------------- sensory layer, all rows */

/* x[N][S] -> num[N][U], den[N][U] for every row (a row is one (batch, time) sample). */
void syn_forward_SFX(int64_t N, int64_t S, int64_t U, const REAL* x, const int64_t* ptr,
                     const int64_t* pre, const REAL* w, const REAL* mu, const REAL* sg,
                     const REAL* ev, REAL* num, REAL* den) {
    int64_t tiles = (N + LANES - 1) / LANES;
#pragma omp parallel num_threads(team_size(tiles))
    {
        REAL* xt = (REAL*)malloc(sizeof(REAL) * LANES * (S + 2 * U));
        REAL* nt = xt + LANES * S;
        REAL* dt = nt + LANES * U;
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < tiles; tile++) {
            int64_t r0 = tile * LANES;
            int n = (int)(N - r0 < LANES ? N - r0 : LANES);
            for (int64_t i = 0; i < S; i++)
                for (int l = 0; l < LANES; l++) xt[i * LANES + l] = l < n ? x[(r0 + l) * S + i] : 0;
            tile_fwd_SFX(LANES, U, ptr, pre, w, mu, sg, ev, xt, nt, dt, NULL);
            for (int l = 0; l < n; l++)
                for (int64_t u = 0; u < U; u++) {
                    num[(r0 + l) * U + u] = nt[u * LANES + l];
                    den[(r0 + l) * U + u] = dt[u * LANES + l];
                }
        }
        free(xt);
    }
}

/* Recomputing backward of syn_forward: gx[N][S] (written), grads[4][P] (accumulated, double). */
void syn_backward_SFX(int64_t N, int64_t S, int64_t U, int64_t P, const REAL* x,
                      const int64_t* ptr, const int64_t* pre, const REAL* w, const REAL* mu,
                      const REAL* sg, const REAL* ev, const REAL* gnum, const REAL* gden,
                      REAL* gx, double* grads) {
    int64_t tiles = (N + SLANES - 1) / SLANES;
#pragma omp parallel num_threads(team_size(tiles))
    {
        REAL* xt = (REAL*)malloc(sizeof(REAL) * SLANES * (2 * S + 2 * U));
        REAL* gxt = xt + SLANES * S;
        REAL* gn = gxt + SLANES * S;
        REAL* gd = gn + SLANES * U;
        double* acc = (double*)calloc(4 * P, sizeof(double));
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < tiles; tile++) {
            int64_t r0 = tile * SLANES;
            int n = (int)(N - r0 < SLANES ? N - r0 : SLANES);
            for (int64_t i = 0; i < S; i++)
                for (int l = 0; l < SLANES; l++) {
                    xt[i * SLANES + l] = l < n ? x[(r0 + l) * S + i] : 0;
                    gxt[i * SLANES + l] = 0;
                }
            for (int64_t u = 0; u < U; u++)
                for (int l = 0; l < SLANES; l++) {
                    gn[u * SLANES + l] = l < n ? gnum[(r0 + l) * U + u] : 0;
                    gd[u * SLANES + l] = l < n ? gden[(r0 + l) * U + u] : 0;
                }
            tile_bwd_SFX(SLANES, U, P, ptr, pre, w, mu, sg, ev, xt, gn, gd, gxt, acc);
            for (int l = 0; l < n; l++)
                for (int64_t i = 0; i < S; i++) gx[(r0 + l) * S + i] = gxt[i * SLANES + l];
        }
#pragma omp critical
        for (int64_t k = 0; k < 4 * P; k++) grads[k] += acc[k];
        free(acc);
        free(xt);
    }
}

/* ------------------------------------------------------------ LTC recurrence, whole sequence */

/* One fused semi-implicit Euler unfold on a tile: vo = (cmt v + gl vl + num + sn) / (cmt + gl +
   den + sd + eps); also returns the divisor in dv (needed by the backward). */
static void ltc_unfold_SFX(int64_t U, const int64_t* ptr, const int64_t* pre, const REAL* w,
                           const REAL* mu, const REAL* sg, const REAL* ev, const REAL* gl,
                           const REAL* glvl, const REAL* cmt, const REAL* sn, const REAL* sd,
                           REAL eps, const REAL* v, REAL* vo, REAL* dv, REAL* nt, REAL* dt,
                           REAL* sc) {
    tile_fwd_SFX(LANES, U, ptr, pre, w, mu, sg, ev, v, nt, dt, sc);
    for (int64_t u = 0; u < U; u++)
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            int64_t k = u * LANES + l;
            REAL num = cmt[k] * v[k] + glvl[u] + (nt[k] + sn[k]);
            REAL den = cmt[k] + gl[u] + (dt[k] + sd[k]) + eps;
            vo[k] = num / den;
            dv[k] = den;
        }
}

/* Load rows b0..b0+n of a [B][T][U] (or [B][U] with T=1, t=0) tensor into a [U][L] tile. */
static void load_tile_SFX(const REAL* src, int64_t b0, int n, int64_t T, int64_t t, int64_t U,
                          REAL pad, REAL* dst) {
    for (int64_t u = 0; u < U; u++)
        for (int l = 0; l < LANES; l++)
            dst[u * LANES + l] = l < n ? src[((b0 + l) * T + t) * U + u] : pad;
}

static void store_tile_SFX(const REAL* src, int64_t b0, int n, int64_t T, int64_t t, int64_t U,
                           REAL* dst) {
    for (int l = 0; l < n; l++)
        for (int64_t u = 0; u < U; u++) dst[((b0 + l) * T + t) * U + u] = src[u * LANES + l];
}

/* v_out[B][T][U]: the state after each step, from v0[B][U] and the per-step sensory terms
   sn, sd and cm_t = cm / (dt / unfolds), all [B][T][U]. */
void ltc_forward_SFX(int64_t B, int64_t T, int64_t U, int64_t K, REAL eps, const REAL* v0,
                     const REAL* sn, const REAL* sd, const REAL* cmt, const REAL* gl,
                     const REAL* vl, const int64_t* ptr, const int64_t* pre, const REAL* w,
                     const REAL* mu, const REAL* sg, const REAL* ev, REAL* v_out) {
    int64_t tiles = (B + LANES - 1) / LANES;
#pragma omp parallel num_threads(team_size(tiles))
    {
        REAL* buf = (REAL*)malloc(sizeof(REAL) * LANES * U * 8 + sizeof(REAL) * U);
        REAL *v = buf, *vo = v + LANES * U, *dv = vo + LANES * U, *nt = dv + LANES * U;
        REAL *dt = nt + LANES * U, *snt = dt + LANES * U, *sdt = snt + LANES * U;
        REAL *ct = sdt + LANES * U, *glvl = ct + LANES * U;
        for (int64_t u = 0; u < U; u++) glvl[u] = gl[u] * vl[u];
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < tiles; tile++) {
            int64_t b0 = tile * LANES;
            int n = (int)(B - b0 < LANES ? B - b0 : LANES);
            load_tile_SFX(v0, b0, n, 1, 0, U, 0, v);
            for (int64_t t = 0; t < T; t++) {
                load_tile_SFX(sn, b0, n, T, t, U, 0, snt);
                load_tile_SFX(sd, b0, n, T, t, U, 0, sdt);
                load_tile_SFX(cmt, b0, n, T, t, U, 1, ct);
                for (int64_t k = 0; k < K; k++) {
                    ltc_unfold_SFX(U, ptr, pre, w, mu, sg, ev, gl, glvl, ct, snt, sdt, eps, v, vo,
                                   dv, nt, dt, NULL);
                    REAL* tmp = v; v = vo; vo = tmp;
                }
                store_tile_SFX(v, b0, n, T, t, U, v_out);
            }
        }
        free(buf);
    }
}

/* Backward of ltc_forward. Each step's unfold chain is recomputed from the saved state before
   the step (v0 or v_out[t-1]), so nothing per unfold is kept across steps.
   Writes g_v0[B][U], g_sn, g_sd, g_cmt [B][T][U]; accumulates grads (double) as
   [4][P] (w, mu, sigma, erev) followed by [U] gleak and [U] vleak. */
void ltc_backward_SFX(int64_t B, int64_t T, int64_t U, int64_t K, int64_t P, REAL eps,
                      const REAL* v0, const REAL* sn, const REAL* sd, const REAL* cmt,
                      const REAL* gl, const REAL* vl, const int64_t* ptr, const int64_t* pre,
                      const REAL* w, const REAL* mu, const REAL* sg, const REAL* ev,
                      const REAL* v_out, const REAL* g_out, REAL* g_v0, REAL* g_sn, REAL* g_sd,
                      REAL* g_cmt, double* grads) {
    int64_t tiles = (B + LANES - 1) / LANES;
    int64_t TU = LANES * U;
#pragma omp parallel num_threads(team_size(tiles))
    {
        REAL* buf = (REAL*)malloc(sizeof(REAL) * (TU * (2 * K + 16) + U));
        REAL *vs = buf;                 /* (K+1) states of the unfold chain */
        REAL *ds = vs + (K + 1) * TU;   /* K divisors */
        REAL *nt = ds + K * TU, *dt = nt + TU, *snt = dt + TU, *sdt = snt + TU, *ct = sdt + TU;
        REAL *gv = ct + TU, *gvn = gv + TU, *gn = gvn + TU, *gd = gn + TU, *gsn = gd + TU;
        REAL *gsd = gsn + TU, *gct = gsd + TU, *ggl = gct + TU, *gvl = ggl + TU, *go = gvl + TU;
        REAL *glvl = go + TU;
        double* acc = (double*)calloc(4 * P + 2 * U, sizeof(double));
        REAL* sc = (REAL*)malloc(sizeof(REAL) * (K + 4) * P * LANES);  /* σ cache + accl */
        REAL* accl = sc + K * P * LANES;
        for (int64_t u = 0; u < U; u++) glvl[u] = gl[u] * vl[u];
#pragma omp for schedule(dynamic, 1)
        for (int64_t tile = 0; tile < tiles; tile++) {
            int64_t b0 = tile * LANES;
            int n = (int)(B - b0 < LANES ? B - b0 : LANES);
            for (int64_t k = 0; k < TU; k++) { gv[k] = 0; ggl[k] = 0; gvl[k] = 0; }
            for (int64_t k = 0; k < 4 * P * LANES; k++) accl[k] = 0;
            for (int64_t t = T - 1; t >= 0; t--) {
                if (t > 0) load_tile_SFX(v_out, b0, n, T, t - 1, U, 0, vs);
                else load_tile_SFX(v0, b0, n, 1, 0, U, 0, vs);
                load_tile_SFX(sn, b0, n, T, t, U, 0, snt);
                load_tile_SFX(sd, b0, n, T, t, U, 0, sdt);
                load_tile_SFX(cmt, b0, n, T, t, U, 1, ct);
                load_tile_SFX(g_out, b0, n, T, t, U, 0, go);
                for (int64_t k = 0; k < K; k++)
                    ltc_unfold_SFX(U, ptr, pre, w, mu, sg, ev, gl, glvl, ct, snt, sdt, eps,
                                   vs + k * TU, vs + (k + 1) * TU, ds + k * TU, nt, dt,
                                   sc + k * P * LANES);
                for (int64_t k = 0; k < TU; k++) { gv[k] += go[k]; gsn[k] = 0; gsd[k] = 0; gct[k] = 0; }
                for (int64_t k = K - 1; k >= 0; k--) {
                    const REAL* v = vs + k * TU;
                    const REAL* vn = vs + (k + 1) * TU;
                    const REAL* dk = ds + k * TU;
                    for (int64_t u = 0; u < U; u++)
#pragma omp simd
                        for (int l = 0; l < LANES; l++) {
                            int64_t i = u * LANES + l;
                            REAL q = gv[i] / dk[i];      /* dL/dnumerator */
                            gn[i] = q;
                            gd[i] = -q * vn[i];          /* dL/ddenominator */
                            gsn[i] += q;
                            gsd[i] -= q * vn[i];
                            gct[i] += q * (v[i] - vn[i]);
                            ggl[i] += q * (vl[u] - vn[i]);
                            gvl[i] += q * gl[u];
                            gvn[i] = q * ct[i];
                        }
                    tile_bwd_cached_SFX(U, P, ptr, pre, w, mu, sg, ev, v, sc + k * P * LANES,
                                        gn, gd, gvn, accl);
                    REAL* tmp = gv; gv = gvn; gvn = tmp;
                }
                store_tile_SFX(gsn, b0, n, T, t, U, g_sn);
                store_tile_SFX(gsd, b0, n, T, t, U, g_sd);
                store_tile_SFX(gct, b0, n, T, t, U, g_cmt);
            }
            store_tile_SFX(gv, b0, n, 1, 0, U, g_v0);
            for (int64_t k = 0; k < 4 * P; k++) {
                REAL lane_sum = 0;
                for (int l = 0; l < LANES; l++) lane_sum += accl[k * LANES + l];
                acc[k] += lane_sum;
            }
            for (int64_t u = 0; u < U; u++)
                for (int l = 0; l < LANES; l++) {
                    acc[4 * P + u] += ggl[u * LANES + l];
                    acc[4 * P + U + u] += gvl[u * LANES + l];
                }
        }
#pragma omp critical
        for (int64_t k = 0; k < 4 * P + 2 * U; k++) grads[k] += acc[k];
        free(sc);
        free(acc);
        free(buf);
    }
}
"""

HEADER = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

/* Threads for `tiles` independent tiles: never more threads than tiles, so a one-tile call (an
   inference step) runs inline without waking, and waiting for, the rest of the team. */
static inline int team_size(int64_t tiles) {
    int n = omp_get_max_threads();
    return tiles < n ? (int)(tiles > 0 ? tiles : 1) : n;
}

#define LANES 16   /* batch lanes of the recurrence tile */
#define SLANES 64  /* row lanes of the sensory backward tile: one lane-sum per 64 rows */

/* e^x for float, branch-free so that gcc vectorises it inline (a libmvec call would spill every
   live vector register around it): Cephes expf's range reduction and degree-6 polynomial,
   relative error < 2 ulp on the clamped range. The clamp to ±80 keeps σ's 1/(1+e^-z) out of
   subnormals (slow on x86) at the cost of σ(-z) = 1.8e-35 instead of 0 for z > 80.
   NaN in, NaN out (as torch's exp; a NaN input must not come out of a model as a number): under
   -ffast-math the compiler may assume no NaN exists and fold any float test for it, so the
   test is on the bits, which fast-math does not touch. Every tanh and σ here goes through this. */
static inline float exp_f32(float x) {
    union { float f; int32_t i; } in;
    in.f = x;
    const int nan_in = (in.i & 0x7fffffff) > 0x7f800000;
    x = x < -80.0f ? -80.0f : (x > 80.0f ? 80.0f : x);
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int32_t i; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return nan_in ? in.f : p * scale.f;
}

/* double is the gradcheck precision: exact libm exp (vectorised through libmvec). */
static inline double exp_f64(double x) { return exp(x); }
"""


def source() -> str:
    """The full translation unit: the template instantiated for float and double."""
    from ._fused_csrc_cfc import CFC_HEADER, CFC_TEMPLATE
    from ._fused_csrc_cfc_seq import CFC_SEQ_TEMPLATE
    from ._fused_csrc_gemm import GEMM_TEMPLATE

    parts = [HEADER, CFC_HEADER]
    for real, sfx in (("float", "f32"), ("double", "f64")):
        for template in (KERNEL_TEMPLATE, CFC_TEMPLATE, GEMM_TEMPLATE, CFC_SEQ_TEMPLATE):
            parts.append(template.replace("REAL", real).replace("SFX", sfx))
    return "\n".join(parts)
