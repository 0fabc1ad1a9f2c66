/* The reference CNN's first block, Conv2d(1, 10, 5) -> MaxPool2d(2) -> ReLU, forward and backward in one pass each.
 *
 * Why hand-written: on a 2-core CPU, oneDNN spends about 3 ms of a 9 ms training step (batch 64) on this
 * block, because one input channel and ten output channels fit its vector kernels badly. Here the SIMD
 * lanes run across images instead (eight images per vector), so every operation is a full-width vector
 * operation with no shuffles: about 0.3 ms forward and 0.3 ms backward for the same batch. (Both figures are
 * one-off profiles, not kept; benchmarks/results/fused_block.json has the measured end-to-end gain.)
 *
 * Same results as PyTorch up to float rounding: max pooling keeps the first maximum of each 2x2 window,
 * scanning row by row, and lets NaN win, as torch's max_pool2d does; ReLU keeps NaN; the backward pass
 * sends each window's gradient to that first maximum only, and none where the ReLU output is not positive.
 * The weight gradient is summed per group of eight images, then over the groups in order, so it comes out
 * bit for bit the same whatever the number of threads.
 *
 * Layouts (all float32 and contiguous, as the Python side passes them):
 *   x      (n, 28, 28)        input images (one channel)
 *   w, b   (10, 25), (10)     conv1's weight and bias
 *   out    (n, 12, 12, 10)    the block's output in channels-last order (what conv2 reads)
 *   arg    (n, 12, 12, 10)    which of its window's four positions (0..3, row by row) each output came from
 *   grad   (n, 12, 12, 10)    the gradient of the loss with respect to out
 *   dw, db (10, 25), (10)     written, not accumulated
 *   dc     (threads, 10 * 24 * 24 * 8) and part (groups, 260): scratch, groups = ceil(n / 8); at most `threads` threads
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define SIDE 28                       /* input side */
#define K 5                           /* kernel side */
#define CO 10                         /* output channels */
#define CS (SIDE - K + 1)             /* conv output side: 24 */
#define PS (CS / 2)                   /* pooled side: 12 */
#define LANES 8                       /* images per vector */
#define PART (CO * K * K + CO)        /* one group's weight and bias gradient */

typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vf splat(float s) { return (vf){s, s, s, s, s, s, s, s}; }
static inline vi splat_i(int32_t s) { return (vi){s, s, s, s, s, s, s, s}; }
static inline vf pick(vi mask, vf yes, vf no) { return (vf)(((vi)yes & mask) | ((vi)no & ~mask)); }
static inline vi pick_i(vi mask, vi yes, vi no) { return (yes & mask) | (no & ~mask); }

/* Images 8g .. 8g+7 transposed so that xt[pixel] holds that pixel of the eight; missing images are zeros. */
static void load_group(const float *x, int64_t n, int64_t g, vf *xt) {
    memset(xt, 0, sizeof(vf) * SIDE * SIDE);
    float *t = (float *)xt;
    for (int lane = 0; lane < LANES && g * LANES + lane < n; lane++) {
        const float *image = x + (g * LANES + lane) * SIDE * SIDE;
        for (int p = 0; p < SIDE * SIDE; p++) t[p * LANES + lane] = image[p];
    }
}

