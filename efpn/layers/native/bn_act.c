/* BatchNorm on the batch's statistics followed by SiLU (or nothing), optionally of the sum of two BatchNorms:
 *
 *   y = act(gamma1 * (x1 - mean1) / sqrt(var1 + eps1) + beta1  [ + gamma2 * (x2 - mean2) / sqrt(var2 + eps2) + beta2 ])
 *
 * with mean and (biased) variance per channel over (N, H, W): a YOLO "Conv" unit's BatchNorm and SiLU in training,
 * and SGDM's join of its dynamic and static branches. PyTorch runs the BatchNorm, the sum and the SiLU as separate
 * operators, each forward and backward a pass (or two) over the tensor with its own temporaries; here the forward
 * takes three passes (the mean, the centred sum of squares, then normalise and activate) and the backward two
 * (the activation's gradient with both BatchNorms' sums, then the inputs' gradients). efpn/layers/bn_act.py wraps
 * them in an autograd Function; tests/layers/test_bn_act.py holds them equal to PyTorch.
 *
 * The first two take contiguous (N, C, P), P = H * W; the _nhwc pair at the end, channels-last memory. Here one
 * channel per task: each writes only its own channel, and the sums of a channel run in one thread in a fixed order,
 * so results do not depend on the thread count. Sums run in float over a plane (vectorised) and in double across
 * planes. Every function returns 0, 1 for bad arguments, or
 * 2 when its scratch memory cannot be allocated.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include "stats.h"
#include "vexp.h"

enum { ACT_NONE = 0, ACT_SILU = 1 };

/* z * sigmoid(z) on 8 lanes, and the scalar form for the tail */
static inline v8f silu8(v8f z) { return z / (1.0f + efpn_exp8(-z)); }
static inline float silu1(float z) { return z / (1.0f + expf(-z)); }

/* Forward. x1 (and x2, or NULL) (N, C, P); gamma, beta per input (C). Writes y (N, C, P) and each input's batch
 * mean and biased variance (C). */
int efpn_bn_act_forward(const float *x1, const float *x2, int n, int c, long p, const float *gamma1,
                        const float *beta1, const float *gamma2, const float *beta2, float eps1, float eps2, int act,
                        float *y, float *mean1, float *var1, float *mean2, float *var2) {
    if (n < 1 || c < 1 || p < 1 || (act != ACT_NONE && act != ACT_SILU)) return 1;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ++ch) {
        efpn_channel_stats(x1, n, c, p, ch, &mean1[ch], &var1[ch]);
        const float a1 = gamma1[ch] / sqrtf(var1[ch] + eps1);
        float a2 = 0.0f, shift = beta1[ch] - mean1[ch] * a1;
        if (x2) {
            efpn_channel_stats(x2, n, c, p, ch, &mean2[ch], &var2[ch]);
            a2 = gamma2[ch] / sqrtf(var2[ch] + eps2);
            shift += beta2[ch] - mean2[ch] * a2;
        }
        for (int b = 0; b < n; ++b) {
            const long at = ((long)b * c + ch) * p;
            const float *u = x1 + at, *v = x2 ? x2 + at : NULL;
            float *out = y + at;
            long i = 0;
            for (; i + 8 <= p; i += 8) {
                v8f z, w;
                memcpy(&z, u + i, sizeof z);
                z = z * a1 + shift;
                if (v) {
                    memcpy(&w, v + i, sizeof w);
                    z += w * a2;
                }
                if (act == ACT_SILU) z = silu8(z);
                memcpy(out + i, &z, sizeof z);
            }
            for (; i < p; ++i) {
                const float z = u[i] * a1 + shift + (v ? v[i] * a2 : 0.0f);
                out[i] = act == ACT_SILU ? silu1(z) : z;
            }
        }
    }
    return 0;
}

/* Backward, for grad_y (N, C, P) given the forward's inputs, gamma, beta, mean and invstd = 1 / sqrt(var + eps)
 * per input. Writes grad_x1 (and grad_x2 when x2 is given) (N, C, P) and each input's grad_gamma, grad_beta (C). */
