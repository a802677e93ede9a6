/* The networks' kernel of evorl_nb.batched.netkernel: K stacked MLPs' forward and backward,
 * one agent at a time.
 *
 * Agent k's weights are W[l] + a*out*in ([out, in], nn.Linear's layout) and biases
 * b[l] + a*out, a = agents[k] (or k0 + k). Activations are batch-major ([N, width] per agent).
 * One agent's whole network runs before the next one's, so its weights and activations stay
 * in L1/L2 between layers (the stacked torch products sweep every agent's tensors through the
 * cache once per layer). The products run in an AVX-512 register-tile kernel (6 rows x 64
 * columns of accumulators, a broadcast A element times vector rows of B); mlp_available() is
 * 0 on other CPUs (and where EVORL_NB_NO_AVX512 is defined), where evorl_nb uses torch's
 * batched products instead. Summation order differs from MKL's, so values agree to float
 * rounding, not bit for bit. fused_update() at the end runs a whole update this way: each
 * agent's networks, its loss program (the interpreter, interp.c) and their backward in turn.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "lossvm.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(EVORL_NB_NO_AVX512)
#include <immintrin.h>
#define TGT __attribute__((target("avx512f,fma")))
#define INL static inline __attribute__((always_inline))

/* C[0:MR, 0:w] (=|+=) init + sum_k A[i*sam + k*sak] * B[k*ldb + 0:w], w <= 16*NV.
 * init: bias[0:w] (row vector) when bias, else 0 (or C when acc). relu: max(., 0).
 * gate: keep only where gate[i*ldc + j] > 0 (the ReLU's backward). */
INL TGT void tile(const int MR, const int NV, __mmask16 last, int64_t K,
                  const float *A, int64_t sam, int64_t sak, const float *B, int64_t ldb,
                  float *C, int64_t ldc, int acc, const float *bias, int relu,
                  const float *gate)
{
    __m512 c[6][4];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) {
            __mmask16 m = j == NV - 1 ? last : 0xFFFF;
            if (acc) c[i][j] = _mm512_maskz_loadu_ps(m, C + i * ldc + 16 * j);
            else if (bias) c[i][j] = _mm512_maskz_loadu_ps(m, bias + 16 * j);
            else c[i][j] = _mm512_setzero_ps();
        }
    for (int64_t k = 0; k < K; k++) {
        __m512 b[4];
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++)
            b[j] = j == NV - 1 ? _mm512_maskz_loadu_ps(last, B + k * ldb + 16 * j)
                               : _mm512_loadu_ps(B + k * ldb + 16 * j);
        const float *a = A + k * sak;
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i * sam]);
#pragma GCC unroll 4
            for (int j = 0; j < NV; j++) c[i][j] = _mm512_fmadd_ps(ai, b[j], c[i][j]);
        }
    }
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NV; j++) {
            __mmask16 m = j == NV - 1 ? last : 0xFFFF;
            __m512 v = c[i][j];
            if (relu) v = _mm512_max_ps(_mm512_setzero_ps(), v); /* NaN stays NaN, as in torch */
            if (gate) {
                __m512 g = _mm512_maskz_loadu_ps(m, gate + i * ldc + 16 * j);
                v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_GT_OQ), v);
            }
            _mm512_mask_storeu_ps(C + i * ldc + 16 * j, m, v);
        }
}

