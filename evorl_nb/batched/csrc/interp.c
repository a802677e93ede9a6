/* The loss interpreter of evorl_nb.batched.lossvm: K loss programs, forward and backward, in one call.
 *
 * Every agent's program is a list of instructions over float rows of B transitions. A value is
 * [rows, width]: width 1 for R and Z (an action index, stored as a float), A for List[R] and P,
 * D for S. An operand is (base, offset): a base is one of the tensors the caller passes (the
 * workspace of computed values, the batch, the Q-values, the random draws, the constants).
 *
 * Each op follows its PyTorch meaning in evorl_nb/ops.py and the derivative autograd uses for
 * it (tie splitting in maximum/minimum, first index for max over actions, a zero gradient for
 * a zero std, exp's clamp, ...), so the losses and the gradients equal
 * the eager evaluation's to float rounding. Sums accumulate in double (torch's std and var do,
 * so a constant column's std is exactly 0 here as there). Agents are independent: agent k
 * reads and writes only its own rows.
 *
 * The networks' kernel, which calls this interpreter agent by agent, is in netkernel.c.
 *
 * Build (evorl_nb.batched.lossvm does it): cc -O3 -shared -fPIC interp.c netkernel.c with the
 * guards as -D flags (no -ffast-math: NaN and inf must behave as IEEE says).
 */
#include <math.h>
#include <stdint.h>

#include "lossvm.h"

#define NF 9 /* int64 fields per instruction */
enum { F_OP, F_FLAGS, F_ROWS, F_WIDTH, F_OUT, F_AB, F_AO, F_BB, F_BO };
enum { BC_A = 1, BC_B = 2, GRAD_A = 4, GRAD_B = 8, GRAD_OUT = 16 };
enum {
    OP_ADD, OP_SUB, OP_MAX, OP_MIN, OP_MUL, OP_DIV,               /* binary elementwise */
    OP_LOG, OP_EXP, OP_ABS, OP_TENTH, OP_SQUARE,                  /* unary elementwise */
    OP_DOT, OP_L2,                                                /* pairs reduced over width */
    OP_MAXLIST, OP_MINLIST, OP_ARGMAX, OP_MEANLIST, OP_VARLIST,   /* reduced over width */
    OP_STDLIST, OP_SUMLIST, OP_LSE,
    OP_SELECT, OP_SOFTMAX, OP_KL, OP_ENTROPY,
    OP_MEANB, OP_STDB                                             /* reduced over the batch */
};
enum { WS = 0 }; /* base 0: the workspace the computed values are written to */

/* the op table's guards, given by the build as -D flags from evorl_nb/guards.py (one place) */
#if !defined(EPS_DIV) || !defined(EPS_LOG) || !defined(EPS_PROB) || !defined(EXP_CLIP)
#error "build with the guards of evorl_nb/guards.py: -DEPS_DIV=... (evorl_nb.batched.lossvm does)"
#endif

static float sgnf(float x) { return x > 0.f ? 1.f : (x < 0.f ? -1.f : x); }

/* the first index of the largest (sign 1) or smallest (sign -1) entry; NaN counts as extreme */
static int64_t extreme(const float *x, int64_t w, int sign)
{
    int64_t best = 0;
    for (int64_t c = 1; c < w; c++) {
        if (isnan(x[best])) break;
        if (isnan(x[c]) || (sign > 0 ? x[c] > x[best] : x[c] < x[best])) best = c;
    }
    return best;
}

static float binary(int op, float a, float b)
{
    switch (op) {
    case OP_ADD: return a + b;
    case OP_SUB: return a - b;
    case OP_MUL: return a * b;
    case OP_DIV: return a / (b + EPS_DIV);
    case OP_MAX: return (isnan(a) || isnan(b)) ? NAN : (a > b ? a : b);
    default /* OP_MIN */: return (isnan(a) || isnan(b)) ? NAN : (a < b ? a : b);
    }
}

static float unary(int op, float x)
{
    switch (op) {
    case OP_LOG: return logf(fabsf(x) + EPS_LOG);
    case OP_EXP: {
        float e = expf(x);
        return isnan(e) ? e : (e > EXP_CLIP ? EXP_CLIP : e);
    }
    case OP_ABS: return fabsf(x);
    case OP_TENTH: return 0.1f * x;
    default /* OP_SQUARE */: return x * x;
    }
}

