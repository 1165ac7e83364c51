// Attention over a static KV cache.
//
// cached_attention: each query i of row b sits at cache slot q_pos[i] and attends to the
// slots j <= q_pos[i] that key_valid[b] marks real (and always to its own slot), with an
// exact softmax in fp32 (attend_query, cpu/rows.h). One (row, head, query) per task; decode
// has one query per row, prefill many. Its work is O(S * hs) per query, small next to the
// weights a decode step reads.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common.h"

namespace llm {

namespace {

void check_positions(const at::Tensor& pos, int64_t count, int64_t S, const char* op, const char* name) {
  check_cpu_tensor(pos, op, name);
  LLM_CHECK(pos.scalar_type() == at::kLong, "llm.", op, ": ", name, " must be int64, got ", pos.scalar_type());
  LLM_CHECK(pos.dim() == 1 && pos.size(0) == count, "llm.", op, ": ", name, " must have shape [", count,
            "], got ", shape_str(pos));
  at::Tensor p = pos.contiguous();
  const int64_t* pp = p.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    LLM_CHECK(pp[i] >= 0 && pp[i] < S, "llm.", op, ": ", name, "[", i, "] = ", pp[i],
              " is outside the cache [0, ", S, ")");
}

void check_cache_pair(const at::Tensor& kc, const at::Tensor& vc, const char* op) {
  check_cpu_tensor(kc, op, "k_cache");
  check_cpu_tensor(vc, op, "v_cache");
  check_float_dtype(kc, op, "k_cache");
  check_dim(kc, 4, op, "k_cache");
  check_contiguous(kc, op, "k_cache");
  check_contiguous(vc, op, "v_cache");
  LLM_CHECK(vc.sizes() == kc.sizes() && vc.scalar_type() == kc.scalar_type(), "llm.", op,
            ": v_cache (", vc.scalar_type(), " ", shape_str(vc), ") must match k_cache (", kc.scalar_type(), " ",
            shape_str(kc), ")");
}

at::Tensor to_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t.contiguous() : t.to(at::kFloat).contiguous();
}

}  // namespace

at::Tensor cached_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& q_pos, const std::optional<at::Tensor>& key_valid) {
  const char* op = "cached_attention";
  check_cache_pair(k_cache, v_cache, op);
  check_cpu_tensor(q, op, "q");
  check_dim(q, 4, op, "q");
  LLM_CHECK(q.scalar_type() == k_cache.scalar_type(), "llm.", op, ": q dtype ", q.scalar_type(),
            " differs from the cache's ", k_cache.scalar_type());
  const int64_t B = k_cache.size(0), nh = k_cache.size(1), S = k_cache.size(2), hs = k_cache.size(3);
  LLM_CHECK(q.size(0) == B && q.size(1) == nh && q.size(3) == hs, "llm.", op, ": q shape ", shape_str(q),
            " does not fit the cache ", shape_str(k_cache), " (want [B, nh, Tq, hs])");
  LLM_CHECK(hs >= 1 && S >= 1, "llm.", op, ": empty cache ", shape_str(k_cache));
  const int64_t Tq = q.size(2);
  check_positions(q_pos, Tq, S, op, "q_pos");
  at::Tensor valid;
  if (key_valid.has_value()) {
    check_cpu_tensor(*key_valid, op, "key_valid");
    LLM_CHECK(key_valid->scalar_type() == at::kBool, "llm.", op, ": key_valid must be bool, got ",
              key_valid->scalar_type());
    LLM_CHECK(key_valid->dim() == 2 && key_valid->size(0) == B && key_valid->size(1) == S, "llm.", op,
              ": key_valid must have shape [", B, ", ", S, "], got ", shape_str(*key_valid));
    valid = key_valid->contiguous();
  }
  at::Tensor qf = to_float(q), kf = to_float(k_cache), vf = to_float(v_cache), pos = q_pos.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(at::kFloat));
  const float* qp = qf.const_data_ptr<float>();
  const float* kp = kf.const_data_ptr<float>();
  const float* vp = vf.const_data_ptr<float>();
  const int64_t* pp = pos.const_data_ptr<int64_t>();
  const bool* vld = valid.defined() ? valid.const_data_ptr<bool>() : nullptr;
  float* o = out.data_ptr<float>();
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int64_t tasks = B * nh * Tq;
#pragma omp parallel if (tasks * S * hs > 65536)
  {
    std::vector<float> scores(S);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t i = task % Tq, bh = task / Tq, b = bh / nh;
      attend_query(qp + task * hs, kp + bh * S * hs, vp + bh * S * hs, hs, hs, pp[i], vld ? vld + b * S : nullptr,
                   scale, scores.data(), o + task * hs);
    }
  }
  return q.scalar_type() == at::kFloat ? out : out.to(q.scalar_type());
}

}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CPU, m) { m.impl("cached_attention", &llm::cached_attention); }
