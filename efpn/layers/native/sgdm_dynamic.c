/* SGDM's dynamic branch at inference, fused: razor map, per-pixel kernel logits, softmax, static guidance and the
 * strided aggregation in one pass over a band of output rows (efpn/layers/native.py builds and calls it).
 *
 * For one image x (C, H, W) and output rows [row0, row1) of (Ho, Wo), with p = k / 2 and taps q = (dy, dx):
 *   R0[y, x] = sum_c wa[c] x[c, y, x]                       razor: the channel mean (+ a learned 1x1 part)
 *   R1[y, x] = max_c x[c, y, x] + sum_c wb[c] x[c, y, x]    razor: the channel max  (+ a learned 1x1 part)
 *   L[gq, i, j] = bias[gq] + sum_{r, dy, dx} ws[gq, r, dy, dx] R_r[s i + dy - p, s j + dx - p]   (zero padding)
 *   D[g, q] = softmax_q L[g*kk + q]                          per output pixel
 *   K[g, q] = D S[g, q] / (sum_q' |D S[g, q']| + eps)         when a static bank S is given, else K = D
 *   out[c, i, j] = sum_q K[c / (C / G), q, i, j] x[c, s i + dy - p, s j + dx - p]
 * which is what RazorKernelGenerator (BatchNorm folded into ws, bias), guide_kernels and apply_dynamic_kernels
 * compute in several passes. Loops run over a row's columns innermost so the compiler vectorises them.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

static int imax(int a, int b) { return a > b ? a : b; }

/* e^x for x <= 0 (softmax after subtracting the max), Cephes' single-precision method: x = n ln2 + r, |r| <= ln2/2,
 * e^r by a degree-6 polynomial (relative error ~1e-7, as libm's expf), times 2^n built in the exponent bits. Written
 * with GCC/Clang vector types, 8 lanes at a time (libm's expf does not vectorise without -ffast-math). */
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

static inline v8f exp8_nonpos(v8f x) {
    const v8f lo = {-87.f, -87.f, -87.f, -87.f, -87.f, -87.f, -87.f, -87.f};
    const v8i under = x < lo; /* lanes of -1 where x < -87: e^-87 is still a normal float */
    x = (v8f)(((v8i)x & ~under) | ((v8i)lo & under));
    const float round = 12582912.0f; /* 1.5 * 2^23: adding and subtracting it rounds to the nearest integer */
    const v8f n = (x * 1.44269504088896341f + round) - round;
    const v8f r = x - n * 0.693359375f + n * 2.12194440e-4f;
    v8f y = r * 1.9875691500e-4f + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    const v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    return y * (v8f)e;
}

/* b[j] = e^(b[j] - mx[j]), sm[j] += b[j] for j < n */
static void exp_sub_acc(float *b, const float *mx, float *sm, int n) {
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        v8f v, m, a;
        memcpy(&v, b + j, sizeof v);
        memcpy(&m, mx + j, sizeof m);
        memcpy(&a, sm + j, sizeof a);
        v = exp8_nonpos(v - m);
        a += v;
        memcpy(b + j, &v, sizeof v);
        memcpy(sm + j, &a, sizeof a);
    }
    if (j < n) { /* the tail through one padded vector */
        v8f v = {0}, m = {0};
        memcpy(&v, b + j, sizeof(float) * (n - j));
        memcpy(&m, mx + j, sizeof(float) * (n - j));
        v = exp8_nonpos(v - m);
        for (int t = 0; j + t < n; ++t) { b[j + t] = v[t]; sm[j + t] += v[t]; }
    }
}

static int imin(int a, int b) { return a < b ? a : b; }

/* columns j of an output row whose tap dx reads inside [0, W): s j + dx - p in [0, W) */
static void tap_range(int dx, int p, int s, int W, int Wo, int *j0, int *j1) {
    int lo = p - dx; /* s j >= lo */
    *j0 = lo <= 0 ? 0 : (lo + s - 1) / s;
    *j1 = imin(Wo, (W - 1 - dx + p) / s + 1);
    if (W - 1 - dx + p < 0) *j1 = 0;
    *j0 = imax(*j0, 0);
}