static void forward_one(const int64_t *in, float *const *bases)
{
    const int op = (int)in[F_OP], flags = (int)in[F_FLAGS];
    const int64_t rows = in[F_ROWS], w = in[F_WIDTH];
    float *y = bases[WS] + in[F_OUT];
    const float *a = bases[in[F_AB]] + in[F_AO];
    const float *b = in[F_BB] >= 0 ? bases[in[F_BB]] + in[F_BO] : 0;
    switch (op) {
    case OP_ADD: case OP_SUB: case OP_MAX: case OP_MIN: case OP_MUL: case OP_DIV:
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < w; c++)
                y[r * w + c] = binary(op, a[(flags & BC_A) ? r : r * w + c],
                                      b[(flags & BC_B) ? r : r * w + c]);
        break;
    case OP_LOG: case OP_EXP: case OP_ABS: case OP_TENTH: case OP_SQUARE:
        for (int64_t i = 0; i < rows * w; i++) y[i] = unary(op, a[i]);
        break;
    case OP_DOT: case OP_L2:
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.;
            for (int64_t c = 0; c < w; c++) {
                float d = op == OP_DOT ? a[r * w + c] * b[r * w + c] : a[r * w + c] - b[r * w + c];
                s += op == OP_DOT ? d : d * d;
            }
            y[r] = op == OP_DOT ? (float)s : 0.5f * (float)s;
        }
        break;
    case OP_MAXLIST: case OP_MINLIST: case OP_ARGMAX:
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = extreme(a + r * w, w, op == OP_MINLIST ? -1 : 1);
            y[r] = op == OP_ARGMAX ? (float)i : a[r * w + i];
        }
        break;
    case OP_MEANLIST: case OP_SUMLIST: case OP_VARLIST: case OP_STDLIST:
        for (int64_t r = 0; r < rows; r++) {
            const float *x = a + r * w;
            double s = 0.;
            for (int64_t c = 0; c < w; c++) s += x[c];
            if (op == OP_SUMLIST) { y[r] = (float)s; continue; }
            const double m = s / (double)w;
            if (op == OP_MEANLIST) { y[r] = (float)m; continue; }
            double v = 0.;
            for (int64_t c = 0; c < w; c++) v += (x[c] - m) * (x[c] - m);
            v /= (double)w;
            y[r] = op == OP_VARLIST ? (float)v : (float)sqrt(v);
        }
        break;
    case OP_LSE:
        for (int64_t r = 0; r < rows; r++) {
            const float *x = a + r * w;
            float m = x[extreme(x, w, 1)];
            double s = 0.;
            if (isinf(m)) m = 0.f;
            for (int64_t c = 0; c < w; c++) s += expf(x[c] - m);
            y[r] = logf((float)s) + m;
        }
        break;
    case OP_SELECT:
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = (int64_t)b[r];
            y[r] = (i >= 0 && i < w) ? a[r * w + i] : NAN;
        }
        break;
    case OP_SOFTMAX:
        for (int64_t r = 0; r < rows; r++) {
            const float *x = a + r * w;
            const float m = x[extreme(x, w, 1)];
            double s = 0.;
            for (int64_t c = 0; c < w; c++) s += (y[r * w + c] = expf(x[c] - m));
            for (int64_t c = 0; c < w; c++) y[r * w + c] /= (float)s;
        }
        break;
    case OP_KL: case OP_ENTROPY:
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.;
            for (int64_t c = 0; c < w; c++) {
                float p = a[r * w + c], lp = logf(p + EPS_PROB);
                s += op == OP_KL ? p * (lp - logf(b[r * w + c] + EPS_PROB)) : p * lp;
            }
            y[r] = op == OP_KL ? (float)s : -(float)s;
        }
        break;
    case OP_MEANB: case OP_STDB:
        for (int64_t c = 0; c < w; c++) {
            double s = 0.;
            for (int64_t r = 0; r < rows; r++) s += a[r * w + c];
            const double m = s / (double)rows;
            float out = (float)m;
            if (op == OP_STDB) {
                double v = 0.;
                for (int64_t r = 0; r < rows; r++) v += (a[r * w + c] - m) * (a[r * w + c] - m);
                out = (float)sqrt(v / (double)rows);
            }
            for (int64_t r = 0; r < rows; r++) y[r * w + c] = out;
        }
        break;
    }
}