int efpn_bn_act_backward(const float *grad_y, const float *x1, const float *x2, int n, int c, long p,
                         const float *gamma1, const float *beta1, const float *mean1, const float *invstd1,
                         const float *gamma2, const float *beta2, const float *mean2, const float *invstd2, int act,
                         float *grad_x1, float *grad_x2, float *grad_gamma1, float *grad_beta1, float *grad_gamma2,
                         float *grad_beta2) {
    if (n < 1 || c < 1 || p < 1 || (act != ACT_NONE && act != ACT_SILU)) return 1;
    const double count = (double)n * p;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ++ch) {
        const float m1 = mean1[ch], i1 = invstd1[ch], a1 = gamma1[ch] * i1;
        const float m2 = x2 ? mean2[ch] : 0.0f, i2 = x2 ? invstd2[ch] : 0.0f, a2 = x2 ? gamma2[ch] * i2 : 0.0f;
        const float shift = beta1[ch] - m1 * a1 + (x2 ? beta2[ch] - m2 * a2 : 0.0f);
        /* 1. gz = grad_y * act'(z) into grad_x1, with sum gz and sum gz * xhat per input */
        double s_gz = 0.0, s_1 = 0.0, s_2 = 0.0;
        for (int b = 0; b < n; ++b) {
            const long at = ((long)b * c + ch) * p;
            const float *u = x1 + at, *v = x2 ? x2 + at : NULL, *g = grad_y + at;
            float *gz = grad_x1 + at;
            v8f acc_gz = {0}, acc_1 = {0}, acc_2 = {0};
            long i = 0;
            for (; i + 8 <= p; i += 8) {
                v8f uu, vv = {0}, gg;
                memcpy(&uu, u + i, sizeof uu);
                memcpy(&gg, g + i, sizeof gg);
                if (v) memcpy(&vv, v + i, sizeof vv);
                if (act == ACT_SILU) {
                    const v8f z = uu * a1 + vv * a2 + shift;
                    const v8f s = 1.0f / (1.0f + efpn_exp8(-z));
                    gg = gg * s * (1.0f + z * (1.0f - s));
                }
                memcpy(gz + i, &gg, sizeof gg);
                acc_gz += gg;
                acc_1 += gg * ((uu - m1) * i1);
                acc_2 += gg * ((vv - m2) * i2);
            }
            float t_gz = 0.0f, t_1 = 0.0f, t_2 = 0.0f;
            for (int j = 0; j < 8; ++j) {
                t_gz += acc_gz[j];
                t_1 += acc_1[j];
                t_2 += acc_2[j];
            }
            for (; i < p; ++i) {
                const float vv = v ? v[i] : 0.0f;
                float gg = g[i];
                if (act == ACT_SILU) {
                    const float z = u[i] * a1 + vv * a2 + shift, s = 1.0f / (1.0f + expf(-z));
                    gg *= s * (1.0f + z * (1.0f - s));
                }
                gz[i] = gg;
                t_gz += gg;
                t_1 += gg * ((u[i] - m1) * i1);
                t_2 += gg * ((vv - m2) * i2);
            }
            s_gz += t_gz;
            s_1 += t_1;
            s_2 += t_2;
        }
        grad_beta1[ch] = (float)s_gz;
        grad_gamma1[ch] = (float)s_1;
        if (x2) {
            grad_beta2[ch] = (float)s_gz;
            grad_gamma2[ch] = (float)s_2;
        }
        /* 2. grad_x = gamma * invstd * (gz - mean(gz) - xhat * mean(gz * xhat)), per input */
        const float mb = (float)(s_gz / count), mg1 = (float)(s_1 / count), mg2 = (float)(s_2 / count);
        for (int b = 0; b < n; ++b) {
            const long at = ((long)b * c + ch) * p;
            const float *u = x1 + at;
            float *gz = grad_x1 + at;
            if (x2) {
                const float *v = x2 + at;
                float *gv = grad_x2 + at;
#pragma omp simd
                for (long i = 0; i < p; ++i) gv[i] = a2 * (gz[i] - mb - (v[i] - m2) * i2 * mg2);
            }
#pragma omp simd
            for (long i = 0; i < p; ++i) gz[i] = a1 * (gz[i] - mb - (u[i] - m1) * i1 * mg1);
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------ channels-last
 * The same two functions on channels-last memory: x (M, C) rows, M = N * H * W, each row a pixel's C channels.
 * The work splits by rows: fixed chunks of ROWS rows (set by the shape, never by the thread count), and within a
 * chunk by blocks of 8 channels, whose running sums, scales and shifts stay in registers while the block walks
 * down the chunk's rows (the chunk stays in cache from one block to the next). A chunk keeps float sums per
 * channel; the chunks' sums are added in chunk order in double. Results therefore do not depend on the thread count
 * either; they differ from the (N, C, P) functions only in the order of float additions. */

enum { ROWS = 256 };

static inline v8f load8(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store8(float *p, v8f v) { memcpy(p, &v, sizeof v); }

static inline long chunk_end(long k, long m) { return (k + 1) * ROWS < m ? (k + 1) * ROWS : m; }

/* Per-channel sums of x (or of (x - mean)^2 when mean is given) over each chunk's rows -> part (chunks, c) */
static void chunk_sums(const float *x, long m, int c, const float *mean, double *part) {
    const long chunks = (m + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static)
    for (long k = 0; k < chunks; ++k) {
        const long end = chunk_end(k, m);
        int j = 0;
        for (; j + 8 <= c; j += 8) {
            const v8f mu = mean ? load8(mean + j) : (v8f){0};
            v8f acc = {0};
            for (long r = k * ROWS; r < end; ++r) {
                const v8f d = load8(x + r * c + j) - mu;
                acc += mean ? d * d : d;
            }
            for (int q = 0; q < 8; ++q) part[k * c + j + q] = acc[q];
        }
        for (; j < c; ++j) {
            const float mu = mean ? mean[j] : 0.0f;
            float acc = 0.0f;
            for (long r = k * ROWS; r < end; ++r) {
                const float d = x[r * c + j] - mu;
                acc += mean ? d * d : d;
            }
            part[k * c + j] = acc;
        }
    }
}

/* The chunks' sums added in chunk order, over m: -> out (c) */
static void chunk_mean(const double *part, long m, int c, float *out) {
    const long chunks = (m + ROWS - 1) / ROWS;
    for (int j = 0; j < c; ++j) {
        double s = 0.0;
        for (long k = 0; k < chunks; ++k) s += part[k * c + j];
        out[j] = (float)(s / (double)m);
    }
}

/* efpn_bn_act_forward on channels-last memory: x1 (and x2, or NULL) (M, C); y (M, C); statistics (C). */
int efpn_bn_act_forward_nhwc(const float *x1, const float *x2, long m, int c, const float *gamma1,
                             const float *beta1, const float *gamma2, const float *beta2, float eps1, float eps2,
                             int act, float *y, float *mean1, float *var1, float *mean2, float *var2) {
    if (m < 1 || c < 1 || (act != ACT_NONE && act != ACT_SILU)) return 1;
    const long chunks = (m + ROWS - 1) / ROWS;
    double *part = malloc(sizeof(double) * (size_t)(chunks * c));
    float *coef = malloc(sizeof(float) * 3 * (size_t)c); /* a1, a2, shift */
    if (!part || !coef) {
        free(part);
        free(coef);
        return 2;
    }
    chunk_sums(x1, m, c, NULL, part);
    chunk_mean(part, m, c, mean1);
    chunk_sums(x1, m, c, mean1, part);
    chunk_mean(part, m, c, var1);
    if (x2) {
        chunk_sums(x2, m, c, NULL, part);
        chunk_mean(part, m, c, mean2);
        chunk_sums(x2, m, c, mean2, part);
        chunk_mean(part, m, c, var2);
    }
    float *a1 = coef, *a2 = coef + c, *shift = coef + 2 * c;
    for (int j = 0; j < c; ++j) {
        a1[j] = gamma1[j] / sqrtf(var1[j] + eps1);
        shift[j] = beta1[j] - mean1[j] * a1[j];
        a2[j] = x2 ? gamma2[j] / sqrtf(var2[j] + eps2) : 0.0f;
        if (x2) shift[j] += beta2[j] - mean2[j] * a2[j];
    }
#pragma omp parallel for schedule(static)
    for (long k = 0; k < chunks; ++k) {
        const long end = chunk_end(k, m);
        int j = 0;
        for (; j + 8 <= c; j += 8) {
            const v8f s1 = load8(a1 + j), s2 = load8(a2 + j), sh = load8(shift + j);
            for (long r = k * ROWS; r < end; ++r) {
                v8f z = load8(x1 + r * c + j) * s1 + sh;
                if (x2) z += load8(x2 + r * c + j) * s2;
                store8(y + r * c + j, act == ACT_SILU ? silu8(z) : z);
            }
        }
        for (; j < c; ++j) {
            for (long r = k * ROWS; r < end; ++r) {
                const float z = x1[r * c + j] * a1[j] + shift[j] + (x2 ? x2[r * c + j] * a2[j] : 0.0f);
                y[r * c + j] = act == ACT_SILU ? silu1(z) : z;
            }
        }
    }
    free(part);
    free(coef);
    return 0;
}

/* efpn_bn_act_backward on channels-last memory: grad_y, x1 (and x2, or NULL), grad_x1 (and grad_x2) (M, C). */
int efpn_bn_act_backward_nhwc(const float *grad_y, const float *x1, const float *x2, long m, int c,
                              const float *gamma1, const float *beta1, const float *mean1, const float *invstd1,
                              const float *gamma2, const float *beta2, const float *mean2, const float *invstd2,
                              int act, float *grad_x1, float *grad_x2, float *grad_gamma1, float *grad_beta1,
                              float *grad_gamma2, float *grad_beta2) {
    if (m < 1 || c < 1 || (act != ACT_NONE && act != ACT_SILU)) return 1;
    const long chunks = (m + ROWS - 1) / ROWS;
    double *part = malloc(sizeof(double) * 3 * (size_t)(chunks * c)); /* per chunk: sum gz, gz*xhat1, gz*xhat2 */
    float *coef = malloc(sizeof(float) * 10 * (size_t)c);
    if (!part || !coef) {
        free(part);
        free(coef);
        return 2;
    }
    /* per channel: a = gamma * invstd, the forward's shift, means and invstds (zeros for a missing x2), then the
     * backward's means of gz and gz * xhat */
    float *a1 = coef, *a2 = coef + c, *shift = coef + 2 * c, *m1 = coef + 3 * c, *i1 = coef + 4 * c;
    float *m2 = coef + 5 * c, *i2 = coef + 6 * c, *mb = coef + 7 * c, *mg1 = coef + 8 * c, *mg2 = coef + 9 * c;
    for (int j = 0; j < c; ++j) {
        m1[j] = mean1[j];
        i1[j] = invstd1[j];
        a1[j] = gamma1[j] * i1[j];
        m2[j] = x2 ? mean2[j] : 0.0f;
        i2[j] = x2 ? invstd2[j] : 0.0f;
        a2[j] = x2 ? gamma2[j] * i2[j] : 0.0f;
        shift[j] = beta1[j] - m1[j] * a1[j] + (x2 ? beta2[j] - m2[j] * a2[j] : 0.0f);
    }
    /* 1. gz = grad_y * act'(z) into grad_x1, with the chunk's sums of gz and gz * xhat per input */
#pragma omp parallel for schedule(static)
    for (long k = 0; k < chunks; ++k) {
        const long end = chunk_end(k, m);
        double *out = part + k * 3 * c; /* this chunk's sums: gz, gz * xhat1, gz * xhat2, c each */
        int j = 0;
        for (; j + 8 <= c; j += 8) {
            const v8f s1 = load8(a1 + j), s2 = load8(a2 + j), sh = load8(shift + j);
            const v8f mm1 = load8(m1 + j), ii1 = load8(i1 + j), mm2 = load8(m2 + j), ii2 = load8(i2 + j);
            v8f acc_gz = {0}, acc_1 = {0}, acc_2 = {0};
            for (long r = k * ROWS; r < end; ++r) {
                const v8f uu = load8(x1 + r * c + j), vv = x2 ? load8(x2 + r * c + j) : (v8f){0};
                v8f gg = load8(grad_y + r * c + j);
                if (act == ACT_SILU) {
                    const v8f z = uu * s1 + vv * s2 + sh;
                    const v8f s = 1.0f / (1.0f + efpn_exp8(-z));
                    gg = gg * s * (1.0f + z * (1.0f - s));
                }
                store8(grad_x1 + r * c + j, gg);
                acc_gz += gg;
                acc_1 += gg * ((uu - mm1) * ii1);
                acc_2 += gg * ((vv - mm2) * ii2);
            }
            for (int q = 0; q < 8; ++q) {
                out[j + q] = acc_gz[q];
                out[c + j + q] = acc_1[q];
                out[2 * c + j + q] = acc_2[q];
            }
        }
        for (; j < c; ++j) {
            float t_gz = 0.0f, t_1 = 0.0f, t_2 = 0.0f;
            for (long r = k * ROWS; r < end; ++r) {
                const float uu = x1[r * c + j], vv = x2 ? x2[r * c + j] : 0.0f;
                float gg = grad_y[r * c + j];
                if (act == ACT_SILU) {
                    const float z = uu * a1[j] + vv * a2[j] + shift[j], s = 1.0f / (1.0f + expf(-z));
                    gg *= s * (1.0f + z * (1.0f - s));
                }
                grad_x1[r * c + j] = gg;
                t_gz += gg;
                t_1 += gg * ((uu - m1[j]) * i1[j]);
                t_2 += gg * ((vv - m2[j]) * i2[j]);
            }
            out[j] = t_gz;
            out[c + j] = t_1;
            out[2 * c + j] = t_2;
        }
    }
    /* the chunks' sums in chunk order -> the parameters' gradients, mean(gz) and mean(gz * xhat) per input */
    for (int j = 0; j < c; ++j) {
        double t_gz = 0.0, t_1 = 0.0, t_2 = 0.0;
        for (long k = 0; k < chunks; ++k) {
            t_gz += part[k * 3 * c + j];
            t_1 += part[k * 3 * c + c + j];
            t_2 += part[k * 3 * c + 2 * c + j];
        }
        grad_beta1[j] = (float)t_gz;
        grad_gamma1[j] = (float)t_1;
        if (x2) {
            grad_beta2[j] = (float)t_gz;
            grad_gamma2[j] = (float)t_2;
        }
        mb[j] = (float)(t_gz / (double)m);
        mg1[j] = (float)(t_1 / (double)m);
        mg2[j] = (float)(t_2 / (double)m);
    }
    /* 2. grad_x = gamma * invstd * (gz - mean(gz) - xhat * mean(gz * xhat)), per input: in place of gz for x1 */
#pragma omp parallel for schedule(static)
    for (long k = 0; k < chunks; ++k) {
        const long end = chunk_end(k, m);
        int j = 0;
        for (; j + 8 <= c; j += 8) {
            const v8f s1 = load8(a1 + j), s2 = load8(a2 + j), b = load8(mb + j), g1 = load8(mg1 + j);
            const v8f g2 = load8(mg2 + j), mm1 = load8(m1 + j), ii1 = load8(i1 + j), mm2 = load8(m2 + j);
            const v8f ii2 = load8(i2 + j);
            for (long r = k * ROWS; r < end; ++r) {
                const v8f gz = load8(grad_x1 + r * c + j);
                if (x2) store8(grad_x2 + r * c + j, s2 * (gz - b - (load8(x2 + r * c + j) - mm2) * ii2 * g2));
                store8(grad_x1 + r * c + j, s1 * (gz - b - (load8(x1 + r * c + j) - mm1) * ii1 * g1));
            }
        }
        for (; j < c; ++j) {
            for (long r = k * ROWS; r < end; ++r) {
                const float gz = grad_x1[r * c + j];
                if (x2) grad_x2[r * c + j] = a2[j] * (gz - mb[j] - (x2[r * c + j] - m2[j]) * i2[j] * mg2[j]);
                grad_x1[r * c + j] = a1[j] * (gz - mb[j] - (x1[r * c + j] - m1[j]) * i1[j] * mg1[j]);
            }
        }
    }
    free(part);
    free(coef);
    return 0;
}
