// Attention of one query over one head's KV cache (csrc/attention.cpp).
#pragma once
#include <cstdint>

namespace llm {
// q [hs]; k, v: slots [0, pos] of one head, slot j at k + j * ld. The query sees slot j
// when j <= pos and (valid == null or valid[j] or j == pos): causal, padding skipped, and
// always its own slot. scores: scratch of pos + 1 floats. out [hs].
void attend_query(const float* q, const float* k, const float* v, int64_t ld, int64_t hs, int64_t pos,
                  const bool* valid, float scale, float* scores, float* out);
}  // namespace llm
