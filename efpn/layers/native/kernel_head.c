/* Training kernels of SGDM's kernel generator (efpn/layers/kernel_head.py): the razor statistics in one read of x,
 * and the "kernel head" that turns the razor conv's output into the applied per-pixel kernels, forward and backward:
 *
 *   r     = [mean_c x, max_c x]                                   (N, 2, P)      P = H * W
 *   gap   = mean_P x                                              (N, C)
 *   z     = gamma * (s - mean) / sqrt(var + bn_eps) + beta + c    (N, G, kk, Po)  BatchNorm on batch statistics
 *   D     = softmax_kk(z)                                         (N, G, kk, Po)
 *   K     = S * D / (sum_q |S * D| + eps)                         (N, G, kk, Po)  S (G, kk): the static bank
 *
 * (unguided, without a bank, K is D). PyTorch runs the BatchNorm, the bias, the softmax and the guidance as about
 * a dozen operators over (N, G*kk, Po) forward and twice that backward; here the forward is three passes (the two
 * of the batch statistics, then everything per pixel) and the backward two (per pixel back to z with every sum,
 * then the BatchNorm's input gradient). Pixels run 8 lanes at a time; a tail of fewer is padded in registers.
 *
 * Determinism: tasks are (image, group) or (image, channel) and own what they write; cross-task sums are kept per
 * image and added in a fixed order afterwards, so results do not depend on the thread count. Every function returns
 * 0, 1 for bad arguments, or 2 when scratch memory cannot be allocated. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "stats.h"
#include "vexp.h"

#define KK_MAX 49 /* k <= 7 */

/* n floats from src into a zeroed 8-lane vector, and back */
static inline v8f load8(const float *src, int n) {
    v8f v = {0};
    memcpy(&v, src, (size_t)n * sizeof(float));
    return v;
}
static inline void store8(float *dst, v8f v, int n) { memcpy(dst, &v, (size_t)n * sizeof(float)); }
/* lane-wise max and |v| (C has no vector ?:) */
static inline v8f vmax(v8f a, v8f b) {
    const v8i m = a > b;
    return (v8f)((m & (v8i)a) | (~m & (v8i)b));
}
static inline v8f vabs(v8f a) { return (v8f)((v8i)a & 0x7fffffff); }
static inline float hsum(v8f v, int n) {
    float t = 0.0f;
    for (int j = 0; j < n; ++j) t += v[j];
    return t;
}

/* Razor statistics: x (N, C, P) -> r (N, 2, P) (channel mean, channel max) and gap (N, C) (mean over P). Tasks are
 * (image, chunk of pixels); the chunks' partial sums for gap land in scratch and are added in chunk order. */
int efpn_razor_forward(const float *x, int N, int C, long P, float *r, float *gap) {
    if (N < 1 || C < 1 || P < 1) return 1;
    const long chunk = 2048;
    const long nchunks = (P + chunk - 1) / chunk;
    float *part = malloc(sizeof(float) * (size_t)N * (size_t)nchunks * (size_t)C);
    if (!part) return 2;
    const float inv_c = 1.0f / (float)C;
#pragma omp parallel for schedule(static)
    for (long t = 0; t < (long)N * nchunks; ++t) {
        const int n = (int)(t / nchunks);
        const long i0 = (t % nchunks) * chunk, i1 = i0 + chunk < P ? i0 + chunk : P;
        float *mean = r + ((long)n * 2) * P, *peak = r + ((long)n * 2 + 1) * P;
        float *sums = part + t * C;
        for (int c = 0; c < C; ++c) {
            const float *xc = x + ((long)n * C + c) * P;
            float acc = 0.0f;
            if (c == 0) {
#pragma omp simd reduction(+ : acc)
                for (long i = i0; i < i1; ++i) {
                    mean[i] = xc[i];
                    peak[i] = xc[i];
                    acc += xc[i];
                }
            } else {
#pragma omp simd reduction(+ : acc)
                for (long i = i0; i < i1; ++i) {
                    mean[i] += xc[i];
                    peak[i] = (xc[i] > peak[i] || xc[i] != xc[i]) ? xc[i] : peak[i]; /* NaN wins, as amax */
                    acc += xc[i];
                }
            }
            sums[c] = acc;
        }
#pragma omp simd
        for (long i = i0; i < i1; ++i) mean[i] *= inv_c;
    }
    for (int n = 0; n < N; ++n)
        for (int c = 0; c < C; ++c) {
            double acc = 0.0;
            for (long j = 0; j < nchunks; ++j) acc += part[((long)n * nchunks + j) * C + c];
            gap[(long)n * C + c] = (float)(acc / (double)P);
        }
    free(part);
    return 0;
}

