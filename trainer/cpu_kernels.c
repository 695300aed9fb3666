/* The CPU kernels of trainer/cpu_kernels.py, in fp32 on channels-last tensors (N x H x W x C in memory, C a multiple
   of 8), built with the system's C compiler on first use and loaded with ctypes:

   - depthwise_weight_grad: the weight and bias gradient of a stride-1 'same' depthwise convolution (oneDNN's is the
     slowest op of a ConvMixer step on the CPU);
   - gelu_forward, scale_shift, backward_sums, gelu_backward: GELU followed by training-mode BatchNorm (and the
     residual add after it), forward and backward in two passes over memory each, where PyTorch's eager ops take
     five.

   Vectors of 8 floats are GCC/Clang vector extensions: AVX2 registers with -march=native on x86, two NEON registers
   on ARM. Work is shared among OpenMP threads, in the OpenMP runtime that torch has loaded (this library links
   libgomp.so.1 as torch does); sums are made per thread and added in thread order, so a run is reproducible bit for
   bit with the same number of threads. Each function returns 0, 1 for a shape it does not take, 2 when out of
   memory. */
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline void add8(float *p, v8 v) { store8(p, load8(p) + v); }
static inline v8 splat(float f) { return (v8){f, f, f, f, f, f, f, f}; }
static inline v8 select8(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}


/* ---- the depthwise convolution's weight gradient ----

   For each image row and kernel row, a block of 8 channels slides along the row with its k products in registers,
   so each input and gradient vector is loaded once per kernel row. */

/* sums[t * C + c] += products of kernel tap t = i * k + j; sums[k * k * C + c] += the bias gradient. */
static inline __attribute__((always_inline)) void image(const float *x, const float *g, float *sums, long H, long W,
                                                        long C, const long k) {
    const long p = k / 2;
    const v8 zero = {0};
    for (long h = 0; h < H; h++)
        for (long i = 0; i < k; i++) {
            long hh = h + i - p;
            if (hh < 0 || hh >= H) continue;
            const float *xrow = x + hh * W * C, *grow = g + h * W * C;
            for (long c = 0; c < C; c += 8) {
                v8 acc[9], window[9], bias = zero;
                _Pragma("GCC unroll 9") for (long j = 0; j < k; j++) {
                    long w = j - p;
                    acc[j] = zero;
                    window[j] = (w >= 0 && w < W) ? load8(xrow + w * C + c) : zero;
                }
                for (long w = 0; w < W; w++) {
                    v8 gv = load8(grow + w * C + c);
                    bias += gv;
                    _Pragma("GCC unroll 9") for (long j = 0; j < k; j++) acc[j] += window[j] * gv;
                    _Pragma("GCC unroll 9") for (long j = 0; j + 1 < k; j++) window[j] = window[j + 1];
                    window[k - 1] = w + 1 + p < W ? load8(xrow + (w + 1 + p) * C + c) : zero;
                }
                _Pragma("GCC unroll 9") for (long j = 0; j < k; j++) add8(sums + (i * k + j) * C + c, acc[j]);
                if (i == p) add8(sums + k * k * C + c, bias);
            }
        }
}

/* x, g: the convolution's input and output gradient. grad (k*k x C, tap-major) and bias (C) are overwritten. Takes
   odd k from 3 to 9. */
int depthwise_weight_grad(const float *x, const float *g, float *grad, float *bias, long N, long H, long W, long C,
                          long k) {
    if (C % 8 || k < 3 || k > 9 || k % 2 == 0) return 1;
    const long taps = k * k, size = (taps + 1) * C;
    int threads = max_threads();
    float *sums = calloc((size_t)threads * size, sizeof(float));
    if (!sums) return 2;
#pragma omp parallel num_threads(threads)
    {
        int thread = thread_id();
#pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            const float *xn = x + n * H * W * C, *gn = g + n * H * W * C;
            float *mine = sums + thread * size;
            switch (k) {  /* a constant k: the k products stay in registers */
                case 3: image(xn, gn, mine, H, W, C, 3); break;
                case 5: image(xn, gn, mine, H, W, C, 5); break;
                case 7: image(xn, gn, mine, H, W, C, 7); break;
                default: image(xn, gn, mine, H, W, C, 9); break;
            }
        }
    }
    for (long t = 0; t < taps * C; t++) grad[t] = 0;
    for (long c = 0; c < C; c++) bias[c] = 0;
    for (int thread = 0; thread < threads; thread++) {
        const float *mine = sums + thread * size;
        for (long t = 0; t < taps * C; t++) grad[t] += mine[t];
        for (long c = 0; c < C; c++) bias[c] += mine[taps * C + c];
    }
    free(sums);
    return 0;
}


/* ---- GELU and training-mode BatchNorm ---- */

/* e^x for x <= 0 (Cephes' expf polynomial, about 1 ulp); large negative x gives 0. */
static inline v8 exp_neg(v8 x) {
    x = select8(x < splat(-87.0f), splat(-87.0f), x);
    v8 fx = x * splat(1.44269504088896341f) + splat(0.5f);
    v8i n = __builtin_convertvector(fx, v8i);
    v8 nf = __builtin_convertvector(n, v8);
    nf = select8(nf > fx, nf - splat(1.0f), nf);  /* floor */
    n = __builtin_convertvector(nf, v8i);
    x = x - nf * splat(0.693359375f) - nf * splat(-2.12194440e-4f);
    v8 y = splat(1.9875691500e-4f);
    y = y * x + splat(1.3981999507e-3f);
    y = y * x + splat(8.3334519073e-3f);
    y = y * x + splat(4.1665795894e-2f);
    y = y * x + splat(1.6666665459e-1f);
    y = y * x + splat(5.0000001201e-1f);
    y = y * x * x + x + splat(1.0f);
    v8i bits = (n + 127) << 23;
    return y * (v8)bits;
}

