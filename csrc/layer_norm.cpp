// LayerNorm over the last dimension: two passes over each row in fp32 (mean, then the
// centered sum of squares, as torch does); rows run in parallel. bf16 inputs are computed
// in fp32 and rounded once at the end. layer_norm_row is also the decoder's (decoder.cpp).
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "common.h"
#include "layer_norm.h"

namespace llm {

void layer_norm_row(const float* x, const float* w, const float* b, float eps, int64_t C, float* out,
                    uint16_t* out_bf16) {
  // 16 partial sums: the compiler vectorizes them and they keep rounding error low.
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
