// Fused bias add + GELU (tanh form, GPT-2's), y = gelu_tanh(x + bias), in fp32 per element.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common.h"

namespace llm {

at::Tensor bias_gelu(const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  const char* op = "bias_gelu";
  check_cpu_tensor(x, op, "x");
  check_float_dtype(x, op, "x");
  LLM_CHECK(x.dim() >= 1, "llm.", op, ": x must have at least one dimension");
  const int64_t C = x.size(-1);
  at::Tensor bf;
  if (bias.has_value()) {
    check_cpu_tensor(*bias, op, "bias");
    check_float_dtype(*bias, op, "bias");
    LLM_CHECK(bias->dim() == 1 && bias->size(0) == C, "llm.", op, ": bias must have shape [", C, "], got ",
              shape_str(*bias));
    bf = bias->to(at::kFloat).contiguous();
  }
  at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const float* xp = xf.const_data_ptr<float>();
  const float* bp = bf.defined() ? bf.const_data_ptr<float>() : nullptr;
  float* op_ = out.data_ptr<float>();
  const int64_t n = x.numel();
  if (C == 0 || n == 0) return out.to(x.scalar_type());
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) op_[i] = gelu_tanh(xp[i] + (bp ? bp[i % C] : 0.0f));
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CPU, m) { m.impl("bias_gelu", &llm::bias_gelu); }
