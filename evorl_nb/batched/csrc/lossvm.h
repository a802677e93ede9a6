/* What netkernel.c calls of the loss interpreter (interp.c); see interp.c for the layout of
 * the instructions and the bases. */
#ifndef EVORL_NB_LOSSVM_H
#define EVORL_NB_LOSSVM_H

#include <stdint.h>

void lossvm_forward(const int64_t *code, const int64_t *start, const int64_t *out, int64_t K,
                    int64_t B, float *const *bases, float *losses, const uint8_t *learn,
                    float max_loss, float *ok);

void lossvm_backward(const int64_t *code, const int64_t *start, const int64_t *out, int64_t K,
                     int64_t B, float *const *bases, float *const *gbases, const float *dloss);

#endif
