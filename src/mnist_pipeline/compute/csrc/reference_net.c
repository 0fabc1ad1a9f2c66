/* The reference CNN, forward and backward, its loss and its optimizers, in arithmetic whose order this file fixes.
 *
 * Why hand-written: torch's CPU kernels pick their code for the CPU they run on (oneDNN's convolutions,
 * vectorized sums 8 or 16 lanes wide, fused multiply-adds on some instruction sets and not others), so the
 * same training rounds differently on an AMD and an Intel CPU, or with AVX-512 and without. Here every value
 * is computed by one sequence of IEEE-754 single-precision operations written below: compiled with
 * -ffp-contract=off (no fused multiply-add) and without -ffast-math (no reassociation), that sequence gives
 * the same bits on any CPU, whatever vector width the compiler uses for it (tests/test_kernels.py builds
 * it for x86-64, x86-64-v2 and x86-64-v3 and compares). exp and log are this file's own polynomials, for
 * the same reason: a maths library's vector versions differ between instruction sets.
 *
 * The network: Conv2d(1,10,5) -> MaxPool2d(2) -> ReLU -> Conv2d(10,20,5) -> MaxPool2d(2) -> ReLU ->
 * flatten (320) -> Linear(320,10), the same function as torch's layers up to float rounding. Max pooling
 * keeps the first maximum of each 2x2 window, scanning row by row, and lets NaN win, as torch's does;
 * the backward pass sends each window's gradient to that first maximum only, and none where the ReLU
 * output is not positive.
 *
 * The SIMD lanes run across images: eight images per vector, so every operation is a full-width vector
 * operation with no shuffles. Each call runs on the calling thread only; mnist_pipeline.shards runs parts
 * of a batch side by side and adds their gradients in order. Within a call, a weight gradient is summed over
 * positions, then over the call's groups of eight images in order, then over the eight lanes in order.
 *
 * Parameters travel as one float array in torch's state_dict order and contiguous layout:
 *   conv1.weight (10,1,5,5) conv1.bias (10) conv2.weight (20,10,5,5) conv2.bias (20) fc.weight (10,320) fc.bias (10)
 * Images are (n, 28, 28) float32, already normalised; labels int64 in 0..9.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SIDE 28             /* input side */
#define K 5                 /* kernel side */
#define KK (K * K)
#define C1 10               /* conv1 channels */
#define S1 24               /* conv1 output side */
#define P1 12               /* pooled side */
#define C2 20               /* conv2 channels */
#define S2 8                /* conv2 output side */
#define P2 4                /* pooled side */
#define FEATURES (C2 * P2 * P2)  /* 320, in torch's flatten order (channel, row, column) */
#define CLASSES 10
#define LANES 8             /* images per vector */
#define HALF (C2 / 2)       /* conv2 channels computed together: ten accumulators fit the registers */

#define W1 0
#define B1 (W1 + C1 * KK)
#define W2 (B1 + C1)
#define B2 (W2 + C2 * C1 * KK)
#define WF (B2 + C2)
#define BF (WF + CLASSES * FEATURES)
#define PARAMETERS (BF + CLASSES)  /* 8490 */

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vf splat(float s) { return (vf){s, s, s, s, s, s, s, s}; }
static inline vi splat_i(int32_t s) { return (vi){s, s, s, s, s, s, s, s}; }
static inline vf pick(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }
static inline vi pick_i(vi mask, vi yes, vi no) { return (yes & mask) | (no & ~mask); }

int reference_parameters(void) { return PARAMETERS; }

/* exp(x) for a vector, Cephes' single-precision polynomial: x = n ln 2 + r, |r| <= ln 2 / 2, exp(r) by a
 * degree-7 polynomial, times 2^n. Relative error under 2e-7 for x in [-87, 88]; x is clamped to that range. */
