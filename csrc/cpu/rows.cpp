// Row kernels (rows.h). Plain loops the compiler vectorizes; attend_query is also compiled
// for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) and picked by CPUID at load.
#include "rows.h"

namespace llm {

void rows_to_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, uint16_t* out, int64_t kp) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) out[m * kp + k] = float_to_bf16(x[m * ldx + k]);
    for (int64_t k = K; k < kp; ++k) out[m * kp + k] = 0;
  }
}

// Two passes in fp32 (mean, then the centered sum of squares, as torch does), with 16
// partial sums: the compiler vectorizes them and they keep the rounding error low.
void layer_norm_row(const float* x, const float* w, const float* b, float eps, int64_t C, float* out,
                    uint16_t* out_bf16) {
  float part[16] = {};
  int64_t c = 0;
  for (; c + 16 <= C; c += 16)
    for (int j = 0; j < 16; ++j) part[j] += x[c + j];
  float sum = 0.0f;
  for (; c < C; ++c) sum += x[c];
  for (int j = 0; j < 16; ++j) sum += part[j];
  const float mean = sum / static_cast<float>(C);
  float sq[16] = {};
  c = 0;
  for (; c + 16 <= C; c += 16)
    for (int j = 0; j < 16; ++j) {
      float d = x[c + j] - mean;
      sq[j] += d * d;
    }
  float ss = 0.0f;
  for (; c < C; ++c) ss += (x[c] - mean) * (x[c] - mean);
  for (int j = 0; j < 16; ++j) ss += sq[j];
  const float rstd = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
  for (c = 0; c < C; ++c) {
    float y = (x[c] - mean) * rstd * w[c] + (b ? b[c] : 0.0f);
    out[c] = y;
    if (out_bf16) out_bf16[c] = float_to_bf16(y);
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LLM_CLONES
#endif

// Exact softmax in fp32: scores, their max, exp and sum, then the weighted sum of V.
LLM_CLONES
void attend_query(const float* q, const float* k, const float* v, int64_t ld, int64_t hs, int64_t pos,
                  const bool* valid, float scale, float* scores, float* out) {
  float mx = -INFINITY;
  for (int64_t j = 0; j <= pos; ++j) {
    if (valid && !valid[j] && j != pos) {
      scores[j] = -INFINITY;
      continue;
    }
    const float* kj = k + j * ld;
    float part[16] = {};
    int64_t d = 0;
    for (; d + 16 <= hs; d += 16)
      for (int t = 0; t < 16; ++t) part[t] += q[d + t] * kj[d + t];
    float s = 0.0f;
    for (; d < hs; ++d) s += q[d] * kj[d];
    for (int t = 0; t < 16; ++t) s += part[t];
    s *= scale;
    scores[j] = s;
    mx = s > mx ? s : mx;
  }
  for (int64_t d = 0; d < hs; ++d) out[d] = 0.0f;
  float sum = 0.0f;
  for (int64_t j = 0; j <= pos; ++j) {
    if (scores[j] == -INFINITY) continue;
    float p = std::exp(scores[j] - mx);
    sum += p;
    const float* vj = v + j * ld;
    for (int64_t d = 0; d < hs; ++d) out[d] += p * vj[d];
  }
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < hs; ++d) out[d] *= inv;
}

}  // namespace llm
