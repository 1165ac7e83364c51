// LayerNorm over the last dimension as a torch op: each row by layer_norm_row (cpu/rows.h,
// two passes in fp32 as torch does, also the decoder's), rows in parallel. bf16 inputs are
// computed in fp32 and rounded once at the end.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "common.h"

namespace llm {

namespace {

at::Tensor to_float(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t.contiguous() : t.to(at::kFloat).contiguous();
}

}  // namespace

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      double eps) {
  const char* op = "layer_norm";
  check_cpu_tensor(x, op, "x");
  check_float_dtype(x, op, "x");
  LLM_CHECK(x.dim() >= 1 && x.size(-1) >= 1, "llm.", op, ": x must have a non-empty last dimension, got shape ",
            shape_str(x));
  const int64_t C = x.size(-1), rows = x.numel() / C;
  check_cpu_tensor(weight, op, "weight");
  check_float_dtype(weight, op, "weight");
  LLM_CHECK(weight.dim() == 1 && weight.size(0) == C, "llm.", op, ": weight must have shape [", C, "], got ",
            shape_str(weight));
  if (bias.has_value()) {
    check_cpu_tensor(*bias, op, "bias");
    check_float_dtype(*bias, op, "bias");
    LLM_CHECK(bias->dim() == 1 && bias->size(0) == C, "llm.", op, ": bias must have shape [", C, "], got ",
              shape_str(*bias));
  }
  TORCH_CHECK_VALUE(eps >= 0.0, "llm.", op, ": eps must be >= 0, got ", eps);
  at::Tensor xf = to_float(x), wf = to_float(weight);
  at::Tensor bf = bias.has_value() ? to_float(*bias) : at::Tensor();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const float* xp = xf.const_data_ptr<float>();
  const float* wp = wf.const_data_ptr<float>();
  const float* bp = bf.defined() ? bf.const_data_ptr<float>() : nullptr;
  float* op_ = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
#pragma omp parallel for schedule(static) if (rows * C > 32768)
  for (int64_t r = 0; r < rows; ++r) layer_norm_row(xp + r * C, wp, bp, e, C, op_ + r * C, nullptr);
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CPU, m) { m.impl("layer_norm", &llm::layer_norm); }
