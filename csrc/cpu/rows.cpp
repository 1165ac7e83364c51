// Row kernels (rows.h). Plain loops the compiler vectorizes; attend_query is also compiled
// for x86-64-v4 (AVX-512) and x86-64-v3 (AVX2 + FMA) and picked by CPUID at load (NEON is
// the aarch64 baseline, so there the one build is vectorized already).
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

// Sum of 16 partial sums as a tree (16 -> 8 -> 4 -> 2 -> 1) the compiler vectorizes.
[[gnu::always_inline]] static inline float sum16(float* part) {
  for (int t = 0; t < 8; ++t) part[t] += part[t + 8];
  for (int t = 0; t < 4; ++t) part[t] += part[t + 4];
  return (part[0] + part[2]) + (part[1] + part[3]);
}

// q . k_j for 4 keys at once: 4 independent chains of 16 partial sums, so the adds do not
// wait on each other.
[[gnu::always_inline]] static inline void dot4(const float* q, const float* k, int64_t ld, int64_t hs, float scale, float* out) {
  float p0[16] = {}, p1[16] = {}, p2[16] = {}, p3[16] = {};
  const float *k0 = k, *k1 = k + ld, *k2 = k + 2 * ld, *k3 = k + 3 * ld;
  int64_t d = 0;
  for (; d + 16 <= hs; d += 16)
    for (int t = 0; t < 16; ++t) {
      const float qd = q[d + t];
      p0[t] += qd * k0[d + t];
      p1[t] += qd * k1[d + t];
      p2[t] += qd * k2[d + t];
      p3[t] += qd * k3[d + t];
    }
  for (int t = 0; d < hs; ++d, ++t) {
    p0[t] += q[d] * k0[d];
    p1[t] += q[d] * k1[d];
    p2[t] += q[d] * k2[d];
    p3[t] += q[d] * k3[d];
  }
  out[0] = sum16(p0) * scale;
  out[1] = sum16(p1) * scale;
  out[2] = sum16(p2) * scale;
  out[3] = sum16(p3) * scale;
}

// Exact softmax in fp32, in passes the compiler vectorizes: the scores of every slot up to
// pos (4 keys at a time; hidden slots then set to -inf), their max, exp(score - max) for
// all of them (exp_fast: hidden slots give exactly 0), and the weighted sum of V.
LLM_CLONES
void attend_query(const float* q, const float* k, const float* v, int64_t ld, int64_t hs, int64_t pos,
                  const bool* valid, float scale, float* scores, float* out) {
  const int64_t n = pos + 1;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) dot4(q, k + j * ld, ld, hs, scale, scores + j);
  for (; j < n; ++j) {
    float part[16] = {};
    const float* kj = k + j * ld;
    for (int64_t d = 0; d < hs; ++d) part[d % 16] += q[d] * kj[d];
    scores[j] = sum16(part) * scale;
  }
  if (valid)
    for (j = 0; j < pos; ++j) scores[j] = valid[j] ? scores[j] : -INFINITY;  // its own slot stays
  float mx = -INFINITY;
  for (j = 0; j < n; ++j) mx = scores[j] > mx ? scores[j] : mx;
  float sum = 0.0f;
  for (j = 0; j < n; ++j) {
    scores[j] = exp_fast(scores[j] - mx);
    sum += scores[j];
  }
  // out = sum_j p_j v_j, 64 dimensions at a time in two register-held sums (even and odd
  // slots, so consecutive adds do not wait on each other); a slot with p = 0 (hidden, or far
  // below the max) is skipped, never multiplied: a hidden slot may hold anything.
  int64_t d0 = 0;
  for (; d0 + 64 <= hs; d0 += 64) {
    float a0[64] = {}, a1[64] = {};
    for (j = 0; j + 1 < n; j += 2) {
      const float p0 = scores[j], p1 = scores[j + 1];
      const float* v0 = v + j * ld + d0;
      const float* v1 = v0 + ld;
      if (p0 != 0.0f)
        for (int t = 0; t < 64; ++t) a0[t] += p0 * v0[t];
      if (p1 != 0.0f)
        for (int t = 0; t < 64; ++t) a1[t] += p1 * v1[t];
    }
    if (j < n && scores[j] != 0.0f)
      for (int t = 0; t < 64; ++t) a0[t] += scores[j] * v[j * ld + d0 + t];
    for (int t = 0; t < 64; ++t) out[d0 + t] = a0[t] + a1[t];
  }
  for (int64_t d = d0; d < hs; ++d) {  // the last hs % 64 dimensions
    float a = 0.0f;
    for (j = 0; j < n; ++j)
      if (scores[j] != 0.0f) a += scores[j] * v[j * ld + d];
    out[d] = a;
  }
  const float inv = 1.0f / sum;
  for (int64_t d = 0; d < hs; ++d) out[d] *= inv;
}

}  // namespace llm
