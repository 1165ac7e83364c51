// Top-k / top-p sampling from logits, the CPU version of csrc/cuda/sampling.cu with the same
// rule: keep logits >= the k-th largest, then the largest value t whose tokens at or above t
// hold >= top_p of the remaining softmax mass (so the shortest prefix of the sorted tokens
// reaching top_p; ties at a cut are kept), and draw the token where the running mass in index
// order passes uniform[b] * kept mass. temperature <= 0 takes the first argmax.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "common.h"

namespace llm {

at::Tensor sample_top_k_top_p_cpu(const at::Tensor& logits, const at::Tensor& uniform, double temperature,
                                  int64_t top_k, double top_p) {
  const char* op = "sample_top_k_top_p";
  check_cpu_tensor(logits, op, "logits");
  LLM_CHECK(logits.scalar_type() == at::kFloat && logits.dim() == 2 && logits.size(1) >= 1, "llm.", op,
            ": logits must be float32 [B, V >= 1], got ", logits.scalar_type(), " ", shape_str(logits));
  check_cpu_tensor(uniform, op, "uniform");
  LLM_CHECK(uniform.scalar_type() == at::kFloat && uniform.dim() == 1 && uniform.size(0) == logits.size(0), "llm.",
            op, ": uniform must be float32 [", logits.size(0), "]");
  TORCH_CHECK_VALUE(top_k >= 0, "llm.", op, ": top_k must be >= 0 (0: no limit), got ", top_k);
  TORCH_CHECK_VALUE(top_p > 0.0 && top_p <= 1.0, "llm.", op, ": top_p must be in (0, 1], got ", top_p);
  at::Tensor lg = logits.contiguous(), un = uniform.contiguous();
  const int64_t B = lg.size(0), V = lg.size(1);
  at::Tensor out = at::empty({B}, logits.options().dtype(at::kLong));
  int64_t* o = out.data_ptr<int64_t>();
  std::vector<float> sorted(V);
  for (int64_t b = 0; b < B; ++b) {
    const float* l = lg.const_data_ptr<float>() + b * V;
    if (temperature <= 0.0) {
      o[b] = std::max_element(l, l + V) - l;
      continue;
    }
    const float inv_t = static_cast<float>(1.0 / temperature);
    float floor = -INFINITY;
    std::copy(l, l + V, sorted.begin());
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    if (top_k > 0 && top_k < V) floor = sorted[top_k - 1];
    const float mx = sorted[0] * inv_t;
    if (top_p < 1.0) {
      double z = 0.0;
      for (int64_t i = 0; i < V && sorted[i] >= floor; ++i) z += std::exp(sorted[i] * inv_t - mx);
      double cum = 0.0;
      for (int64_t i = 0; i < V && sorted[i] >= floor; ++i) {
        cum += std::exp(sorted[i] * inv_t - mx);
        if (cum >= top_p * z) {
          floor = sorted[i];
          break;
        }
      }
    }
    double total = 0.0;
    int64_t last = 0;
    for (int64_t i = 0; i < V; ++i)
      if (l[i] >= floor) {
        total += std::exp(l[i] * inv_t - mx);
        last = i;
      }
    const double goal = static_cast<double>(un.const_data_ptr<float>()[b]) * total;
    double run = 0.0;
    o[b] = last;  // when rounding leaves goal past the total
    for (int64_t i = 0; i < V; ++i) {
      if (l[i] < floor) continue;
      run += std::exp(l[i] * inv_t - mx);
      if (goal < run) {
        o[b] = i;
        break;
      }
    }
  }
  return out;
}

}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CPU, m) { m.impl("sample_top_k_top_p", &llm::sample_top_k_top_p_cpu); }