/* Phi(z) (the standard normal CDF) and phi(z) (its density), from erf by Abramowitz & Stegun 7.1.26 (|error| of
   erf below 1.5e-7): gelu(z) = z Phi(z), gelu'(z) = Phi(z) + z phi(z). */
static inline void normal(v8 z, v8 *cdf, v8 *pdf) {
    v8 a = z * splat(0.70710678118654752f);
    v8 absa = select8(a < splat(0.0f), -a, a);
    v8 t = splat(1.0f) / (splat(1.0f) + splat(0.3275911f) * absa);
    v8 poly = splat(1.061405429f);
    poly = poly * t + splat(-1.453152027f);
    poly = poly * t + splat(1.421413741f);
    poly = poly * t + splat(-0.284496736f);
    poly = poly * t + splat(0.254829592f);
    poly = poly * t;
    v8 e = exp_neg(-absa * absa);          /* exp(-z^2 / 2) */
    v8 erfc_abs = poly * e;                 /* 1 - erf(|a|), kept apart: 1 + erf(a) for a < 0 is tiny in the tail */
    *cdf = splat(0.5f) * select8(a < splat(0.0f), erfc_abs, splat(2.0f) - erfc_abs);
    *pdf = e * splat(0.3989422804014327f);
}

/* Per-channel sums over the rows (N*H*W) of two quantities, each taken about a per-channel `shift` (a value near the
   mean, so that the variance does not drown in the square of the mean): with `gelu`, u = gelu(a) - shift (gelu(a) is
   also written to out, and gelu'(a) to slope) and u^2; without, u = a and a * (b - shift). sums[0..C) and sums[C..2C) get them, in double:
   float sums of 64 rows at a time, then per-thread double sums, added in thread order. */
static inline __attribute__((always_inline)) int channel_sums(const float *a, const float *b, const float *shift,
                                                              float *out, float *slope, double *sums, long rows,
                                                              long C, const int gelu) {
    if (C % 8) return 1;
    int threads = max_threads();
    double *partial = calloc((size_t)threads * 2 * C, sizeof(double));
    float *block = calloc((size_t)threads * 2 * C, sizeof(float));
    if (!partial || !block) { free(partial); free(block); return 2; }
#pragma omp parallel num_threads(threads)
    {
        double *mine = partial + thread_id() * 2 * C;
        float *acc = block + thread_id() * 2 * C;
        long count = 0;
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            for (long c = 0; c < C; c += 8) {
                v8 u = load8(a + r * C + c), second;
                if (gelu) {
                    v8 cdf, pdf;
                    normal(u, &cdf, &pdf);
                    store8(out + r * C + c, u * cdf);
                    store8(slope + r * C + c, cdf + u * pdf);
                    u = u * cdf - load8(shift + c);
                    second = u * u;
                } else {
                    second = u * (load8(b + r * C + c) - load8(shift + c));
                }
                add8(acc + c, u);
                add8(acc + C + c, second);
            }
            if (++count == 64) {
                for (long c = 0; c < 2 * C; c++) { mine[c] += acc[c]; acc[c] = 0; }
                count = 0;
            }
        }
        for (long c = 0; c < 2 * C; c++) mine[c] += acc[c];
    }
    memset(sums, 0, sizeof(double) * 2 * C);
    for (int t = 0; t < threads; t++)
        for (long c = 0; c < 2 * C; c++) sums[c] += partial[t * 2 * C + c];
    free(partial);
    free(block);
    return 0;
}

/* g = gelu(z), slope = gelu'(z) (kept for the backward, in place of z: the same memory, and no erf to recompute);
   sums: per channel, the sum of g - shift and of (g - shift)^2 (BatchNorm's statistics). */
int gelu_forward(const float *z, const float *shift, float *g, float *slope, double *sums, long rows, long C) {
    return channel_sums(z, NULL, shift, g, slope, sums, rows, C, 1);
}

/* y = g * scale + shift, per channel, + residual where it is not NULL (ConvMixer's skip connection, in the same
   pass). */
int scale_shift(const float *g, const float *scale, const float *shift, const float *residual, float *y, long rows,
                long C) {
    if (C % 8) return 1;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < C; c += 8) {
            v8 v = load8(g + r * C + c) * load8(scale + c) + load8(shift + c);
            store8(y + r * C + c, residual ? v + load8(residual + r * C + c) : v);
        }
    return 0;
}

/* sums: per channel, the sum of dy and of dy * (g - mean) (for BatchNorm's backward). */
int backward_sums(const float *dy, const float *g, const float *mean, double *sums, long rows, long C) {
    return channel_sums(dy, g, mean, NULL, NULL, sums, rows, C, 0);
}

/* dz = (a * dy + b * (g - mean) + k) * slope, per channel a, b, k and mean: BatchNorm's input gradient as an affine
   map of dy and the centred g, then GELU's (slope = gelu'(z), from gelu_forward). */
int gelu_backward(const float *dy, const float *slope, const float *g, const float *a, const float *b, const float *k,
                  const float *mean, float *dz, long rows, long C) {
    if (C % 8) return 1;
#pragma omp parallel for schedule(static)
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < C; c += 8) {
            v8 centred = load8(g + r * C + c) - load8(mean + c);
            v8 dg = load8(a + c) * load8(dy + r * C + c) + load8(b + c) * centred + load8(k + c);
            store8(dz + r * C + c, dg * load8(slope + r * C + c));
        }
    return 0;
}