#define ROWS(NV)                                                                           \
    static TGT void rows##NV(int64_t M, __mmask16 last, int64_t K, const float *A,        \
                             int64_t sam, int64_t sak, const float *B, int64_t ldb, float *C, \
                             int64_t ldc, int acc, const float *bias, int relu,            \
                             const float *gate)                                            \
    {                                                                                      \
        int64_t i = 0;                                                                     \
        for (; i + 6 <= M; i += 6)                                                         \
            tile(6, NV, last, K, A + i * sam, sam, sak, B, ldb, C + i * ldc, ldc, acc,     \
                 bias, relu, gate ? gate + i * ldc : 0);                                   \
        const float *g = gate ? gate + i * ldc : 0;                                        \
        switch (M - i) {                                                                   \
        case 5: tile(5, NV, last, K, A + i * sam, sam, sak, B, ldb, C + i * ldc, ldc, acc, bias, relu, g); break; \
        case 4: tile(4, NV, last, K, A + i * sam, sam, sak, B, ldb, C + i * ldc, ldc, acc, bias, relu, g); break; \
        case 3: tile(3, NV, last, K, A + i * sam, sam, sak, B, ldb, C + i * ldc, ldc, acc, bias, relu, g); break; \
        case 2: tile(2, NV, last, K, A + i * sam, sam, sak, B, ldb, C + i * ldc, ldc, acc, bias, relu, g); break; \
        case 1: tile(1, NV, last, K, A + i * sam, sam, sak, B, ldb, C + i * ldc, ldc, acc, bias, relu, g); break; \
        default: break;                                                                    \
        }                                                                                  \
    }
ROWS(1)
ROWS(2)
ROWS(3)
ROWS(4)

/* C[M, N] (=|+=) A[M, K] B[K, N]; A strided, B and C row-major */
static TGT void gemm(int64_t M, int64_t N, int64_t K, const float *A, int64_t sam, int64_t sak,
                     const float *B, int64_t ldb, float *C, int64_t ldc, int acc,
                     const float *bias, int relu, const float *gate)
{
    for (int64_t j = 0; j < N; j += 64) {
        int64_t w = N - j < 64 ? N - j : 64;
        int nv = (int)((w + 15) / 16);
        int rem = (int)(w - 16 * (nv - 1));
        __mmask16 last = (__mmask16)(rem == 16 ? 0xFFFF : (1u << rem) - 1);
        const float *bj = B + j, *bb = bias ? bias + j : 0, *gg = gate ? gate + j : 0;
        switch (nv) {
        case 4: rows4(M, last, K, A, sam, sak, bj, ldb, C + j, ldc, acc, bb, relu, gg); break;
        case 3: rows3(M, last, K, A, sam, sak, bj, ldb, C + j, ldc, acc, bb, relu, gg); break;
        case 2: rows2(M, last, K, A, sam, sak, bj, ldb, C + j, ldc, acc, bb, relu, gg); break;
        default: rows1(M, last, K, A, sam, sak, bj, ldb, C + j, ldc, acc, bb, relu, gg); break;
        }
    }
}

