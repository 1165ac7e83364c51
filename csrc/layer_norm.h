// Row kernels shared by the ops and the decoder (csrc/layer_norm.cpp).
#pragma once
#include <cstdint>

namespace llm {
// out[c] = (x[c] - mean) / sqrt(var + eps) * w[c] + b[c] over one row of C; b may be null;
// out_bf16 (nullable) receives the same values rounded to bf16.
void layer_norm_row(const float* x, const float* w, const float* b, float eps, int64_t C, float* out,
                    uint16_t* out_bf16);
}  // namespace llm