void block1_forward(const float *x, const float *w, const float *b, float *out, uint8_t *arg, int64_t n) {
    const int64_t groups = (n + LANES - 1) / LANES;
    #pragma omp parallel for schedule(static)
    for (int64_t g = 0; g < groups; g++) {
        vf xt[SIDE * SIDE];
        load_group(x, n, g, xt);
        const int images = n - g * LANES < LANES ? (int)(n - g * LANES) : LANES;
        for (int pi = 0; pi < PS; pi++) {
            for (int pj = 0; pj < PS; pj++) {
                vf conv[4][CO];  /* the window's four positions, row by row, every channel */
                for (int a = 0; a < 4; a++) {
                    const int i = 2 * pi + (a >> 1), j = 2 * pj + (a & 1);
                    vf acc[CO];
                    for (int co = 0; co < CO; co++) acc[co] = splat(b[co]);
                    for (int kh = 0; kh < K; kh++) {
                        for (int kw = 0; kw < K; kw++) {
                            const vf pixel = xt[(i + kh) * SIDE + j + kw];
                            for (int co = 0; co < CO; co++) acc[co] += splat(w[co * K * K + kh * K + kw]) * pixel;
                        }
                    }
                    for (int co = 0; co < CO; co++) conv[a][co] = acc[co];
                }
                for (int co = 0; co < CO; co++) {
                    vf best = conv[0][co];
                    vi where = splat_i(0);
                    for (int a = 1; a < 4; a++) {
                        const vf v = conv[a][co];
                        const vi take = (v > best) | (v != v);  /* strictly greater, or NaN: torch's rule */
                        best = pick(take, v, best);
                        where = pick_i(take, splat_i(a), where);
                    }
                    best = pick(best < splat(0.0f), splat(0.0f), best);  /* ReLU; NaN < 0 is false, so NaN stays */
                    for (int lane = 0; lane < images; lane++) {
                        const int64_t o = (((g * LANES + lane) * PS + pi) * PS + pj) * CO + co;
                        out[o] = best[lane];
                        arg[o] = (uint8_t)where[lane];
                    }
                }
            }
        }
    }
}

void block1_backward(const float *x, const float *out, const uint8_t *arg, const float *grad, float *dw, float *db,
                     float *dc_scratch, float *part_scratch, int64_t n, int threads) {
    const int64_t groups = (n + LANES - 1) / LANES;
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < groups; g++) {
        vf xt[SIDE * SIDE];
        /* this thread's gradient of the conv output, (10, 24, 24) vectors: 184 KB, too big for a thread's stack */
        vf *dc = (vf *)(dc_scratch + (int64_t)omp_get_thread_num() * CO * CS * CS * LANES);
        float *part = part_scratch + g * PART;
        load_group(x, n, g, xt);
        memset(dc, 0, sizeof(vf) * CO * CS * CS);
        memset(part, 0, sizeof(float) * PART);
        float *dc_lanes = (float *)dc;
        for (int lane = 0; lane < LANES && g * LANES + lane < n; lane++) {
            for (int p = 0; p < PS * PS; p++) {
                const int64_t o = ((g * LANES + lane) * PS * PS + p) * CO;
                const int pi = p / PS, pj = p % PS;
                for (int co = 0; co < CO; co++) {
                    if (!(out[o + co] > 0.0f)) continue;  /* ReLU passes no gradient */
                    const int a = arg[o + co];
                    const int i = 2 * pi + (a >> 1), j = 2 * pj + (a & 1);
                    dc_lanes[((co * CS + i) * CS + j) * LANES + lane] = grad[o + co];
                    part[CO * K * K + co] += grad[o + co];
                }
            }
        }
        /* dw[co][kh][kw] = sum over positions of dc[co][i][j] * x[i + kh][j + kw], eight images at a time */
        for (int co = 0; co < CO; co++) {
            for (int kh = 0; kh < K; kh++) {
                vf acc[K] = {0};
                for (int i = 0; i < CS; i++) {
                    for (int j = 0; j < CS; j++) {
                        const vf d = dc[(co * CS + i) * CS + j];
                        const vf *row = xt + (i + kh) * SIDE + j;
                        for (int kw = 0; kw < K; kw++) acc[kw] += d * row[kw];
                    }
                }
                for (int kw = 0; kw < K; kw++) {
                    float sum = 0.0f;
                    for (int lane = 0; lane < LANES; lane++) sum += acc[kw][lane];
                    part[co * K * K + kh * K + kw] = sum;
                }
            }
        }
    }
    memset(dw, 0, sizeof(float) * CO * K * K);
    memset(db, 0, sizeof(float) * CO);
    for (int64_t g = 0; g < groups; g++) {  /* in order: the same sum for any number of threads */
        const float *part = part_scratch + g * PART;
        for (int k = 0; k < CO * K * K; k++) dw[k] += part[k];
        for (int co = 0; co < CO; co++) db[co] += part[CO * K * K + co];
    }
}