/* accumulate the gradients of one instruction's inputs from its output's gradient gy */
static void backward_one(const int64_t *in, float *const *bases, float *const *gbases)
{
    const int op = (int)in[F_OP], flags = (int)in[F_FLAGS];
    const int64_t rows = in[F_ROWS], w = in[F_WIDTH];
    const float *y = bases[WS] + in[F_OUT], *gy = gbases[WS] + in[F_OUT];
    const float *a = bases[in[F_AB]] + in[F_AO];
    const float *b = in[F_BB] >= 0 ? bases[in[F_BB]] + in[F_BO] : 0;
    float *ga = (flags & GRAD_A) ? gbases[in[F_AB]] + in[F_AO] : 0;
    float *gb = (flags & GRAD_B) ? gbases[in[F_BB]] + in[F_BO] : 0;
    switch (op) {
    case OP_ADD: case OP_SUB: case OP_MAX: case OP_MIN: case OP_MUL: case OP_DIV:
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < w; c++) {
                const int64_t ia = (flags & BC_A) ? r : r * w + c, ib = (flags & BC_B) ? r : r * w + c;
                const float g = gy[r * w + c], x = a[ia], z = b[ib];
                float da, db;
                switch (op) {
                case OP_ADD: da = g; db = g; break;
                case OP_SUB: da = g; db = -g; break;
                case OP_MUL: da = g * z; db = g * x; break;
                case OP_DIV: {
                    const float d = z + EPS_DIV;
                    da = g / d; db = -g * ((x / d) / d);
                    break;
                }
                case OP_MAX:
                    da = x == z ? g / 2.f : (x < z ? 0.f : g);
                    db = x == z ? g / 2.f : (x > z ? 0.f : g);
                    break;
                default: /* OP_MIN */
                    da = x == z ? g / 2.f : (x > z ? 0.f : g);
                    db = x == z ? g / 2.f : (x < z ? 0.f : g);
                }
                if (ga) ga[ia] += da;
                if (gb) gb[ib] += db;
            }
        break;
    case OP_LOG: case OP_EXP: case OP_ABS: case OP_TENTH: case OP_SQUARE:
        if (!ga) break;
        for (int64_t i = 0; i < rows * w; i++) {
            const float g = gy[i], x = a[i];
            switch (op) {
            case OP_LOG: ga[i] += (g / (fabsf(x) + EPS_LOG)) * sgnf(x); break;
            case OP_EXP: {
                const float e = expf(x);
                ga[i] += ((e >= -EXP_CLIP && e <= EXP_CLIP) ? g : 0.f) * e;
                break;
            }
            case OP_ABS: ga[i] += g * sgnf(x); break;
            case OP_TENTH: ga[i] += g * 0.1f; break;
            default /* OP_SQUARE */: ga[i] += g * x + g * x;
            }
        }
        break;
    case OP_DOT: case OP_L2:
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < w; c++) {
                const float x = a[r * w + c], z = b[r * w + c];
                if (op == OP_DOT) {
                    if (ga) ga[r * w + c] += gy[r] * z;
                    if (gb) gb[r * w + c] += gy[r] * x;
                } else {
                    const float d = (0.5f * gy[r]) * (2.f * (x - z));
                    if (ga) ga[r * w + c] += d;
                    if (gb) gb[r * w + c] -= d;
                }
            }
        break;
    case OP_MAXLIST: case OP_MINLIST:
        if (!ga) break;
        for (int64_t r = 0; r < rows; r++)
            ga[r * w + extreme(a + r * w, w, op == OP_MINLIST ? -1 : 1)] += gy[r];
        break;
    case OP_ARGMAX:
        break;
    case OP_MEANLIST: case OP_SUMLIST: case OP_VARLIST: case OP_STDLIST:
        if (!ga) break;
        for (int64_t r = 0; r < rows; r++) {
            const float *x = a + r * w;
            const float g = gy[r];
            if (op == OP_SUMLIST || op == OP_MEANLIST) {
                const float d = op == OP_SUMLIST ? g : g / (float)w;
                for (int64_t c = 0; c < w; c++) ga[r * w + c] += d;
                continue;
            }
            double s = 0.;
            for (int64_t c = 0; c < w; c++) s += x[c];
            const float m = (float)(s / (double)w);
            const float gv = op == OP_VARLIST ? g : (y[r] == 0.f ? 0.f : g / (y[r] * 2.f));
            for (int64_t c = 0; c < w; c++) ga[r * w + c] += (2.f / (float)w) * gv * (x[c] - m);
        }
        break;
    case OP_LSE:
        if (!ga) break;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < w; c++) ga[r * w + c] += gy[r] * expf(a[r * w + c] - y[r]);
        break;
    case OP_SELECT:
        if (!ga) break;
        for (int64_t r = 0; r < rows; r++) {
            int64_t i = (int64_t)b[r];
            if (i >= 0 && i < w) ga[r * w + i] += gy[r];
        }
        break;
    case OP_SOFTMAX:
        if (!ga) break;
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.;
            for (int64_t c = 0; c < w; c++) s += gy[r * w + c] * y[r * w + c];
            for (int64_t c = 0; c < w; c++)
                ga[r * w + c] += y[r * w + c] * (gy[r * w + c] - (float)s);
        }
        break;
    case OP_KL: case OP_ENTROPY:
        for (int64_t r = 0; r < rows; r++) {
            const float g = op == OP_KL ? gy[r] : -gy[r];
            for (int64_t c = 0; c < w; c++) {
                const float p = a[r * w + c], lp = logf(p + EPS_PROB);
                const float t = op == OP_KL ? lp - logf(b[r * w + c] + EPS_PROB) : lp;
                if (ga) ga[r * w + c] += g * t + (g * p) / (p + EPS_PROB);
                if (gb) gb[r * w + c] += -(g * p) / (b[r * w + c] + EPS_PROB);
            }
        }
        break;
    case OP_MEANB: case OP_STDB:
        if (!ga) break;
        for (int64_t c = 0; c < w; c++) {
            double gsum = 0., s = 0.;
            for (int64_t r = 0; r < rows; r++) { gsum += gy[r * w + c]; s += a[r * w + c]; }
            const float gs = (float)gsum, m = (float)(s / (double)rows);
            if (op == OP_MEANB) {
                for (int64_t r = 0; r < rows; r++) ga[r * w + c] += gs / (float)rows;
            } else {
                const float gv = y[c] == 0.f ? 0.f : gs / (y[c] * 2.f);
                for (int64_t r = 0; r < rows; r++)
                    ga[r * w + c] += (2.f / (float)rows) * gv * (a[r * w + c] - m);
            }
        }
        break;
    }
}

