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
#include "vexp.h"

static int imax(int a, int b) { return a > b ? a : b; }

/* e^x for x <= 0 (softmax after subtracting the max): vexp.h's 8-lane e^x */
static inline v8f exp8_nonpos(v8f x) { return efpn_exp8(x); }

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

/* Phases of one input row: ph[f][1 + m] = xrow[s m + f] for the s phases f, zero around (plen = Wo + k + 1 floats
 * each), so that tap offset off = s sh + f reads the contiguous run ph[f][1 + sh + j] for the output columns j. */
static void row_phases(const float *xrow, int W, int s, int plen, float *ph) {
    for (int f = 0; f < s; ++f) {
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
}

/* One output row i of one channel: o[j] (= 0 first unless `accumulate`) += sum_q kg[q kq + j] xc[s i + dy - p, s j + dx - p],
 * kg the row's kernels of the channel's group (tap q at kg + q kq), xc the channel's (H, W) plane, ph scratch of
 * s (Wo + k + 1) floats. */
static void aggregate_row(const float *xc, const float *kg, long kq, int accumulate, int H, int W, int k, int s, int i,
                          int Wo, float *o, float *ph) {
    const int p = k / 2, plen = Wo + k + 1;
    if (!accumulate) memset(o, 0, sizeof(float) * Wo);
    for (int dy = 0; dy < k; ++dy) {
        const int y = s * i + dy - p;
        if (y < 0 || y >= H) continue;
        const float *xrow = xc + (long)y * W;
        if (s > 1) row_phases(xrow, W, s, plen, ph);
        for (int dx = 0; dx < k; ++dx) {
            int j0, j1;
            tap_range(dx, p, s, W, Wo, &j0, &j1);
            const int off = dx - p;
            const int f = ((off % s) + s) % s, sh = (off - f) / s; /* off = s sh + f */
            const float *kr = kg + (dy * k + dx) * kq;
            const float *xs = s == 1 ? xrow + off : ph + (long)f * plen + 1 + sh;
            for (int j = j0; j < j1; ++j) o[j] += kr[j] * xs[j];
        }
    }
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

typedef float v4f __attribute__((vector_size(16)));
typedef int v4i __attribute__((vector_size(16)));

/* The 8 lanes of v summed, or their maximum: halves first (one vector op), then 4 scalars. */
static inline float hsum8(v8f v) {
    v4f lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    lo += hi;
    return (lo[0] + lo[1]) + (lo[2] + lo[3]);
}

static inline float hmax8(v8f v) {
    v4f lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    const v4i gt = hi > lo;
    lo = (v4f)(((v4i)hi & gt) | ((v4i)lo & ~gt));
    const float a = lo[0] > lo[1] ? lo[0] : lo[1], b = lo[2] > lo[3] ? lo[2] : lo[3];
    return a > b ? a : b;
}

/* Razor maps of `n` pixels stored channels-last (x0: n pixels of C contiguous channels): r0 = sum_c wa[c] x[c],
 * r1 = max_c x[c] (+ sum_c wb[c] x[c]); 8 channels at a time while they last (no -ffast-math: the reductions are
 * written as vectors). */
static void razor_nhwc(const float *x0, long n, int C, const float *wa, const float *wb, float *r0, float *r1) {
    const int c8 = C - C % 8;
    for (long t = 0; t < n; ++t) {
        const float *xp = x0 + t * C;
        float a = 0.0f, b = 0.0f, m = xp[0];
        if (c8) {
            v8f va = {0}, vb = {0}, vm;
            memcpy(&vm, xp, sizeof vm);
            for (int c = 0; c < c8; c += 8) {
                v8f v, w;
                memcpy(&v, xp + c, sizeof v);
                memcpy(&w, wa + c, sizeof w);
                va += w * v;
                const v8i gt = v > vm;
                vm = (v8f)(((v8i)v & gt) | ((v8i)vm & ~gt));
                if (wb) {
                    memcpy(&w, wb + c, sizeof w);
                    vb += w * v;
                }
            }
            a = hsum8(va);
            m = hmax8(vm);
            if (wb) b = hsum8(vb);
        }
        for (int c = c8; c < C; ++c) {
            a += wa[c] * xp[c];
            m = xp[c] > m ? xp[c] : m;
            if (wb) b += wb[c] * xp[c];
        }
        r0[t] = a;
        r1[t] = m + b;
    }
}

/* One output row i, channels-last: o (Wo, C) = sum over taps q of K[g(c), q, j] x[s i + dy - p, s j + dx - p, c],
 * x the image's (H, W, C) pixels, kbuf the row's kernels (G*k*k, Wo). Pixel by pixel and 8 channels of a group at
 * a time, the sum over the taps held in a register (written once); the group's channels share one kernel value. */
static void aggregate_row_nhwc(const float *restrict x, const float *restrict kbuf, int C, int G, int H, int W, int k,
                               int s, int i, int Wo, float *restrict o) {
    const int p = k / 2, kk = k * k, cg = C / G, cg8 = cg - cg % 8;
    const float *taps[64]; /* a pixel's valid taps (efpn_sgdm_dynamic serves k <= 7 channels-last) */
    int tq[64];
    for (int j = 0; j < Wo; ++j) {
        int nt = 0;
        for (int dy = 0; dy < k; ++dy) {
            const int y = s * i + dy - p;
            if (y < 0 || y >= H) continue;
            for (int dx = 0; dx < k; ++dx) {
                const int xx = s * j + dx - p;
                if (xx < 0 || xx >= W) continue;
                taps[nt] = x + ((long)y * W + xx) * C;
                tq[nt++] = dy * k + dx;
            }
        }
        float *restrict op = o + (long)j * C;
        for (int g = 0; g < G; ++g) {
            const float *kg = kbuf + (long)g * kk * Wo + j; /* tap q's value at kg[q * Wo] */
            const int c0 = g * cg;
            for (int cb = 0; cb < cg8; cb += 8) {
                v8f acc = {0};
                for (int t = 0; t < nt; ++t) {
                    v8f v;
                    memcpy(&v, taps[t] + c0 + cb, sizeof v);
                    acc += kg[(long)tq[t] * Wo] * v;
                }
                memcpy(op + c0 + cb, &acc, sizeof acc);
            }
            for (int c = c0 + cg8; c < c0 + cg; ++c) {
                float acc = 0.0f;
                for (int t = 0; t < nt; ++t) acc += kg[(long)tq[t] * Wo] * taps[t][c];
                op[c] = acc;
            }
        }
    }
}

/* A band of output rows [row0, row1) of one image: x (C, H, W) and out (C, Ho, Wo), or with `nhwc` x (H, W, C) and
 * out (Ho, Wo, C) (channels-last tensors); D and K (G, k*k, Ho, Wo) either way. */
static void chunk(const float *x, int nhwc, int C, int H, int W, const float *wa, const float *wb, const float *ws,
                  const float *bias, const float *bank, float eps, int G, int k, int s, int Ho, int Wo, int row0,
                  int row1, float *scratch, float *out, float *d_out, float *k_out) {
    const int kk = k * k, GK = G * kk, p = k / 2, cg = C / G;
    /* the input rows this band reads, clipped to the image: razor map R (2, band, W) */
    const int y_lo = imax(0, row0 * s - p), y_hi = imin(H, (row1 - 1) * s - p + k);
    const int band = y_hi - y_lo;
    float *r0 = scratch, *r1 = scratch + (long)band * W;
    float *kbuf = r1 + (long)band * W; /* (GK, Wo) logits, then kernels, of one output row */
    float *mx = kbuf + (long)GK * Wo, *sm = mx + Wo, *row = sm + Wo; /* row: one tap's gathered razor values */
    float *ph = row + Wo; /* the s phases of one input row (row_phases) */
    const long HW = (long)H * W;

    if (band > 0 && nhwc) {
        razor_nhwc(x + (long)y_lo * W * C, (long)band * W, C, wa, wb, r0, r1);
    } else if (band > 0) {
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
        if (nhwc)
            aggregate_row_nhwc(x, kbuf, C, G, H, W, k, s, i, Wo, out + (long)i * Wo * C);
        else
            for (int c = 0; c < C; ++c)
                aggregate_row(x + c * HW, kbuf + (long)(c / cg) * kk * Wo, Wo, 0, H, W, k, s, i, Wo,
                              out + ((long)c * Ho + i) * Wo, ph);
    }
}

/* The dynamic branch of N images x (N, C, H, W) -> out (N, C, Ho, Wo), or with `nhwc` both channels-last in memory
 * (N, H, W, C) -> (N, Ho, Wo, C); bias is (N, G*k*k). With d_out / k_out
 * (N, G, k*k, Ho, Wo) it also keeps D and, when guided, K (for inspection; NULL skips them). Chunks of output rows
 * run in parallel on the OpenMP runtime the process already has (PyTorch's: the same threads, no second pool).
 * Returns 0 on success, 1 for arguments it cannot serve, 2 when scratch memory cannot be allocated. */
int efpn_sgdm_dynamic(const float *x, int nhwc, int N, int C, int H, int W, const float *wa, const float *wb, const float *ws,
                      const float *bias, const float *bank, float eps, int G, int k, int s, int Ho, int Wo,
                      float *out, float *d_out, float *k_out) {
    if (N < 1 || G < 1 || C % G || k < 1 || s < 1 || Ho < 1 || Wo < 1 || (nhwc && k * k > 64)) return 1;
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
            chunk(x + (long)n * C * H * W, nhwc, C, H, W, wa, wb, ws, bias + (long)n * GK, bank, eps, G, k, s, Ho, Wo, r,
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

/* ------------------------------------------------------------------------------------------------------------------
 * Training: the razor statistics' backward, the same function as rdconv's _RazorStats backward (the aggregation's
 * training kernels are in aggregate.c). */

/* The razor statistics' backward (rdconv._RazorStats): for x (N, C, H, W) with peak = max_c x (N, 1, H, W),
 *   grad_x[n, c, t] = [x == peak] gr[n, 1, t] / #ties[n, t] + gr[n, 0, t] / C + gg[n, c] / (H W)
 * with gr = dL/d[mean_c x, max_c x] (N, 2, H, W) and gg = dL/d mean_hw x (N, C); either may be NULL (no term).
 * The max's gradient is shared equally by tied channels, as amax's; the terms are summed in _RazorStats' order. */
int efpn_razor_backward(const float *x, const float *peak, const float *gr, const float *gg, int N, int C, int H,
                        int W, float *grad_x) {
    if (N < 1 || C < 1 || H < 1 || W < 1) return 1;
    const long HW = (long)H * W;
    enum { BLOCK = 512 }; /* pixels per task: x's channels over a block stay in the L1/L2 cache for the second read */
    const long blocks = (HW + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
    for (long t = 0; t < (long)N * blocks; ++t) {
        const long n = t / blocks, b0 = (t % blocks) * BLOCK, len = HW - b0 < BLOCK ? HW - b0 : BLOCK;
        const float *xn = x + n * C * HW + b0, *pk = peak + n * HW + b0;
        float share[BLOCK], base[BLOCK];
        float *gxn = grad_x + n * C * HW + b0;
        if (gr) {
            const float *gmean = gr + n * 2 * HW + b0, *gmax = gmean + HW;
            for (long u = 0; u < len; ++u) share[u] = 0.0f;
            for (int c = 0; c < C; ++c)
                for (long u = 0; u < len; ++u) share[u] += xn[c * HW + u] == pk[u] ? 1.0f : 0.0f;
            for (long u = 0; u < len; ++u) { share[u] = gmax[u] / share[u]; base[u] = gmean[u] / (float)C; }
        }
        for (int c = 0; c < C; ++c) {
            const float *xc = xn + c * HW;
            float *o = gxn + c * HW;
            const float gap = gg ? gg[n * C + c] / (float)HW : 0.0f;
            if (gr)
                for (long u = 0; u < len; ++u) o[u] = ((xc[u] == pk[u] ? 1.0f : 0.0f) * share[u] + base[u]) + gap;
            else
                for (long u = 0; u < len; ++u) o[u] = gap;
        }
    }
    return 0;
}
