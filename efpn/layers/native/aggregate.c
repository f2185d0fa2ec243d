/* Training kernels of the shift aggregation (efpn.layers.rdconv._ShiftAggregate): its forward and its backward on
 * given per-pixel kernels, for x (N, C, H, W) and kernels (N, G, k*k, Ho, Wo) shared by the C / G channels of a group:
 *   out[n, c, i, j] = sum_q kern[n, g, q, i, j] x[n, c, s i + dy - p, s j + dx - p]      (0 outside x), q = (dy, dx)
 *
 * Layout. A tap's offset d - p splits as s sh + f (0 <= f < s), so tap (dy, dx) reads the polyphase component
 * (fy, fx) of x — rows fy, fy + s, ..., columns fx, fx + s, ... — shifted by (shy, shx). The work is cut into tasks
 * of one (image, group, band of B output rows); a task copies what it reads into "flat" scratch planes: rows Wp =
 * Wo + 2 lead floats wide (lead = ceil(p / s), the largest backward shift), the real columns at [lead, lead + Wo)
 * and zeros around them, the rows of the band plus the halo the shifts reach. In that layout a tap is ONE
 * contiguous multiply-add over B Wp floats — the zero columns and rows stand for the padding, products at the
 * padding columns are computed and never read — where a loop per output row and tap runs only Wo (10 to 80)
 * floats at a time and spends most of its time starting loops.
 *
 * The backward writes grad_x by gathering (each x pixel belongs to one component position, which belongs to one
 * band), so bands never write the same pixel and need no reduction; grad_k sums over the group's channels inside
 * its task. Tasks run in parallel on PyTorch's OpenMP threads. */
#include <stdlib.h>
#include <string.h>

static int fdiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); } /* floor(a / b), b > 0 */

/* offset d - p = s sh + f with 0 <= f < s */
static void tap_split(int d, int p, int s, int *f, int *sh) {
    *sh = fdiv(d - p, s);
    *f = d - p - s * *sh;
}

/* Output rows per band: a band's scratch (k*k kernel planes of B Wp floats) stays in the L2 cache. */
static int band_rows(int Ho, int Wp) {
    int b = 4096 / (Wp > 0 ? Wp : 1);
    return b < 1 ? 1 : (b > Ho ? Ho : b);
}

/* dst (R rows of Wp) = rows i0 .. i0+R-1 of an (Ho, Wo) plane at columns [lead, lead + Wo); zero elsewhere and for
 * rows outside [0, Ho). */
static void fill_flat(const float *src, int Ho, int Wo, int lead, int Wp, int i0, int R, float *dst) {
    for (int e = 0; e < R; ++e) {
        float *row = dst + (long)e * Wp;
        const int i = i0 + e;
        if (i < 0 || i >= Ho) {
            memset(row, 0, sizeof(float) * Wp);
            continue;
        }
        memset(row, 0, sizeof(float) * lead);
        memcpy(row + lead, src + (long)i * Wo, sizeof(float) * Wo);
        memset(row + lead + Wo, 0, sizeof(float) * (Wp - lead - Wo));
    }
}

/* ph (R rows of Wp) = component (fy, fx) of the (H, W) plane xc at component rows r0 .. r0+R-1: ph[e][lead + c] =
 * xc[s (r0 + e) + fy, s c + fx], zero outside xc. */