/* dst[c, r] = src[r, c] for an 8x8 block (rows ls and ld apart): unpack, shuffle, swap lanes */
INL TGT void transpose8(const float *src, int64_t ls, float *dst, int64_t ld)
{
    __m256 r[8], t[8], u[8];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ls);
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) { /* rows 0-3, then 4-7 */
        u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        _mm256_storeu_ps(dst + c * ld, _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
        _mm256_storeu_ps(dst + (c + 4) * ld, _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
    }
}

/* dst [cols, rows] = src [rows, cols] transposed: 8x8 blocks in registers, the edges scalar */
static TGT void transpose(const float *src, int64_t rows, int64_t cols, float *dst)
{
    int64_t r8 = rows & ~(int64_t)7, c8 = cols & ~(int64_t)7;
    for (int64_t r = 0; r < r8; r += 8)
        for (int64_t c = 0; c < c8; c += 8) transpose8(src + r * cols + c, cols, dst + c * rows + r, rows);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = r < r8 ? c8 : 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

int mlp_available(void) { return __builtin_cpu_supports("avx512f") ? 1 : 0; }

/* The widest layer of dims[0..L], and the hidden layers' widths summed */
static int64_t widest(int64_t L, const int64_t *dims)
{
    int64_t mx = 0;
    for (int64_t l = 0; l <= L; l++) mx = dims[l] > mx ? dims[l] : mx;
    return mx;
}

static int64_t hidden_widths(int64_t L, const int64_t *dims)
{
    int64_t sum = 0;
    for (int64_t l = 1; l < L; l++) sum += dims[l];
    return sum;
}

/* Agent a's network on x [N, dims[0]]: the hidden layers' ReLU outputs into h[l] (l = 1..L-1,
 * [N, dims[l]]; h[0] is not used) and the output into out [N, dims[L]]. wt: max(dims[l] *
 * dims[l+1]) floats for a weight's transpose. */
static TGT void net_forward(int64_t L, const int64_t *dims, float *const *W, float *const *b,
                            int64_t a, const float *x, int64_t N, float *const *h, float *out,
                            float *wt)
{
    const float *in_rows = x;
    for (int64_t l = 0; l < L; l++) {
        int64_t in = dims[l], o = dims[l + 1];
        transpose(W[l] + a * in * o, o, in, wt); /* [in, out] */
        float *y = l == L - 1 ? out : h[l + 1];
        gemm(N, o, in, in_rows, in, 1, wt, o, y, o, 0, b[l] + a * o, l < L - 1, 0);
        in_rows = y;
    }
}

/* Agent a's weight and bias gradients of sum(gout * out) (gout [N, dims[L]]; h[0] = x and
 * h[l] the hidden outputs, from net_forward), written (acc=0) or added (acc=1) into its rows
 * of dW[l], db[l]. scratch: 2*N*max(dims) + max(dims[l]*dims[l+1]) floats. */
static TGT void net_backward(int64_t L, const int64_t *dims, float *const *W, int64_t a,
                             const float *const *h, int64_t N, const float *gout,
                             float *const *dW, float *const *db, int acc, float *scratch)
{
    const int64_t mx = widest(L, dims);
    float *g2[2] = {scratch, scratch + N * mx};
    float *T = scratch + 2 * N * mx;
    const float *g = gout;
    for (int64_t l = L - 1; l >= 0; l--) {
        int64_t in = dims[l], o = dims[l + 1];
        const float *hl = h[l];
        float *dw = dW[l] + a * in * o, *dbl = db[l] + a * o;
        /* db[o] = sum_n g[n, o] */
        if (!acc) memset(dbl, 0, (size_t)o * sizeof(float));
        for (int64_t r = 0; r < N; r++)
            for (int64_t j = 0; j < o; j++) dbl[j] += g[r * o + j];
        if (in >= 16 || in >= o) { /* dW[o, i] = sum_n g[n, o] h[n, i] */
            gemm(o, in, N, g, 1, o, hl, in, dw, in, acc, 0, 0, 0);
        } else { /* dW^T [in, o] = sum_n h[n, i] g[n, o], then transposed in */
            gemm(in, o, N, hl, 1, in, g, o, T, o, 0, 0, 0, 0);
            for (int64_t i = 0; i < in; i++)
                for (int64_t j = 0; j < o; j++)
                    dw[j * in + i] = acc ? dw[j * in + i] + T[i * o + j] : T[i * o + j];
        }
        if (l > 0) { /* g_prev[n, i] = (sum_o g[n, o] W[o, i]) * (h[n, i] > 0) */
            float *gp = g2[l & 1];
            gemm(N, in, o, g, o, 1, W[l] + a * in * o, in, gp, in, 0, 0, 0, hl);
            g = gp;
        }
    }
}

/* Forward of n agents' MLPs, batch-major. dims[0..L]: widths. W[l]: agent k's weight at
 * W[l] + agent(k) * dims[l+1]*dims[l] ([out, in], nn.Linear's layout); b[l] likewise ([out]).
 * agents: global agent index of local k (NULL: k0 + k). x: [n, N, dims[0]].
 * hs[l] for l = 1..L-1: [n, N, dims[l]] ReLU outputs (written). out: [n, N, dims[L]].
 * scratch: max(dims[l]*dims[l+1]) floats. */
TGT void mlp_forward(int64_t n, int64_t L, const int64_t *dims, float *const *W,
                     float *const *b, const int64_t *agents, int64_t k0, const float *x,
                     int64_t N, float *const *hs, float *out, float *scratch)
{
    float *h[L + 1];
    for (int64_t k = 0; k < n; k++) {
        for (int64_t l = 1; l < L; l++) h[l] = hs[l] + k * N * dims[l];
        net_forward(L, dims, W, b, agents ? agents[k] : k0 + k, x + k * N * dims[0], N, h,
                    out + k * N * dims[L], scratch);
    }
}

/* Backward: gout [n, N, dims[L]]; writes (acc=0) or adds (acc=1) dW[l], db[l] at the agents'
 * rows. hs[0] is x. scratch: 2*N*max(dims) + max(dims[l]*dims[l+1]) floats. */
TGT void mlp_backward(int64_t n, int64_t L, const int64_t *dims, float *const *W,
                      const int64_t *agents, int64_t k0, float *const *hs, int64_t N,
                      const float *gout, float *const *dW, float *const *db, int acc,
                      float *scratch)
{
    const float *h[L + 1];
    for (int64_t k = 0; k < n; k++) {
        for (int64_t l = 0; l < L; l++) h[l] = hs[l] + k * N * dims[l];
        net_backward(L, dims, W, agents ? agents[k] : k0 + k, h, N, gout + k * N * dims[L], dW,
                     db, acc, scratch);
    }
}

/* Floats of scratch fused_update needs for batches of B transitions. */
int64_t fused_scratch(int64_t L, const int64_t *dims, int64_t B)
{
    const int64_t mx = widest(L, dims), hidden = hidden_widths(L, dims);
    int64_t mw = 0;
    for (int64_t l = 0; l < L; l++) mw = dims[l] * dims[l + 1] > mw ? dims[l] * dims[l + 1] : mw;
    return 2 * B * dims[0] + 4 * B * dims[L] + 3 * B * hidden + 4 * B * mx + mw;
}

/* Adam on n entries of one agent (param p, gradient g, moments m, v), the arithmetic of the
 * population's per-row form (torch's fused Adam to float rounding): m += w1 (g - m);
 * v = b2 v + (1 - b2) g^2; p += size * m / (sqrt(v) / root2 + eps), 16 lanes at a time
 * (the division by root2 as a product with its inverse: divisions are slow here). */
static TGT void adam_entries(float *p, const float *g, float *m, float *v, int64_t n,
                             const float *c /* w1, b2, 1 - b2, root2, eps, size */)
{
    const __m512 w1 = _mm512_set1_ps(c[0]), b2 = _mm512_set1_ps(c[1]);
    const __m512 w2 = _mm512_set1_ps(c[2]), inv_root2 = _mm512_set1_ps(1.f / c[3]);
    const __m512 eps = _mm512_set1_ps(c[4]), size = _mm512_set1_ps(c[5]);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 gi = _mm512_maskz_loadu_ps(k, g + i), mi = _mm512_maskz_loadu_ps(k, m + i);
        __m512 vi = _mm512_maskz_loadu_ps(k, v + i), pi = _mm512_maskz_loadu_ps(k, p + i);
        mi = _mm512_add_ps(mi, _mm512_mul_ps(w1, _mm512_sub_ps(gi, mi)));
        vi = _mm512_add_ps(_mm512_mul_ps(vi, b2), _mm512_mul_ps(w2, _mm512_mul_ps(gi, gi)));
        __m512 denom = _mm512_add_ps(_mm512_mul_ps(_mm512_sqrt_ps(vi), inv_root2), eps);
        pi = _mm512_add_ps(pi, _mm512_mul_ps(_mm512_div_ps(mi, denom), size));
        _mm512_mask_storeu_ps(m + i, k, mi);
        _mm512_mask_storeu_ps(v + i, k, vi);
        _mm512_mask_storeu_ps(p + i, k, pi);
    }
}

/* The sum of n entries, 16 lanes at a time (only its finiteness is used) */
static TGT float sum_entries(const float *x, int64_t n)
{
    __m512 s = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(k, x + i));
    }
    return _mm512_reduce_add_ps(s);
}