static inline vf exp_v(vf x) {
    x = pick(x < splat(-87.0f), splat(-87.0f), x);
    x = pick(x > splat(88.0f), splat(88.0f), x);
    vf n = x * splat(1.44269504088896341f) + splat(0.5f);
    vf whole = __builtin_convertvector(__builtin_convertvector(n, vi), vf);  /* toward zero */
    n = whole - pick(whole > n, splat(1.0f), splat(0.0f));                     /* floor */
    x = x - n * splat(0.693359375f);
    x = x - n * splat(-2.12194440e-4f);
    vf z = x * x;
    vf y = splat(1.9875691500e-4f);
    y = y * x + splat(1.3981999507e-3f);
    y = y * x + splat(8.3334519073e-3f);
    y = y * x + splat(4.1665795894e-2f);
    y = y * x + splat(1.6666665459e-1f);
    y = y * x + splat(5.0000001201e-1f);
    y = y * z + x + splat(1.0f);
    vi scale = (__builtin_convertvector(n, vi) + splat_i(127)) << 23;
    return y * (vf)scale;
}

/* log(x) for positive, normal x, Cephes' single-precision polynomial on the mantissa in [sqrt(1/2), sqrt(2)). */
static inline vf log_v(vf x) {
    vi bits = (vi)x;
    vi exponent = ((bits >> 23) & splat_i(0xff)) - splat_i(126);
    vf m = (vf)((bits & splat_i(0x007fffff)) | splat_i(0x3f000000));  /* in [0.5, 1) */
    vi small = m < splat(0.70710678118654752440f);
    exponent = exponent + small;  /* small is -1 where true: m doubles, the exponent drops by one */
    m = m + (vf)((vi)m & small) - splat(1.0f);
    vf z = m * m;
    vf y = splat(7.0376836292e-2f);
    y = y * m + splat(-1.1514610310e-1f);
    y = y * m + splat(1.1676998740e-1f);
    y = y * m + splat(-1.2420140846e-1f);
    y = y * m + splat(1.4249322787e-1f);
    y = y * m + splat(-1.6668057665e-1f);
    y = y * m + splat(2.0000714765e-1f);
    y = y * m + splat(-2.4999993993e-1f);
    y = y * m + splat(3.3333331174e-1f);
    y = y * m * z;
    vf e = __builtin_convertvector(exponent, vf);
    y = y + e * splat(-2.12194440e-4f);
    y = y - splat(0.5f) * z;
    vf result = m + y;
    return result + e * splat(0.693359375f);
}

/* One thread's working memory: a group's activations and gradients, and a call's weight-gradient sums. */
typedef struct {
    vf x[SIDE * SIDE];             /* the group's images, pixel by pixel */
    vf h1[P1 * P1 * C1];           /* block 1 out, (row, column, channel) */
    vi a1[P1 * P1 * C1];           /* which window position (0..3) gave it; -1 where ReLU passes no gradient */
    vf h2[FEATURES];               /* block 2 out, torch's flatten order */
    vi a2[FEATURES];
    vf logits[CLASSES];
    vf dlogits[CLASSES];
    vf dh2[FEATURES];
    vf dc2[S2 * S2 * C2];          /* gradient of conv2's output, (row, column, channel) */
    vf dh1[P1 * P1 * C1];
    vf dc1[S1 * S1 * C1];          /* gradient of conv1's output, (row, column, channel) */
    vf sums[PARAMETERS];           /* weight-gradient sums of the call so far, one per lane */
    float w2t[KK * C1 * C2];       /* conv2.weight as (kernel position, input channel, output channel) */
} Scratch;

static __thread Scratch *scratch;

static Scratch *thread_scratch(void) {
    if (scratch == NULL) scratch = aligned_alloc(64, (sizeof(Scratch) + 63) / 64 * 64);  /* kept for the thread's life */
    return scratch;
}