static void fill_phase(const float *xc, int H, int W, int s, int fy, int fx, int lead, int Wp, int r0, int R,
                       float *ph) {
    int ncol = (W - fx + s - 1) / s; /* columns c with s c + fx < W (W >= 1 and fx < s: never negative) */
    if (ncol > Wp - lead) ncol = Wp - lead;
    for (int e = 0; e < R; ++e) {
        float *row = ph + (long)e * Wp;
        const int y = s * (r0 + e) + fy;
        if (y < 0 || y >= H || ncol == 0) {
            memset(row, 0, sizeof(float) * Wp);
            continue;
        }
        const float *xr = xc + (long)y * W + fx;
        float *dst = row + lead;
        memset(row, 0, sizeof(float) * lead);
        if (s == 1)
            memcpy(dst, xr, sizeof(float) * ncol);
        else if (s == 2) /* a constant stride: vectorised (the common stride-2 downsampling) */
            for (int c = 0; c < ncol; ++c) dst[c] = xr[2 * c];
        else
            for (int c = 0; c < ncol; ++c) dst[c] = xr[(long)s * c];
        memset(dst + ncol, 0, sizeof(float) * (Wp - lead - ncol));
    }
}

/* Whether some tap reads component f = fy s + fx (with s > k some are never read: not copied). */
static int component_used(int f, int k, int s) {
    int fy_used = 0, fx_used = 0;
    for (int d = 0; d < k; ++d) {
        int fd, sh;
        tap_split(d, k / 2, s, &fd, &sh);
        fy_used |= fd == f / s;
        fx_used |= fd == f % s;
    }
    return fy_used && fx_used;
}

/* Shapes shared by the forward and the backward. */
typedef struct {
    int kk, cg, p, lead, trail, Wp, B, nb, R;
    long HW, HWo, plane; /* plane: floats of one scratch plane of R rows, with `lead` zeros before and after */
} geom;

static int geometry(int N, int C, int H, int W, int G, int k, int s, int Ho, int Wo, geom *g) {
    if (N < 1 || C < 1 || H < 1 || W < 1 || G < 1 || C % G || k < 1 || k % 2 == 0 || s < 1)
        return 1;
    /* the output size of padding k / 2 (= ceil(H / s)): every pixel of x then lies in one band's component rows,
     * which is what lets the backward write grad_x whole */
    if (Ho != (H - 1) / s + 1 || Wo != (W - 1) / s + 1) return 1;
    g->kk = k * k;
    g->cg = C / G;
    g->p = k / 2;
    g->lead = -fdiv(-g->p, s); /* the most negative shift, negated: ceil(p / s) */
    g->trail = fdiv(g->p, s);  /* the most positive shift, <= lead */
    g->Wp = Wo + 2 * g->lead;
    g->B = band_rows(Ho, g->Wp);
    g->nb = (Ho + g->B - 1) / g->B;
    g->R = g->B + g->lead + g->trail; /* component rows a band reads (forward), output rows it gathers (backward) */
    g->HW = (long)H * W;
    g->HWo = (long)Ho * Wo;
    g->plane = (long)g->R * g->Wp + 2L * g->lead;
    return 0;
}

/* out (N, C, Ho, Wo) = the aggregation of x with kern. Returns 0, 1 for arguments it cannot serve, 2 when scratch
 * cannot be allocated. */
