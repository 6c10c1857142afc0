"""C source of the small GEMM the CfC time loops run inside their OpenMP region.

Why not BLAS: the per-step GEMMs of a CfC recurrence are small ((B, 64) x (64, 128), (B, 128) x
(128, 192) at the study's sizes). Rows are independent sequences, so the loops give each thread
a block of rows for the whole sequence; but MKL called from inside an OpenMP region serialises
part of its work behind a global lock (its `sgemm_omp_acopy` critical section): two threads with
32 rows each ran only 1.3x faster than one thread with 64, although two processes doing the same
run 2x. This kernel has no shared state: the right-hand matrix (a weight, the same for all T
steps) is packed ONCE per sequence into column panels, and each thread streams its own rows
through a register-blocked MR x NR micro-kernel (the classic layout of BLIS/OpenBLAS kernels:
MR rows x two vectors of columns of accumulators, one broadcast of A per row and k).

Vectors are GCC's generic `vector_size(32)` type: AVX2 registers under -march=native, split into
narrower registers elsewhere, so the source is portable C99 + GNU extensions.

Row-major throughout. Instantiated for float and double by _fused_csrc.source().
"""

GEMM_TEMPLATE = r"""
typedef REAL vec_SFX __attribute__((vector_size(32)));
#define VL_SFX ((int64_t)(32 / sizeof(REAL)))  /* lanes per vector */
#define NR_SFX (2 * VL_SFX)                    /* columns per panel: two vectors */
#ifdef __AVX512F__  /* 32 vector registers (AVX-512VL gives 256-bit ops all 32) */
#define MR_SFX 8                               /* rows per micro-kernel call: 16 accumulators */
#else
#define MR_SFX 6                               /* 12 accumulators of 16 registers */
#endif

/* The right-hand side of C = A op(W), packed: panel j holds op(W)[k][j*NR .. j*NR+NR-1] for
   k = 0..K-1, contiguous, zero-padded past N. trans: op(W) = W^T with W [N][K] (leading dim
   ld); else op(W) = W with W [K][N]. */
typedef struct { int64_t K, N; REAL* data; } packed_SFX;

static int64_t packed_size_SFX(int64_t K, int64_t N) { return ((N + NR_SFX - 1) / NR_SFX) * K * NR_SFX; }

static void pack_rhs_SFX(int trans, int64_t K, int64_t N, const REAL* W, int64_t ld, REAL* out,
                         packed_SFX* P) {
    for (int64_t j = 0; j * NR_SFX < N; j++) {
        REAL* pj = out + j * K * NR_SFX;
        for (int64_t k = 0; k < K; k++)
            for (int64_t c = 0; c < NR_SFX; c++) {
                int64_t n = j * NR_SFX + c;
                pj[k * NR_SFX + c] = n >= N ? (REAL)0 : (trans ? W[n * ld + k] : W[k * ld + n]);
            }
    }
    P->K = K, P->N = N, P->data = out;
}

static inline vec_SFX load_SFX(const REAL* p) { vec_SFX v; __builtin_memcpy(&v, p, sizeof v); return v; }
static inline void store_SFX(REAL* p, vec_SFX v) { __builtin_memcpy(p, &v, sizeof v); }

/* C[0..mr)[0..nc) (+)= A[0..mr)[0..K) panel, A element (r, k) at A[r * rs + k * cs] (cs = 1: row
   major; rs = 1: A is read transposed); mr <= MR is a compile-time constant after inlining, so
   the accumulators live in registers. nc < NR only for the last panel. */
static inline __attribute__((always_inline)) void micro_SFX(
        const int mr, int64_t K, const REAL* A, int64_t rs, int64_t cs, const REAL* panel,
        int accumulate, REAL* C, int64_t ldc, int64_t nc) {
    vec_SFX acc[MR_SFX][2];
    for (int r = 0; r < mr; r++) acc[r][0] = acc[r][1] = (vec_SFX){0};
    for (int64_t k = 0; k < K; k++) {
        const vec_SFX b0 = load_SFX(panel + k * NR_SFX), b1 = load_SFX(panel + k * NR_SFX + VL_SFX);
        for (int r = 0; r < mr; r++) {
            const vec_SFX a = (vec_SFX){0} + A[r * rs + k * cs];
            acc[r][0] += a * b0;
            acc[r][1] += a * b1;
        }
    }
    if (nc == NR_SFX) {
        for (int r = 0; r < mr; r++) {
            REAL* c = C + r * ldc;
            if (accumulate) {
                acc[r][0] += load_SFX(c);
                acc[r][1] += load_SFX(c + VL_SFX);
            }
            store_SFX(c, acc[r][0]);
            store_SFX(c + VL_SFX, acc[r][1]);
        }
        return;
    }
    for (int r = 0; r < mr; r++) {
        REAL tile[NR_SFX];
        store_SFX(tile, acc[r][0]);
        store_SFX(tile + VL_SFX, acc[r][1]);
        REAL* c = C + r * ldc;
        for (int64_t j = 0; j < nc; j++) c[j] = accumulate ? c[j] + tile[j] : tile[j];
    }
}

/* C[M][N] = A op(W) (accumulate: +=), A (M x K) with element (m, k) at A[m * rs + k * cs],
   op(W) packed in P. Single-threaded. */
static void gemm_packed_SFX(int64_t M, const REAL* A, int64_t rs, int64_t cs, const packed_SFX* P,
                            int accumulate, REAL* C, int64_t ldc) {
    const int64_t K = P->K, N = P->N;
    for (int64_t j = 0; j * NR_SFX < N; j++) {
        const REAL* panel = P->data + j * K * NR_SFX;
        const int64_t nc = N - j * NR_SFX < NR_SFX ? N - j * NR_SFX : NR_SFX;
        REAL* Cj = C + j * NR_SFX;
        int64_t r = 0;
        for (; r + MR_SFX <= M; r += MR_SFX)
            micro_SFX(MR_SFX, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc);
        switch (M - r) {
            case 7: micro_SFX(7, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc); break;
            case 6: micro_SFX(6, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc); break;
            case 5: micro_SFX(5, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc); break;
            case 4: micro_SFX(4, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc); break;
            case 3: micro_SFX(3, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc); break;
            case 2: micro_SFX(2, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc); break;
            case 1: micro_SFX(1, K, A + r * rs, rs, cs, panel, accumulate, Cj + r * ldc, ldc, nc); break;
            default: break;
        }
    }
}
"""