static void transpose_conv2(const float *params, float *w2t) {
    for (int co = 0; co < C2; co++)
        for (int ci = 0; ci < C1; ci++)
            for (int k = 0; k < KK; k++) w2t[(k * C1 + ci) * C2 + co] = params[W2 + (co * C1 + ci) * KK + k];
}

/* Images first .. first+7 (those below n) transposed so that x[pixel] holds that pixel of the eight; missing ones are 0. */
static void load_group(const float *images, int64_t n, int64_t first, vf *x) {
    memset(x, 0, sizeof(vf) * SIDE * SIDE);
    float *lanes = (float *)x;
    for (int lane = 0; lane < LANES && first + lane < n; lane++) {
        const float *image = images + (first + lane) * SIDE * SIDE;
        for (int p = 0; p < SIDE * SIDE; p++) lanes[p * LANES + lane] = image[p];
    }
}

/* The best of four candidates (first maximum, NaN wins), then ReLU; `where` is -1 where no gradient passes. */
static inline void pool_relu(const vf candidates[4], vf *out, vi *where) {
    vf best = candidates[0];
    vi at = splat_i(0);
    for (int a = 1; a < 4; a++) {
        vi take = (candidates[a] > best) | (candidates[a] != candidates[a]);
        best = pick(take, candidates[a], best);
        at = pick_i(take, splat_i(a), at);
    }
    vi positive = best > splat(0.0f);
    *out = pick(best < splat(0.0f), splat(0.0f), best);  /* NaN < 0 is false: NaN stays */
    *where = pick_i(positive, at, splat_i(-1));
}

static void forward_group(const float *params, const float *w2t, Scratch *s) {
    /* conv1 -> pool -> ReLU */
    for (int pi = 0; pi < P1; pi++) {
        for (int pj = 0; pj < P1; pj++) {
            vf conv[C1][4];
            for (int a = 0; a < 4; a++) {
                const int i = 2 * pi + (a >> 1), j = 2 * pj + (a & 1);
                vf acc[C1];
                for (int co = 0; co < C1; co++) acc[co] = splat(params[B1 + co]);
                for (int kh = 0; kh < K; kh++) {
                    for (int kw = 0; kw < K; kw++) {
                        const vf pixel = s->x[(i + kh) * SIDE + j + kw];
                        for (int co = 0; co < C1; co++) acc[co] += splat(params[W1 + co * KK + kh * K + kw]) * pixel;
                    }
                }
                for (int co = 0; co < C1; co++) conv[co][a] = acc[co];
            }
            for (int co = 0; co < C1; co++) {
                const int o = (pi * P1 + pj) * C1 + co;
                pool_relu(conv[co], &s->h1[o], &s->a1[o]);
            }
        }
    }
    /* conv2 -> pool -> ReLU, ten output channels at a time */
    for (int py = 0; py < P2; py++) {
        for (int px = 0; px < P2; px++) {
            for (int half = 0; half < C2; half += HALF) {
                vf conv[HALF][4];
                for (int a = 0; a < 4; a++) {
                    const int y = 2 * py + (a >> 1), x = 2 * px + (a & 1);
                    vf acc[HALF];
                    for (int co = 0; co < HALF; co++) acc[co] = splat(params[B2 + half + co]);
                    for (int kh = 0; kh < K; kh++) {
                        for (int kw = 0; kw < K; kw++) {
                            const vf *in = s->h1 + ((y + kh) * P1 + x + kw) * C1;
                            const float *w = w2t + (kh * K + kw) * C1 * C2 + half;
                            for (int ci = 0; ci < C1; ci++) {
                                const vf v = in[ci];
                                for (int co = 0; co < HALF; co++) acc[co] += splat(w[ci * C2 + co]) * v;
                            }
                        }
                    }
                    for (int co = 0; co < HALF; co++) conv[co][a] = acc[co];
                }
                for (int co = 0; co < HALF; co++) {
                    const int o = (half + co) * P2 * P2 + py * P2 + px;
                    pool_relu(conv[co], &s->h2[o], &s->a2[o]);
                }
            }
        }
    }
    /* fc */
    vf acc[CLASSES];
    for (int o = 0; o < CLASSES; o++) acc[o] = splat(params[BF + o]);
    for (int k = 0; k < FEATURES; k++) {
        const vf v = s->h2[k];
        for (int o = 0; o < CLASSES; o++) acc[o] += splat(params[WF + o * FEATURES + k]) * v;
    }
    for (int o = 0; o < CLASSES; o++) s->logits[o] = acc[o];
}