int efpn_aggregate(const float *x, const float *kern, int N, int C, int H, int W, int G, int k, int s, int Ho, int Wo,
                   float *out) {
    geom m;
    if (geometry(N, C, H, W, G, k, s, Ho, Wo, &m)) return 1;
    const long band = (long)m.B * m.Wp;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        /* k*k kernel planes of the band, the s*s components (zero margins: calloc), the accumulator */
        float *kb = calloc((size_t)(m.kk * band + (long)s * s * m.plane + band), sizeof(float));
        float *ph = kb ? kb + m.kk * band : NULL, *acc = ph ? ph + (long)s * s * m.plane : NULL;
        if (!kb) failed = 2;
#pragma omp for schedule(static)
        for (long t = 0; t < (long)N * G * m.nb; ++t) {
            if (!kb) continue;
            const long ng = t / m.nb; /* n G + g */
            const int i0 = (int)(t % m.nb) * m.B, bt = Ho - i0 < m.B ? Ho - i0 : m.B;
            const long len = (long)bt * m.Wp;
            for (int q = 0; q < m.kk; ++q)
                fill_flat(kern + (ng * m.kk + q) * m.HWo, Ho, Wo, m.lead, m.Wp, i0, bt, kb + q * band);
            for (int cc = 0; cc < m.cg; ++cc) {
                const long plane = ng * m.cg + cc; /* (n, c) with c = g cg + cc */
                for (int f = 0; f < s * s; ++f)
                    if (component_used(f, k, s))
                        fill_phase(x + plane * m.HW, H, W, s, f / s, f % s, m.lead, m.Wp, i0 - m.lead,
                                   bt + m.lead + m.trail, ph + f * m.plane + m.lead);
                for (int q = 0; q < m.kk; ++q) {
                    int fy, fx, shy, shx;
                    tap_split(q / k, m.p, s, &fy, &shy);
                    tap_split(q % k, m.p, s, &fx, &shx);
                    const float *restrict kq = kb + q * band;
                    const float *restrict src = ph + (fy * s + fx) * m.plane + m.lead + (long)(m.lead + shy) * m.Wp + shx;
                    float *restrict a = acc;
                    if (q == 0)
                        for (long u = 0; u < len; ++u) a[u] = kq[u] * src[u];
                    else
                        for (long u = 0; u < len; ++u) a[u] += kq[u] * src[u];
                }
                float *o = out + plane * m.HWo + (long)i0 * Wo;
                for (int e = 0; e < bt; ++e) memcpy(o + (long)e * Wo, acc + (long)e * m.Wp + m.lead, sizeof(float) * Wo);
            }
        }
        free(kb);
    }
    return failed;
}

/* The aggregation's backward: given go = dL/dout (N, C, Ho, Wo),
 *   grad_x[n, c, s i + dy - p, s j + dx - p] = sum over the (i, j, q) reading it of go[n, c, i, j] kern[n, g, q, i, j]
 *   grad_k[n, g, q, i, j] = sum_{c in g} go[n, c, i, j] x[n, c, s i + dy - p, s j + dx - p]   (0 off the image)
 * Either output may be NULL; both are written whole. */
