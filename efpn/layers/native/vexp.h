/* e^x on 8 float lanes, shared by the native kernels (efpn/layers/native.py compiles them into one library).
 *
 * Cephes' single-precision method: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial (relative error ~1e-7,
 * as libm's expf), times 2^n built in the exponent bits. x is clamped to [-87, 88] first (e^-87 is still a normal
 * float, e^88 still finite). Written with GCC/Clang vector types, 8 lanes at a time: libm's expf does not
 * vectorise without -ffast-math, and a library built with -ffast-math can switch the whole process to flush
 * denormals. */
#ifndef EFPN_VEXP_H
#define EFPN_VEXP_H

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

static inline v8f efpn_exp8(v8f x) {
    const v8f lo = {-87.f, -87.f, -87.f, -87.f, -87.f, -87.f, -87.f, -87.f};
    const v8f hi = {88.f, 88.f, 88.f, 88.f, 88.f, 88.f, 88.f, 88.f};
    const v8i under = x < lo, over = x > hi; /* lanes of -1 where x is out of range */
    x = (v8f)(((v8i)x & ~under) | ((v8i)lo & under));
    x = (v8f)(((v8i)x & ~over) | ((v8i)hi & over));
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

#endif