/* Per lane: the loss (cross-entropy against `target`, label smoothing `smoothing`), the gradient of that loss
 * with respect to the logits (when `dlogits` is not NULL), the predicted class (first maximum) and its
 * probability. `target` holds -1 in lanes without an image or label; their loss and gradient are 0. */
static void softmax_loss(const vf *logits, vi target, float smoothing, vf *loss, vf *dlogits, vi *predicted,
                         vf *confidence) {
    vf top = logits[0];
    vi best = splat_i(0);
    for (int o = 1; o < CLASSES; o++) {
        vi take = logits[o] > top;
        top = pick(take, logits[o], top);
        best = pick_i(take, splat_i(o), best);
    }
    vf shifted[CLASSES], e[CLASSES];
    vf total = splat(0.0f);
    for (int o = 0; o < CLASSES; o++) {
        shifted[o] = logits[o] - top;
        e[o] = exp_v(shifted[o]);
        total = total + e[o];
    }
    const vf log_total = log_v(total);
    vf picked = splat(0.0f), all = splat(0.0f);
    for (int o = 0; o < CLASSES; o++) {
        const vf log_p = shifted[o] - log_total;
        picked = picked + pick(target == splat_i(o), log_p, splat(0.0f));
        all = all + log_p;
    }
    const vi labelled = target >= splat_i(0);
    vf value = splat(0.0f) - picked;
    if (smoothing != 0.0f)
        value = splat(0.0f) - splat(1.0f - smoothing) * picked - splat(smoothing / CLASSES) * all;
    *loss = pick(labelled, value, splat(0.0f));
    *predicted = best;
    *confidence = splat(1.0f) / total;  /* the top class's exp is exp(0) = 1 */
    if (dlogits != NULL) {
        for (int o = 0; o < CLASSES; o++) {
            vf q = pick(target == splat_i(o), splat(1.0f - smoothing), splat(0.0f)) + splat(smoothing / CLASSES);
            dlogits[o] = pick(labelled, e[o] / total - q, splat(0.0f));
        }
    }
}

static vi group_targets(const int64_t *labels, int64_t n, int64_t first) {
    vi target = splat_i(-1);
    for (int lane = 0; lane < LANES && first + lane < n; lane++) target[lane] = labels ? (int32_t)labels[first + lane] : -1;
    return target;
}

