"""C source of the whole-sequence CfC time loops (forward and backward) around BLAS gemm.

Why: at batch 64 a CfC step is ~4 small GEMMs and 4 element-wise kernels; driven from Python,
each costs a dispatch (~5-10 µs here) on top of its work, as much again as the GEMMs themselves.
These loops make the whole sequence one call. The GEMM is the BLAS torch already uses: the
Fortran `sgemm_`/`dgemm_` symbol of torch's own library, passed in as a function pointer by
_fused_native (so MKL's threads are torch's threads); where torch exports no BLAS symbol, the
Python-driven loop of cfc_fused runs instead.

Everything is row-major; `mm_rm` maps C = op(A) op(B) onto column-major gemm as C^T = op(B)^T
op(A)^T. Layer l has weight W_l (out_l, in_l) row-major; W_0 = [W_x | W_h] has leading
dimension I + U and W_h starts at column I. Time-major buffers: [T][B][width].
"""

CFC_SEQ_TEMPLATE = r"""
typedef void (*gemm_SFX_t)(const char*, const char*, const int*, const int*, const int*,
                           const REAL*, const REAL*, const int*, const REAL*, const int*,
                           const REAL*, REAL*, const int*);

/* Row-major C[M][N] = op(A) op(B) (+ C if beta = 1), A with leading dim lda, B with ldb. */
static void mm_rm_SFX(gemm_SFX_t gemm, int ta, int tb, int64_t M, int64_t N, int64_t K,
                      const REAL* A, int64_t lda, const REAL* Bm, int64_t ldb, REAL beta,
                      REAL* C, int64_t ldc) {
    const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
    const int m = (int)N, n = (int)M, k = (int)K, la = (int)ldb, lb = (int)lda, lc = (int)ldc;
    const REAL one = 1;
    gemm(&opb, &opa, &m, &n, &k, &one, Bm, &la, A, &lb, &beta, C, &lc);
}

/* Rows are independent sequences, so the batch is split into one block of rows per thread and
   each thread runs the WHOLE time loop on its block with single-threaded GEMMs (BLAS called
   inside an OpenMP region runs sequentially). One team per sequence instead of one per GEMM:
   at B = 64 the per-step GEMMs are too small for BLAS's own threads (2 threads ran them no
   faster than 1), and a descheduled thread costs one wait per sequence, not one per step. */
#define SEQ_ROWS_MIN 16

static int seq_team_SFX(int64_t B) {
    int64_t most = B / SEQ_ROWS_MIN;
    int n = omp_get_max_threads();
    if (omp_in_parallel()) return 1;
    if (getenv("TL_SEQ_TEAM")) return atoi(getenv("TL_SEQ_TEAM"));
    return (int)(most < 1 ? 1 : (most < n ? most : n));
}

/* Rows [lo, hi) of a [.][B][w] buffer at step t start at base + t * B * w + lo * w. */
#define AT(base, t, w) ((base) + (t) * B * (w) + lo * (w))

/* Forward over T steps for rows [lo, hi). widths[l] = out_l for backbone layers l < nb,
   widths[nb] = X (heads). W[l], bias[l] for l <= nb. The first layer reads [x_t, h]: from x
   (rows of x_ld elements, step t at column t * I; x_ld = T * I for a (B, T, I) tensor) with two
   GEMMs per step, or, when p0 != NULL, from p0[T][B][O0] = x W_x^T + b_0 precomputed by the
   caller in one GEMM (pays for wide inputs; for I = 7 that GEMM runs at ~4 GFLOP/s, 8x slower
   than the per-step pieces). Writes ys[l][T][B][H_l], h_out[T][B][U], acts[T][B][3U]; heads is
   a [B][X] scratch. */
static void seq_fwd_rows_SFX(gemm_SFX_t gemm, int64_t lo, int64_t hi, int64_t T, int64_t B,
                             int64_t U, int64_t I, int64_t nb, const int64_t* widths,
                             const REAL* const* W, const REAL* const* bias, const REAL* p0,
                             const REAL* x, int64_t x_ld, const REAL* h0, int mode, int act,
                             const REAL* dt, const REAL* wtau, const REAL* A, REAL* const* ys,
                             REAL* heads, REAL* h_out, REAL* acts) {
    const int64_t O0 = widths[0], X = widths[nb], ld0 = I + U, R = hi - lo;
    heads += lo * X;
    for (int64_t t = 0; t < T; t++) {
        const REAL* h = t == 0 ? h0 + lo * U : AT(h_out, t - 1, U);
        const REAL* p0t = p0 ? AT(p0, t, O0) : NULL;
        /* first layer pre-activation z = [x_t, h] W_0^T (+ b_0 later, unless inside p0) */
        REAL* z = nb == 0 ? heads : AT(ys[0], t, O0);
        if (p0t) {
            for (int64_t i = 0; i < R * O0; i++) z[i] = p0t[i];
        } else {
            mm_rm_SFX(gemm, 0, 1, R, O0, I, x + lo * x_ld + t * I, x_ld, W[0], ld0, 0, z, O0);
        }
        mm_rm_SFX(gemm, 0, 1, R, O0, U, h, U, W[0] + I, ld0, 1, z, O0);
        const REAL* b0 = p0t ? NULL : bias[0];
        if (nb > 0) {
            act_fwd_range_SFX(0, R, O0, act, z, b0, 0, z);
            for (int64_t l = 1; l < nb; l++) {
                REAL* yl = AT(ys[l], t, widths[l]);
                mm_rm_SFX(gemm, 0, 1, R, widths[l], widths[l - 1], AT(ys[l - 1], t, widths[l - 1]),
                          widths[l - 1], W[l], widths[l - 1], 0, yl, widths[l]);
                act_fwd_range_SFX(0, R, widths[l], act, yl, bias[l], 0, yl);
            }
            const int64_t Hl = widths[nb - 1];
            mm_rm_SFX(gemm, 0, 1, R, X, Hl, AT(ys[nb - 1], t, Hl), Hl, W[nb], Hl, 0, heads, X);
        }
        tail_fwd_rows_SFX(0, R, U, mode, heads, X, nb == 0 ? b0 : bias[nb],
                          dt ? dt + t * B + lo : NULL, wtau, A, AT(h_out, t, U), AT(acts, t, 3 * U));
    }
}

void cfc_seq_fwd_SFX(void* gemm_ptr, int64_t T, int64_t B, int64_t U, int64_t I, int64_t nb,
                     const int64_t* widths, const REAL* const* W, const REAL* const* bias,
                     const REAL* p0, const REAL* x, int64_t x_ld, const REAL* h0, int mode,
                     int act, const REAL* dt, const REAL* wtau, const REAL* A, REAL* const* ys,
                     REAL* heads, REAL* h_out, REAL* acts) {
    gemm_SFX_t gemm = (gemm_SFX_t)gemm_ptr;
#pragma omp parallel num_threads(seq_team_SFX(B))
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t lo = B * id / nt, hi = B * (id + 1) / nt;
        seq_fwd_rows_SFX(gemm, lo, hi, T, B, U, I, nb, widths, W, bias, p0, x, x_ld, h0, mode, act,
                         dt, wtau, A, ys, heads, h_out, acts);
    }
}

/* Backward over T steps (reversed) for rows [lo, hi). dL/dh of step t, row b, is g_out + t * g_t
   + b * g_b (so a (B, T, U) gradient needs no transposing copy); with g_last_only, only step T-1
   has one (the sequence's last state was the output). g_carry[B][U] must be zero on entry and
   holds dL/dh0 on exit. Writes g_heads[T][B][X] and g_pres[l][T][B][H_l] (the weight gradients
   are then one GEMM each, outside); gy is a [B][max H] scratch (gy_ld = max H). */
static void seq_bwd_rows_SFX(gemm_SFX_t gemm, int64_t lo, int64_t hi, int64_t T, int64_t B,
                             int64_t U, int64_t I, int64_t nb, const int64_t* widths,
                             const REAL* const* W, REAL* const* ys, const REAL* acts, int mode,
                             int act, const REAL* dt, const REAL* wtau, const REAL* A,
                             const REAL* g_out, int64_t g_t, int64_t g_b, int64_t g_last_only,
                             REAL* g_heads, REAL* const* g_pres, REAL* g_carry, REAL* gA,
                             REAL* gw, REAL* gy, int64_t gy_ld) {
    const int64_t O0 = widths[0], X = widths[nb], ld0 = I + U, R = hi - lo;
    g_carry += lo * U;
    gy += lo * gy_ld;
    g_out += lo * g_b;
    if (gA) gA += lo * U;
    if (gw) gw += lo * U;
    for (int64_t t = T - 1; t >= 0; t--) {
        REAL* gh = AT(g_heads, t, X);
        const REAL* go = g_last_only ? (t == T - 1 ? g_out : NULL) : g_out + t * g_t;
        tail_bwd_rows_SFX(0, R, U, mode, AT(acts, t, 3 * U), dt ? dt + t * B + lo : NULL, wtau, A,
                          g_carry, go, g_b, gh, X, gA, gw);
        const REAL* first = gh;
        if (nb > 0) {
            const int64_t Hl = widths[nb - 1];
            mm_rm_SFX(gemm, 0, 0, R, Hl, X, gh, X, W[nb], Hl, 0, gy, Hl);
            for (int64_t l = nb - 1; l >= 0; l--) {
                REAL* gp = AT(g_pres[l], t, widths[l]);
                act_bwd_range_SFX(0, R * widths[l], act, AT(ys[l], t, widths[l]), gy, gp);
                if (l > 0)
                    mm_rm_SFX(gemm, 0, 0, R, widths[l - 1], widths[l], gp, widths[l], W[l],
                              widths[l - 1], 0, gy, widths[l - 1]);
            }
            first = AT(g_pres[0], t, O0);
        }
        mm_rm_SFX(gemm, 0, 0, R, U, O0, first, O0, W[0] + I, ld0, 0, g_carry, U);
    }
}

void cfc_seq_bwd_SFX(void* gemm_ptr, int64_t T, int64_t B, int64_t U, int64_t I, int64_t nb,
                     const int64_t* widths, const REAL* const* W, REAL* const* ys,
                     const REAL* acts, int mode, int act, const REAL* dt, const REAL* wtau,
                     const REAL* A, const REAL* g_out, int64_t g_t, int64_t g_b,
                     int64_t g_last_only, REAL* g_heads, REAL* const* g_pres, REAL* g_carry,
                     REAL* gA, REAL* gw, REAL* gy, int64_t gy_ld) {
    gemm_SFX_t gemm = (gemm_SFX_t)gemm_ptr;
#pragma omp parallel num_threads(seq_team_SFX(B))
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        int64_t lo = B * id / nt, hi = B * (id + 1) / nt;
        seq_bwd_rows_SFX(gemm, lo, hi, T, B, U, I, nb, widths, W, ys, acts, mode, act, dt, wtau, A,
                         g_out, g_t, g_b, g_last_only, g_heads, g_pres, g_carry, gA, gw, gy, gy_ld);
    }
}

#undef AT
"""