/* Forward. s (N, G*kk, P) the razor conv's output; gamma, beta, mean/var outputs (G*kk); c (N, G*kk) per-image
 * logits; bank (G*kk) or NULL. Writes the batch mean and biased variance, D and (with a bank) K, each (N, G, kk, P). */
int efpn_kernel_head_forward(const float *s, int N, int G, int kk, long P, const float *gamma, const float *beta,
                             float bn_eps, const float *c, const float *bank, float eps, float *mean, float *var,
                             float *d, float *k) {
    if (N < 1 || G < 1 || kk < 1 || kk > KK_MAX || P < 1 || (bank && !k)) return 1;
    const int CH = G * kk;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < CH; ++ch) efpn_channel_stats(s, N, CH, P, ch, mean + ch, var + ch);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N * G; ++t) {
        const int n = t / G, g = t % G;
        float a[KK_MAX], b[KK_MAX];
        for (int q = 0; q < kk; ++q) {  /* z = a s + b */
            const int ch = g * kk + q;
            a[q] = gamma[ch] / sqrtf(var[ch] + bn_eps);
            b[q] = beta[ch] - mean[ch] * a[q] + c[(long)n * CH + ch];
        }
        const long base = (long)t * kk * P; /* (n, g) block of s, D and K alike */
        for (long i = 0; i < P; i += 8) {
            const int len = P - i < 8 ? (int)(P - i) : 8;
            v8f z[KK_MAX];
            v8f mx = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
            for (int q = 0; q < kk; ++q) {
                z[q] = load8(s + base + q * P + i, len) * a[q] + b[q];
                mx = vmax(z[q], mx);
            }
            v8f sum = {0};
            for (int q = 0; q < kk; ++q) {
                z[q] = efpn_exp8(z[q] - mx);
                sum += z[q];
            }
            const v8f inv = 1.0f / sum;
            v8f l1 = {0};
            for (int q = 0; q < kk; ++q) {
                z[q] *= inv;
                store8(d + base + q * P + i, z[q], len);
                if (bank) {
                    z[q] *= bank[g * kk + q];
                    l1 += vabs(z[q]);
                }
            }
            if (bank) {
                const v8f invl = 1.0f / (l1 + eps);
                for (int q = 0; q < kk; ++q) store8(k + base + q * P + i, z[q] * invl, len);
            }
        }
    }
    return 0;
}

/* Backward. grad_k (N, G, kk, P) the gradient of K (of D when unguided); s, d as in the forward; gamma, mean, invstd
 * (G*kk); bank (G*kk) or NULL. Writes grad_s (N, G*kk, P), grad_gamma and grad_beta (G*kk), grad_c (N, G*kk) and,
 * with a bank, grad_bank (G*kk). */