/* The whole update of agents k0..k1 (LossPlan.fused_update), one agent at a time so that its
 * weights and activations stay in cache: the online network on s_t, and on s_{t+1} in the
 * same call where its loss reads Q(s_{t+1}); the target network where it is read; the loss
 * program's forward (losses, ok) and backward (the gradient of ok * loss); the online
 * network's backward into the agent's gradient rows. rows[4k + c]: agent k's row in the
 * Q-value bank for call c = online s_t, online s_{t+1}, target s_{t+1}, target s_t (-1: not
 * made). obs, next_obs [K, B, dims[0]]; q, gq the Q bank and its gradient [rows, B, A] (as in
 * bases[] and gbases[]); the interpreter's arguments as lossvm_forward/backward take them.
 * With moments (per layer: weight m, weight v, bias m, bias v) also the gradient check into
 * grad_ok[k] and, where learn, ok and grad_ok, Adam's step steps[k] + 1 on the agent's rows
 * (hyper: lr, beta1, beta2, eps), while they are in cache. */
TGT void fused_update(int64_t k0, int64_t k1, const int64_t *rows, int64_t B, int64_t L,
                      const int64_t *dims, float *const *Won, float *const *bon,
                      float *const *Wtg, float *const *btg, const float *obs,
                      const float *next_obs, float *q, const float *gq, const int64_t *code,
                      const int64_t *start, const int64_t *vout, float *const *bases,
                      float *const *gbases, float *losses, const uint8_t *learn,
                      float max_loss, float *ok, float *const *dW, float *const *db,
                      float *scratch, float *const *moments, const int64_t *steps,
                      const double *hyper, uint8_t *grad_ok)
{
    const int64_t D = dims[0], A = dims[L];
    const int64_t hidden = hidden_widths(L, dims);
    float *X = scratch, *out = X + 2 * B * D, *G = out + 2 * B * A;
    float *hid = G + 2 * B * A, *hid_t = hid + 2 * B * hidden, *work = hid_t + B * hidden;
    float *h[L + 1], *ht[L + 1];
    for (int64_t k = k0; k < k1; k++) {
        const int64_t *r = rows + 4 * k;
        const int64_t N = r[1] >= 0 ? 2 * B : B;
        if (moments && k + 1 < k1) /* the next agent's moments, on their way to L2 meanwhile */
            for (int64_t l = 0; l < L; l++) {
                int64_t nw = dims[l] * dims[l + 1];
                for (int j = 0; j < 2; j++)
                    for (int64_t i = 0; i < nw; i += 16)
                        _mm_prefetch((const char *)(moments[4 * l + j] + (k + 1) * nw + i),
                                     _MM_HINT_T1);
            }
        const float *s = obs + k * B * D, *s1 = next_obs + k * B * D, *x = s;
        float *off = hid, *off_t = hid_t;
        for (int64_t l = 1; l < L; l++) {
            h[l] = off, ht[l] = off_t;
            off += N * dims[l], off_t += B * dims[l];
        }
        if (r[1] >= 0) { /* s_t and s_{t+1} as one batch of 2B rows */
            memcpy(X, s, (size_t)(B * D) * sizeof(float));
            memcpy(X + B * D, s1, (size_t)(B * D) * sizeof(float));
            x = X;
        }
        net_forward(L, dims, Won, bon, k, x, N, h, out, work);
        memcpy(q + r[0] * B * A, out, (size_t)(B * A) * sizeof(float));
        if (r[1] >= 0) memcpy(q + r[1] * B * A, out + B * A, (size_t)(B * A) * sizeof(float));
        if (r[2] >= 0) net_forward(L, dims, Wtg, btg, k, s1, B, ht, q + r[2] * B * A, work);
        if (r[3] >= 0) net_forward(L, dims, Wtg, btg, k, s, B, ht, q + r[3] * B * A, work);
        lossvm_forward(code, start + k, vout + 2 * k, 1, B, bases, losses + k, learn + k,
                       max_loss, ok + k);
        lossvm_backward(code, start + k, vout + 2 * k, 1, B, bases, gbases, ok + k);
        memcpy(G, gq + r[0] * B * A, (size_t)(B * A) * sizeof(float));
        if (r[1] >= 0) memcpy(G + B * A, gq + r[1] * B * A, (size_t)(B * A) * sizeof(float));
        h[0] = (float *)x;
        net_backward(L, dims, Won, k, (const float *const *)h, N, G, dW, db, 0, work);
        if (!moments) continue;
        /* the trainer's gradient check (every gradient entry's sum is finite), then Adam
         * where the agent learns, its loss counts (ok) and its gradient is finite */
        float total = 0.f;
        for (int64_t l = 0; l < L; l++) {
            int64_t nw = dims[l] * dims[l + 1], nb = dims[l + 1];
            total += sum_entries(dW[l] + k * nw, nw) + sum_entries(db[l] + k * nb, nb);
        }
        grad_ok[k] = (uint8_t)isfinite(total);
        if (!(grad_ok[k] && ok[k] != 0.f)) continue;
        double t = (double)(steps[k] + 1), b1 = hyper[1], b2 = hyper[2];
        double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        const float c[6] = {(float)(1.0 - b1), (float)b2, (float)(1.0 - b2), (float)sqrt(bc2),
                            (float)hyper[3], (float)(-hyper[0] / bc1)};
        for (int64_t l = 0; l < L; l++) {
            int64_t nw = dims[l] * dims[l + 1], nb = dims[l + 1];
            adam_entries(Won[l] + k * nw, dW[l] + k * nw, moments[4 * l] + k * nw,
                         moments[4 * l + 1] + k * nw, nw, c);
            adam_entries(bon[l] + k * nb, db[l] + k * nb, moments[4 * l + 2] + k * nb,
                         moments[4 * l + 3] + k * nb, nb, c);
        }
    }
}