static void backward_group(const float *params, const float *w2t, Scratch *s) {
    vf *sums = s->sums;
    /* fc */
    for (int o = 0; o < CLASSES; o++) {
        const vf d = s->dlogits[o];
        for (int k = 0; k < FEATURES; k++) sums[WF + o * FEATURES + k] += d * s->h2[k];
        sums[BF + o] += d;
    }
    for (int k = 0; k < FEATURES; k++) {
        vf acc = splat(0.0f);
        for (int o = 0; o < CLASSES; o++) acc += splat(params[WF + o * FEATURES + k]) * s->dlogits[o];
        s->dh2[k] = acc;
    }
    /* block 2's ReLU and pool: each window's gradient to its first maximum */
    for (int co = 0; co < C2; co++) {
        for (int py = 0; py < P2; py++) {
            for (int px = 0; px < P2; px++) {
                const int o = co * P2 * P2 + py * P2 + px;
                for (int a = 0; a < 4; a++) {
                    const int y = 2 * py + (a >> 1), x = 2 * px + (a & 1);
                    s->dc2[(y * S2 + x) * C2 + co] = pick(s->a2[o] == splat_i(a), s->dh2[o], splat(0.0f));
                }
            }
        }
    }
    /* conv2: bias and weight gradients */
    for (int p = 0; p < S2 * S2; p++)
        for (int co = 0; co < C2; co++) sums[B2 + co] += s->dc2[p * C2 + co];
    for (int co = 0; co < C2; co++) {
        for (int kh = 0; kh < K; kh++) {
            for (int kw = 0; kw < K; kw++) {
                vf acc[C1];
                for (int ci = 0; ci < C1; ci++) acc[ci] = splat(0.0f);
                for (int y = 0; y < S2; y++) {
                    for (int x = 0; x < S2; x++) {
                        const vf d = s->dc2[(y * S2 + x) * C2 + co];
                        const vf *in = s->h1 + ((y + kh) * P1 + x + kw) * C1;
                        for (int ci = 0; ci < C1; ci++) acc[ci] += d * in[ci];
                    }
                }
                for (int ci = 0; ci < C1; ci++) sums[W2 + (co * C1 + ci) * KK + kh * K + kw] += acc[ci];
            }
        }
    }
    /* conv2: gradient of its input */
    for (int yy = 0; yy < P1; yy++) {
        for (int xx = 0; xx < P1; xx++) {
            vf acc[C1];
            for (int ci = 0; ci < C1; ci++) acc[ci] = splat(0.0f);
            for (int kh = 0; kh < K; kh++) {
                const int y = yy - kh;
                if (y < 0 || y >= S2) continue;
                for (int kw = 0; kw < K; kw++) {
                    const int x = xx - kw;
                    if (x < 0 || x >= S2) continue;
                    const vf *d = s->dc2 + (y * S2 + x) * C2;
                    const float *w = w2t + (kh * K + kw) * C1 * C2;
                    for (int co = 0; co < C2; co++) {
                        const vf dv = d[co];
                        for (int ci = 0; ci < C1; ci++) acc[ci] += splat(w[ci * C2 + co]) * dv;
                    }
                }
            }
            for (int ci = 0; ci < C1; ci++) s->dh1[(yy * P1 + xx) * C1 + ci] = acc[ci];
        }
    }
    /* block 1's ReLU and pool */
    for (int pi = 0; pi < P1; pi++) {
        for (int pj = 0; pj < P1; pj++) {
            for (int co = 0; co < C1; co++) {
                const int o = (pi * P1 + pj) * C1 + co;
                for (int a = 0; a < 4; a++) {
                    const int i = 2 * pi + (a >> 1), j = 2 * pj + (a & 1);
                    s->dc1[(i * S1 + j) * C1 + co] = pick(s->a1[o] == splat_i(a), s->dh1[o], splat(0.0f));
                }
            }
        }
    }
    /* conv1: bias and weight gradients */
    for (int p = 0; p < S1 * S1; p++)
        for (int co = 0; co < C1; co++) sums[B1 + co] += s->dc1[p * C1 + co];
    for (int kh = 0; kh < K; kh++) {
        for (int kw = 0; kw < K; kw++) {
            vf acc[C1];
            for (int co = 0; co < C1; co++) acc[co] = splat(0.0f);
            for (int i = 0; i < S1; i++) {
                for (int j = 0; j < S1; j++) {
                    const vf pixel = s->x[(i + kh) * SIDE + j + kw];
                    const vf *d = s->dc1 + (i * S1 + j) * C1;
                    for (int co = 0; co < C1; co++) acc[co] += d[co] * pixel;
                }
            }
            for (int co = 0; co < C1; co++) sums[W1 + co * KK + kh * K + kw] += acc[co];
        }
    }
}

/* The gradient of the summed loss of n images into `grad` (PARAMETERS floats, overwritten); returns that loss,
 * summed image by image in order. */
