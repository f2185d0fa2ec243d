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
 * Layouts are contiguous (N, C, P), P = H * W. One channel per task: each writes only its own channel, and the
 * sums of a channel run in one thread in a fixed order, so results do not depend on the thread count. Sums run in
 * float over a plane (vectorised) and in double across planes. Every function returns 0, or 1 for bad arguments.
 */
#include <math.h>
#include <stddef.h>
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