/* One observation per agent (acting): out[k] = MLP_a(x[k]) for the n agents a = k0 + k, as
 * dot products of the weights' rows ([out, in], read in place: no transposed copy) with the
 * layer's input. scratch: 2 * max(dims) floats. */
TGT void mlp_act(int64_t n, int64_t L, const int64_t *dims, float *const *W, float *const *b,
                 int64_t k0, const float *x, float *out, float *scratch)
{
    const int64_t mx = widest(L, dims);
    for (int64_t k = 0; k < n; k++) {
        int64_t a = k0 + k;
        const float *h = x + k * dims[0];
        for (int64_t l = 0; l < L; l++) {
            int64_t in = dims[l], o = dims[l + 1];
            const float *w = W[l] + a * in * o, *bias = b[l] + a * o;
            float *y = l == L - 1 ? out + k * o : scratch + (l & 1) * mx;
            for (int64_t j = 0; j < o; j++) {
                const float *row = w + j * in;
                __m512 acc = _mm512_setzero_ps();
                int64_t i = 0;
                for (; i + 16 <= in; i += 16)
                    acc = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(h + i), acc);
                if (i < in) {
                    __mmask16 m = (__mmask16)((1u << (in - i)) - 1);
                    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, row + i),
                                          _mm512_maskz_loadu_ps(m, h + i), acc);
                }
                float v = bias[j] + _mm512_reduce_add_ps(acc);
                y[j] = l < L - 1 && v < 0.f ? 0.f : v;
            }
            h = y;
        }
    }
}
#else /* no AVX-512 kernel for this CPU or compiler: the network functions are not built, and
       * mlp_available() says so (evorl_nb looks them up only where it returns 1) */
int mlp_available(void) { return 0; }
#endif