/* Output rows computed together: their input rows (razor map and pixels) stay in the L2 cache between the razor
 * pass and the aggregation, so x is read from memory about once. */
#define CHUNK_ROWS 8

/* Scratch floats efpn_sgdm_dynamic needs for a band of `rows` output rows. */
long efpn_sgdm_scratch(int G, int k, int s, int W, int Wo, int rows) {
    if (rows > CHUNK_ROWS) rows = CHUNK_ROWS;
    long band = (long)(rows - 1) * s + k; /* input rows a chunk reads */
    return 2 * band * W + (long)G * k * k * Wo + 3L * Wo + (long)s * (Wo + k + 1);
}

static void chunk(const float *x, int C, int H, int W, const float *wa, const float *wb, const float *ws,
                  const float *bias, const float *bank, float eps, int G, int k, int s, int Ho, int Wo, int row0,
                  int row1, float *scratch, float *out, float *d_out, float *k_out) {
    const int kk = k * k, GK = G * kk, p = k / 2, cg = C / G;
    /* the input rows this band reads, clipped to the image: razor map R (2, band, W) */
    const int y_lo = imax(0, row0 * s - p), y_hi = imin(H, (row1 - 1) * s - p + k);
    const int band = y_hi - y_lo;
    float *r0 = scratch, *r1 = scratch + (long)band * W;
    float *kbuf = r1 + (long)band * W; /* (GK, Wo) logits, then kernels, of one output row */
    float *mx = kbuf + (long)GK * Wo, *sm = mx + Wo, *row = sm + Wo; /* row: one tap's gathered razor values */
    /* ph: the s phases of one input row, ph[f][1 + m] = xrow[s m + f] (zero outside the row), so every tap reads
     * a contiguous run: xrow[s j + off] = ph[off mod s][1 + j + floor(off / s)] */
    float *ph = row + Wo;
    const int plen = Wo + k + 1;
    const long HW = (long)H * W;

    if (band > 0) {
        const long n = (long)band * W;
        const float *x0 = x + (long)y_lo * W;
        for (long t = 0; t < n; ++t) { r0[t] = wa[0] * x0[t]; r1[t] = x0[t]; }
        for (int c = 1; c < C; ++c) {
            const float *xc = x0 + c * HW;
            const float a = wa[c];
            for (long t = 0; t < n; ++t) { r0[t] += a * xc[t]; r1[t] = xc[t] > r1[t] ? xc[t] : r1[t]; }
        }
        if (wb) {
            for (int c = 0; c < C; ++c) {
                const float *xc = x0 + c * HW;
                const float b = wb[c];
                for (long t = 0; t < n; ++t) r1[t] += b * xc[t];
            }
        }
    }

    for (int i = row0; i < row1; ++i) {
        /* logits of the row */
        for (int gq = 0; gq < GK; ++gq) {
            float *kr = kbuf + (long)gq * Wo;
            const float b = bias[gq];
            for (int j = 0; j < Wo; ++j) kr[j] = b;
        }
        for (int dy = 0; dy < k; ++dy) {
            const int y = s * i + dy - p;
            if (y < 0 || y >= H) continue;
            for (int dx = 0; dx < k; ++dx) {
                int j0, j1;
                tap_range(dx, p, s, W, Wo, &j0, &j1);
                const int off = dx - p;
                for (int r = 0; r < 2; ++r) {
                    const float *rrow = (r ? r1 : r0) + (long)(y - y_lo) * W;
                    for (int j = j0; j < j1; ++j) row[j] = rrow[s * j + off]; /* one strided gather per tap */
                    for (int gq = 0; gq < GK; ++gq) {
                        const float wv = ws[((gq * 2 + r) * k + dy) * k + dx];
                        float *kr = kbuf + (long)gq * Wo;
                        for (int j = j0; j < j1; ++j) kr[j] += wv * row[j];
                    }
                }
            }
        }
        /* softmax over the taps, then the static guidance and its L1 normalisation */
        for (int g = 0; g < G; ++g) {
            float *base = kbuf + (long)g * kk * Wo;
            memcpy(mx, base, sizeof(float) * Wo);
            for (int q = 1; q < kk; ++q) {
                const float *b = base + (long)q * Wo;
                for (int j = 0; j < Wo; ++j) mx[j] = b[j] > mx[j] ? b[j] : mx[j];
            }
            memset(sm, 0, sizeof(float) * Wo);
            for (int q = 0; q < kk; ++q) {
                float *b = base + (long)q * Wo;
                exp_sub_acc(b, mx, sm, Wo);
            }
            if (bank) {
                if (d_out) /* D itself, for inspection: (G, k*k, Ho, Wo) of this image */
                    for (int q = 0; q < kk; ++q) {
                        const float *b = base + (long)q * Wo;
                        float *d = d_out + (((long)g * kk + q) * Ho + i) * Wo;
                        for (int j = 0; j < Wo; ++j) d[j] = b[j] / sm[j];
                    }
                memset(mx, 0, sizeof(float) * Wo); /* now the L1 norm of the guided kernel */
                for (int q = 0; q < kk; ++q) {
                    float *b = base + (long)q * Wo;
                    const float sq = bank[g * kk + q];
                    for (int j = 0; j < Wo; ++j) { b[j] = b[j] / sm[j] * sq; mx[j] += fabsf(b[j]); }
                }
                for (int j = 0; j < Wo; ++j) mx[j] = 1.0f / (mx[j] + eps);
                for (int q = 0; q < kk; ++q) {
                    float *b = base + (long)q * Wo;
                    for (int j = 0; j < Wo; ++j) b[j] *= mx[j];
                }
            } else {
                for (int j = 0; j < Wo; ++j) sm[j] = 1.0f / sm[j];
                for (int q = 0; q < kk; ++q) {
                    float *b = base + (long)q * Wo;
                    for (int j = 0; j < Wo; ++j) b[j] *= sm[j];
                }
            }
            /* the applied kernel, for inspection: K when guided, else D (= K) */
            float *keep = bank ? k_out : d_out;
            if (keep)
                for (int q = 0; q < kk; ++q)
                    memcpy(keep + (((long)g * kk + q) * Ho + i) * Wo, base + (long)q * Wo, sizeof(float) * Wo);
        }
        /* aggregation: every channel with its group's kernels */
        for (int c = 0; c < C; ++c) {
            float *o = out + ((long)c * Ho + i) * Wo;
            const float *kg = kbuf + (long)(c / cg) * kk * Wo;
            memset(o, 0, sizeof(float) * Wo);
            for (int dy = 0; dy < k; ++dy) {
                const int y = s * i + dy - p;
                if (y < 0 || y >= H) continue;
                const float *xrow = x + c * HW + (long)y * W;
                if (s == 1) {
                    for (int dx = 0; dx < k; ++dx) {
                        int j0, j1;
                        tap_range(dx, p, s, W, Wo, &j0, &j1);
                        const float *kr = kg + (long)(dy * k + dx) * Wo;
                        const float *xs = xrow + dx - p;
                        for (int j = j0; j < j1; ++j) o[j] += kr[j] * xs[j];
                    }
                    continue;
                }
                for (int f = 0; f < s; ++f) { /* the row's phases: ph[f][1 + m] = xrow[s m + f], zero around */
                    float *pf = ph + (long)f * plen;
                    const int m_end = imin((W - f + s - 1) / s, plen - 2); /* m with s m + f < W */
                    const float *src = xrow + f;
                    pf[0] = 0.0f;
                    if (s == 2) /* a constant stride: vectorised (the common stride-2 downsampling) */
                        for (int m = 0; m < m_end; ++m) pf[1 + m] = src[2 * m];
                    else
                        for (int m = 0; m < m_end; ++m) pf[1 + m] = src[s * m];
                    for (int m = m_end + 1; m < plen; ++m) pf[m] = 0.0f;
                }
                for (int dx = 0; dx < k; ++dx) {
                    int j0, j1;
                    tap_range(dx, p, s, W, Wo, &j0, &j1);
                    const int off = dx - p;
                    const int f = ((off % s) + s) % s, sh = (off - f) / s; /* off = s sh + f */
                    const float *kr = kg + (long)(dy * k + dx) * Wo;
                    const float *xs = ph + (long)f * plen + 1 + sh;
                    for (int j = j0; j < j1; ++j) o[j] += kr[j] * xs[j];
                }
            }
        }
    }
}

