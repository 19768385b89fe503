"""Cython backend: the kernel interface of ``fastnn.kernels`` compiled to C.

Matmuls go to BLAS (SciPy's ``cython_blas`` sgemm/dgemm), except float32 ones of MLP size on
a CPU with AVX-512 (at least 16 columns) or with AVX2 and FMA (at least 8 columns, under 2^25
multiply-adds): ``fastnn_sgemm_small`` below says which, and runs them on fastnn's own
register-blocked kernel (2-3× OpenBLAS's single-thread rate at MLP sizes on the AVX-512 VM it
was measured on, where OpenBLAS was held to AVX2 kernels; 1.1-1.6× OpenBLAS's Haswell kernels
on an AMD Zen 2 VM with the AVX2 one). Everything around
them — bias and activation after the forward matmul, dZ = dA ⊙ f′ and db = Σ dZ before the
backward ones, losses, optimizers, batch normalisation — is one C loop per pass, with the GIL
released.

Layering: ``_dense_forward`` & co. are C functions on raw pointers (fused float/double). The
``def`` functions of the interface check shapes, take typed memoryviews of their arguments and
call them; inputs that are not C-contiguous or not in the dtype of the output are copied
first, outputs that are not C-contiguous are computed in a copy and written back. The fused
trainer (:class:`Trainer`) chains the same C functions for a whole epoch.

Threads (when the extension was built with OpenMP): large loops and large matmuls are split
across OpenMP threads, each matmul band one single-threaded BLAS call; the trainer splits each
large minibatch into per-thread bands of rows, except for networks of big layers and many
parameters, whose minibatches it keeps whole with their matmuls on BLAS's threads. The kernels of the interface give the same
result for any thread count; the trainer adds its bands' gradients, so its last bits depend on
how many bands there were (same seed and thread count, same weights).
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport (erf, erff, exp, expf, expm1, expm1f, log, logf, log1p, log1pf, sqrt,
                        sqrtf, tanh, tanhf)
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport dgemm, sgemm

import numpy as np

from fastnn.kernels import CLIP_EPS as _CLIP_EPS
from fastnn.kernels import check_predict_arrays, predict_split
from fastnn.kernels import GELU_TANH_C as _GELU_TANH_C
from fastnn.kernels import GELU_TANH_K as _GELU_TANH_K
from fastnn.kernels import LEAKY_SLOPE as _LEAKY_SLOPE
from fastnn.kernels import SELU_ALPHA as _SELU_ALPHA
from fastnn.kernels import SELU_SCALE as _SELU_SCALE
from fastnn.kernels import SOFTPLUS_THRESHOLD as _SOFTPLUS_THRESHOLD
from fastnn.kernels import _teams
from fastnn.kernels._threads import kernel_blas, kernel_blas_threads

cdef extern from *:
    """
    /* The trainer's team barrier (one per epoch call, zeroed before its parallel region). */
    typedef struct { int arrived, generation, sleepers; } fastnn_team_barrier;

    /* Set (on its own thread) by a trainer whose big matmuls run on BLAS's own threads: _gemm
       then hands those to BLAS whole (see Trainer._run). Thread-local, so that other threads'
       kernels are unaffected. */
    static __thread int fastnn_threaded_blas = 0;
    static void fastnn_set_threaded_blas(int on) { fastnn_threaded_blas = on; }
    static int fastnn_threaded_blas_on(void) { return fastnn_threaded_blas; }

    #ifdef _OPENMP
    #include <omp.h>
    #define FASTNN_OPENMP 1
    #define fastnn_max_threads() omp_get_max_threads()
    #define fastnn_in_parallel() omp_in_parallel()
    #define fastnn_team_size() omp_get_num_threads()
    #define fastnn_team_rank() omp_get_thread_num()
    #if defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
    #include <limits.h>
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <time.h>
    #include <unistd.h>
    /* Every thread of the team waits here for the others. It spins for at most
       FASTNN_SPIN_NS, then sleeps on a futex: a quiet machine's waits (a band finishing a
       little later than the other) end while spinning, and when another process holds a core
       the waiting thread gives its own core up instead of burning it. (With libgomp's own
       barrier a 2-thread small-network step ran 190-350 µs instead of 96: this backend sets
       OMP_WAIT_POLICY=PASSIVE, so that OpenMP's idle workers never spin, and libgomp's
       barriers then sleep at once.) */
    #define FASTNN_SPIN_NS 50000
    static long long fastnn_clock_ns(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec * 1000000000LL + t.tv_nsec;
    }
    static void fastnn_team_wait(fastnn_team_barrier* b) {
        const int team = omp_get_num_threads();
        const int gen = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
        long long start = 0;
        if (team <= 1)
            return;
        if (__atomic_add_fetch(&b->arrived, 1, __ATOMIC_ACQ_REL) == team) {   /* the last */
            __atomic_store_n(&b->arrived, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&b->generation, gen + 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&b->sleepers, __ATOMIC_SEQ_CST))
                syscall(SYS_futex, &b->generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
            return;
        }
        for (unsigned i = 1; __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == gen; i++) {
            if (i % 64 == 0) {                       /* the clock now and then */
                const long long now = fastnn_clock_ns();
                if (start == 0) {
                    start = now;
                } else if (now - start > FASTNN_SPIN_NS) {
                    __atomic_add_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
                    while (__atomic_load_n(&b->generation, __ATOMIC_SEQ_CST) == gen)
                        syscall(SYS_futex, &b->generation, FUTEX_WAIT_PRIVATE, gen, NULL, NULL, 0);
                    __atomic_sub_fetch(&b->sleepers, 1, __ATOMIC_SEQ_CST);
                    return;
                }
            }
            #if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
            #endif
        }
    }
    #elif defined(_MSC_VER)
    #define fastnn_team_wait(b) __pragma(omp barrier)
    #else
    #define fastnn_team_wait(b) _Pragma("omp barrier")
    #endif
    #else
    #define FASTNN_OPENMP 0
    #define fastnn_max_threads() 1
    #define fastnn_in_parallel() 0
    #define fastnn_team_size() 1
    #define fastnn_team_rank() 0
    #define fastnn_team_wait(b)
    #endif

    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    static int fastnn_cpu_has_avx2_fma(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    /* the AVX-512 subsets that the avx512 build is compiled for (and the OS saves their
       registers: libgcc's check includes XCR0) */
    static int fastnn_cpu_has_avx512_build(void) {
        __builtin_cpu_init();
        return fastnn_cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512dq");
    }
    #else
    static int fastnn_cpu_has_avx2_fma(void) { return 0; }  /* no AVX2 build here */
    static int fastnn_cpu_has_avx512_build(void) { return 0; }
    #endif

    /* e^x for x <= 0 in float32, branch-free so that loops calling it vectorise (libm's expf is
       one call per element): x = t ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial to
       r^7, 2^t built from its exponent bits. Error about 2 ulp; below -87 (where 2^t would be
       subnormal) it returns 0. */
    static CYTHON_INLINE float fastnn_exp_neg_f(float x) {
        const float lim = -87.0f, round = 12582912.0f;        /* 1.5 * 2^23 */
        float y = x > lim ? x : lim;
        float t = (y * 1.44269504088896341f + round) - round; /* round(y / ln 2) */
        float r = (y - t * 0.693145751953125f) - t * 1.428606765330187e-06f;
        float p = 1.0f + r * (1.0f + r * (1.0f / 2 + r * (1.0f / 6 + r * (1.0f / 24
                  + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
        int32_t bits = ((int32_t) t + 127) << 23;
        float scale, e;
        memcpy(&scale, &bits, sizeof scale);
        e = p * scale;
        return x >= lim ? e : 0.0f;                           /* a select, not a branch */
    }

    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #include <immintrin.h>
    #include <stdlib.h>
    #include <string.h>

    static int fastnn_cpu_has_avx512f(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f");
    }

    /* The micro-kernel, float32 with AVX-512F: 8×32 blocks of C in 16 registers; per step p of
       the sum, B's row p is loaded once (two 16-float vectors, masked at the right edge) and
       each of the block's 8 elements A(i, p) is broadcast into two fused multiply-adds. A is
       read where it lies (op(A) = A, or Aᵀ when trans_a); B's panel may be packed first (see
       fastnn_sgemm_small). For MLP-sized matrices this skips most of what OpenBLAS pays in
       packing and dispatch (and a machine's OpenBLAS may be held to AVX2 by OPENBLAS_CORETYPE). */
    /* the lanes of a 32-column panel's two vectors that hold columns (cols ≤ 32) */
    #define FASTNN_MASK_LO(cols) ((cols) >= 16 ? (__mmask16) 0xFFFF \
                                  : (__mmask16) ((1u << (cols)) - 1))
    #define FASTNN_MASK_HI(cols) ((cols) <= 16 ? (__mmask16) 0 : (cols) >= 32 ? (__mmask16) 0xFFFF \
                                  : (__mmask16) ((1u << ((cols) - 16)) - 1))
    #define FASTNN_ROW8(r, A_, B0, B1) { const __m512 x_ = _mm512_set1_ps(A_);            \
        c##r##0 = _mm512_fmadd_ps(x_, B0, c##r##0); c##r##1 = _mm512_fmadd_ps(x_, B1, c##r##1); }
    #define FASTNN_LOAD(r, row) { c##r##0 = _mm512_maskz_loadu_ps(m0, row);              \
        c##r##1 = _mm512_maskz_loadu_ps(m1, row + 16); }
    #define FASTNN_LOAD_BLOCK(c) { FASTNN_LOAD(0, c)                                      \
        if (rows > 1) FASTNN_LOAD(1, c + ldc) if (rows > 2) FASTNN_LOAD(2, c + 2 * ldc)     \
        if (rows > 3) FASTNN_LOAD(3, c + 3 * ldc) if (rows > 4) FASTNN_LOAD(4, c + 4 * ldc) \
        if (rows > 5) FASTNN_LOAD(5, c + 5 * ldc) if (rows > 6) FASTNN_LOAD(6, c + 6 * ldc) \
        if (rows > 7) FASTNN_LOAD(7, c + 7 * ldc) }
    #define FASTNN_STORE(r) { _mm512_mask_storeu_ps(c, m0, c##r##0);                       \
        _mm512_mask_storeu_ps(c + 16, m1, c##r##1); c += ldc; }

    /* One panel of C (m × cols, cols ≤ 32) = op(A)·Bp for kb terms, where Bp holds kb rows of
       32 floats each ldbp apart (a packed panel: ldbp = 32, zero past cols). */
    __attribute__((target("avx512f")))
    static void fastnn_sgemm_panel(int trans_a, long m, long cols, long kb, const float* A,
                                   long lda, const float* Bp, long ldbp, float* C, long ldc,
                                   int accumulate) {
        const long ars = trans_a ? 1 : lda, acs = trans_a ? lda : 1;   /* A(i,p): A[i·ars + p·acs] */
        const __mmask16 m0 = FASTNN_MASK_LO(cols), m1 = FASTNN_MASK_HI(cols);
        for (long i0 = 0; i0 < m; i0 += 8) {
            const long rows = m - i0 < 8 ? m - i0 : 8;
            __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,
                   c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00,
                   c51 = c00, c60 = c00, c61 = c00, c70 = c00, c71 = c00;
            const float* a = A + i0 * ars;
            const float* b = Bp;
            float* c = C + i0 * ldc;
            if (accumulate)                        /* C += op(A)·B: start from C's block */
                FASTNN_LOAD_BLOCK(c)
            for (long p = 0; p < kb; p++, a += acs, b += ldbp) {
                const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
                const __m512 b1 = _mm512_maskz_loadu_ps(m1, b + 16);
                if (rows == 8) {                   /* the common case: no row tests */
                    FASTNN_ROW8(0, a[0], b0, b1) FASTNN_ROW8(1, a[ars], b0, b1)
                    FASTNN_ROW8(2, a[2 * ars], b0, b1) FASTNN_ROW8(3, a[3 * ars], b0, b1)
                    FASTNN_ROW8(4, a[4 * ars], b0, b1) FASTNN_ROW8(5, a[5 * ars], b0, b1)
                    FASTNN_ROW8(6, a[6 * ars], b0, b1) FASTNN_ROW8(7, a[7 * ars], b0, b1)
                    continue;
                }
                FASTNN_ROW8(0, a[0], b0, b1)
                if (rows > 1) FASTNN_ROW8(1, a[ars], b0, b1)
                if (rows > 2) FASTNN_ROW8(2, a[2 * ars], b0, b1)
                if (rows > 3) FASTNN_ROW8(3, a[3 * ars], b0, b1)
                if (rows > 4) FASTNN_ROW8(4, a[4 * ars], b0, b1)
                if (rows > 5) FASTNN_ROW8(5, a[5 * ars], b0, b1)
                if (rows > 6) FASTNN_ROW8(6, a[6 * ars], b0, b1)
            }
            FASTNN_STORE(0)
            if (rows > 1) FASTNN_STORE(1)
            if (rows > 2) FASTNN_STORE(2)
            if (rows > 3) FASTNN_STORE(3)
            if (rows > 4) FASTNN_STORE(4)
            if (rows > 5) FASTNN_STORE(5)
            if (rows > 6) FASTNN_STORE(6)
            if (rows > 7) FASTNN_STORE(7)
        }
    }

    /* The kernel of panels at most 16 columns wide (n < 16, or the last panel of n = 100:
       32, 32, 32, 4): 16×16 blocks of C in 16 registers, one vector per row, so that per
       step p the one load of B's row serves 16 fused multiply-adds instead of the 8×32
       kernel's 16 of which half would add zeros past the edge. */
    #define FASTNN_EDGE_ROWS 16
    /* the sum's kb steps for one block: B's row p, then each row r (where ROW_IN) of c */
    #define FASTNN_EDGE_STEPS(ROW_IN) {                                                   \
        for (long p = 0; p < kb; p++, a += acs, b += ldbp) {                               \
            const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);                                 \
            _Pragma("GCC unroll 16")                                                        \
            for (int r = 0; r < FASTNN_EDGE_ROWS; r++)                                      \
                if (ROW_IN)                                                                 \
                    c[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * ars]), b0, c[r]);           \
        } }
    __attribute__((target("avx512f")))
    static void fastnn_sgemm_panel16(int trans_a, long m, long cols, long kb, const float* A,
                                     long lda, const float* Bp, long ldbp, float* C, long ldc,
                                     int accumulate) {
        const long ars = trans_a ? 1 : lda, acs = trans_a ? lda : 1;   /* A(i,p): A[i·ars + p·acs] */
        const __mmask16 m0 = FASTNN_MASK_LO(cols);
        for (long i0 = 0; i0 < m; i0 += FASTNN_EDGE_ROWS) {
            const long rows = m - i0 < FASTNN_EDGE_ROWS ? m - i0 : FASTNN_EDGE_ROWS;
            __m512 c[FASTNN_EDGE_ROWS];                    /* registers: every index unrolls */
            const float* a = A + i0 * ars;
            const float* b = Bp;
            float* out = C + i0 * ldc;
            #pragma GCC unroll 16
            for (int r = 0; r < FASTNN_EDGE_ROWS; r++)   /* C += op(A)·B: start from C's block */
                c[r] = accumulate && r < rows ? _mm512_maskz_loadu_ps(m0, out + r * ldc)
                                              : _mm512_setzero_ps();
            if (rows == FASTNN_EDGE_ROWS)                  /* the common case: no row tests */
                FASTNN_EDGE_STEPS(1)
            else
                FASTNN_EDGE_STEPS(r < rows)
            #pragma GCC unroll 16
            for (int r = 0; r < FASTNN_EDGE_ROWS; r++)
                if (r < rows)
                    _mm512_mask_storeu_ps(out + r * ldc, m0, c[r]);
        }
    }

    /* r[0..15] ← their 16×16 transpose (r[i] lane j ← r[j] lane i): pairs of floats, of
       doubles, then of 128- and 256-bit lanes are interleaved, 64 shuffles in all. */
    __attribute__((target("avx512f")))
    static inline void fastnn_transpose16(__m512* r) {
        __m512 t[16];
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4)
            for (int h = 0; h < 2; h++) {
                const __m512d a = _mm512_castps_pd(t[i + h]), b = _mm512_castps_pd(t[i + h + 2]);
                r[i + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
                r[i + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
            }
        for (int i = 0; i < 4; i++)
            for (int h = 0; h < 16; h += 8) {
                t[i + h] = _mm512_shuffle_f32x4(r[i + h], r[i + h + 4], 0x88);
                t[i + h + 4] = _mm512_shuffle_f32x4(r[i + h], r[i + h + 4], 0xdd);
            }
        for (int i = 0; i < 8; i++) {
            r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
            r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        }
    }

    /* Copy kb × cols of op(B) (from term p0, column j0) into the contiguous panel Bp (kb rows of
       32 floats; zero past cols, so the kernel reads whole vectors). A transposed B is copied
       in 16×16 blocks, each read as 16 of B's rows and transposed in registers (a 128×128 Wᵀ:
       8 -> 2 µs against a scalar copy down Bp's columns). */
    __attribute__((target("avx512f")))
    static void fastnn_pack_panel(int trans_b, long kb, long cols, const float* B, long ldb,
                                  long p0, long j0, float* Bp) {
        if (!trans_b) {
            const __mmask16 m0 = FASTNN_MASK_LO(cols), m1 = FASTNN_MASK_HI(cols);
            const float* b = B + p0 * ldb + j0;
            for (long p = 0; p < kb; p++, b += ldb) {
                _mm512_store_ps(Bp + 32 * p, _mm512_maskz_loadu_ps(m0, b));
                _mm512_store_ps(Bp + 32 * p + 16, _mm512_maskz_loadu_ps(m1, b + 16));
            }
            return;
        }
        __m512 r[16];                     /* op(B)(p, j) = B(j, p): r[jj] = a row of B */
        for (long jg = 0; jg < cols; jg += 16)   /* (a panel of ≤ 16 is read as one vector) */
            for (long pg = 0; pg < kb; pg += 16) {
                const long terms = kb - pg < 16 ? kb - pg : 16;
                const __mmask16 m = FASTNN_MASK_LO(terms);
                for (long jj = 0; jj < 16; jj++)
                    r[jj] = jg + jj < cols
                        ? _mm512_maskz_loadu_ps(m, B + (j0 + jg + jj) * ldb + p0 + pg)
                        : _mm512_setzero_ps();
                fastnn_transpose16(r);
                for (long pp = 0; pp < terms; pp++)
                    _mm512_store_ps(Bp + 32 * (pg + pp) + jg, r[pp]);
            }
    }

    /* The same micro-kernel for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 2/3, Intel
       before Skylake-SP): 6×16 blocks of C in 12 eight-float registers; per step p, B's row p
       is two vectors (masked at the right edge) and each of the block's 6 elements A(i, p)
       is broadcast into two fused multiply-adds. 16 registers in all: 12 accumulators, 2 of
       B, 1 broadcast. A panel is at most 16 columns wide. */
    #define FASTNN_AVX2_ROWS 6
    /* C's row r of the block in or out: whole vectors in a 16-column panel, masked ones at
       the right edge only (masked stores are slow on AMD's Zen 2) */
    #define FASTNN_LOAD6(r, row) { if (cols == 16) { c##r##0 = _mm256_loadu_ps(row);        \
            c##r##1 = _mm256_loadu_ps((row) + 8); } else { c##r##0 = _mm256_maskload_ps(row, m0); \
            c##r##1 = _mm256_maskload_ps((row) + 8, m1); } }
    #define FASTNN_STORE6(r, row) { if (cols == 16) { _mm256_storeu_ps(row, c##r##0);       \
            _mm256_storeu_ps((row) + 8, c##r##1); } else { _mm256_maskstore_ps(row, m0, c##r##0); \
            _mm256_maskstore_ps((row) + 8, m1, c##r##1); } }
    /* the sum's kb steps for one block: B's row p in b0 and b1, then each row's FMAs */
    #define FASTNN_AVX2_STEPS(LOAD0, LOAD1, ROWS) {                                     \
        for (long p = 0; p < kb; p++, a += acs, b += ldbp) {                             \
            const __m256 b0 = LOAD0, b1 = LOAD1;                                         \
            ROWS } }
    #define FASTNN_ROWS6 FASTNN_ROW6(0, a[0]) FASTNN_ROW6(1, a[ars])                      \
        FASTNN_ROW6(2, a[2 * ars]) FASTNN_ROW6(3, a[3 * ars]) FASTNN_ROW6(4, a[4 * ars])  \
        FASTNN_ROW6(5, a[5 * ars])
    #define FASTNN_ROWS_LT6 FASTNN_ROW6(0, a[0]) if (rows > 1) FASTNN_ROW6(1, a[ars])     \
        if (rows > 2) FASTNN_ROW6(2, a[2 * ars]) if (rows > 3) FASTNN_ROW6(3, a[3 * ars]) \
        if (rows > 4) FASTNN_ROW6(4, a[4 * ars])
    #define FASTNN_ROW6(r, A_) { const __m256 x_ = _mm256_broadcast_ss(&(A_));            \
        c##r##0 = _mm256_fmadd_ps(x_, b0, c##r##0); c##r##1 = _mm256_fmadd_ps(x_, b1, c##r##1); }

    /* lanes j of B's two vectors that hold columns (j < cols ≤ 16), as AVX2 load masks */
    __attribute__((target("avx2,fma")))
    static inline void fastnn_avx2_masks(long cols, __m256i* m0, __m256i* m1) {
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        *m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int) cols), lane);
        *m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int) cols - 8), lane);
    }

    /* One panel of C (m × cols, cols ≤ 16) = op(A)·Bp for kb terms, Bp's rows ldbp apart (a
       packed panel: ldbp = 16, zero past cols, every load whole). */
    __attribute__((target("avx2,fma")))
    static void fastnn_sgemm_panel_avx2(int trans_a, long m, long cols, long kb, const float* A,
                                        long lda, const float* Bp, long ldbp, float* C,
                                        long ldc, int accumulate, int packed) {
        const long ars = trans_a ? 1 : lda, acs = trans_a ? lda : 1;   /* A(i,p): A[i·ars + p·acs] */
        const int whole = packed || cols == 16;          /* B's loads need no mask */
        __m256i m0, m1;
        fastnn_avx2_masks(cols, &m0, &m1);
        for (long i0 = 0; i0 < m; i0 += FASTNN_AVX2_ROWS) {
            const long rows = m - i0 < FASTNN_AVX2_ROWS ? m - i0 : FASTNN_AVX2_ROWS;
            __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00,
                   c21 = c00, c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
            const float* a = A + i0 * ars;
            const float* b = Bp;
            float* c = C + i0 * ldc;
            if (accumulate) {                      /* C += op(A)·B: start from C's block */
                FASTNN_LOAD6(0, c) if (rows > 1) FASTNN_LOAD6(1, c + ldc)
                if (rows > 2) FASTNN_LOAD6(2, c + 2 * ldc) if (rows > 3) FASTNN_LOAD6(3, c + 3 * ldc)
                if (rows > 4) FASTNN_LOAD6(4, c + 4 * ldc) if (rows > 5) FASTNN_LOAD6(5, c + 5 * ldc)
            }
            if (rows == FASTNN_AVX2_ROWS && whole)          /* the common case */
                FASTNN_AVX2_STEPS(_mm256_loadu_ps(b), _mm256_loadu_ps(b + 8), FASTNN_ROWS6)
            else if (rows == FASTNN_AVX2_ROWS)
                FASTNN_AVX2_STEPS(_mm256_maskload_ps(b, m0), _mm256_maskload_ps(b + 8, m1),
                                  FASTNN_ROWS6)
            else if (whole)                                 /* the last rows of C */
                FASTNN_AVX2_STEPS(_mm256_loadu_ps(b), _mm256_loadu_ps(b + 8), FASTNN_ROWS_LT6)
            else
                FASTNN_AVX2_STEPS(_mm256_maskload_ps(b, m0), _mm256_maskload_ps(b + 8, m1),
                                  FASTNN_ROWS_LT6)
            FASTNN_STORE6(0, c) if (rows > 1) FASTNN_STORE6(1, c + ldc)
            if (rows > 2) FASTNN_STORE6(2, c + 2 * ldc) if (rows > 3) FASTNN_STORE6(3, c + 3 * ldc)
            if (rows > 4) FASTNN_STORE6(4, c + 4 * ldc) if (rows > 5) FASTNN_STORE6(5, c + 5 * ldc)
        }
    }

    /* r[0..7] ← their 8×8 transpose (r[i] lane j ← r[j] lane i), 24 shuffles. */
    __attribute__((target("avx2,fma")))
    static inline void fastnn_transpose8(__m256* r) {
        __m256 t[8], u[8];
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
            u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
            u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (int i = 0; i < 4; i++) {
            r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
            r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
        }
    }

    #define FASTNN_PACK_AHEAD 16          /* rows a plain B's pack prefetches ahead */
    /* Copy kb × cols of op(B) (from term p0, column j0) into the panel Bp (kb rows of 16
       floats, zero past cols). A transposed B is copied in 8×8 blocks transposed in
       registers. */
    __attribute__((target("avx2,fma")))
    static void fastnn_pack_panel_avx2(int trans_b, long kb, long cols, const float* B,
                                       long ldb, long p0, long j0, float* Bp) {
        __m256i m0, m1;
        if (!trans_b) {
            const float* b = B + p0 * ldb + j0;
            fastnn_avx2_masks(cols, &m0, &m1);
            for (long p = 0; p < kb; p++, b += ldb) {
                if (p + FASTNN_PACK_AHEAD < kb)     /* rows ldb apart: fetch ahead */
                    _mm_prefetch((const char*) (b + FASTNN_PACK_AHEAD * ldb), _MM_HINT_T0);
                _mm256_store_ps(Bp + 16 * p, _mm256_maskload_ps(b, m0));
                _mm256_store_ps(Bp + 16 * p + 8, _mm256_maskload_ps(b + 8, m1));
            }
            return;
        }
        __m256 r[8];                      /* op(B)(p, j) = B(j, p): r[jj] = a row of B */
        for (long jg = 0; jg < 16; jg += 8)
            for (long pg = 0; pg < kb; pg += 8) {
                const long terms = kb - pg < 8 ? kb - pg : 8;
                __m256i m, unused;
                fastnn_avx2_masks(terms, &m, &unused);
                for (long jj = 0; jj < 8; jj++)
                    r[jj] = jg + jj < cols
                        ? _mm256_maskload_ps(B + (j0 + jg + jj) * ldb + p0 + pg, m)
                        : _mm256_setzero_ps();
                fastnn_transpose8(r);
                for (long pp = 0; pp < terms; pp++)
                    _mm256_store_ps(Bp + 16 * (pg + pp) + jg, r[pp]);
            }
    }

    /* Row-major C (m×n) = op(A)·op(B) by fastnn_sgemm_panel where it pays: an AVX-512 CPU and
       at least 16 columns (fewer waste the vector lanes: at n = 10 OpenBLAS's small kernels
       won, 5.1-6.1 µs against the 16×16 kernel's 6.9-7.1 on a Zen 4 VM), a last panel of at
       most 16 columns by fastnn_sgemm_panel16 (200×64·64×100 on one Zen 4 core: 31.5 -> 27.7
       µs; n = 48 15.4 -> 12.1, n = 80 23.4 -> 19.7), or by fastnn_sgemm_panel_avx2 on a
       CPU with AVX2 and FMA only, at least FASTNN_AVX2_MIN_COLS columns and below
       FASTNN_AVX2_BLAS_BIG multiply-adds (past it BLAS, which also blocks A for the caches,
       wins). The sum runs in blocks of FASTNN_KBLOCK terms and C in panels of 32 (16)
       columns; each block of op(B)'s panel is copied into a per-thread contiguous buffer
       first (a transposed B always; a plain one when its rows lie far apart, where they
       would evict each other from L1: 256 rows 8 KB apart share a few cache sets), and the
       copy serves every 8-row (6-row) block of C. FASTNN_OWN_GEMM=0 in the environment turns
       it off (to compare), FASTNN_OWN_GEMM=avx2 takes the AVX2 kernel on an AVX-512 CPU
       (to test it there). Returns 0 where the caller must use BLAS. */
    #define FASTNN_KBLOCK 256
    #define FASTNN_PACK_SPAN 4096         /* pack a plain B whose block spans more floats */
    #define FASTNN_AVX2_MIN_COLS 8
    #define FASTNN_AVX512_MIN_COLS 16
    #define FASTNN_AVX2_BLAS_BIG (1L << 25)
    static __thread float* fastnn_panel = NULL;
    static int fastnn_own_gemm = -1;      /* 0: BLAS; 1: the AVX2 kernel; 2: the AVX-512 one */
    /* > 0: matmuls of at least this many multiply-adds stay on BLAS (set at import where the
       BLAS runs AVX-512 kernels of its own, which win there) */
    static long fastnn_blas_big = 0;
    static void fastnn_set_blas_big(long work) { fastnn_blas_big = work; }

    static int fastnn_own_gemm_on(void) {
        if (fastnn_own_gemm < 0) {
            const char* choice = getenv("FASTNN_OWN_GEMM");
            fastnn_own_gemm = fastnn_cpu_has_avx512f() ? 2 : fastnn_cpu_has_avx2_fma() ? 1 : 0;
            if (choice && choice[0] == '0')
                fastnn_own_gemm = 0;
            else if (choice && strcmp(choice, "avx2") == 0 && fastnn_own_gemm > 1)
                fastnn_own_gemm = 1;
        }
        return fastnn_own_gemm;
    }

    static int fastnn_sgemm_small(int trans_a, int trans_b, long m, long n, long k,
                                  const float* A, long lda, const float* B, long ldb,
                                  float* C, long ldc) {
        const int isa = fastnn_own_gemm_on();
        const long width = isa == 2 ? 32 : 16;   /* columns per panel */
        if (isa == 0 || n < (isa == 2 ? FASTNN_AVX512_MIN_COLS : FASTNN_AVX2_MIN_COLS)
                || (isa == 2 && fastnn_blas_big > 0 && m * n * k >= fastnn_blas_big)
                || (isa == 1 && m * n * k >= FASTNN_AVX2_BLAS_BIG))
            return 0;
        if (fastnn_panel == NULL) {
            fastnn_panel = (float*) aligned_alloc(64, FASTNN_KBLOCK * 32 * sizeof(float));
            if (fastnn_panel == NULL)
                return 0;
        }
        for (long p0 = 0; p0 < k; p0 += FASTNN_KBLOCK) {
            const long kb = k - p0 < FASTNN_KBLOCK ? k - p0 : FASTNN_KBLOCK;
            const int far = trans_b || (m > 8 && (kb - 1) * ldb > FASTNN_PACK_SPAN);
            const float* a = A + (trans_a ? p0 * lda : p0);
            for (long j0 = 0; j0 < n; j0 += width) {
                const long cols = n - j0 < width ? n - j0 : width;
                /* the AVX2 kernel's edge panel too: its loads are whole then (masked ones
                   are slow on Zen 2) */
                const int pack = far || (isa == 1 && cols < width && m > FASTNN_AVX2_ROWS);
                const float* b = pack ? fastnn_panel : B + p0 * ldb + j0;
                if (isa == 2) {
                    if (pack)
                        fastnn_pack_panel(trans_b, kb, cols, B, ldb, p0, j0, fastnn_panel);
                    (cols <= 16 ? fastnn_sgemm_panel16 : fastnn_sgemm_panel)(
                        trans_a, m, cols, kb, a, lda, b, pack ? 32 : ldb, C + j0, ldc, p0 > 0);
                } else {
                    if (pack)
                        fastnn_pack_panel_avx2(trans_b, kb, cols, B, ldb, p0, j0,
                                               fastnn_panel);
                    fastnn_sgemm_panel_avx2(trans_a, m, cols, kb, a, lda, b, pack ? 16 : ldb,
                                            C + j0, ldc, p0 > 0, pack);
                }
            }
        }
        return 1;
    }
    #else
    static void fastnn_set_blas_big(long work) { }
    static int fastnn_own_gemm_on(void) { return 0; }
    static int fastnn_sgemm_small(int trans_a, int trans_b, long m, long n, long k,
                                  const float* A, long lda, const float* B, long ldb,
                                  float* C, long ldc) { return 0; }   /* BLAS everywhere */
    #endif
    """
    const int FASTNN_OPENMP
    int fastnn_max_threads() noexcept nogil
    int fastnn_in_parallel() noexcept nogil
    int fastnn_team_size() noexcept nogil             # threads of the current team, and
    int fastnn_team_rank() noexcept nogil             # this thread's place in it
    ctypedef struct fastnn_team_barrier:
        int arrived, generation, sleepers
    # every thread of the team waits here for the others
    void fastnn_team_wait(fastnn_team_barrier* b) noexcept nogil
    void fastnn_set_threaded_blas(int on) noexcept nogil
    int fastnn_threaded_blas_on() noexcept nogil
    float fastnn_exp_neg_f(float x) noexcept nogil
    int fastnn_cpu_has_avx2_fma() noexcept nogil
    int fastnn_cpu_has_avx512_build() noexcept nogil
    int fastnn_own_gemm_on() noexcept nogil
    void fastnn_set_blas_big(long work) noexcept nogil
    # row-major float32 C = op(A)·op(B) by fastnn's AVX-512 or AVX2 kernel; 0 where BLAS must
    int fastnn_sgemm_small(int trans_a, int trans_b, long m, long n, long k, const float* A,
                           long lda, const float* B, long ldb, float* C, long ldc) noexcept nogil

#: True when this extension was compiled with OpenMP (its loops may then use several threads)
OPENMP = bool(FASTNN_OPENMP)


#: OpenBLAS kernel families (threadpoolctl's "architecture") that run AVX-512
AVX512_BLAS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
#: multiply-adds from which a matmul stays on such a BLAS: on a Zen 4 VM with OpenBLAS's
#: SkylakeX kernels, the wide network (1024-2048-2048-1024, batch 512) stepped in 136 ms on
#: BLAS and 144-150 ms on fastnn's kernel, mnist's (≤ 2^25) in 1059-1218 µs on BLAS and
#: 972-998 on fastnn's; where OpenBLAS was held to AVX2 kernels, fastnn's won on both. On a
#: Sapphire Rapids VM (2026-12-02), mnist's predict bands (512×784×256, 2^26.6) took 3.9-4.0
#: ms per 1024 rows on fastnn's kernel and 3.6 on BLAS, while mnist's training steps stayed
#: 5-10% faster on fastnn's
BLAS_BIG_MATMUL = 1 << 26


def _blas_runs_avx512() -> bool:
    """Whether the BLAS these kernels call (SciPy's) runs AVX-512 kernels of its own."""
    return any((c.architecture or "").lower() in AVX512_BLAS for c in kernel_blas())


fastnn_set_blas_big(BLAS_BIG_MATMUL if _blas_runs_avx512() else 0)


def own_gemm() -> bool:
    """Whether float32 matmuls may run on fastnn's own kernel instead of BLAS (see
    :func:`own_gemm_kernel`)."""
    return bool(fastnn_own_gemm_on())


def own_gemm_kernel() -> str | None:
    """Which of fastnn's float32 matmul kernels runs here: "avx512" (an AVX-512 CPU: matmuls
    of at least 16 columns, but for those of at least BLAS_BIG_MATMUL multiply-adds where the
    BLAS runs AVX-512 kernels itself), "avx2" (AVX2 and FMA only: at least 8 columns and
    under 2^25 multiply-adds; or FASTNN_OWN_GEMM=avx2), or None (BLAS for every matmul: no
    such CPU, or FASTNN_OWN_GEMM=0)."""
    return {0: None, 1: "avx2", 2: "avx512"}[fastnn_own_gemm_on()]


def own_gemm_address() -> int:
    """The address of ``fastnn_sgemm_small`` (C signature in the extern block above), which the
    numba_cpu kernels call for the same matmuls (``kernels/numba_cpu/_own_gemm.py``)."""
    return <size_t> <void*> fastnn_sgemm_small


def cpu_has_avx2_fma() -> bool:
    """Whether this CPU (and OS) runs AVX2 and FMA code: which build of the kernels to use."""
    return bool(fastnn_cpu_has_avx2_fma())


def cpu_has_avx512() -> bool:
    """Whether this CPU (and OS) runs the avx512 build's code (AVX-512 F, VL, BW and DQ, with
    AVX2 and FMA)."""
    return bool(fastnn_cpu_has_avx512_build())

# Activation codes: the same numbers as fastnn.kernels.ACTIVATIONS (checked at import).
cdef enum:
    IDENTITY = 0
    SIGMOID = 1
    TANH = 2
    RELU = 3
    LEAKY_RELU = 4
    SOFTMAX = 5
    ELU = 6
    SELU = 7
    SOFTPLUS = 8
    GELU = 9
    GELU_TANH = 10
    SILU = 11

# The training plan's codes (fastnn.kernels; fastnn.plan documents them): loss and optimizer
# codes, op kinds, op-table columns, gradient modes, action phases, stage kinds.
cdef enum:
    MSE = 0
    SOFTMAX_CE = 1
    SIGMOID_BCE = 2
cdef enum:
    SGD = 0
    SGD_MOMENTUM = 1
    ADAM = 2
    ADAMW = 3
    RMSPROP = 4
cdef enum:
    DENSE = 0
    BATCHNORM = 1
    ADD = 2
    DROPOUT = 3
    STANDARDIZE = 4
cdef enum:
    KIND = 0
    IN = 1
    OUT = 2
    NIN = 3
    NOUT = 4
    ACT = 5
    POFF = 6
    SOFF = 7
    AUX = 8
    SKIP = 9
    DX = 10
    DSKIP = 11
    OP_COLUMNS = 12
cdef enum:
    GRAD_SKIP = 0
    GRAD_WRITE = 1
    GRAD_ADD = 2
cdef enum:
    GATHER = 0
    FORWARD = 1
    LOSS = 2
    BACKWARD = 3
cdef enum:
    ROWS = 0
    WHOLE_BATCH = 1
cdef enum:
    CLIP_NORM = 6                # the entry of plan.hyper


def _check_codes():
    """Fail at import if a code above differs from fastnn.kernels' (the plan's numbers)."""
    import fastnn.kernels as k
    ours = {"IDENTITY": IDENTITY, "SIGMOID": SIGMOID, "TANH": TANH, "RELU": RELU,
            "LEAKY_RELU": LEAKY_RELU, "SOFTMAX": SOFTMAX, "ELU": ELU, "SELU": SELU,
            "SOFTPLUS": SOFTPLUS, "GELU": GELU, "GELU_TANH": GELU_TANH, "SILU": SILU, "MSE": MSE,
            "CROSS_ENTROPY": SOFTMAX_CE, "BINARY_CROSS_ENTROPY": SIGMOID_BCE, "SGD": SGD,
            "MOMENTUM": SGD_MOMENTUM, "ADAM": ADAM, "ADAMW": ADAMW, "RMSPROP": RMSPROP, "DENSE": DENSE, "BATCHNORM": BATCHNORM,
            "ADD": ADD, "DROPOUT": DROPOUT, "STANDARDIZE": STANDARDIZE, "MASK32": 0xFFFFFFFF, "GOLDEN": 0x9E3779B9,
            "HASH_M1": 0x7FEB352D, "HASH_M2": 0x846CA68B, "KIND": KIND, "IN": IN, "OUT": OUT, "NIN": NIN, "NOUT": NOUT,
            "ACT": ACT, "POFF": POFF, "SOFF": SOFF, "AUX": AUX, "SKIP": SKIP, "DX": DX,
            "DSKIP": DSKIP, "GRAD_SKIP": GRAD_SKIP, "GRAD_WRITE": GRAD_WRITE,
            "GRAD_ADD": GRAD_ADD, "GATHER": GATHER, "FORWARD": FORWARD, "LOSS": LOSS,
            "BACKWARD": BACKWARD, "ROWS": ROWS, "WHOLE_BATCH": WHOLE_BATCH, "CLIP_NORM": CLIP_NORM}
    wrong = [name for name, value in ours.items() if getattr(k, name) != value]
    if wrong:
        raise ImportError(f"the cython extension was built with other codes for "
                          f"{', '.join(wrong)} than fastnn.kernels has: rebuild it")


_check_codes()

cdef enum:
    # columns per block in the column-wise reductions (db, batch-norm statistics): each block
    # is one thread's work and its partial sums live on the stack
    BLOCK = 64

cdef double LEAKY = _LEAKY_SLOPE
cdef double SELU_L = _SELU_SCALE, SELU_LA = _SELU_SCALE * _SELU_ALPHA
cdef double SOFTPLUS_CUT = _SOFTPLUS_THRESHOLD
cdef double GELU_C = _GELU_TANH_C, GELU_K = _GELU_TANH_K
cdef double SQRT_HALF = 0.7071067811865476, INV_SQRT_2PI = 0.3989422804014327
# added to the gradient norm before clipping, as torch.nn.utils.clip_grad_norm_ does
cdef double CLIP_EPS = _CLIP_EPS
# an element-wise loop runs on several threads only from this many elements on (~1 ms of
# work): waking the threads and the barrier after the loop cost more than they save below it
cdef Py_ssize_t PARALLEL_MIN = 1 << 20
# a matmul is split across threads from this many multiply-adds on (~200 µs of one core):
# waking a passively waiting thread costs tens of µs, so smaller splits lose. Forward pass on
# a quiet 2-core machine, 1 thread vs a 2-way split: 3.3 M multiply-adds 81 vs 136 µs, 6.6 M
# 144 vs 161, 13 M 257 vs 210, 34 M 612 vs 441 (it was 1 << 21 before, which lost up to 1.7×)
cdef Py_ssize_t GEMM_PARALLEL_MIN = 1 << 23
# how minibatches are split into bands (shared with numba_cpu's trainer: kernels/_teams.py)
cdef Py_ssize_t MIN_BAND_ROWS = _teams.MIN_BAND_ROWS
cdef Py_ssize_t MIN_BAND_WORK = _teams.MIN_BAND_WORK

cdef object _F32 = np.dtype(np.float32)
cdef object _F64 = np.dtype(np.float64)
cdef object _I64 = np.dtype(np.int64)


# ---------------------------------------------------------------------------------------------
# scalar helpers: the float versions call the single-precision libm functions
# ---------------------------------------------------------------------------------------------
cdef inline floating _exp_neg(floating x) noexcept nogil:
    """e^x for x ≤ 0 (every exponential here has a non-positive argument)."""
    if floating is float:
        return fastnn_exp_neg_f(x)
    else:
        return exp(x)


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _erf(floating x) noexcept nogil:
    if floating is float:
        return erff(x)
    else:
        return erf(x)


cdef inline floating _exp_neg_abs(floating z) noexcept nogil:
    """e^−|z|, which never overflows."""
    return _exp_neg(-z if z >= 0 else z)


cdef inline floating _sigmoid(floating z) noexcept nogil:
    """σ(z) = 1/(1+e^−z) = e^z/(1+e^z), in the form that cannot overflow (one division and a
    select, no branch, so that loops over it vectorise)."""
    cdef floating e = _exp_neg_abs(z), one = 1
    return (one if z >= 0 else e) / (one + e)


cdef inline floating _gelu_tanh_inner(floating z) noexcept nogil:
    """tanh(c(z + k z³)), the tanh approximation of GELU's 2Φ(z) − 1."""
    return _tanh(<floating> GELU_C * (z + <floating> GELU_K * z * z * z))


cdef inline floating _preactivation_grad(floating z, int act) noexcept nogil:
    """f′(z) of the activations that keep z: GELU Φ(z) + zφ(z), its tanh form, SiLU
    σ(z)(1 + z(1 − σ(z)))."""
    cdef floating half = 0.5, one = 1, t, s
    if act == GELU:
        return (half * (one + _erf(z * <floating> SQRT_HALF))
                + z * <floating> INV_SQRT_2PI * _exp_neg(-half * z * z))
    if act == GELU_TANH:
        t = _gelu_tanh_inner(z)
        return half * (one + t) + half * z * (one - t * t) * <floating> GELU_C * (
            one + 3 * <floating> GELU_K * z * z)
    s = _sigmoid(z)
    return s * (one + z * (one - s))


# dropout's counter-based mask (fastnn.kernels documents it), in 32-bit unsigned arithmetic
cdef inline uint32_t _hash32(uint32_t x) noexcept nogil:
    """lowbias32, as fastnn.kernels.hash32."""
    x ^= x >> 16
    x *= 0x7FEB352DU
    x ^= x >> 15
    x *= 0x846CA68BU
    return x ^ (x >> 16)


cdef inline uint32_t _mix(uint32_t k, uint32_t v) noexcept nogil:
    return _hash32((k ^ v) + 0x9E3779B9U)


cdef inline uint32_t _dropout_key(int64_t seed, int64_t step, int64_t stream) noexcept nogil:
    """fastnn.kernels.dropout_key: the key of one Dropout op's masks at one training step."""
    cdef uint64_t s = <uint64_t> seed, t = <uint64_t> step
    cdef uint32_t k = _mix(_mix(0, <uint32_t> s), <uint32_t> (s >> 32))
    k = _mix(k, <uint32_t> t)
    return _mix(k, (<uint32_t> (t >> 32)) ^ (<uint32_t> stream * 0x9E3779B9U))


cdef inline uint32_t _dropout_threshold(double p) noexcept nogil:
    return <uint32_t> (p * 4294967296.0)


cdef void _dropout_rows(const floating* X, floating* out, Py_ssize_t r0, Py_ssize_t r1,
                        Py_ssize_t n, uint32_t threshold, floating scale, uint32_t key,
                        int mode, const int64_t* rows) noexcept nogil:
    """Rows r0..r1 (of a minibatch; X and out point at its row 0) of out = X ⊙ mask · scale,
    or += with mode GRAD_ADD: element (i, j) is kept when
    hash32(((rᵢ·n + j)·GOLDEN) XOR key) ≥ threshold, rᵢ = rows[i] (i for rows NULL)."""
    cdef Py_ssize_t i, j, r
    cdef floating v
    for i in range(r0, r1):
        r = i if rows == NULL else rows[i]
        for j in range(n):
            v = X[i * n + j] * scale if _hash32(
                (<uint32_t> (r * n + j)) * 0x9E3779B9U ^ key) >= threshold else 0
            if mode == GRAD_ADD:
                out[i * n + j] += v
            else:
                out[i * n + j] = v


# ---------------------------------------------------------------------------------------------
# C kernels on raw pointers (row-major, C-contiguous), shared by the interface and the trainer
# ---------------------------------------------------------------------------------------------
cdef void _blas_gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                     const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                     floating* C, Py_ssize_t ldc, bint own=True) noexcept nogil:
    """Row-major C (m×n) = op(A)·op(B) in one call: fastnn's own float32 kernel where it
    takes the matmul (and ``own``), else BLAS.

    A row-major matrix is the column-major storage of its transpose, so the column-major call
    computes Cᵀ = op(B)ᵀ·op(A)ᵀ: the same BLAS call with A and B (and m and n) swapped.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int im = <int> m, in_ = <int> n, ik = <int> k
    cdef int ilda = <int> (lda if lda > 1 else 1), ildb = <int> (ldb if ldb > 1 else 1)
    cdef int ildc = <int> (ldc if ldc > 1 else 1)
    cdef floating one = 1, zero = 0
    cdef Py_ssize_t i
    if m == 0 or n == 0:
        return
    if k == 0:                                  # an empty sum: C = 0
        for i in range(m):
            memset(C + i * ldc, 0, n * sizeof(floating))
        return
    if floating is float:
        if own and fastnn_sgemm_small(trans_a, trans_b, m, n, k, <const float*> A, lda,
                                      <const float*> B, ldb, <float*> C, ldc):
            return
        sgemm(&tb, &ta, &in_, &im, &ik, &one, <float*> B, &ildb, <float*> A, &ilda, &zero,
              C, &ildc)
    else:
        dgemm(&tb, &ta, &in_, &im, &ik, &one, <double*> B, &ildb, <double*> A, &ilda, &zero,
              C, &ildc)


cdef void _gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                const floating* A, Py_ssize_t lda, const floating* B, Py_ssize_t ldb,
                floating* C, Py_ssize_t ldc) noexcept nogil:
    """Row-major C (m×n) = op(A)·op(B): with OpenMP and enough work, each thread computes a
    band of C's rows by its own single-threaded BLAS call (BLAS is pinned to one thread where
    this backend is built with OpenMP, so the two thread pools never stack). In a trainer
    that runs its matmuls on BLAS's threads (fastnn_threaded_blas_on), BLAS takes each one
    whole, fastnn's own kernel only those too small to split."""
    cdef Py_ssize_t c, i0, i1
    cdef int chunks = 1
    if fastnn_threaded_blas_on():
        _blas_gemm(trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc,
                   m * n * k < GEMM_PARALLEL_MIN)
        return
    if FASTNN_OPENMP and m * n * k >= GEMM_PARALLEL_MIN and not fastnn_in_parallel():
        chunks = <int> min(<Py_ssize_t> fastnn_max_threads(), m // 8)
    if chunks <= 1:
        _blas_gemm(trans_a, trans_b, m, n, k, A, lda, B, ldb, C, ldc)
        return
    for c in prange(chunks, schedule="static", num_threads=chunks):
        i0, i1 = m * c // chunks, m * (c + 1) // chunks
        _blas_gemm(trans_a, trans_b, i1 - i0, n, k, A + (i0 if trans_a else i0 * lda), lda, B,
                   ldb, C + i0 * ldc, ldc)


cdef void _bias_activate(floating* z, const floating* b, int act, Py_ssize_t cols,
                         floating* zs) noexcept nogil:
    """One row of a = f(z + b), in place. One loop per activation, so that the compiler
    vectorises each; softmax is row-wise: a_j = e^(z_j − max z) / Σ_k e^(z_k − max z). GELU
    and SiLU also write z + b to zs (their row of the saved pre-activation)."""
    cdef Py_ssize_t j
    cdef floating v, top, total, one = 1, slope = <floating> LEAKY
    if act == SIGMOID:
        for j in range(cols):
            z[j] = _sigmoid(z[j] + b[j])                     # a = 1/(1+e^−z)
    elif act == TANH:
        for j in range(cols):
            z[j] = _tanh(z[j] + b[j])                        # a = tanh z
    elif act == RELU:
        for j in range(cols):
            v = z[j] + b[j]
            z[j] = 0 if v < 0 else v                         # a = max(0, z), NaN stays NaN
    elif act == LEAKY_RELU:
        for j in range(cols):
            v = z[j] + b[j]
            z[j] = v * (one if v > 0 else slope)             # a = z or 0.01 z
    elif act == ELU:
        for j in range(cols):
            v = z[j] + b[j]
            z[j] = v if v > 0 else _expm1(v if v < 0 else 0)  # z or e^z − 1
    elif act == SELU:
        for j in range(cols):
            v = z[j] + b[j]
            z[j] = (<floating> SELU_L * v if v > 0              # λz or λα(e^z − 1)
                    else <floating> SELU_LA * _expm1(v if v < 0 else 0))
    elif act == SOFTPLUS:
        for j in range(cols):
            v = z[j] + b[j]                                  # log(1 + e^z), z above 20
            z[j] = v if v > <floating> SOFTPLUS_CUT else _log1p(_exp(v))
    elif act == GELU:
        for j in range(cols):
            v = z[j] + b[j]
            zs[j] = v                                        # a = z Φ(z)
            z[j] = <floating> 0.5 * v * (one + _erf(v * <floating> SQRT_HALF))
    elif act == GELU_TANH:
        for j in range(cols):
            v = z[j] + b[j]
            zs[j] = v                                        # a = ½z(1 + tanh(c(z + k z³)))
            z[j] = <floating> 0.5 * v * (one + _gelu_tanh_inner(v))
    elif act == SILU:
        for j in range(cols):
            v = z[j] + b[j]
            zs[j] = v
            z[j] = v * _sigmoid(v)                           # a = z σ(z)
    elif act == SOFTMAX:
        top = z[0] + b[0]
        for j in range(cols):
            z[j] += b[j]
            top = z[j] if z[j] > top else top
        total = 0
        for j in range(cols):
            z[j] = _exp_neg(z[j] - top)                      # e^(z − max z)
            total += z[j]
        for j in range(cols):
            z[j] /= total
    else:
        for j in range(cols):
            z[j] += b[j]                                     # identity


cdef inline bint _threads_pay(Py_ssize_t elements) noexcept nogil:
    """Whether an elementwise pass over this many elements runs on the OpenMP threads. Below
    PARALLEL_MIN, and inside an active parallel region (the trainer's team of two or more), it
    runs as a plain loop instead: even a one-thread OpenMP region costs libgomp a new team and
    barriers that each make a futex system call (~20 per tiny training step, measured)."""
    return FASTNN_OPENMP and elements >= PARALLEL_MIN and not fastnn_in_parallel()


cdef void _dense_forward(const floating* X, const floating* W, const floating* b, int act,
                         floating* out, Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                         floating* zs) noexcept nogil:
    """out = f(X·W + b): one BLAS gemm, then bias and activation while each row is in cache
    (zs (batch, n_out) receives z for GELU and SiLU; NULL for the others)."""
    cdef Py_ssize_t i
    _gemm(False, False, batch, n_out, n_in, X, n_in, W, n_out, out, n_out)   # z = x·W
    if _threads_pay(batch * n_out):
        for i in prange(batch, schedule="static"):
            _bias_activate(out + i * n_out, b, act, n_out,                    # a = f(z + b)
                           zs + i * n_out if zs != NULL else NULL)
    else:
        for i in range(batch):
            _bias_activate(out + i * n_out, b, act, n_out,
                           zs + i * n_out if zs != NULL else NULL)


cdef void _activation_grad(floating* dA, const floating* A, int act, Py_ssize_t n,
                           const floating* zs) noexcept nogil:
    """dZ = dA ⊙ f′ over n consecutive elements, in place, with f′ from the output a: σ′ =
    a(1−a), tanh′ = 1−a², ReLU′ = [a>0], leaky′ = 1 or 0.01; for GELU and SiLU from the
    saved pre-activation zs. One loop per activation."""
    cdef Py_ssize_t j
    cdef floating one = 1, zero = 0, slope = <floating> LEAKY
    if act == SIGMOID:
        for j in range(n):
            dA[j] = dA[j] * (A[j] * (one - A[j]))
    elif act == TANH:
        for j in range(n):
            dA[j] = dA[j] * (one - A[j] * A[j])
    elif act == RELU:
        for j in range(n):
            dA[j] = dA[j] * (one if A[j] > 0 else zero)
    elif act == LEAKY_RELU:
        for j in range(n):
            dA[j] = dA[j] * (one if A[j] > 0 else slope)
    elif act == ELU:
        for j in range(n):                                   # ELU′ = 1 or a + 1
            dA[j] = dA[j] * (one if A[j] > 0 else A[j] + one)
    elif act == SELU:
        for j in range(n):                                   # SELU′ = λ or a + λα
            dA[j] = dA[j] * (<floating> SELU_L if A[j] > 0 else A[j] + <floating> SELU_LA)
    elif act == SOFTPLUS:
        for j in range(n):                                   # σ(z) = 1 − e^−a, 1 above 20
            dA[j] = dA[j] * (one if A[j] > <floating> SOFTPLUS_CUT else -_expm1(-A[j]))
    elif act == GELU or act == GELU_TANH or act == SILU:
        for j in range(n):
            dA[j] = dA[j] * _preactivation_grad(zs[j], act)


cdef void _softmax_grad_row(floating* dA, const floating* A, Py_ssize_t cols) noexcept nogil:
    """∂L/∂z_j = a_j (∂L/∂a_j − Σ_k a_k ∂L/∂a_k), in place over one row of dA."""
    cdef Py_ssize_t j
    cdef double s = 0
    for j in range(cols):
        s += dA[j] * A[j]
    for j in range(cols):
        dA[j] = A[j] * (dA[j] - <floating> s)


cdef void _grad_bias_block(floating* dA, const floating* A, int act, floating* db,
                           Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t j0, Py_ssize_t j1,
                           const floating* zs) noexcept nogil:
    """Columns j0..j1 of dZ = dA ⊙ f′(a) (in place) and db_j = Σ_i dZ_ij, rows in order."""
    cdef double acc[BLOCK]
    cdef Py_ssize_t i, j
    cdef floating* dz
    for j in range(j1 - j0):
        acc[j] = 0
    for i in range(rows):
        dz = dA + i * cols + j0
        _activation_grad(dz, A + i * cols + j0, act, j1 - j0,
                         zs + i * cols + j0 if zs != NULL else NULL)
        for j in range(j1 - j0):
            acc[j] += dz[j]
    for j in range(j1 - j0):
        db[j0 + j] = <floating> acc[j]


cdef void _dense_backward(floating* dA, const floating* X, const floating* W,
                          const floating* A, int act, floating* dX, floating* dW, floating* db,
                          Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t n_out,
                          const floating* zs) noexcept nogil:
    """dZ = dA ⊙ f′ (written over dA; f′ from zs for GELU and SiLU) and db = Σ dZ in one
    pass; dW = Xᵀ·dZ and, unless dX is NULL, dX = dZ·Wᵀ by BLAS."""
    cdef Py_ssize_t i, jb
    cdef Py_ssize_t n_blocks = (n_out + BLOCK - 1) // BLOCK
    cdef bint threads = _threads_pay(batch * n_out)
    if act == SOFTMAX:                          # row-wise Jacobian first, then plain column sums
        if threads:
            for i in prange(batch, schedule="static"):
                _softmax_grad_row(dA + i * n_out, A + i * n_out, n_out)
        else:
            for i in range(batch):
                _softmax_grad_row(dA + i * n_out, A + i * n_out, n_out)
        act = IDENTITY
    if threads:
        for jb in prange(n_blocks, schedule="static"):
            _grad_bias_block(dA, A, act, db, batch, n_out, jb * BLOCK,
                             min((jb + 1) * BLOCK, n_out), zs)
    else:
        for jb in range(n_blocks):
            _grad_bias_block(dA, A, act, db, batch, n_out, jb * BLOCK,
                             min((jb + 1) * BLOCK, n_out), zs)
    _gemm(True, False, n_in, n_out, batch, X, n_in, dA, n_out, dW, n_out)      # ∂L/∂W = Xᵀ dZ
    if dX != NULL:
        _gemm(False, True, batch, n_in, n_out, dA, n_out, W, n_out, dX, n_in)  # ∂L/∂x = dZ Wᵀ


# The loss kernels take `rows` rows of a minibatch (a thread's share of it) with their weights
# w (NULL: all 1) and inv_mass = 1/Σ w over the whole minibatch (1/rows without weights): they
# write ∂L/∂z = wᵢ ∂lᵢ · inv_mass and return Σ wᵢ lᵢ over their rows, so the shares add up.

cdef inline double _share(const double* w, Py_ssize_t i, double inv_mass) noexcept nogil:
    """Row i's share of the minibatch's loss gradient: wᵢ/Σw (1/rows without weights)."""
    return inv_mass if w == NULL else w[i] * inv_mass


cdef inline double _weighted(const double* w, Py_ssize_t i, double row_loss) noexcept nogil:
    """wᵢ × row i's loss (the loss itself without weights)."""
    return row_loss if w == NULL else w[i] * row_loss


cdef double _mse(const floating* Yhat, const floating* Y, floating* dYhat, const double* w,
                 Py_ssize_t rows, Py_ssize_t k, double inv_mass) noexcept nogil:
    """Σ wᵢ Σ ½(ŷ − y)²; dYhat = wᵢ(ŷ − y)·inv_mass."""
    cdef Py_ssize_t i, j
    cdef floating r, share
    cdef double total = 0, row
    for i in range(rows):
        share, row = <floating> _share(w, i, inv_mass), 0
        for j in range(i * k, i * k + k):
            r = Yhat[j] - Y[j]
            dYhat[j] = r * share
            row += <double> r * r
        total += _weighted(w, i, row)
    return 0.5 * total


cdef double _softmax_cross_entropy(const floating* Z, const int64_t* labels, floating* dZ,
                                   const double* w, Py_ssize_t rows, Py_ssize_t k,
                                   double inv_mass) noexcept nogil:
    """Σ wᵢ (log Σ_k e^z_k − z_y); dZ = wᵢ(softmax(z) − onehot(y))·inv_mass. Labels must be in
    range."""
    cdef Py_ssize_t i, j
    cdef const floating* z
    cdef floating* d
    cdef floating top, total, inv, share
    cdef double loss = 0
    for i in range(rows):
        share = <floating> _share(w, i, inv_mass)
        z, d = Z + i * k, dZ + i * k
        top = z[0]
        for j in range(1, k):
            if z[j] > top:
                top = z[j]
        total = 0
        for j in range(k):
            d[j] = _exp_neg(z[j] - top)             # e^(z − max z)
            total += d[j]
        inv = share / total
        for j in range(k):
            d[j] *= inv                             # w softmax / Σw
        d[labels[i]] -= share                       # w(p − onehot(y)) / Σw
        loss += _weighted(w, i, top + _log(total) - z[labels[i]])   # w(lse − z_y)
    return loss


cdef double _sigmoid_binary_cross_entropy(const floating* Z, const floating* Y, floating* dZ,
                                          const double* w, Py_ssize_t rows, Py_ssize_t k,
                                          double inv_mass) noexcept nogil:
    """Σ wᵢ Σ max(z, 0) − z·y + log(1 + e^−|z|); dZ = wᵢ(σ(z) − y)·inv_mass."""
    cdef Py_ssize_t i, j
    cdef floating z, e, one = 1, share
    cdef double loss = 0, row
    for i in range(rows):
        share, row = <floating> _share(w, i, inv_mass), 0
        for j in range(i * k, i * k + k):
            z = Z[j]
            e = _exp_neg_abs(z)
            dZ[j] = ((one if z >= 0 else e) / (one + e) - Y[j]) * share
            row += (z if z > 0 else 0) - z * Y[j] + _log1p(e)
        loss += _weighted(w, i, row)
    return loss


cdef double _inverse_mass(const double* w, Py_ssize_t rows) noexcept nogil:
    """1/Σ w over a minibatch's rows (0 when they sum to 0), 1/rows for w NULL."""
    cdef Py_ssize_t i
    cdef double mass = 0
    if w == NULL:
        return 1.0 / rows
    for i in range(rows):
        mass += w[i]
    return 1.0 / mass if mass > 0 else 0.0


cdef struct Step:
    # one optimizer step: the rule's code and its hyperparameters, as the plan's ``hyper``:
    # mu_or_beta1 is the momentum (SGD, RMSprop) or β₁ (Adam), beta2 is β₂ or RMSprop's α;
    # t is Adam's 1-based step count
    int rule
    double lr, mu_or_beta1, beta2, eps, weight_decay
    bint nesterov
    long t


cdef void _update(const Step* step, floating* p, const floating* g, floating* s1, floating* s2,
                  Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """One optimizer step on entries lo..hi of the flat vectors, in place. s1, s2: the state
    (velocity; Adam's m, v; RMSprop's mean square and velocity). With g = ∂L/∂w + λw (not for
    AdamW): sgd: w ← w − η g. momentum: v ← μv + g; w ← w − η v (Nesterov: η (g + μv)).
    adam: m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; w ← w − η m̂/(√v̂ + ε), m̂ = m/(1−β₁ᵗ),
    v̂ = v/(1−β₂ᵗ), computed as w − s·m/(√v·r + ε) with the scalars s = η/(1−β₁ᵗ) and
    r = 1/√(1−β₂ᵗ) (fastnn.kernels.adam_scalars); adamw: the same on the plain gradient
    after w ← w(1 − ηλ). rmsprop: s ← αs + (1−α)g²; w ← w − η g/(√s + ε), or with momentum through v ← μv + g/(√s + ε).
    """
    cdef Py_ssize_t i
    cdef floating lr = <floating> step.lr, b1 = <floating> step.mu_or_beta1
    cdef floating b2 = <floating> step.beta2, eps = <floating> step.eps
    cdef floating wd = <floating> step.weight_decay, gi, d, one = 1
    cdef floating a1 = 1 - b1, a2 = 1 - b2
    cdef floating step_size = 0, inv_root_c2 = 0
    cdef floating l2 = wd if step.rule == ADAM else 0
    cdef floating shrink = one - lr * wd if step.rule == ADAMW else one
    if step.rule == ADAM or step.rule == ADAMW:
        step_size = <floating> (step.lr / (1 - step.mu_or_beta1 ** step.t))
        inv_root_c2 = <floating> (1 / sqrt(1 - step.beta2 ** step.t))
    if step.rule == SGD:
        for i in range(lo, hi):
            p[i] -= lr * (g[i] + wd * p[i])
    elif step.rule == SGD_MOMENTUM:
        for i in range(lo, hi):
            gi = g[i] + wd * p[i]
            s1[i] = s1[i] * b1 + gi
            p[i] -= lr * (gi + b1 * s1[i] if step.nesterov else s1[i])
    elif step.rule == RMSPROP:
        for i in range(lo, hi):
            gi = g[i] + wd * p[i]
            s1[i] = s1[i] * b2 + a2 * gi * gi
            d = gi / (_sqrt(s1[i]) + eps)
            if s2 != NULL:
                s2[i] = s2[i] * b1 + d
                d = s2[i]
            p[i] -= lr * d
    else:
        for i in range(lo, hi):
            gi = g[i] + l2 * p[i]
            s1[i] = s1[i] * b1 + a1 * gi
            s2[i] = s2[i] * b2 + a2 * gi * gi
            p[i] = p[i] * shrink - step_size * (s1[i] / (_sqrt(s2[i]) * inv_root_c2 + eps))


cdef enum:
    # entries per block of the flat parameter vector in a threaded optimizer step (the
    # trainer's team shares a step's blocks, so a network of a few blocks was shared
    # unevenly: small's 26 122 parameters were 2 blocks of 1 << 14, 16 384 and 9 738)
    UPDATE_BLOCK = 1 << 11


cdef void _batchnorm_forward_block(const floating* X, const floating* gamma,
                                   const floating* beta, floating* running_mean,
                                   floating* running_var, floating momentum, floating eps,
                                   bint training, floating* out, floating* xhat,
                                   floating* inv_std, Py_ssize_t rows, Py_ssize_t cols,
                                   Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Batch normalisation of columns j0..j1 (statistics summed over rows in order)."""
    cdef double mean[BLOCK]
    cdef double var[BLOCK]
    cdef Py_ssize_t i, j
    cdef double d
    if training:
        for j in range(j1 - j0):
            mean[j] = 0
            var[j] = 0
        for i in range(rows):
            for j in range(j0, j1):
                mean[j - j0] += X[i * cols + j]
        for j in range(j1 - j0):
            mean[j] /= rows                                         # μ = mean_batch x
        for i in range(rows):
            for j in range(j0, j1):
                d = X[i * cols + j] - mean[j - j0]
                var[j - j0] += d * d
        for j in range(j0, j1):
            var[j - j0] /= rows                                     # σ² = mean_batch (x − μ)²
            running_mean[j] = running_mean[j] * (1 - momentum) + momentum * <floating> mean[j - j0]
            running_var[j] = (running_var[j] * (1 - momentum)       # unbiased σ² n/(n−1)
                              + momentum * <floating> (var[j - j0] * rows
                                                       / (rows - 1 if rows > 1 else 1)))
    else:
        for j in range(j0, j1):
            mean[j - j0] = running_mean[j]
            var[j - j0] = running_var[j]
    for j in range(j0, j1):
        inv_std[j] = 1 / _sqrt(<floating> var[j - j0] + eps)        # 1/√(σ² + ε)
    for i in range(rows):
        for j in range(j0, j1):
            xhat[i * cols + j] = (X[i * cols + j] - <floating> mean[j - j0]) * inv_std[j]
            out[i * cols + j] = gamma[j] * xhat[i * cols + j] + beta[j]   # y = γ x̂ + β


cdef void _batchnorm_backward_block(const floating* dY, const floating* xhat,
                                    const floating* inv_std, const floating* gamma,
                                    floating* dX, int dx_mode, floating* dgamma,
                                    floating* dbeta, Py_ssize_t rows, Py_ssize_t cols,
                                    Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """Columns j0..j1 of ∂L/∂β = Σ dy, ∂L/∂γ = Σ dy x̂ and
    ∂L/∂x = γ/σ · (dy − ∂L/∂β / n − x̂ ∂L/∂γ / n), which is written into dX (dx_mode
    GRAD_WRITE), added to it (GRAD_ADD) or not computed (GRAD_SKIP)."""
    cdef double sum_dy[BLOCK]
    cdef double sum_dy_xhat[BLOCK]
    cdef Py_ssize_t i, j
    cdef floating dy, dx
    for j in range(j1 - j0):
        sum_dy[j] = 0
        sum_dy_xhat[j] = 0
    for i in range(rows):
        for j in range(j0, j1):
            dy = dY[i * cols + j]
            sum_dy[j - j0] += dy
            sum_dy_xhat[j - j0] += dy * xhat[i * cols + j]
    for j in range(j0, j1):
        dbeta[j] = <floating> sum_dy[j - j0]
        dgamma[j] = <floating> sum_dy_xhat[j - j0]
    if dx_mode == GRAD_SKIP:
        return
    for i in range(rows):
        for j in range(j0, j1):
            dx = gamma[j] * inv_std[j] * (
                dY[i * cols + j] - <floating> (sum_dy[j - j0] / rows)
                - xhat[i * cols + j] * <floating> (sum_dy_xhat[j - j0] / rows))
            if dx_mode == GRAD_ADD:
                dX[i * cols + j] += dx
            else:
                dX[i * cols + j] = dx


# ---------------------------------------------------------------------------------------------
# memoryview layer: shape checks, then the C kernels with the GIL released
# ---------------------------------------------------------------------------------------------
cdef floating* _preactivation_ptr(floating[:, ::1] Z, int act, Py_ssize_t batch,
                                  Py_ssize_t n_out, str kernel) except? NULL:
    """&Z[0, 0] for GELU and SiLU (Z required, (batch, out)); NULL for the others."""
    if act != GELU and act != GELU_TANH and act != SILU:
        return NULL
    if Z is None:
        raise ValueError(f"{kernel}: activation code {act} needs the pre-activation buffer Z")
    if Z.shape[0] != batch or Z.shape[1] != n_out:
        raise ValueError(f"{kernel}: Z has shape {_shape2(Z)}, expected ({batch}, {n_out})")
    return &Z[0, 0]


cdef int _dense_forward_mv(const floating[:, ::1] X, const floating[:, ::1] W,
                           const floating[::1] b, int act, floating[:, ::1] out,
                           floating[:, ::1] Z) except -1:
    cdef Py_ssize_t batch = X.shape[0], n_in = X.shape[1], n_out = W.shape[1]
    if W.shape[0] != n_in or b.shape[0] != n_out or out.shape[0] != batch \
            or out.shape[1] != n_out:
        raise ValueError(f"dense_forward needs X (batch, in), W (in, out), b (out,) and out "
                         f"(batch, out); got X {_shape2(X)}, W {_shape2(W)}, b ({b.shape[0]},), "
                         f"out {_shape2(out)}")
    cdef floating* zs = _preactivation_ptr(Z, act, batch, n_out, "dense_forward")
    with nogil:
        _dense_forward(&X[0, 0], &W[0, 0], &b[0], act, &out[0, 0], batch, n_in, n_out, zs)
    return 0


cdef int _dense_backward_mv(floating[:, ::1] dA, const floating[:, ::1] X,
                            const floating[:, ::1] W, const floating[:, ::1] A, int act,
                            floating[:, ::1] dX, floating[:, ::1] dW,
                            floating[::1] db, floating[:, ::1] Z) except -1:
    cdef Py_ssize_t batch = X.shape[0], n_in = X.shape[1], n_out = W.shape[1]
    cdef floating* dX_ptr = NULL
    if W.shape[0] != n_in or A.shape[0] != batch or A.shape[1] != n_out \
            or dA.shape[0] != batch or dA.shape[1] != n_out or dW.shape[0] != n_in \
            or dW.shape[1] != n_out or db.shape[0] != n_out \
            or (dX is not None and (dX.shape[0] != batch or dX.shape[1] != n_in)):
        raise ValueError(f"dense_backward needs dA and A (batch, out), X (batch, in), W and dW "
                         f"(in, out), db (out,), dX (batch, in) or None; got dA {_shape2(dA)}, "
                         f"X {_shape2(X)}, W {_shape2(W)}, A {_shape2(A)}, dW {_shape2(dW)}, "
                         f"db ({db.shape[0]},)"
                         + ("" if dX is None else f", dX {_shape2(dX)}"))
    if dX is not None:
        dX_ptr = &dX[0, 0]
    cdef floating* zs = _preactivation_ptr(Z, act, batch, n_out, "dense_backward")
    with nogil:
        _dense_backward(&dA[0, 0], &X[0, 0], &W[0, 0], &A[0, 0], act, dX_ptr, &dW[0, 0],
                        &db[0], batch, n_in, n_out, zs)
    return 0


cdef double _loss_mv(int loss, const floating[:, ::1] Z, const floating[:, ::1] Y,
                     const int64_t[::1] labels, floating[:, ::1] dZ,
                     const double[::1] weights) except? -1:
    """Dispatch to a loss kernel; Y is None for cross-entropy, labels None otherwise; weights
    None for weights 1."""
    cdef Py_ssize_t n = Z.shape[0], k = Z.shape[1], i
    cdef double value
    cdef const double* w = NULL
    if dZ.shape[0] != n or dZ.shape[1] != k:
        raise ValueError(f"the gradient buffer has shape {_shape2(dZ)} but the predictions "
                         f"{_shape2(Z)}")
    if weights is not None:
        if weights.shape[0] != n:
            raise ValueError(f"weights has {weights.shape[0]} entries but the batch {n} rows")
        w = &weights[0]
    cdef double inv_mass = _inverse_mass(w, n)
    if loss == SOFTMAX_CE:
        if labels.shape[0] != n:
            raise ValueError(f"labels has {labels.shape[0]} entries but Z has {n} rows")
        i = _first_outside(labels, k)
        if i >= 0:
            raise ValueError(f"labels[{i}] = {labels[i]} is not a class index in [0, {k})")
        with nogil:
            value = _softmax_cross_entropy(&Z[0, 0], &labels[0], &dZ[0, 0], w, n, k, inv_mass)
        return value * inv_mass
    if Y.shape[0] != n or Y.shape[1] != k:
        raise ValueError(f"targets have shape {_shape2(Y)} but the predictions {_shape2(Z)}")
    with nogil:
        if loss == MSE:
            value = _mse(&Z[0, 0], &Y[0, 0], &dZ[0, 0], w, n, k, inv_mass)
        else:
            value = _sigmoid_binary_cross_entropy(&Z[0, 0], &Y[0, 0], &dZ[0, 0], w, n, k,
                                                  inv_mass)
    return value * inv_mass


cdef int _optimizer_mv(floating[::1] p, const floating[::1] g, floating[::1] s1,
                       floating[::1] s2, Step step) except -1:
    """Run one optimizer step over flat vectors; s1/s2 are its state (or None)."""
    cdef Py_ssize_t n = p.shape[0]
    cdef bint needs_s2 = step.rule == ADAM or step.rule == ADAMW or (
        step.rule == RMSPROP and step.mu_or_beta1 != 0)
    if (step.rule != SGD and s1 is None) or (needs_s2 and s2 is None):
        raise TypeError("the optimizer state arrays must be NumPy arrays, got None")
    if g.shape[0] != n or (s1 is not None and s1.shape[0] != n) \
            or (s2 is not None and s2.shape[0] != n):
        raise ValueError("params, grads and the optimizer state must have the same size")
    cdef floating* s1_ptr = &s1[0] if s1 is not None else NULL
    cdef floating* s2_ptr = &s2[0] if s2 is not None and needs_s2 else NULL
    cdef Py_ssize_t blk, n_blocks = (n + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    with nogil:
        for blk in prange(n_blocks, schedule="static", use_threads_if=n >= PARALLEL_MIN):
            _update(&step, &p[0], &g[0], s1_ptr, s2_ptr, blk * UPDATE_BLOCK,
                    min(n, (blk + 1) * UPDATE_BLOCK))
    return 0


cdef int _batchnorm_forward_mv(const floating[:, ::1] X, const floating[::1] gamma,
                               const floating[::1] beta, floating[::1] running_mean,
                               floating[::1] running_var, double momentum, double eps,
                               bint training, floating[:, ::1] out, floating[:, ::1] xhat,
                               floating[::1] inv_std) except -1:
    cdef Py_ssize_t rows = X.shape[0], cols = X.shape[1], jb
    cdef Py_ssize_t n_blocks = (cols + BLOCK - 1) // BLOCK
    if gamma.shape[0] != cols or beta.shape[0] != cols or running_mean.shape[0] != cols \
            or running_var.shape[0] != cols or inv_std.shape[0] != cols \
            or out.shape[0] != rows or out.shape[1] != cols or xhat.shape[0] != rows \
            or xhat.shape[1] != cols:
        raise ValueError(f"batchnorm_forward needs X, out and xhat (batch, n) and gamma, beta, "
                         f"running_mean, running_var, inv_std (n,); got X {_shape2(X)}, out "
                         f"{_shape2(out)}, xhat {_shape2(xhat)}, gamma ({gamma.shape[0]},), "
                         f"beta ({beta.shape[0]},), running_mean ({running_mean.shape[0]},), "
                         f"running_var ({running_var.shape[0]},), inv_std ({inv_std.shape[0]},)")
    with nogil:
        for jb in prange(n_blocks, schedule="static",
                         use_threads_if=rows * cols >= PARALLEL_MIN):
            _batchnorm_forward_block(&X[0, 0], &gamma[0], &beta[0], &running_mean[0],
                                     &running_var[0], <floating> momentum, <floating> eps,
                                     training, &out[0, 0], &xhat[0, 0], &inv_std[0], rows, cols,
                                     jb * BLOCK, min((jb + 1) * BLOCK, cols))
    return 0


cdef int _batchnorm_backward_mv(const floating[:, ::1] dY, const floating[:, ::1] xhat,
                                const floating[::1] inv_std, const floating[::1] gamma,
                                floating[:, ::1] dX, floating[::1] dgamma,
                                floating[::1] dbeta) except -1:
    cdef Py_ssize_t rows = dY.shape[0], cols = dY.shape[1], jb
    cdef Py_ssize_t n_blocks = (cols + BLOCK - 1) // BLOCK
    if inv_std.shape[0] != cols or gamma.shape[0] != cols or dgamma.shape[0] != cols \
            or dbeta.shape[0] != cols or xhat.shape[0] != rows or xhat.shape[1] != cols \
            or dX.shape[0] != rows or dX.shape[1] != cols:
        raise ValueError(f"batchnorm_backward needs dY, xhat and dX (batch, n) and inv_std, "
                         f"gamma, dgamma, dbeta (n,); got dY {_shape2(dY)}, xhat {_shape2(xhat)}, "
                         f"dX {_shape2(dX)}, inv_std ({inv_std.shape[0]},), gamma "
                         f"({gamma.shape[0]},), dgamma ({dgamma.shape[0]},), dbeta "
                         f"({dbeta.shape[0]},)")
    with nogil:
        for jb in prange(n_blocks, schedule="static",
                         use_threads_if=rows * cols >= PARALLEL_MIN):
            _batchnorm_backward_block(&dY[0, 0], &xhat[0, 0], &inv_std[0], &gamma[0],
                                      &dX[0, 0], GRAD_WRITE, &dgamma[0], &dbeta[0], rows, cols,
                                      jb * BLOCK, min((jb + 1) * BLOCK, cols))
    return 0


cdef Py_ssize_t _first_outside(const int64_t[::1] values, Py_ssize_t k) noexcept:
    """Index of the first entry outside [0, k), or −1 (class labels, row indices)."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(values.shape[0]):
            if values[i] < 0 or values[i] >= k:
                return i
    return -1


cdef str _shape2(object a):
    return f"({a.shape[0]}, {a.shape[1]})"


# ---------------------------------------------------------------------------------------------
# argument conversion for the def functions
# ---------------------------------------------------------------------------------------------
cdef object _float_dtype(object a, str name):
    """The dtype an output buffer fixes for the whole call: float32 or float64."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array (the kernels write into it), "
                        f"got {type(a).__name__}")
    if a.dtype == _F32:
        return _F32
    if a.dtype == _F64:
        return _F64
    raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")


cdef inline object _input(object a, object dtype):
    """a as a C-contiguous array of dtype: a itself when it already is one, else a copy."""
    return np.ascontiguousarray(a, dtype=dtype)


cdef inline object _output(object a, object dtype):
    """An output buffer as a C-contiguous array of dtype: a itself, or a copy that
    :func:`_write_back` copies into a after the kernel ran."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"output buffers must be NumPy arrays, got {type(a).__name__}")
    return np.ascontiguousarray(a, dtype=dtype)


cdef inline void _write_back(object a, object buf):
    if buf is not a:
        a[...] = buf


cdef inline int _check_act(int act) except -1:
    if act < IDENTITY or act > SILU:
        raise ValueError(f"unknown activation code {act}")
    return 0


# ---------------------------------------------------------------------------------------------
# the kernel interface
# ---------------------------------------------------------------------------------------------
cdef inline bint _keeps_z(int act) noexcept nogil:
    """Whether a Dense layer with this activation keeps its pre-activation z (GELU, SiLU)."""
    return act == GELU or act == GELU_TANH or act == SILU


def dense_forward(X, W, b, int act, out, Z=None):
    """out = f(X @ W + b); X (batch, in), W (in, out), b (out,), out (batch, out); Z (batch,
    out) receives z = X @ W + b for GELU and SiLU (required for those)."""
    _check_act(act)
    dtype = _float_dtype(out, "out")
    o = _output(out, dtype)
    z = _output(Z, dtype) if Z is not None and _keeps_z(act) else None
    if dtype is _F32:
        _dense_forward_mv[float](_input(X, dtype), _input(W, dtype), _input(b, dtype), act, o,
                                 z)
    else:
        _dense_forward_mv[double](_input(X, dtype), _input(W, dtype), _input(b, dtype), act, o,
                                  z)
    _write_back(out, o)
    if z is not None:
        _write_back(Z, z)


def dense_backward(dA, X, W, A, int act, dX, dW, db, Z=None):
    """Gradients of a dense layer from ∂L/∂a; dA is overwritten with dZ = ∂L/∂z.

    dW (in, out), db (out,) are written; dX (batch, in) is written unless it is None; Z is
    the pre-activation of GELU and SiLU layers.
    """
    _check_act(act)
    dtype = _float_dtype(dA, "dA")
    bufs = [_output(a, dtype) if a is not None else None for a in (dA, dX, dW, db)]
    z = _input(Z, dtype) if Z is not None and _keeps_z(act) else None
    if dtype is _F32:
        _dense_backward_mv[float](bufs[0], _input(X, dtype), _input(W, dtype),
                                  _input(A, dtype), act, bufs[1], bufs[2], bufs[3], z)
    else:
        _dense_backward_mv[double](bufs[0], _input(X, dtype), _input(W, dtype),
                                   _input(A, dtype), act, bufs[1], bufs[2], bufs[3], z)
    for a, buf in zip((dA, dX, dW, db), bufs):
        if a is not None:
            _write_back(a, buf)


cdef double _loss(int loss, Z, y, dZ, weights) except? -1:
    """The three loss functions of the interface: convert the arguments, run the loss code."""
    dtype = _float_dtype(dZ, "dZ")
    d = _output(dZ, dtype)
    labels = _input(y, _I64) if loss == SOFTMAX_CE else None
    Y = None if loss == SOFTMAX_CE else _input(y, dtype)
    if Y is not None and Y.ndim == 1:
        Y = Y.reshape(-1, 1)
    w = None if weights is None else _input(weights, _F64).reshape(-1)
    if dtype is _F32:
        value = _loss_mv[float](loss, _input(Z, dtype), Y, labels, d, w)
    else:
        value = _loss_mv[double](loss, _input(Z, dtype), Y, labels, d, w)
    _write_back(dZ, d)
    return value


def mse(Yhat, Y, dYhat, weights=None):
    """L = Σ wᵢ Σ_outputs ½(ŷ − y)² / Σ wᵢ (the batch mean without weights); writes
    dYhat = wᵢ(ŷ − y)/Σw."""
    return _loss(MSE, Yhat, Y, dYhat, weights)


def softmax_cross_entropy(Z, labels, dZ, weights=None):
    """L = Σ wᵢ (log Σ_k e^z_k − z_y) / Σ wᵢ over logits Z (the batch mean without weights);
    writes dZ = wᵢ(softmax(z) − onehot(y))/Σw.

    ``labels`` are integers in [0, Z.shape[1]).
    """
    return _loss(SOFTMAX_CE, Z, labels, dZ, weights)


def sigmoid_binary_cross_entropy(Z, Y, dZ, weights=None):
    """L = Σ wᵢ Σ_outputs [−y log σ(z) − (1−y) log(1−σ(z))] / Σ wᵢ over logits Z (batch, k),
    computed as max(z, 0) − z·y + log(1 + e^−|z|); writes dZ = wᵢ(σ(z) − y)/Σw."""
    return _loss(SIGMOID_BCE, Z, Y, dZ, weights)


cdef int _dropout_mv(const floating[:, ::1] X, double p, uint32_t key,
                     floating[:, ::1] out, const int64_t[::1] rows) except -1:
    if out.shape[0] != X.shape[0] or out.shape[1] != X.shape[1]:
        raise ValueError(f"dropout: out has shape {_shape2(out)} but X {_shape2(X)}")
    if rows is not None and rows.shape[0] != X.shape[0]:
        raise ValueError(f"dropout: rows has {rows.shape[0]} entries but X {X.shape[0]} rows")
    cdef const int64_t* r = &rows[0] if rows is not None and rows.shape[0] else NULL
    with nogil:
        _dropout_rows(&X[0, 0], &out[0, 0], 0, X.shape[0], X.shape[1], _dropout_threshold(p),
                      <floating> (1.0 / (1.0 - p)), key, GRAD_WRITE, r)
    return 0


def dropout(X, double p, key, out, rows=None):
    """Inverted dropout with the counter-based mask of ``key`` (fastnn.kernels):
    out = X ⊙ mask / (1 − p); the backward pass is the same call on ∂L/∂out. ``rows``
    numbers the rows in their minibatch (default 0, 1, …)."""
    dtype = _float_dtype(out, "out")
    o = _output(out, dtype)
    r = None if rows is None else _input(rows, _I64).reshape(-1)
    if dtype is _F32:
        _dropout_mv[float](_input(X, dtype), p, <uint32_t> key, o, r)
    else:
        _dropout_mv[double](_input(X, dtype), p, <uint32_t> key, o, r)
    _write_back(out, o)


cdef int _optimize(params, grads, s1, s2, Step step) except -1:
    """The optimizers of the interface: convert the arguments, run the rule's code."""
    dtype = _float_dtype(params, "params")
    bufs = [_output(a, dtype) if a is not None else None for a in (params, s1, s2)]
    flat = [_flat(b) for b in bufs]
    if dtype is _F32:
        _optimizer_mv[float](flat[0], _flat(_input(grads, dtype)), flat[1], flat[2], step)
    else:
        _optimizer_mv[double](flat[0], _flat(_input(grads, dtype)), flat[1], flat[2], step)
    for a, buf in zip((params, s1, s2), bufs):
        if a is not None:
            _write_back(a, buf)
    return 0


cdef inline object _flat(object a):
    """A C-contiguous array (or None) as a 1-D view."""
    return a if a is None or a.ndim == 1 else a.reshape(-1)


def sgd(params, grads, lr, weight_decay=0.0):
    """Plain gradient descent, in place: w ← w − η (∂L/∂w + λw)."""
    _optimize(params, grads, None, None, Step(SGD, lr, 0, 0, 0, weight_decay, False, 0))


def sgd_momentum(params, grads, velocity, lr, momentum, nesterov=False, weight_decay=0.0):
    """Momentum, in place: g = ∂L/∂w + λw; v ← μv + g; w ← w − η v (Nesterov: η (g + μv))."""
    _optimize(params, grads, velocity, None,
              Step(SGD_MOMENTUM, lr, momentum, 0, 0, weight_decay, nesterov, 0))


def adam(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay=0.0):
    """Adam (Kingma & Ba), in place, L2 weight decay in the gradient; ``t`` is the 1-based
    step count for bias correction."""
    _optimize(params, grads, m, v, Step(ADAM, lr, beta1, beta2, eps, weight_decay, False, t))


def adamw(params, grads, m, v, lr, beta1, beta2, eps, t, weight_decay):
    """AdamW (decoupled weight decay), in place; ``t`` is the 1-based step count."""
    _optimize(params, grads, m, v, Step(ADAMW, lr, beta1, beta2, eps, weight_decay, False, t))


def rmsprop(params, grads, square_avg, velocity, lr, alpha, eps, momentum=0.0,
            weight_decay=0.0):
    """RMSprop (centered=False), in place; ``velocity`` is used only with momentum."""
    _optimize(params, grads, square_avg, velocity if momentum else None,
              Step(RMSPROP, lr, momentum, alpha, eps, weight_decay, False, 0))


def batchnorm_forward(X, gamma, beta, running_mean, running_var, momentum, eps, training,
                      out, xhat, inv_std):
    """Batch normalisation of X (batch, n) per feature.

    Training: normalise with the batch statistics and update the running ones,
    r ← (1−momentum) r + momentum·stat (running variance uses the unbiased estimate).
    Evaluation: normalise with the running statistics. Writes out, xhat (batch, n) and
    inv_std (n,) for the backward pass.
    """
    dtype = _float_dtype(out, "out")
    bufs = [_output(a, dtype) for a in (running_mean, running_var, out, xhat, inv_std)]
    if dtype is _F32:
        _batchnorm_forward_mv[float](_input(X, dtype), _input(gamma, dtype),
                                     _input(beta, dtype), bufs[0], bufs[1], momentum, eps,
                                     training, bufs[2], bufs[3], bufs[4])
    else:
        _batchnorm_forward_mv[double](_input(X, dtype), _input(gamma, dtype),
                                      _input(beta, dtype), bufs[0], bufs[1], momentum, eps,
                                      training, bufs[2], bufs[3], bufs[4])
    for a, buf in zip((running_mean, running_var, out, xhat, inv_std), bufs):
        _write_back(a, buf)


def batchnorm_backward(dY, xhat, inv_std, gamma, dX, dgamma, dbeta):
    """Backward of training-mode batch normalisation; writes dX, dgamma, dbeta."""
    dtype = _float_dtype(dX, "dX")
    bufs = [_output(a, dtype) for a in (dX, dgamma, dbeta)]
    if dtype is _F32:
        _batchnorm_backward_mv[float](_input(dY, dtype), _input(xhat, dtype),
                                      _input(inv_std, dtype), _input(gamma, dtype), bufs[0],
                                      bufs[1], bufs[2])
    else:
        _batchnorm_backward_mv[double](_input(dY, dtype), _input(xhat, dtype),
                                       _input(inv_std, dtype), _input(gamma, dtype), bufs[0],
                                       bufs[1], bufs[2])
    for a, buf in zip((dX, dgamma, dbeta), bufs):
        _write_back(a, buf)


# ---------------------------------------------------------------------------------------------
# fused trainer: a whole epoch of a training plan in one nogil C loop
# ---------------------------------------------------------------------------------------------
cdef struct Net:
    # what a thread needs to run its rows of a minibatch; the arrays belong to the plan and
    # to the Trainer (fastnn.plan documents the op table and the buffers' layout)
    const int64_t* ops         # n_ops × OP_COLUMNS
    const double* fops         # n_ops × 2: BatchNorm's momentum, eps; Dropout's p
    const int64_t* actions     # n_actions × 2: (phase, op)
    Py_ssize_t n_ops, batch, n_in, k
    int loss
    void* params               # the model's parameters (floating)
    void* grads                # the model's gradients: band 0's, and BatchNorm's
    void* state                # BatchNorm running statistics
    void* acts                 # every op's output (the gathered minibatch at 0)
    void* dacts                # ∂L/∂ every op's output, same layout
    void* aux                  # BatchNorm's x̂ and 1/σ; GELU and SiLU layers' z
    void* tmp                  # batch × width: dZ Wᵀ before it is added to a shared gradient
    void* labels_b             # gathered int64 labels (cross-entropy)
    void* yb                   # gathered targets, batch × k floats (the other losses)
    double* wb                 # gathered row weights (a weighted fit)
    const double* weights      # the epoch's row weights in data order, or NULL (all 1)
    const int64_t* places      # the rows' numbers for Dropout's masks, or NULL (row i is i)
    int64_t seed               # the model's seed (Dropout's keys)


def make_trainer(plan):
    """The fused trainer executing ``plan`` (a :class:`fastnn.plan.Plan`), made once per plan."""
    trainer = plan.scratch.get("cython")
    if trainer is None:
        trainer = plan.scratch["cython"] = Trainer(plan)
    return trainer


cdef class Trainer:
    """Minibatch training of a plan, one epoch per call with the GIL released.

    Per minibatch, stage by stage: a ROWS stage gives each thread a band of the minibatch's
    rows to carry through its actions (gather, Dense, residual additions, loss), each band
    writing its Dense gradients into its own buffer; a WHOLE_BATCH stage (a BatchNorm pass)
    shares the features out among the threads. Then the optimizer step adds the bands'
    gradients and updates the parameters. A minibatch of fewer than MIN_BAND_WORK
    multiply-adds per band stays in one band, on one thread; the bands of a bigger one (one
    per thread: the result depends on the thread count) run on one thread or all of them,
    whichever ``teams`` measured faster (the result does not depend on that). A network with
    big layers and many parameters (``_teams.threaded_blas``) trains each
    minibatch as one band on the calling thread instead, its matmuls on BLAS's own
    threads. Parameters, gradients, BatchNorm state and optimizer state are the model's and
    the optimizer's own arrays, updated in place.
    """

    cdef Net net
    cdef object plan, dtype, fops
    cdef object acts, dacts, aux, tmp, labels_b, yb, wb    # one minibatch's workspace
    cdef object partials                               # gradients of the bands after the first
    cdef readonly object teams                         # threads running a split minibatch
    # how the last epoch split its minibatches: "bands", or "threaded blas" (one band whose
    # matmuls ran on BLAS's threads)
    cdef readonly str split

    def __init__(self, plan):
        cdef Net* net = &self.net
        self.plan = plan
        self.dtype = _float_dtype(plan.params, "the model's parameters")
        for name in ("ops", "actions", "stages"):
            if getattr(plan, name).dtype != _I64 or not getattr(plan, name).flags.c_contiguous:
                raise ValueError(f"plan.{name} must be C-contiguous int64")
        net.ops = <const int64_t*> _address(plan.ops)
        net.actions = <const int64_t*> _address(plan.actions)
        self.fops = np.ascontiguousarray(plan.fops, np.float64)
        net.fops = <const double*> _address(self.fops)
        net.n_ops, net.batch = len(plan.ops), plan.batch
        net.n_in, net.k, net.loss = plan.in_features, plan.out_features, plan.loss
        self.acts = np.zeros(plan.act_size, self.dtype)
        self.dacts = np.zeros(plan.act_size, self.dtype)
        self.aux = np.zeros(plan.aux_size, self.dtype)
        self.tmp = np.zeros(plan.batch * plan.width, self.dtype)
        self.labels_b = np.zeros(plan.batch, _I64)
        self.yb = np.zeros(plan.batch * plan.out_features, self.dtype)
        self.wb = np.zeros(plan.batch)
        self.partials = np.zeros(0, self.dtype)
        self.teams = _teams.shared_choice("cython", plan.batch, plan.work_per_row,
                                          plan.params.size, self.dtype.name)
        net.params, net.grads = _address(plan.params), _address(plan.grads)
        net.state = _address(plan.state) if plan.state.size else NULL
        net.acts, net.dacts = _address(self.acts), _address(self.dacts)
        net.aux, net.tmp = _address(self.aux), _address(self.tmp)
        net.labels_b, net.yb = _address(self.labels_b), _address(self.yb)
        net.wb, net.weights, net.seed = <double*> _address(self.wb), NULL, plan.seed
        net.places = NULL

    def prepare(self, X, y):
        """Nothing to compile: the extension was compiled when fastnn was installed."""

    def run_epoch(self, X, y, order, w=None):
        """Train on the minibatches ``order[i:i + batch]`` of (X, y), rows weighted by ``w``
        (float64 in data order, or None for all 1; a minibatch of weight 0 is skipped); return
        (Σ wᵢ × row loss, number of correct predictions or None for mse)."""
        return self._run(X, y, order, w, None, 0.0, True)

    def gradients(self, X, y, rows, w, places, double mass):
        """Fill the plan's gradients with Σ wᵢ∇lᵢ / mass over the minibatch X[rows] (at most
        a batch; Dropout masks of row numbers ``places``), updating nothing; return what
        :meth:`run_epoch` returns for it."""
        places = _input(places, _I64)
        if places.shape != (len(rows),) or len(rows) > self.net.batch or not mass > 0:
            raise ValueError(f"gradients needs at most {self.net.batch} rows, as many places "
                             f"and mass > 0; got {len(rows)} rows, places "
                             f"{np.shape(places)}, mass {mass}")
        return self._run(X, y, rows, w, places, mass, False)

    cdef tuple _run(self, X, y, order, w, places, double mass, bint update):
        plan = self.plan
        cdef Py_ssize_t n_in = self.net.n_in, k = self.net.k, bad
        X = _input(X, self.dtype)
        order = _input(order, _I64)
        if X.ndim != 2 or X.shape[1] != n_in or len(y) != len(X) or order.ndim != 1:
            raise ValueError(f"run_epoch needs X (n, {n_in}), y with n rows and a 1-D order; "
                             f"got X {X.shape}, y {np.shape(y)}, order {order.shape}")
        bad = _first_outside(order, X.shape[0])
        if bad >= 0:
            raise ValueError(f"order[{bad}] = {order[bad]} is not a row of X ({len(X)} rows)")
        labels, Y = None, None
        if self.net.loss == SOFTMAX_CE:
            labels = _input(y, _I64)
            bad = _first_outside(labels, k)
            if bad >= 0:
                raise ValueError(f"y[{bad}] = {labels[bad]} is not a class index in [0, {k})")
        else:
            Y = _input(y, self.dtype).reshape(len(X), -1)
            if Y.shape[1] != k:
                raise ValueError(f"y has {Y.shape[1]} columns but the model outputs {k}")
        if w is not None:
            w = _input(w, _F64)
            if w.shape != (len(X),):
                raise ValueError(f"w has shape {np.shape(w)}, expected ({len(X)},)")
        threads = fastnn_max_threads()
        n_params = plan.params.size
        if self.partials.size < (threads - 1) * n_params:    # threads were raised
            self.partials = np.zeros((threads - 1) * n_params, self.dtype)
        batch = self.net.batch
        bands = _bands(batch, plan.work_per_row, min(threads, MAX_BANDS))[0]
        n_batches = (len(order) + batch - 1) // batch
        threaded_blas = OPENMP and _teams.threaded_blas(threads, n_params, batch,
                                                        plan.max_layer_work)
        self.split = "threaded blas" if threaded_blas else "bands"
        if threaded_blas:                   # one band; its matmuls on BLAS's threads
            bands, segments = 1, [(0, n_batches, 1)]
        else:
            segments = _teams.runs(self.teams, n_batches, bands, update,
                                   batch * plan.work_per_row)
        total, correct = 0.0, 0
        # the bands call BLAS inside the parallel region: one BLAS thread each, for this call
        with kernel_blas_threads(threads if threaded_blas else 1) if OPENMP else _NO_LIMIT:
            for first, count, team in segments:
                rows = order[first * batch:(first + count) * batch]
                if self.dtype is _F32:
                    loss, right = _epoch[float](self, X, Y, labels, rows, w, bands, team,
                                                places, mass, update, threaded_blas)
                else:
                    loss, right = _epoch[double](self, X, Y, labels, rows, w, bands, team,
                                                 places, mass, update, threaded_blas)
                total, correct = total + loss, correct + right
        return total, None if self.net.loss == MSE else correct

    def sync(self):
        """Nothing to copy: the trainer works in the model's and optimizer's own arrays."""

    def push(self):
        """Nothing to copy: the host buffers a callback wrote are the ones the trainer trains."""


class _NoLimit:
    """A context manager that changes nothing (no OpenMP: BLAS keeps its own threads)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LIMIT = _NoLimit()


cdef void* _address(object array):
    return <void*> <size_t> array.ctypes.data


cdef enum:
    MAX_BANDS = 64                    # (the band arrays on the stack)


cdef Py_ssize_t _n_correct(int loss, const floating* out, const int64_t* labels,
                           const floating* Y, Py_ssize_t rows, Py_ssize_t k) noexcept nogil:
    """Correct predictions on logits: argmax z = y (cross-entropy), [z > 0] = y on every output
    (binary cross-entropy); 0 for mse."""
    cdef Py_ssize_t i, j, best, right = 0
    cdef bint row_right
    for i in range(rows):
        if loss == SOFTMAX_CE:
            best = 0
            for j in range(1, k):
                if out[i * k + j] > out[i * k + best]:
                    best = j
            right += best == labels[i]
        elif loss == SIGMOID_BCE:
            row_right = True
            for j in range(k):
                row_right = row_right and (out[i * k + j] > 0) == (Y[i * k + j] > 0.5)
            right += row_right
    return right


cdef inline void _add_into(floating* dst, const floating* src, Py_ssize_t n,
                           int mode) noexcept nogil:
    """dst[:n] = src (GRAD_WRITE) or += src (GRAD_ADD)."""
    cdef Py_ssize_t i
    if mode == GRAD_WRITE:
        memcpy(dst, src, n * sizeof(floating))
    elif mode == GRAD_ADD:
        for i in range(n):
            dst[i] += src[i]


cdef inline floating* _preactivations(floating* aux, const int64_t* op,
                                      Py_ssize_t r0) noexcept nogil:
    """Row r0 of a Dense op's saved pre-activation z (GELU, SiLU), NULL for the others."""
    if _keeps_z(<int> op[ACT]):
        return aux + op[AUX] + r0 * op[NOUT]
    return NULL


cdef double _band_actions(const Net* net, Py_ssize_t a, Py_ssize_t b, floating* g,
                          const floating* X, const floating* Y, const int64_t* labels,
                          const int64_t* rows_of, Py_ssize_t r0, Py_ssize_t r1,
                          Py_ssize_t nb, double inv_mass, int64_t draw,
                          Py_ssize_t* right) noexcept nogil:
    """Actions a..b of a ROWS stage for rows r0..r1 of a minibatch of nb rows (rows_of[i] is
    the row of X of its i-th sample; inv_mass is 1/Σ of its weights; draw, the model's
    training-step count, keys Dropout's masks). Dense gradients go into g (laid out as the
    model's); returns this band's Σ wᵢ × row loss when the stage holds the loss."""
    cdef floating* p = <floating*> net.params
    cdef floating* acts = <floating*> net.acts
    cdef floating* dacts = <floating*> net.dacts
    cdef floating* tmp = <floating*> net.tmp
    cdef floating* aux = <floating*> net.aux
    cdef const floating* state = <const floating*> net.state
    cdef floating* yb = <floating*> net.yb
    cdef int64_t* lb = <int64_t*> net.labels_b
    cdef const double* wb = net.wb + r0 if net.weights != NULL else NULL
    cdef const int64_t* op
    cdef Py_ssize_t i, j, m = r1 - r0, nin, nout, w, k = net.k, n_in = net.n_in
    cdef Py_ssize_t act_index
    cdef int phase
    cdef floating* dX
    cdef double value = 0, p_drop
    for act_index in range(a, b):
        phase = <int> net.actions[2 * act_index]
        op = net.ops + OP_COLUMNS * net.actions[2 * act_index + 1]
        if phase == GATHER:                                  # the band's samples
            for i in range(r0, r1):
                memcpy(acts + i * n_in, X + rows_of[i] * n_in, n_in * sizeof(floating))
                if net.loss == SOFTMAX_CE:
                    lb[i] = labels[rows_of[i]]
                else:
                    memcpy(yb + i * k, Y + rows_of[i] * k, k * sizeof(floating))
                if net.weights != NULL:
                    net.wb[i] = net.weights[rows_of[i]]
            continue
        if phase == LOSS:                                    # on the last op's output
            op = net.ops + OP_COLUMNS * (net.n_ops - 1)
            w = op[OUT] + r0 * k
            if net.loss == MSE:
                value = _mse(acts + w, yb + r0 * k, dacts + w, wb, m, k, inv_mass)
            elif net.loss == SOFTMAX_CE:
                value = _softmax_cross_entropy(acts + w, lb + r0, dacts + w, wb, m, k, inv_mass)
            else:
                value = _sigmoid_binary_cross_entropy(acts + w, yb + r0 * k, dacts + w, wb, m,
                                                      k, inv_mass)
            right[0] += _n_correct(net.loss, acts + w, lb + r0, yb + r0 * k, m, k)
            continue
        nin, nout = op[NIN], op[NOUT]
        if op[KIND] == ADD:                                  # y = x + block(x)
            if phase == FORWARD:
                for i in range(r0 * nout, r1 * nout):
                    acts[op[OUT] + i] = acts[op[SKIP] + i] + acts[op[IN] + i]
            else:                                            # both inputs get ∂L/∂y
                _add_into(dacts + op[IN] + r0 * nin, dacts + op[OUT] + r0 * nout, m * nout,
                          <int> op[DX])
                _add_into(dacts + op[SKIP] + r0 * nin, dacts + op[OUT] + r0 * nout, m * nout,
                          <int> op[DSKIP])
            continue
        if op[KIND] == STANDARDIZE:                          # y = (x − mean) / std
            if phase == FORWARD:
                for i in range(r0, r1):
                    for j in range(nin):
                        acts[op[OUT] + i * nin + j] = (acts[op[IN] + i * nin + j]
                                                       - state[op[SOFF] + j]) \
                            / state[op[SOFF] + nin + j]
            elif op[DX] != GRAD_SKIP:                        # ∂L/∂x = ∂L/∂y / std
                for i in range(r0, r1):
                    for j in range(nin):
                        if op[DX] == GRAD_ADD:
                            dacts[op[IN] + i * nin + j] += (dacts[op[OUT] + i * nin + j]
                                                            / state[op[SOFF] + nin + j])
                        else:
                            dacts[op[IN] + i * nin + j] = (dacts[op[OUT] + i * nin + j]
                                                           / state[op[SOFF] + nin + j])
            continue
        if op[KIND] == DROPOUT:                              # y = x ⊙ mask / (1 − p)
            p_drop = net.fops[2 * (net.actions[2 * act_index + 1])]
            if phase == FORWARD:
                _dropout_rows(acts + op[IN], acts + op[OUT], r0, r1, nin,
                              _dropout_threshold(p_drop), <floating> (1.0 / (1.0 - p_drop)),
                              _dropout_key(net.seed, draw, op[AUX]), GRAD_WRITE, net.places)
            elif op[DX] != GRAD_SKIP:                        # ∂L/∂x = ∂L/∂y ⊙ mask / (1 − p)
                _dropout_rows(dacts + op[OUT], dacts + op[IN], r0, r1, nin,
                              _dropout_threshold(p_drop), <floating> (1.0 / (1.0 - p_drop)),
                              _dropout_key(net.seed, draw, op[AUX]), <int> op[DX],
                              net.places)
            continue
        if phase == FORWARD:                                 # Dense: a = f(x·W + b)
            _dense_forward(acts + op[IN] + r0 * nin, p + op[POFF], p + op[POFF] + nin * nout,
                           <int> op[ACT], acts + op[OUT] + r0 * nout, m, nin, nout,
                           _preactivations(aux, op, r0))
            continue
        dX = NULL                                            # Dense backward
        if op[DX] == GRAD_WRITE:
            dX = dacts + op[IN] + r0 * nin
        elif op[DX] == GRAD_ADD:
            dX = tmp + r0 * nin
        _dense_backward(dacts + op[OUT] + r0 * nout, acts + op[IN] + r0 * nin, p + op[POFF],
                        acts + op[OUT] + r0 * nout, <int> op[ACT], dX, g + op[POFF],
                        g + op[POFF] + nin * nout, m, nin, nout, _preactivations(aux, op, r0))
        if op[DX] == GRAD_ADD:                               # x also feeds a skip
            _add_into(dacts + op[IN] + r0 * nin, tmp + r0 * nin, m * nin, GRAD_ADD)
    return value


cdef void _batchnorm_block(const Net* net, floating* p, int phase, const int64_t* op,
                           const double* fop, Py_ssize_t nb, Py_ssize_t jb) noexcept nogil:
    """Feature block jb of a BatchNorm op's training forward pass or backward pass (p: the
    parameters, which fix the dtype)."""
    cdef floating* g = <floating*> net.grads
    cdef floating* state = <floating*> net.state
    cdef floating* aux = <floating*> net.aux
    cdef Py_ssize_t n = op[NIN], j0 = jb * BLOCK, j1 = min((jb + 1) * BLOCK, n)
    cdef floating* xhat = aux + op[AUX]
    cdef floating* inv_std = aux + op[AUX] + net.batch * n
    if phase == FORWARD:
        _batchnorm_forward_block((<floating*> net.acts) + op[IN], p + op[POFF],
                                 p + op[POFF] + n, state + op[SOFF], state + op[SOFF] + n,
                                 <floating> fop[0], <floating> fop[1], True,
                                 (<floating*> net.acts) + op[OUT], xhat, inv_std, nb, n, j0, j1)
    else:
        _batchnorm_backward_block((<floating*> net.dacts) + op[OUT], xhat, inv_std,
                                  p + op[POFF], (<floating*> net.dacts) + op[IN], <int> op[DX],
                                  g + op[POFF], g + op[POFF] + n, nb, n, j0, j1)


cdef tuple _epoch(Trainer self, const floating[:, ::1] X, const floating[:, ::1] Y,
                  const int64_t[::1] labels, const int64_t[::1] order,
                  const double[::1] weights, int bands_max, int team,
                  const int64_t[::1] places, double mass, bint update, bint threaded_blas):
    """One epoch of :class:`Trainer`: returns (Σ wᵢ × row loss, correct predictions) and
    advances ``plan.step`` and ``plan.train_steps`` by the minibatches trained (a minibatch
    whose weights sum to 0 is skipped).

    With ``update`` False (:meth:`Trainer.gradients`: one minibatch) the bands' gradients are
    summed, normalised by ``mass``, and nothing is updated or counted; ``places`` (or None)
    numbers the rows for Dropout.

    One parallel region for the whole epoch: every thread walks the minibatches and their
    stages; after each stage the threads wait for each other; then the blocks of the
    optimizer step, which first add the bands' gradients. No thread idles between regions.
    A full minibatch has ``bands_max`` bands (from the thread count: the result depends on
    it), run by ``team`` threads (at most one per band; the result does not depend on it).
    """
    plan = self.plan
    cdef floating[::1] P = plan.params, G = plan.grads, S1 = plan.s1, S2 = plan.s2
    cdef floating[::1] Partials = self.partials
    cdef const int64_t[:, ::1] stages = plan.stages
    cdef const int64_t[::1] actions = plan.actions.reshape(-1)
    cdef const double[::1] hyper = plan.hyper
    cdef floating* p = &P[0]
    cdef floating* g = &G[0]
    cdef floating* partials = &Partials[0] if Partials.shape[0] else NULL
    cdef floating* s1 = &S1[0] if S1.shape[0] else NULL
    cdef floating* s2 = &S2[0] if S2.shape[0] else NULL
    cdef const floating* x = &X[0, 0]
    cdef const floating* y = &Y[0, 0] if Y is not None else NULL
    cdef const int64_t* lab = &labels[0] if labels is not None else NULL
    cdef const Net* net = &self.net
    cdef const int64_t* op = NULL                                           # (per thread)
    cdef Py_ssize_t n = order.shape[0], n_params = P.shape[0], batch = net.batch
    cdef Py_ssize_t n_batches = (n + batch - 1) // batch, n_stages = stages.shape[0]
    cdef Py_ssize_t n_blocks = (n_params + UPDATE_BLOCK - 1) // UPDATE_BLOCK
    cdef Py_ssize_t c, i, blk, lo, hi, jb, correct = 0
    cdef Py_ssize_t mb = 0, rows = 0, band = 0, bands = 0, st = 0, a = 0   # (per thread)
    cdef Py_ssize_t summed = 0, each = 0, first = 0, last = 0             # (per thread)
    cdef double sq = 0, scale = 1, clip = hyper[CLIP_NORM]
    cdef double[::1] BlockSq = np.zeros(max(n_blocks, 1))
    cdef double* block_sq = &BlockSq[0]
    cdef Py_ssize_t work = plan.work_per_row
    team = max(1, min(team, bands_max))
    cdef long t = plan.step[0]
    cdef double value, total = 0
    cdef int64_t draws = plan.train_steps[0]
    # per minibatch: 1/Σ of its weights (0: skipped) and the minibatches trained before it
    cdef double[::1] InvMass = np.zeros(max(n_batches, 1))
    cdef int64_t[::1] Before = np.zeros(max(n_batches, 1), _I64)
    cdef Py_ssize_t trained = 0
    self.net.weights = &weights[0] if weights is not None else NULL
    self.net.places = &places[0] if places is not None and places.shape[0] else NULL
    for mb in range(n_batches):
        rows = min(batch, n - mb * batch)
        if mass > 0:
            InvMass[mb] = 1.0 / mass
        elif weights is None:
            InvMass[mb] = 1.0 / rows
        else:
            InvMass[mb] = 0
            for i in range(rows):
                InvMass[mb] += weights[order[mb * batch + i]]
            InvMass[mb] = 1.0 / InvMass[mb] if InvMass[mb] > 0 else 0.0
        Before[mb] = trained
        trained += InvMass[mb] != 0
    cdef double band_loss[MAX_BANDS]
    cdef Py_ssize_t band_right[MAX_BANDS]
    cdef Step step = Step(plan.rule, hyper[0], hyper[1], hyper[2], hyper[3], hyper[4],
                          hyper[5] != 0, t)
    cdef fastnn_team_barrier bar
    memset(&bar, 0, sizeof(bar))
    for c in range(MAX_BANDS):
        band_loss[c], band_right[c] = 0, 0
    if threaded_blas:
        fastnn_set_threaded_blas(1)
    with nogil, parallel(num_threads=team, use_threads_if=team > 1):
        for mb in range(n_batches):                     # every thread, in step with the others
            if InvMass[mb] == 0:
                continue                                # weight 0: the batch counts for nothing
            rows = min(batch, n - mb * batch)
            bands, band = _bands(rows, work, bands_max)
            for st in range(n_stages):
                a = stages[st, 1]
                if stages[st, 0] == ROWS:
                    first, last = _team_share(bands)
                    for c in range(first, last):        # each band its rows
                        value = _band_actions(net, a, stages[st, 2],
                                              g if c == 0 else partials + (c - 1) * n_params,
                                              x, y, lab, &order[mb * batch], c * band,
                                              min(rows, (c + 1) * band), rows, InvMass[mb],
                                              draws + Before[mb], &band_right[c])
                        band_loss[c] += value
                else:                                   # BatchNorm: feature blocks
                    op = net.ops + OP_COLUMNS * actions[2 * a + 1]
                    first, last = _team_share((op[NIN] + BLOCK - 1) // BLOCK)
                    for jb in range(first, last):
                        _batchnorm_block(net, p, <int> actions[2 * a], op,
                                         net.fops + 2 * actions[2 * a + 1], rows, jb)
                fastnn_team_wait(&bar)                        # the stage is done for every row
            if not update:                              # the gradients are the result
                first, last = _team_share(n_blocks)
                for blk in range(first, last):
                    lo, hi = blk * UPDATE_BLOCK, min(n_params, (blk + 1) * UPDATE_BLOCK)
                    _sum_bands(g, partials, n_params, bands, lo, hi)
                fastnn_team_wait(&bar)
                continue
            summed, scale = bands, 1.0
            if clip > 0:                                # the global norm: every band summed
                first, last = _team_share(n_blocks)
                for blk in range(first, last):
                    lo, hi = blk * UPDATE_BLOCK, min(n_params, (blk + 1) * UPDATE_BLOCK)
                    _sum_bands(g, partials, n_params, bands, lo, hi)
                    block_sq[blk] = _sum_squares(g, lo, hi)
                fastnn_team_wait(&bar)
                sq = 0                                  # (each thread, in the same order)
                for each in range(n_blocks):
                    sq = sq + block_sq[each]
                summed, scale = 1, min(1.0, clip / (sqrt(sq) + CLIP_EPS))
            first, last = _team_share(n_blocks)
            for blk in range(first, last):              # Σ band gradients, then update
                lo, hi = blk * UPDATE_BLOCK, min(n_params, (blk + 1) * UPDATE_BLOCK)
                _sum_bands(g, partials, n_params, summed, lo, hi)
                if scale != 1.0:
                    for i in range(lo, hi):
                        g[i] = g[i] * <floating> scale  # g ← g·min(1, c/(‖g‖ + ε))
                _update_at(&step, t + Before[mb] + 1, p, g, s1, s2, lo, hi)
            fastnn_team_wait(&bar)                            # the parameters are updated
    fastnn_set_threaded_blas(0)
    for c in range(MAX_BANDS):
        total += band_loss[c]
        correct += band_right[c]
    if update:
        plan.step[0] = t + trained
        plan.train_steps[0] = draws + trained
    self.net.weights, self.net.places = NULL, NULL
    return total, correct


cdef inline (Py_ssize_t, Py_ssize_t) _team_share(Py_ssize_t n) noexcept nogil:
    """This thread's [first, last) of n items, split in contiguous static shares over the
    team. (Not a prange: GCC puts a libgomp barrier before every worksharing loop whose
    variables Cython makes both first- and lastprivate, and under OMP_WAIT_POLICY=PASSIVE
    each such barrier sleeps on a futex; the trainer's own barriers already order the stages.)
    """
    cdef Py_ssize_t team = fastnn_team_size(), rank = fastnn_team_rank()
    return n * rank // team, n * (rank + 1) // team


cdef inline void _sum_bands(floating* g, const floating* partials, Py_ssize_t n_params,
                            Py_ssize_t bands, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """g[lo:hi] += the gradients of bands 1..bands−1 (band 0 wrote g itself)."""
    cdef Py_ssize_t c, i
    for c in range(1, bands):
        for i in range(lo, hi):
            g[i] += partials[(c - 1) * n_params + i]


cdef inline double _sum_squares(const floating* g, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Σ g[lo:hi]², in double."""
    cdef Py_ssize_t i
    cdef double sq = 0
    for i in range(lo, hi):
        sq += <double> g[i] * g[i]
    return sq


cdef inline void _update_at(const Step* step, long t, floating* p, const floating* g,
                            floating* s1, floating* s2, Py_ssize_t lo,
                            Py_ssize_t hi) noexcept nogil:
    """:func:`_update` at step count t (the trainer's threads each know the step they are at)."""
    cdef Step at = step[0]
    at.t = t
    _update(&at, p, g, s1, s2, lo, hi)


cdef (int, Py_ssize_t) _bands(Py_ssize_t rows, Py_ssize_t work_per_row,
                              int threads) noexcept nogil:
    """(number of bands, rows per band) for a minibatch: as many as threads, as long as each
    carries MIN_BAND_ROWS rows and MIN_BAND_WORK multiply-adds."""
    cdef Py_ssize_t bands = max(1, min(<Py_ssize_t> threads, rows * work_per_row // MIN_BAND_WORK))
    cdef Py_ssize_t band = max(<Py_ssize_t> MIN_BAND_ROWS, (rows + bands - 1) // bands)
    return <int> ((rows + band - 1) // band), band


# ---------------------------------------------------------------------------------------------
# the fused forward pass of an inference plan (predict, evaluate)
# ---------------------------------------------------------------------------------------------
def make_predictor(plan):
    """The fused forward pass executing ``plan`` (a :class:`fastnn.plan.InferencePlan`)."""
    return Predictor(plan)


cdef class Predictor:
    """The forward pass of an inference plan over any number of rows, the GIL released.

    The rows are cut into chunks of at most ``plan.rows``; in one parallel region each thread
    carries its chunks (every team-th) through every op with single-threaded matmuls, in a
    workspace of its own, so no thread waits for another between layers. Which thread runs a
    chunk does not change its result; the chunk size (from the rows and the thread count) may
    change the last bits, as a matmul's kernel depends on its size."""

    cdef object plan, dtype, fops, lanes

    def __init__(self, plan):
        self.plan = plan
        self.dtype = _float_dtype(plan.params, "the model's parameters")
        if plan.ops.dtype != _I64 or not plan.ops.flags.c_contiguous:
            raise ValueError("plan.ops must be C-contiguous int64")
        self.fops = np.ascontiguousarray(plan.fops, np.float64)
        self.lanes = np.zeros(0, self.dtype)

    def run(self, X, out):
        """out (n, out_features) = the network's output for X (n, in_features); whether every
        value of X was finite (a chunk holding a NaN or Inf is skipped)."""
        plan = self.plan
        X = _input(X, self.dtype)
        check_predict_arrays(plan, X, out)
        o = _output(out, self.dtype)
        cdef Py_ssize_t n = X.shape[0], lane = plan.act_size + plan.scratch_size
        chunk, team = predict_split(n, plan.rows, plan.work_per_row, fastnn_max_threads())
        if self.lanes.size < team * lane:
            self.lanes = np.zeros(team * lane, self.dtype)
        finite = True
        if n:
            with kernel_blas_threads(1) if OPENMP else _NO_LIMIT:
                if self.dtype is _F32:
                    finite = _infer[float](self, X, o, chunk, team, lane)
                else:
                    finite = _infer[double](self, X, o, chunk, team, lane)
        _write_back(out, o)
        return finite


cdef bint _finite(const floating* x, Py_ssize_t n) noexcept nogil:
    """Whether x[:n] holds no NaN or Inf: x − x is 0 for a finite x and NaN otherwise (with
    no branch, the loop vectorises)."""
    cdef Py_ssize_t i
    cdef int bad = 0
    for i in range(n):
        bad |= (x[i] - x[i]) != 0
    return not bad


cdef bint _infer(Predictor self, const floating[:, ::1] X, floating[:, ::1] out,
                 Py_ssize_t chunk, int team, Py_ssize_t lane):
    """:meth:`Predictor.run`: thread t runs chunks t, t + team, … in lane t of the workspace,
    each checked for NaN and Inf first (while its rows come into cache for the first
    matmul); returns whether every chunk was finite."""
    plan = self.plan
    cdef floating[::1] P = plan.params, Lanes = self.lanes
    cdef floating[::1] S = plan.state if plan.state.size else plan.params
    cdef const int64_t[:, ::1] ops = plan.ops
    cdef const double[:, ::1] fops = self.fops
    cdef Py_ssize_t n = X.shape[0], n_in = X.shape[1], k = out.shape[1]
    cdef Py_ssize_t n_chunks = (n + chunk - 1) // chunk, c = 0, r0 = 0, m = 0   # (per thread)
    cdef floating* lanes = &Lanes[0]
    cdef Py_ssize_t act_size = plan.act_size, output = plan.out
    cdef int[::1] Bad = np.zeros(team, np.intc)                  # per thread: met a NaN or Inf
    cdef int* bad = &Bad[0]
    with nogil, parallel(num_threads=team, use_threads_if=team > 1):
        c = fastnn_team_rank()
        while c < n_chunks:
            r0 = c * chunk
            m = min(chunk, n - r0)
            if not _finite(&X[r0, 0], m * n_in):
                bad[fastnn_team_rank()] = 1
            else:
                _infer_chunk(&ops[0, 0], &fops[0, 0], ops.shape[0], &P[0], &S[0], &X[r0, 0],
                             lanes + fastnn_team_rank() * lane, act_size, m, output,
                             &out[r0, 0], k)
            c = c + fastnn_team_size()
    return not np.any(Bad)


cdef void _infer_chunk(const int64_t* ops, const double* fops, Py_ssize_t n_ops,
                       const floating* p, floating* state, const floating* x, floating* acts,
                       Py_ssize_t act_size, Py_ssize_t m, Py_ssize_t output, floating* y,
                       Py_ssize_t k) noexcept nogil:
    """m rows x (m × n_in) through every op of an inference plan, each op's output an (m, nout)
    block at its offset in acts (offset 0: x itself); then the output block copied to y (m ×
    k). The floats from act_size on are scratch: GELU's and SiLU's z, BatchNorm's 1/σ."""
    cdef const int64_t* op
    cdef const floating* src
    cdef const floating* skip
    cdef floating* dst
    cdef floating* scratch = acts + act_size
    cdef Py_ssize_t o, i, j, jb, nin, nout
    cdef int act
    for o in range(n_ops):
        op = ops + OP_COLUMNS * o
        nin, nout = op[NIN], op[NOUT]
        src = x if op[IN] == 0 else acts + op[IN]
        dst = acts + op[OUT]
        if op[KIND] == DENSE:                                # a = f(x·W + b)
            act = <int> op[ACT]
            _dense_forward(src, p + op[POFF], p + op[POFF] + nin * nout, act, dst, m, nin,
                           nout, scratch if _keeps_z(act) else NULL)
        elif op[KIND] == BATCHNORM:                          # the running statistics
            for jb in range((nin + BLOCK - 1) // BLOCK):     # (x̂ written into the output)
                _batchnorm_forward_block(src, p + op[POFF], p + op[POFF] + nin,
                                         state + op[SOFF], state + op[SOFF] + nin,
                                         <floating> fops[2 * o], <floating> fops[2 * o + 1],
                                         False, dst, dst, scratch, m, nin, jb * BLOCK,
                                         min((jb + 1) * BLOCK, nin))
        elif op[KIND] == ADD:                                # y = x + block(x)
            skip = x if op[SKIP] == 0 else acts + op[SKIP]
            for i in range(m * nout):
                dst[i] = skip[i] + src[i]
        else:                                                # Standardize: (x − mean) / std
            for i in range(m):
                for j in range(nin):
                    dst[i * nin + j] = (src[i * nin + j] - state[op[SOFF] + j]) \
                        / state[op[SOFF] + nin + j]
    memcpy(y, acts + output, m * k * sizeof(floating))
