/* Batch statistics of one channel, shared by the native kernels (efpn/layers/native.py compiles them into one
 * library): BatchNorm's mean and biased variance over (N, P) in two passes, float within a plane (vectorised) and
 * double across planes. */
#ifndef EFPN_STATS_H
#define EFPN_STATS_H

/* Batch mean and biased variance of channel ch of x (N, C, P): two passes, in double across planes. */
static inline void efpn_channel_stats(const float *x, int n, int c, long p, int ch, float *mean, float *var) {
    double sum = 0.0, sq = 0.0;
    for (int b = 0; b < n; ++b) {
        const float *xp = x + ((long)b * c + ch) * p;
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (long i = 0; i < p; ++i) part += xp[i];
        sum += part;
    }
    const double mu = sum / ((double)n * p);
    const float m = (float)mu;
    for (int b = 0; b < n; ++b) {
        const float *xp = x + ((long)b * c + ch) * p;
        float part = 0.0f;
#pragma omp simd reduction(+ : part)
        for (long i = 0; i < p; ++i) part += (xp[i] - m) * (xp[i] - m);
        sq += part;
    }
    *mean = m;
    *var = (float)(sq / ((double)n * p));
}

#endif
