// Row kernels shared by the ops and the whole-model decoder: bf16 conversions, GPT-2's GELU,
// layer norm of one row, attention of one query over a KV cache. Torch-free.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace llm {

// bf16 <-> fp32 on raw bits; float_to_bf16 rounds to nearest even (NaN stays NaN).
inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// x [M, ldx] fp32 -> out [M, kp] bf16 bits, rounded to nearest even, zero past K.
void rows_to_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, uint16_t* out, int64_t kp);

// Round half to even for |v| < 2^22 without a libm call, so loops over it vectorize:
// adding 1.5 * 2^23 leaves no fraction bits and the FPU rounds to nearest even on the way.
inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

// exp(x), clamped to [-88, 88], within a few ulp: x = n ln2 + r with |r| <= ln2 / 2, Cephes'
// expf polynomial for exp(r), 2^n written into the exponent bits. Plain arithmetic, so
// loops over it vectorize (std::exp does not).
inline float exp_fast(float x) {
  x = std::min(88.0f, std::max(-88.0f, x));
  const float n = round_even(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
}

// GPT-2's GELU (tanh form) in fp32: 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)) with
// u = sqrt(2 / pi) (x + 0.044715 x^3); the second form has no cancellation for x < 0.
inline float gelu_tanh(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + exp_fast(-2.0f * u));
}

// out[c] = (x[c] - mean) / sqrt(var + eps) * w[c] + b[c] over one row of C; b may be null;
// out_bf16 (nullable) receives the same values rounded to bf16.
void layer_norm_row(const float* x, const float* w, const float* b, float eps, int64_t C, float* out,
                    uint16_t* out_bf16);

// q [hs]; k, v: slots [0, pos] of one head, slot j at k + j * ld. The query sees slot j
// when j <= pos and (valid == null or valid[j] or j == pos): causal, padding skipped, and
// always its own slot. scores: scratch of pos + 1 floats. out [hs].
void attend_query(const float* q, const float* k, const float* v, int64_t ld, int64_t hs, int64_t pos,
                  const bool* valid, float scale, float* scores, float* out);

}  // namespace llm
