"""C source of the whole-sequence CfC time loops (forward and backward).

Why: at batch 64 a CfC step is ~4 small GEMMs and 4 element-wise kernels; driven from Python,
each costs a dispatch (~5-10 µs here) on top of its work, as much again as the GEMMs themselves.
These loops make the whole sequence one call.

Rows are independent sequences, so the batch is split into one block of rows per thread and each
thread runs the WHOLE time loop on its block: one OpenMP team per sequence instead of one per
GEMM, and a descheduled thread costs one wait per sequence, not one per step. The per-step GEMMs
are _fused_csrc_gemm's packed kernel (weights packed once per call, before the team starts).

Everything is row-major. Layer l has weight W_l (out_l, in_l); W_0 = [W_x | W_h] has leading
dimension I + U and W_h starts at column I. Time-major buffers: [T][B][width].
"""

CFC_SEQ_TEMPLATE = r"""
/* Rows [lo, hi) of a [.][B][w] buffer at step t start at base + t * B * w + lo * w. */
#define AT(base, t, w) ((base) + (t) * B * (w) + lo * (w))
/* Rows per tile: a tile runs the whole time loop before the next starts, so its per-step
   operands (<= 64 rows x a few hundred columns) stay in L1/L2 however large B is; at B = 2048
   the untiled loop streamed ~1 MB per step through each buffer and ran 3x slower. Fewer than
   16 rows a thread is not worth a team. */
#define SEQ_TILE_MAX 64
#define SEQ_ROWS_MIN 16
#define SEQ_LAYERS_MAX 63  /* backbone layers; more run the torch loop (cfc_fused checks) */

static int64_t seq_tile_rows_SFX(int64_t B, int threads) {
    int64_t per_thread = (B + threads - 1) / threads;
    if (per_thread < SEQ_ROWS_MIN) per_thread = SEQ_ROWS_MIN;
    return per_thread < SEQ_TILE_MAX ? per_thread : SEQ_TILE_MAX;
}

static int seq_team_SFX(int64_t B) {
    int64_t most = B / SEQ_ROWS_MIN;
    int n = omp_in_parallel() ? 1 : omp_get_max_threads();
    return (int)(most < 1 ? 1 : (most < n ? most : n));
}

/* The weights a sequence multiplies by, packed once: forward W_x^T (unless p0), W_h^T, W_l^T,
   W_head^T; backward W_head, W_l, W_h (l = 1..nb-1). */
typedef struct { packed_SFX x, h, head, *layer; REAL* buf; } seq_weights_SFX;

static void seq_pack_SFX(int backward, int64_t U, int64_t I, int64_t nb, const int64_t* widths,
                         const REAL* const* W, int with_x, seq_weights_SFX* S) {
    const int64_t O0 = widths[0], ld0 = I + U, Hl = nb > 0 ? widths[nb - 1] : 0;
    int64_t total = packed_size_SFX(I, O0) + packed_size_SFX(O0, U) + packed_size_SFX(U, O0);
    if (nb > 0) total += packed_size_SFX(Hl, widths[nb]) + packed_size_SFX(widths[nb], Hl);
    for (int64_t l = 1; l < nb; l++) total += packed_size_SFX(widths[l - 1], widths[l]);
    S->buf = (REAL*)malloc(sizeof(REAL) * total);
    S->layer = (packed_SFX*)malloc(sizeof(packed_SFX) * (nb + 1));
    REAL* next = S->buf;
#define PACK(dst, trans, K, N, src, ld) \
    do { pack_rhs_SFX(trans, K, N, src, ld, next, dst); next += packed_size_SFX(K, N); } while (0)
    if (!backward) {
        if (with_x) PACK(&S->x, 1, I, O0, W[0], ld0);
        PACK(&S->h, 1, U, O0, W[0] + I, ld0);
        for (int64_t l = 1; l < nb; l++) PACK(&S->layer[l], 1, widths[l - 1], widths[l], W[l], widths[l - 1]);
        if (nb > 0) PACK(&S->head, 1, Hl, widths[nb], W[nb], Hl);
    } else {
        PACK(&S->h, 0, O0, U, W[0] + I, ld0);
        for (int64_t l = 1; l < nb; l++) PACK(&S->layer[l], 0, widths[l], widths[l - 1], W[l], widths[l - 1]);
        if (nb > 0) PACK(&S->head, 0, widths[nb], Hl, W[nb], Hl);
    }
#undef PACK
}

/* Forward over T steps for rows [lo, hi). widths[l] = out_l for backbone layers l < nb,
   widths[nb] = X (heads). bias[l] for l <= nb. The first layer reads [x_t, h]: from x (rows of
   x_ld elements, step t at column t * I; x_ld = T * I for a (B, T, I) tensor), or, when p0 !=
   NULL, from p0[B][T][O0] = x W_x^T + b_0 precomputed by the caller in one BLAS GEMM (pays for
   wide inputs; batch-major like x, so nobody transposes it). Writes ys[l][T][B][H_l],
   h_out[T][B][U], acts[T][B][3U]; heads is a [B][X] scratch. */
static void seq_fwd_rows_SFX(const seq_weights_SFX* S, int64_t lo, int64_t hi, int64_t T,
                             int64_t B, int64_t U, int64_t I, int64_t nb, const int64_t* widths,
                             const REAL* const* bias, const REAL* p0, const REAL* x, int64_t x_ld,
                             const REAL* h0, int mode, int act, const REAL* dt, const REAL* wtau,
                             const REAL* A, REAL* const* ys, REAL* heads, REAL* h_out, REAL* acts) {
    const int64_t O0 = widths[0], X = widths[nb], R = hi - lo;
    heads += lo * X;
    for (int64_t t = 0; t < T; t++) {
        const REAL* h = t == 0 ? h0 + lo * U : AT(h_out, t - 1, U);
        /* first layer pre-activation z = [x_t, h] W_0^T (+ b_0 later, unless inside p0) */
        REAL* z = nb == 0 ? heads : AT(ys[0], t, O0);
        if (p0) {
            for (int64_t r = 0; r < R; r++) {
                const REAL* src = p0 + ((lo + r) * T + t) * O0;
                for (int64_t i = 0; i < O0; i++) z[r * O0 + i] = src[i];
            }
        } else {
            gemm_packed_SFX(R, x + lo * x_ld + t * I, x_ld, 1, &S->x, 0, z, O0);
        }
        gemm_packed_SFX(R, h, U, 1, &S->h, 1, z, O0);
        const REAL* b0 = p0 ? NULL : bias[0];
        if (nb > 0) {
            act_fwd_range_SFX(0, R, O0, act, z, b0, 0, z);
            for (int64_t l = 1; l < nb; l++) {
                REAL* yl = AT(ys[l], t, widths[l]);
                gemm_packed_SFX(R, AT(ys[l - 1], t, widths[l - 1]), widths[l - 1], 1, &S->layer[l], 0,
                                yl, widths[l]);
                act_fwd_range_SFX(0, R, widths[l], act, yl, bias[l], 0, yl);
            }
            const int64_t Hl = widths[nb - 1];
            gemm_packed_SFX(R, AT(ys[nb - 1], t, Hl), Hl, 1, &S->head, 0, heads, X);
        }
        tail_fwd_rows_SFX(0, R, U, mode, heads, X, nb == 0 ? b0 : bias[nb],
                          dt ? dt + t * B + lo : NULL, wtau, A, AT(h_out, t, U), AT(acts, t, 3 * U));
    }
}

void cfc_seq_fwd_SFX(int64_t T, int64_t B, int64_t U, int64_t I, int64_t nb,
                     const int64_t* widths, const REAL* const* W, const REAL* const* bias,
                     const REAL* p0, const REAL* x, int64_t x_ld, const REAL* h0, int mode,
                     int act, const REAL* dt, const REAL* wtau, const REAL* A, REAL* const* ys,
                     REAL* heads, REAL* h_out, REAL* acts) {
    seq_weights_SFX S;
    seq_pack_SFX(0, U, I, nb, widths, W, p0 == NULL, &S);
    const int team = seq_team_SFX(B);
    const int64_t tile = seq_tile_rows_SFX(B, team), tiles = (B + tile - 1) / tile;
#pragma omp parallel for num_threads(team) schedule(static)
    for (int64_t i = 0; i < tiles; i++) {
        int64_t lo = i * tile, hi = lo + tile < B ? lo + tile : B;
        seq_fwd_rows_SFX(&S, lo, hi, T, B, U, I, nb, widths, bias, p0, x, x_ld, h0, mode, act, dt,
                         wtau, A, ys, heads, h_out, acts);
    }
    free(S.buf);
    free(S.layer);
}

/* dW (M x N, leading dim ldc) += G^T In over R rows: G [R][M] (stride ldg) is read transposed,
   In [R][N] (stride ld_in) is packed into `pack` first. With R = a tile's rows the operands are
   the step's fresh, cache-hot results; one (B·T)-row GEMM after the loop re-read them all from
   memory (MKL ran (128, 65536) x (65536, 192) at 56 GFLOP/s and (7, 65536) x (65536, 128) at 4). */
static void acc_gt_in_SFX(int64_t R, int64_t M, int64_t N, const REAL* G, int64_t ldg,
                          const REAL* In, int64_t ld_in, REAL* pack, REAL* dW, int64_t ldc) {
    packed_SFX P;
    pack_rhs_SFX(0, R, N, In, ld_in, pack, &P);
    gemm_packed_SFX(M, G, 1, ldg, &P, 1, dW, ldc);
}

static void acc_rows_SFX(int64_t R, int64_t N, const REAL* G, int64_t ldg, REAL* db) {
    for (int64_t r = 0; r < R; r++)
#pragma omp simd
        for (int64_t n = 0; n < N; n++) db[n] += G[r * ldg + n];
}

/* One thread's weight-gradient accumulators, laid out as the parameters: dW_l (out_l, in_l) then
   db_l (out_l), l = 0..nb; in_0 = I + U (with_x) or U (a wide input's dW_x is the caller's BLAS
   GEMM: no accumulator columns for it, so none to zero and reduce), in_l = out_{l-1}. */
static int64_t seq_acc_in_SFX(int64_t l, int64_t U, int64_t I, int with_x, const int64_t* widths) {
    return l == 0 ? (with_x ? I + U : U) : widths[l - 1];
}

static int64_t seq_grads_size_SFX(int64_t U, int64_t I, int with_x, int64_t nb, const int64_t* widths) {
    int64_t n = 0;
    for (int64_t l = 0; l <= nb; l++) n += widths[l] * (seq_acc_in_SFX(l, U, I, with_x, widths) + 1);
    return n;
}

/* This thread's scratch, kept between calls (grown, never shrunk): a fresh calloc per call cost
   a pass over memory the OS hands back zeroed, per thread, every training step. */
static REAL* seq_scratch_SFX(int64_t n) {
    static __thread REAL* buffer = NULL;
    static __thread int64_t capacity = 0;
    if (n > capacity) {
        free(buffer);
        buffer = (REAL*)malloc(sizeof(REAL) * n);
        capacity = buffer ? n : 0;
    }
    return buffer;
}

/* Backward over T steps (reversed) for rows [lo, hi). dL/dh of step t, row b, is g_out + t * g_t
   + b * g_b (so a (B, T, U) gradient needs no transposing copy); with g_last_only, only step T-1
   has one (the sequence's last state was the output). g_carry[B][U] must be zero on entry and
   holds dL/dh0 on exit. Adds every weight and bias gradient into `grads` (this thread's
   accumulators, seq_grads_size layout) from the step's own operands, except dW_x when x is NULL
   (wide inputs: the caller does it from g_pre0 with one BLAS GEMM). g_pre0[B][T][O0], if not
   NULL, receives the first layer's pre-activation gradients (batch-major like x, so dW_x and
   dL/dx are GEMMs on plain row views). `work` is this thread's scratch. */
static void seq_bwd_rows_SFX(const seq_weights_SFX* S, int64_t lo, int64_t hi, int64_t T,
                             int64_t B, int64_t U, int64_t I, int64_t nb, const int64_t* widths,
                             REAL* const* ys, const REAL* acts, int mode, int act, const REAL* dt,
                             const REAL* wtau, const REAL* A, const REAL* g_out, int64_t g_t,
                             int64_t g_b, int64_t g_last_only, const REAL* x, int64_t x_ld,
                             const REAL* h0, const REAL* h_out, REAL* g_pre0, REAL* g_carry,
                             REAL* gA, REAL* gw, REAL* grads, REAL* work, int64_t hmax) {
    const int64_t O0 = widths[0], X = widths[nb], R = hi - lo, ld0 = I + U;
    const int64_t acc_ld0 = x ? ld0 : U, h_col = x ? I : 0;  /* layer 0's accumulator layout */
    REAL *gh = work, *gy = gh + R * X, *gp = gy + R * hmax, *pack = gp + R * hmax;
    int64_t offsets[SEQ_LAYERS_MAX + 1];  /* where layer l's dW, db start in grads */
    for (int64_t l = 0, off = 0; l <= nb; l++) {
        offsets[l] = off;
        off += widths[l] * (seq_acc_in_SFX(l, U, I, x != NULL, widths) + 1);
    }
    g_carry += lo * U;
    g_out += lo * g_b;
    if (gA) gA += lo * U;
    if (gw) gw += lo * U;
    for (int64_t t = T - 1; t >= 0; t--) {
        const REAL* go = g_last_only ? (t == T - 1 ? g_out : NULL) : g_out + t * g_t;
        tail_bwd_rows_SFX(0, R, U, mode, AT(acts, t, 3 * U), dt ? dt + t * B + lo : NULL, wtau, A,
                          g_carry, go, g_b, gh, X, gA, gw);
        /* walk the layers down: g_l is dL/d(pre-activation of layer l) for these rows */
        const REAL* g_l = gh;
        for (int64_t l = nb; l >= 0; l--) {
            const int64_t out = widths[l], in = seq_acc_in_SFX(l, U, I, x != NULL, widths);
            REAL* dWl = grads + offsets[l];
            REAL* dbl = dWl + out * in;
            if (l < nb) { /* g_l = act'(.) * (g_{l+1} W_{l+1}), the latter already in gy */
                act_bwd_range_SFX(0, R * out, act, AT(ys[l], t, out), gy, gp);
                g_l = gp;
            }
            if (l == 0 && g_pre0)
                for (int64_t r = 0; r < R; r++) {
                    REAL* dst = g_pre0 + ((lo + r) * T + t) * O0;
                    for (int64_t i = 0; i < O0; i++) dst[i] = g_l[r * O0 + i];
                }
            acc_rows_SFX(R, out, g_l, out, dbl);
            if (l > 0) {
                acc_gt_in_SFX(R, out, in, g_l, out, AT(ys[l - 1], t, in), in, pack, dWl, in);
                gemm_packed_SFX(R, g_l, out, 1, l == nb ? &S->head : &S->layer[l], 0, gy, in);
            } else {
                const REAL* h_prev = t == 0 ? h0 + lo * U : AT(h_out, t - 1, U);
                if (x) acc_gt_in_SFX(R, out, I, g_l, out, x + lo * x_ld + t * I, x_ld, pack, dWl, acc_ld0);
                acc_gt_in_SFX(R, out, U, g_l, out, h_prev, U, pack, dWl + h_col, acc_ld0);
                gemm_packed_SFX(R, g_l, out, 1, &S->h, 0, g_carry, U);
            }
        }
    }
}

void cfc_seq_bwd_SFX(int64_t T, int64_t B, int64_t U, int64_t I, int64_t nb,
                     const int64_t* widths, const REAL* const* W, REAL* const* ys,
                     const REAL* acts, int mode, int act, const REAL* dt, const REAL* wtau,
                     const REAL* A, const REAL* g_out, int64_t g_t, int64_t g_b,
                     int64_t g_last_only, const REAL* x, int64_t x_ld, const REAL* h0,
                     const REAL* h_out, REAL* g_pre0, REAL* g_carry, REAL* gA, REAL* gw,
                     REAL* const* gW) {
    seq_weights_SFX S;
    seq_pack_SFX(1, U, I, nb, widths, W, 0, &S);
    const int team = seq_team_SFX(B);
    const int64_t tile = seq_tile_rows_SFX(B, team), tiles = (B + tile - 1) / tile;
    int64_t hmax = 1, inmax = I > U ? I : U;
    for (int64_t l = 0; l < nb; l++) {
        if (widths[l] > hmax) hmax = widths[l];
        if (widths[l] > inmax) inmax = widths[l];
    }
    const int64_t n_grads = seq_grads_size_SFX(U, I, x != NULL, nb, widths);
    const int64_t n_work = tile * (widths[nb] + 2 * hmax) + packed_size_SFX(tile, inmax);
#pragma omp parallel num_threads(team)
    {
        REAL* grads = seq_scratch_SFX(n_grads + n_work);
        REAL* work = grads + n_grads;
        memset(grads, 0, sizeof(REAL) * n_grads);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < tiles; i++) {
            int64_t lo = i * tile, hi = lo + tile < B ? lo + tile : B;
            seq_bwd_rows_SFX(&S, lo, hi, T, B, U, I, nb, widths, ys, acts, mode, act, dt, wtau, A,
                             g_out, g_t, g_b, g_last_only, x, x_ld, h0, h_out, g_pre0, g_carry,
                             gA, gw, grads, work, hmax);
        }
        /* gW[2l] = dW_l, gW[2l+1] = db_l: add this thread's sums, one thread at a time */
#pragma omp critical
        {
            const REAL* src = grads;
            for (int64_t l = 0; l <= nb; l++) {
                const int64_t in = seq_acc_in_SFX(l, U, I, x != NULL, widths);
                const int64_t ld = l == 0 ? I + U : in, col = l == 0 && !x ? I : 0;
                for (int64_t o = 0; o < widths[l]; o++, src += in) {
                    REAL* dst = gW[2 * l] + o * ld + col;
#pragma omp simd
                    for (int64_t k = 0; k < in; k++) dst[k] += src[k];
                }
                for (int64_t k = 0; k < widths[l]; k++) gW[2 * l + 1][k] += src[k];
                src += widths[l];
            }
        }
    }
    free(S.buf);
    free(S.layer);
}

#undef AT
#undef SEQ_ROWS_MIN
#undef SEQ_TILE_MAX
#undef SEQ_LAYERS_MAX
"""