double reference_gradients(const float *params, const float *images, const int64_t *labels, int64_t n,
                           float smoothing, float *grad) {
    Scratch *s = thread_scratch();
    transpose_conv2(params, s->w2t);
    memset(s->sums, 0, sizeof(s->sums));
    double total = 0.0;
    for (int64_t first = 0; first < n; first += LANES) {
        load_group(images, n, first, s->x);
        forward_group(params, s->w2t, s);
        vf loss, confidence;
        vi predicted;
        softmax_loss(s->logits, group_targets(labels, n, first), smoothing, &loss, s->dlogits, &predicted, &confidence);
        for (int lane = 0; lane < LANES && first + lane < n; lane++) total += (double)loss[lane];
        backward_group(params, s->w2t, s);
    }
    for (int k = 0; k < PARAMETERS; k++) {
        float sum = 0.0f;
        for (int lane = 0; lane < LANES; lane++) sum += s->sums[k][lane];
        grad[k] = sum;
    }
    return total;
}

/* For each of n images: the logits (when `logits` is not NULL), the loss against its label (when `labels` is
 * not NULL; else 0), the predicted class and that class's probability. */
void reference_score(const float *params, const float *images, const int64_t *labels, int64_t n, float *logits,
                     float *loss, int64_t *predicted, float *confidence) {
    Scratch *s = thread_scratch();
    transpose_conv2(params, s->w2t);
    for (int64_t first = 0; first < n; first += LANES) {
        load_group(images, n, first, s->x);
        forward_group(params, s->w2t, s);
        vf group_loss, group_confidence;
        vi group_predicted;
        softmax_loss(s->logits, group_targets(labels, n, first), 0.0f, &group_loss, NULL, &group_predicted,
                     &group_confidence);
        for (int lane = 0; lane < LANES && first + lane < n; lane++) {
            const int64_t image = first + lane;
            if (logits != NULL)
                for (int o = 0; o < CLASSES; o++) logits[image * CLASSES + o] = s->logits[o][lane];
            loss[image] = group_loss[lane];
            predicted[image] = group_predicted[lane];
            confidence[image] = group_confidence[lane];
        }
    }
}

/* torch.optim.SGD's update (dampening 0, no Nesterov), each product and sum rounded on its own. */
void sgd_step(float *param, const float *grad, float *momentum_buffer, int64_t n, float lr, float momentum,
              float weight_decay, int first_step) {
    for (int64_t i = 0; i < n; i++) {
        float d = grad[i];
        if (weight_decay != 0.0f) d = d + weight_decay * param[i];
        if (momentum != 0.0f) {
            d = first_step ? d : momentum * momentum_buffer[i] + d;
            momentum_buffer[i] = d;
        }
        param[i] = param[i] - lr * d;
    }
}

/* torch.optim.Adam's update (decoupled: AdamW's), without amsgrad. The caller passes step_size = lr / (1 - beta1^t)
 * and bias2_sqrt = sqrt(1 - beta2^t), computed once per step in double precision. */
void adam_step(float *param, const float *grad, float *exp_avg, float *exp_avg_sq, int64_t n, float lr, float beta1,
               float beta2, float eps, float weight_decay, int decoupled, float step_size, float bias2_sqrt) {
    for (int64_t i = 0; i < n; i++) {
        float g = grad[i];
        if (weight_decay != 0.0f) {
            if (decoupled) param[i] = param[i] * (1.0f - lr * weight_decay);
            else g = g + weight_decay * param[i];
        }
        const float m = beta1 * exp_avg[i] + (1.0f - beta1) * g;
        const float v = beta2 * exp_avg_sq[i] + (1.0f - beta2) * (g * g);
        exp_avg[i] = m;
        exp_avg_sq[i] = v;
        const float denominator = __builtin_sqrtf(v) / bias2_sqrt + eps;
        param[i] = param[i] - step_size * (m / denominator);
    }
}