int efpn_aggregate_backward(const float *x, const float *kern, const float *go, int N, int C, int H, int W, int G,
                            int k, int s, int Ho, int Wo, float *grad_x, float *grad_k) {
    geom m;
    if (geometry(N, C, H, W, G, k, s, Ho, Wo, &m)) return 1;
    const long band = (long)m.B * m.Wp;
    const int nx = grad_x != NULL, nk = grad_k != NULL;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        /* grad_x: k*k kernel planes and go over the band's output rows plus halo, one component's gradient;
         * grad_k: its k*k accumulators, go over the band, the s*s components of x */
        const long need = nx * ((m.kk + 1) * m.plane + band) + nk * ((m.kk + 1) * band + (long)s * s * m.plane);
        float *buf = calloc((size_t)(need > 0 ? need : 1), sizeof(float));
        if (!buf) failed = 2;
        /* offsets into buf (no pointer arithmetic on a failed allocation) */
        const long o_ge = nx * m.kk * m.plane, o_gph = o_ge + nx * m.plane, o_gk = o_gph + nx * band;
        const long o_gb = o_gk + nk * m.kk * band, o_ph = o_gb + nk * band;
        float *ke = buf, *ge = buf ? buf + o_ge : NULL, *gph = buf ? buf + o_gph : NULL;
        float *gk = buf ? buf + o_gk : NULL, *gb = buf ? buf + o_gb : NULL, *ph = buf ? buf + o_ph : NULL;
#pragma omp for schedule(dynamic, 1)
        for (long t = 0; t < (long)N * G * m.nb; ++t) {
            if (!buf) continue;
            const long ng = t / m.nb;
            const int i0 = (int)(t % m.nb) * m.B, bt = Ho - i0 < m.B ? Ho - i0 : m.B;
            const long len = (long)bt * m.Wp;
            const int halo = bt + m.lead + m.trail; /* output rows i0 - trail .. i0 + bt + lead - 1 feed the band */
            if (nx)
                for (int q = 0; q < m.kk; ++q)
                    fill_flat(kern + (ng * m.kk + q) * m.HWo, Ho, Wo, m.lead, m.Wp, i0 - m.trail, halo,
                              ke + q * m.plane + m.lead);
            if (nk) memset(gk, 0, sizeof(float) * m.kk * band);
            for (int cc = 0; cc < m.cg; ++cc) {
                const long plane = ng * m.cg + cc;
                const float *gop = go + plane * m.HWo;
                if (nk) {
                    fill_flat(gop, Ho, Wo, m.lead, m.Wp, i0, bt, gb);
                    for (int f = 0; f < s * s; ++f)
                        if (component_used(f, k, s))
                            fill_phase(x + plane * m.HW, H, W, s, f / s, f % s, m.lead, m.Wp, i0 - m.lead, halo,
                                       ph + f * m.plane + m.lead);
                    for (int q = 0; q < m.kk; ++q) {
                        int fy, fx, shy, shx;
                        tap_split(q / k, m.p, s, &fy, &shy);
                        tap_split(q % k, m.p, s, &fx, &shx);
                        const float *restrict src =
                            ph + (fy * s + fx) * m.plane + m.lead + (long)(m.lead + shy) * m.Wp + shx;
                        const float *restrict g = gb;
                        float *restrict a = gk + q * band;
                        for (long u = 0; u < len; ++u) a[u] += g[u] * src[u];
                    }
                }
                if (!nx) continue;
                fill_flat(gop, Ho, Wo, m.lead, m.Wp, i0 - m.trail, halo, ge + m.lead);
                for (int f = 0; f < s * s; ++f) { /* component (fy, fx) of grad_x over the band's rows */
                    const int fy = f / s, fx = f % s;
                    int first = 1;
                    for (int q = 0; q < m.kk; ++q) {
                        int qfy, qfx, shy, shx;
                        tap_split(q / k, m.p, s, &qfy, &shy);
                        tap_split(q % k, m.p, s, &qfx, &shx);
                        if (qfy != fy || qfx != fx) continue;
                        /* position (r, c) of the component takes go kern at output (r - shy, c - shx) */
                        const long off = m.lead + (long)(m.trail - shy) * m.Wp - shx;
                        const float *restrict g = ge + off, *restrict kq = ke + q * m.plane + off;
                        float *restrict a = gph;
                        if (first)
                            for (long u = 0; u < len; ++u) a[u] = g[u] * kq[u];
                        else
                            for (long u = 0; u < len; ++u) a[u] += g[u] * kq[u];
                        first = 0;
                    }
                    if (first) memset(gph, 0, sizeof(float) * len); /* no tap reads this component (s > k) */
                    const int ncol = (W - fx + s - 1) / s < Wo ? (W - fx + s - 1) / s : Wo;
                    for (int e = 0; e < bt && ncol > 0; ++e) {
                        const int y = s * (i0 + e) + fy;
                        if (y >= H) continue;
                        float *gxr = grad_x + plane * m.HW + (long)y * W + fx;
                        const float *src = gph + (long)e * m.Wp + m.lead;
                        if (s == 1)
                            memcpy(gxr, src, sizeof(float) * ncol);
                        else if (s == 2)
                            for (int c = 0; c < ncol; ++c) gxr[2 * c] = src[c];
                        else
                            for (int c = 0; c < ncol; ++c) gxr[(long)s * c] = src[c];
                    }
                }
            }
            if (nk)
                for (int q = 0; q < m.kk; ++q)
                    for (int e = 0; e < bt; ++e)
                        memcpy(grad_k + (ng * m.kk + q) * m.HWo + (long)(i0 + e) * Wo,
                               gk + q * band + (long)e * m.Wp + m.lead, sizeof(float) * Wo);
        }
        free(buf);
    }
    return failed;
}
