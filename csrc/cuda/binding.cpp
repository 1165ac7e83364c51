// CUDA implementations of the llm ops: checks at the boundary, tensors -> pointers, the
// current stream, and a launch of the kernels in csrc/cuda/*.cu (which include no torch
// header). Built only when torch has CUDA (setup.py defines LLM_WITH_CUDA).
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../common.h"
#include "kernels.h"

namespace llm {
namespace {

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  LLM_CHECK(t.defined() && t.is_cuda(), "llm.", op, ": ", name, " must be a CUDA tensor, got device ",
            t.defined() ? t.device() : at::Device(at::kCPU));
  LLM_CHECK(t.is_contiguous(), "llm.", op, ": ", name, " must be contiguous (call .contiguous())");
}

void check_same(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  check_cuda(t, op, name);
  LLM_CHECK(t.scalar_type() == like.scalar_type() && t.device() == like.device(), "llm.", op, ": ", name, " (",
            t.scalar_type(), ", ", t.device(), ") must match x (", like.scalar_type(), ", ", like.device(), ")");
}

void check_launch(cudaError_t err, const char* op) {
  LLM_CHECK(err == cudaSuccess, "llm.", op, ": CUDA launch failed: ", cudaGetErrorString(err));
}

bool is_bf16(const at::Tensor& t, const char* op) {
  check_float_dtype(t, op, "x");
  return t.scalar_type() == at::kBFloat16;
}

const void* opt_ptr(const std::optional<at::Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      double eps) {
  const char* op = "layer_norm";
  check_cuda(x, op, "x");
  const bool bf16 = is_bf16(x, op);
  LLM_CHECK(x.dim() >= 1 && x.size(-1) >= 1, "llm.", op, ": x must have a non-empty last dimension");
  const int64_t C = x.size(-1);
  check_same(weight, x, op, "weight");
  LLM_CHECK(weight.dim() == 1 && weight.size(0) == C, "llm.", op, ": weight must have shape [", C, "], got ",
            shape_str(weight));
  if (bias.has_value()) {
    check_same(*bias, x, op, "bias");
    LLM_CHECK(bias->dim() == 1 && bias->size(0) == C, "llm.", op, ": bias must have shape [", C, "]");
  }
  TORCH_CHECK_VALUE(eps >= 0.0, "llm.", op, ": eps must be >= 0, got ", eps);
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  check_launch(cuda::layer_norm(x.const_data_ptr(), weight.const_data_ptr(), opt_ptr(bias), out.data_ptr(),
                                x.numel() / C, C, static_cast<float>(eps), bf16,
                                c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

at::Tensor bias_gelu(const at::Tensor& x, const std::optional<at::Tensor>& bias) {
  const char* op = "bias_gelu";
  check_cuda(x, op, "x");
  const bool bf16 = is_bf16(x, op);
  LLM_CHECK(x.dim() >= 1, "llm.", op, ": x must have at least one dimension");
  const int64_t C = x.size(-1);
  if (bias.has_value()) {
    check_same(*bias, x, op, "bias");
    LLM_CHECK(bias->dim() == 1 && bias->size(0) == C, "llm.", op, ": bias must have shape [", C, "]");
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  check_launch(cuda::bias_gelu(x.const_data_ptr(), opt_ptr(bias), out.data_ptr(), x.numel(), C, bf16,
                               c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

// Positions must lie in [0, S): checked on the host (one small copy) unless the stream is
// being captured into a CUDA graph, where a copy is not allowed; the attention kernel then
// lets a query at an out-of-range slot see nothing instead of reading outside the cache.
void check_positions(const at::Tensor& pos, int64_t count, int64_t S, const at::Tensor& like, const char* op,
                     const char* name) {
  LLM_CHECK(pos.scalar_type() == at::kLong && pos.dim() == 1 && pos.size(0) == count, "llm.", op, ": ", name,
            " must be int64 [", count, "], got ", pos.scalar_type(), " ", shape_str(pos));
  LLM_CHECK(pos.device() == like.device(), "llm.", op, ": ", name, " must be on ", like.device());
  if (count == 0 || c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return;
  at::Tensor host = pos.to(at::kCPU);
  const int64_t* p = host.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i)
    LLM_CHECK(p[i] >= 0 && p[i] < S, "llm.", op, ": ", name, "[", i, "] = ", p[i], " is outside the cache [0, ", S,
              ")");
}

void check_caches(const at::Tensor& kc, const at::Tensor& vc, const char* op) {
  check_cuda(kc, op, "k_cache");
  check_float_dtype(kc, op, "k_cache");
  LLM_CHECK(kc.dim() == 4, "llm.", op, ": k_cache must be [B, nh, S, hs], got ", shape_str(kc));
  check_cuda(vc, op, "v_cache");
  LLM_CHECK(vc.sizes() == kc.sizes() && vc.scalar_type() == kc.scalar_type() && vc.device() == kc.device(), "llm.",
            op, ": v_cache must match k_cache");
}

at::Tensor cached_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                            const at::Tensor& q_pos, const std::optional<at::Tensor>& key_valid) {
  const char* op = "cached_attention";
  check_caches(k_cache, v_cache, op);
  check_same(q, k_cache, op, "q");
  const int64_t B = k_cache.size(0), nh = k_cache.size(1), S = k_cache.size(2), hs = k_cache.size(3);
  LLM_CHECK(q.dim() == 4 && q.size(0) == B && q.size(1) == nh && q.size(3) == hs, "llm.", op, ": q shape ",
            shape_str(q), " does not fit the cache ", shape_str(k_cache));
  LLM_CHECK(hs >= 1 && hs <= 256, "llm.", op, ": head size ", hs, " is not supported on CUDA (1..256)");
  const int64_t Tq = q.size(2);
  check_positions(q_pos, Tq, S, q, op, "q_pos");
  const bool* valid = nullptr;
  at::Tensor vt;
  if (key_valid.has_value()) {
    vt = key_valid->contiguous();
    LLM_CHECK(vt.scalar_type() == at::kBool && vt.dim() == 2 && vt.size(0) == B && vt.size(1) == S &&
                  vt.device() == q.device(),
              "llm.", op, ": key_valid must be bool [", B, ", ", S, "] on ", q.device());
    valid = vt.const_data_ptr<bool>();
  }
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor ws = at::empty({cuda::attention_workspace_floats(B, nh, Tq, S, hs)}, q.options().dtype(at::kFloat));
  at::Tensor pos = q_pos.contiguous();
  check_launch(cuda::cached_attention(q.const_data_ptr(), k_cache.const_data_ptr(), v_cache.const_data_ptr(),
                                      pos.const_data_ptr<int64_t>(), valid, out.data_ptr(), ws.data_ptr<float>(), B,
                                      nh, Tq, S, hs, q.scalar_type() == at::kBFloat16,
                                      c10::cuda::getCurrentCUDAStream().stream()),
               op);
  return out;
}

}  // namespace
}  // namespace llm

TORCH_LIBRARY_IMPL(llm, CUDA, m) {
  m.impl("layer_norm", &llm::layer_norm);
  m.impl("bias_gelu", &llm::bias_gelu);
  m.impl("cached_attention", &llm::cached_attention);
}