/* Agent k runs instructions code[start[k]:start[k+1]]; its loss is the mean over the B
 * entries of the R value at (out[2k], out[2k+1]). With ok non-NULL, ok[k] = 1 if the loss
 * is finite, |loss| <= max_loss and learn[k] != 0, else 0 (the weight of its gradient). */
void lossvm_forward(const int64_t *code, const int64_t *start, const int64_t *out, int64_t K,
                    int64_t B, float *const *bases, float *losses, const uint8_t *learn,
                    float max_loss, float *ok)
{
    for (int64_t k = 0; k < K; k++) {
        for (int64_t j = start[k]; j < start[k + 1]; j++) forward_one(code + j * NF, bases);
        const float *v = bases[out[2 * k]] + out[2 * k + 1];
        double s = 0.;
        for (int64_t r = 0; r < B; r++) s += v[r];
        losses[k] = (float)(s / (double)B);
        if (ok) ok[k] = (isfinite(losses[k]) && !(fabsf(losses[k]) > max_loss) && learn[k]);
    }
}

/* The gradients of sum_k dloss[k] * loss[k]: accumulated into gbases (zeroed by the caller;
 * NULL for a base without a gradient). Only instructions flagged GRAD_OUT are run. */
void lossvm_backward(const int64_t *code, const int64_t *start, const int64_t *out, int64_t K,
                     int64_t B, float *const *bases, float *const *gbases, const float *dloss)
{
    for (int64_t k = 0; k < K; k++) {
        float *gv = gbases[out[2 * k]];
        if (!gv) continue;
        gv += out[2 * k + 1];
        for (int64_t r = 0; r < B; r++) gv[r] += dloss[k] / (float)B;
        for (int64_t j = start[k + 1] - 1; j >= start[k]; j--)
            if (code[j * NF + F_FLAGS] & GRAD_OUT) backward_one(code + j * NF, bases, gbases);
    }
}
