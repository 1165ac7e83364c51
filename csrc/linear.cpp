// Linear layers on pre-packed weights as torch ops: pack_linear_weight and packed_linear,
// y = x @ W.T (+ bias, GELU, residual). A thin binding: argument checks, tensors for the
// packed tiles, threads over tiles; the layout and the per-instruction-set kernels are
// torch-free in csrc/cpu (linear.h explains both). int8 weights quantize each row of x on
// the fly (per-row scale) and run integer dot products.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "common.h"
#include "linear.h"

namespace llm {

namespace {

WFormat parse_format(c10::string_view format, const char* op) {
  if (format == "float32") return WFormat::f32;
  if (format == "bfloat16") return WFormat::bf16;
  TORCH_CHECK_VALUE(format == "int8", "llm.", op, ": unknown format '", std::string(format),
                    "'; choose 'float32', 'bfloat16' or 'int8'");
  return WFormat::int8;
}

// The packed tensor's shape: f32 [tiles, k, 64], bf16 [tiles, kp/2, 64, 2],
// int8 [tiles, kp/4 + 1, 64, 4] (the extra quad row: the columns' int32 sums).
std::vector<int64_t> packed_shape(WFormat f, int64_t n, int64_t k) {
  const int64_t tiles = (n + kTileN - 1) / kTileN, kp = padded_k(f, k);
  switch (f) {
    case WFormat::f32: return {tiles, k, kTileN};
    case WFormat::bf16: return {tiles, kp / 2, kTileN, 2};
    default: return {tiles, kp / 4 + 1, kTileN, 4};
  }
}

at::ScalarType packed_dtype(WFormat f) {
  return f == WFormat::f32 ? at::kFloat : (f == WFormat::bf16 ? at::kBFloat16 : at::kChar);
}

at::Tensor as_float_contiguous(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? t.contiguous() : t.to(at::kFloat).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pack_linear_weight(const at::Tensor& weight, c10::string_view format) {
  const char* op = "pack_linear_weight";
  check_cpu_tensor(weight, op, "weight");
  check_float_dtype(weight, op, "weight");
  check_contiguous(weight, op, "weight");
  check_dim(weight, 2, op, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  LLM_CHECK(N >= 1 && K >= 1, "llm.", op, ": weight must be non-empty, got shape ", shape_str(weight));
  const WFormat f = parse_format(format, op);
  auto opts = weight.options();
  at::Tensor p = at::empty(packed_shape(f, N, K), opts.dtype(packed_dtype(f)));
  at::Tensor s = at::empty({f == WFormat::int8 ? p.size(0) * kTileN : 0}, opts.dtype(at::kFloat));
  pack_weight(f, weight.const_data_ptr(), weight.scalar_type() == at::kBFloat16, N, K, p.data_ptr(),
              f == WFormat::int8 ? s.data_ptr<float>() : nullptr);
  return {p, s};
}

PackedView packed_view(const at::Tensor& packed, const at::Tensor& scales, int64_t n, int64_t k, const char* op) {
  check_cpu_tensor(packed, op, "packed");
  check_contiguous(packed, op, "packed");
  const auto dt = packed.scalar_type();
  LLM_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kChar, "llm.", op,
            ": packed must come from llm.pack_linear_weight (float32, bfloat16 or int8), got dtype ", dt);
  PackedView v{};
  v.format = dt == at::kFloat ? WFormat::f32 : (dt == at::kBFloat16 ? WFormat::bf16 : WFormat::int8);
  v.n = n;
  v.k = k;
  v.kp = padded_k(v.format, k);
  LLM_CHECK(packed.dim() >= 1 && packed.sizes().slice(1) == c10::IntArrayRef(packed_shape(v.format, 1, k)).slice(1),
            "llm.", op, ": packed weight of shape ", shape_str(packed), " does not fit inputs with ", k,
            " features (pack the [n, ", k, "] weight with llm.pack_linear_weight)");
  v.tiles = packed.size(0);
  LLM_CHECK(n >= 1 && n <= v.tiles * kTileN && n > (v.tiles - 1) * kTileN, "llm.", op, ": n=", n,
            " does not match the packed weight (", v.tiles, " tiles of ", kTileN, " columns)");
  v.data = packed.const_data_ptr();
  v.scales = nullptr;
  if (v.format == WFormat::int8) {
    check_cpu_tensor(scales, op, "scales");
    LLM_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.dim() == 1 &&
                  scales.numel() == v.tiles * kTileN,
              "llm.", op, ": int8 weights need the float32 scales [", v.tiles * kTileN,
              "] from llm.pack_linear_weight, got ", scales.scalar_type(), " ", shape_str(scales));
    v.scales = scales.const_data_ptr<float>();
  }
  return v;
}

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t n,
                         const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                         c10::string_view activation) {
  const char* op = "packed_linear";
  check_cpu_tensor(x, op, "x");
  check_float_dtype(x, op, "x");
  LLM_CHECK(x.dim() >= 1, "llm.", op, ": x must have at least one dimension");
  const int64_t K = x.size(-1);
  LLM_CHECK(K >= 1, "llm.", op, ": x has no features (last dimension is 0)");
  PackedView w = packed_view(packed, scales, n, K, op);
  TORCH_CHECK_VALUE(activation == "none" || activation == "gelu_tanh", "llm.", op, ": unknown activation '",
                    std::string(activation), "'; choose 'none' or 'gelu_tanh'");
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  const int64_t M = x.numel() / K;
  at::Tensor xf = as_float_contiguous(x);
  at::Tensor bf, rf;
  Epilogue e;
  if (bias.has_value()) {
    check_cpu_tensor(*bias, op, "bias");
    check_float_dtype(*bias, op, "bias");
    LLM_CHECK(bias->dim() == 1 && bias->size(0) == n, "llm.", op, ": bias must have shape [", n, "], got ",
              shape_str(*bias));
    bf = as_float_contiguous(*bias);
    e.bias = bf.const_data_ptr<float>();
  }
  if (residual.has_value()) {
    check_cpu_tensor(*residual, op, "residual");
    check_float_dtype(*residual, op, "residual");
    LLM_CHECK(residual->sizes() == c10::IntArrayRef(out_shape), "llm.", op, ": residual must have the output's shape ",
              c10::IntArrayRef(out_shape), ", got ", shape_str(*residual));
    rf = as_float_contiguous(*residual);
    e.residual = rf.const_data_ptr<float>();
    e.ld_residual = n;
  }
  e.gelu = activation == "gelu_tanh";
  at::Tensor out = at::empty(out_shape, x.options().dtype(at::kFloat));
  e.out = out.data_ptr<float>();
  e.ld_out = n;
  if (M == 0) return out.to(x.scalar_type());
  const Isa isa = current_isa();
  LinearInput in;
  in.x = xf.const_data_ptr<float>();
  in.ldx = K;
  std::vector<uint16_t> xb;
  std::vector<int8_t> xq;
  std::vector<float> xs;
  if (w.format == WFormat::bf16) {
    xb.resize(M * w.kp);
    rows_to_bf16(in.x, K, M, K, xb.data(), w.kp);
    in.xb = xb.data();
  } else if (w.format == WFormat::int8) {
    xq.resize(M * w.kp);
    xs.resize(M);
    quantize_rows(in.x, K, M, K, w.kp, isa, xq.data(), xs.data());
    in.xq = xq.data();
    in.xq_scale = xs.data();
  }
#pragma omp parallel
  {
    int64_t t0, t1;
    split_range(w.tiles, thread_id(), num_threads_in_team(), &t0, &t1);
    linear_tiles(w, in, M, e, t0, t1, isa);
  }
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CPU, m) {
  m.impl("pack_linear_weight", &llm::pack_linear_weight);
  m.impl("packed_linear", &llm::packed_linear);
}