/* The dynamic branch of N images x (N, C, H, W) -> out (N, C, Ho, Wo); bias is (N, G*k*k). With d_out / k_out
 * (N, G, k*k, Ho, Wo) it also keeps D and, when guided, K (for inspection; NULL skips them). Chunks of output rows
 * run in parallel on the OpenMP runtime the process already has (PyTorch's: the same threads, no second pool).
 * Returns 0 on success, 1 for arguments it cannot serve, 2 when scratch memory cannot be allocated. */
int efpn_sgdm_dynamic(const float *x, int N, int C, int H, int W, const float *wa, const float *wb, const float *ws,
                      const float *bias, const float *bank, float eps, int G, int k, int s, int Ho, int Wo,
                      float *out, float *d_out, float *k_out) {
    if (N < 1 || G < 1 || C % G || k < 1 || s < 1 || Ho < 1 || Wo < 1) return 1;
    /* rows per chunk: at most CHUNK_ROWS, as many as split an image's rows over m * threads chunks for the smallest
     * m that allows it, so the threads get nearly equal shares (a 20-row map in chunks of 8 would leave one of two
     * threads idle for a third of the call; in chunks of 5 each thread takes two) */
#if defined(_OPENMP)
    const int threads = N >= omp_get_max_threads() ? 1 : omp_get_max_threads();
#else
    const int threads = 1;
#endif
    int rows = CHUNK_ROWS;
    for (int m = 1; threads > 1; ++m) {
        rows = (Ho + m * threads - 1) / (m * threads);
        if (rows <= CHUNK_ROWS) break;
    }
    if (rows < 1) rows = 1;
    const int chunks = (Ho + rows - 1) / rows, GK = G * k * k;
    const long scratch_len = efpn_sgdm_scratch(G, k, s, W, Wo, CHUNK_ROWS);
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
#if defined(__SSE__)
        /* denormals flushed to zero in this call only (restored below): a softmax tap of ~1e-38 times a pixel is
         * a denormal, which x86 computes ~100x slower; the results differ from PyTorch's by < 1e-37 */
        const unsigned int csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
#endif
        float *scratch = malloc(sizeof(float) * scratch_len);
        if (!scratch) failed = 2;
#pragma omp for schedule(static)
        for (long t = 0; t < (long)N * chunks; ++t) {
            if (!scratch) continue;
            const int n = (int)(t / chunks), r = (int)(t % chunks) * rows;
            const long per = (long)GK * Ho * Wo; /* D and K of one image */
            chunk(x + (long)n * C * H * W, C, H, W, wa, wb, ws, bias + (long)n * GK, bank, eps, G, k, s, Ho, Wo, r,
                  imin(Ho, r + rows), scratch, out + (long)n * C * Ho * Wo, d_out ? d_out + n * per : NULL,
                  k_out ? k_out + n * per : NULL);
        }
        free(scratch);
#if defined(__SSE__)
        _mm_setcsr(csr);
#endif
    }
    return failed;
}
