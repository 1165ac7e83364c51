// LayerNorm over the last dimension, optionally fused with the residual add
// (h = x + residual; y = LN(h); both returned). Two passes over each row in fp32 (mean,
// then the centered sum of squares, as torch does); rows run in parallel. bf16 inputs are
// computed in fp32 and rounded once at the end.
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

void check_params(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  double eps, const char* op) {
  check_cpu_tensor(x, op, "x");
  check_float_dtype(x, op, "x");
  LLM_CHECK(x.dim() >= 1 && x.size(-1) >= 1, "llm.", op, ": x must have a non-empty last dimension, got shape ",
            shape_str(x));
  const int64_t C = x.size(-1);
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
}

void run_rows(const float* x, const float* w, const float* b, float eps, int64_t rows, int64_t C, float* out) {
#pragma omp parallel for schedule(static) if (rows * C > 32768)
  for (int64_t r = 0; r < rows; ++r) layer_norm_row(x + r * C, w, b, eps, C, out + r * C, nullptr);
}

}  // namespace

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      double eps) {
  check_params(x, weight, bias, eps, "layer_norm");
  const int64_t C = x.size(-1), rows = x.numel() / C;
  at::Tensor xf = to_float(x), wf = to_float(weight);
  at::Tensor bf = bias.has_value() ? to_float(*bias) : at::Tensor();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  run_rows(xf.const_data_ptr<float>(), wf.const_data_ptr<float>(), bf.defined() ? bf.const_data_ptr<float>() : nullptr,
           static_cast<float>(eps), rows, C, out.data_ptr<float>());
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                                  const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                                  double eps) {
  const char* op = "add_layer_norm";
  check_params(x, weight, bias, eps, op);
  check_cpu_tensor(residual, op, "residual");
  LLM_CHECK(residual.scalar_type() == x.scalar_type(), "llm.", op, ": residual dtype ", residual.scalar_type(),
            " differs from x dtype ", x.scalar_type());
  LLM_CHECK(residual.sizes() == x.sizes(), "llm.", op, ": residual shape ", shape_str(residual),
            " differs from x shape ", shape_str(x));
  const int64_t C = x.size(-1), rows = x.numel() / C;
  at::Tensor xf = to_float(x), rf = to_float(residual), wf = to_float(weight);
  at::Tensor bf = bias.has_value() ? to_float(*bias) : at::Tensor();
  at::Tensor h = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const float* xp = xf.const_data_ptr<float>();
  const float* rp = rf.const_data_ptr<float>();
  float* hp = h.data_ptr<float>();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  for (int64_t i = 0; i < rows * C; ++i) {
    float s = xp[i] + rp[i];
    hp[i] = bf16 ? bf16_to_float(float_to_bf16(s)) : s;  // the sum a bf16 model would hold
  }
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  run_rows(hp, wf.const_data_ptr<float>(), bf.defined() ? bf.const_data_ptr<float>() : nullptr,
           static_cast<float>(eps), rows, C, out.data_ptr<float>());
  if (!bf16) return {out, h};
  return {out.to(x.scalar_type()), h.to(x.scalar_type())};
}

}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CPU, m) {
  m.impl("layer_norm", &llm::layer_norm);
  m.impl("add_layer_norm", &llm::add_layer_norm);
}