int efpn_kernel_head_backward(const float *grad_k, const float *s, const float *d, int N, int G, int kk, long P,
                              const float *gamma, const float *mean, const float *invstd, const float *bank,
                              float eps, float *grad_s, float *grad_gamma, float *grad_beta, float *grad_c,
                              float *grad_bank) {
    if (N < 1 || G < 1 || kk < 1 || kk > KK_MAX || P < 1 || (bank && !grad_bank)) return 1;
    const int CH = G * kk;
    float *sum_gzx = malloc(sizeof(float) * (size_t)N * (size_t)CH * (bank ? 2 : 1));
    if (!sum_gzx) return 2;
    float *part_bank = bank ? sum_gzx + (long)N * CH : NULL;
    /* 1. per pixel: dK -> dz, kept in grad_s; the sums over pixels per (image, channel) */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N * G; ++t) {
        const int n = t / G, g = t % G;
        const long base = (long)t * kk * P;
        v8f acc_gz[KK_MAX], acc_gzx[KK_MAX], acc_bank[KK_MAX];
        for (int q = 0; q < kk; ++q) acc_gz[q] = acc_gzx[q] = acc_bank[q] = (v8f){0};
        for (long i = 0; i < P; i += 8) {
            const int len = P - i < 8 ? (int)(P - i) : 8;
            v8f pad_one = {0}; /* 1 on the lanes past the tail: their L1 norm must not be 0 (1/eps may be inf) */
            for (int j = len; j < 8; ++j) pad_one[j] = 1.0f;
            v8f dq[KK_MAX], gd[KK_MAX];
            for (int q = 0; q < kk; ++q) {
                dq[q] = load8(d + base + q * P + i, len);
                gd[q] = load8(grad_k + base + q * P + i, len);
            }
            if (bank) { /* K = sd / (L + eps), sd = S D, L = sum |sd|: dsd = (dK - sign(sd) sum dK K) / (L + eps) */
                v8f sd[KK_MAX], l1 = {0}, dot = {0};
                for (int q = 0; q < kk; ++q) {
                    sd[q] = dq[q] * bank[g * kk + q];
                    l1 += vabs(sd[q]);
                    dot += gd[q] * sd[q];
                }
                const v8f inv = 1.0f / (l1 + pad_one + eps); /* padded lanes: D = dK = 0, so dsd = 0 there */
                dot *= inv; /* sum dK K */
                for (int q = 0; q < kk; ++q) {
                    const v8f sign = __builtin_convertvector(sd[q] < 0.0f, v8f)
                                     - __builtin_convertvector(sd[q] > 0.0f, v8f); /* true lanes convert to -1 */
                    const v8f dsd = inv * (gd[q] - sign * dot);
                    acc_bank[q] += dsd * dq[q];
                    gd[q] = dsd * bank[g * kk + q];
                }
            }
            v8f u = {0}; /* softmax: dz = D (dD - sum dD D) */
            for (int q = 0; q < kk; ++q) u += gd[q] * dq[q];
            for (int q = 0; q < kk; ++q) {
                const int ch = g * kk + q;
                const v8f gz = dq[q] * (gd[q] - u);
                const v8f xhat = (load8(s + base + q * P + i, len) - mean[ch]) * invstd[ch];
                store8(grad_s + base + q * P + i, gz, len);
                acc_gz[q] += gz; /* padded lanes hold D = 0 reads, so gz = 0 there */
                acc_gzx[q] += gz * xhat;
            }
        }
        for (int q = 0; q < kk; ++q) {
            const long at = (long)n * CH + g * kk + q;
            grad_c[at] = hsum(acc_gz[q], 8);
            sum_gzx[at] = hsum(acc_gzx[q], 8);
            if (bank) part_bank[at] = hsum(acc_bank[q], 8);
        }
    }
    /* the per-channel sums over images, in image order */
    const double count = (double)N * P;
    for (int ch = 0; ch < CH; ++ch) {
        double gb = 0.0, gg = 0.0, gk = 0.0;
        for (int n = 0; n < N; ++n) {
            gb += grad_c[(long)n * CH + ch];
            gg += sum_gzx[(long)n * CH + ch];
            if (bank) gk += part_bank[(long)n * CH + ch];
        }
        grad_beta[ch] = (float)gb;
        grad_gamma[ch] = (float)gg;
        if (bank) grad_bank[ch] = (float)gk;
    }
    /* 2. the BatchNorm's input gradient: gamma invstd (dz - mean(dz) - xhat mean(dz xhat)), in place */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < N * CH; ++t) {
        const int ch = t % CH;
        const float a = gamma[ch] * invstd[ch], m = mean[ch], is = invstd[ch];
        const float mb = (float)(grad_beta[ch] / count), mg = (float)(grad_gamma[ch] / count);
        const float *sp = s + (long)t * P;
        float *gp = grad_s + (long)t * P;
#pragma omp simd
        for (long i = 0; i < P; ++i) gp[i] = a * (gp[i] - mb - (sp[i] - m) * is * mg);
    }
    free(sum_gzx);
    return 0;
}
