// The `llm` operator library: every schema in one place, the Python module `llm._C`, the
// boundary checks shared by the CPU kernels and the run-time instruction-set choice.
// Kernels register their implementations with TORCH_LIBRARY_IMPL in their own files
// (csrc/<op>.cpp for CPU, csrc/cuda/binding.cpp for CUDA); Python fakes live in
// llm/native_ops.py so torch.compile can trace every op.
#include <Python.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <sstream>

#include "common.h"

namespace llm {

std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

void check_cpu_tensor(const at::Tensor& t, const char* op, const char* name) {
  LLM_CHECK(t.defined(), "llm.", op, ": ", name, " is undefined");
  LLM_CHECK(t.device().is_cpu(), "llm.", op, ": ", name, " must be a CPU tensor, got device ",
            t.device());
}

void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  LLM_CHECK(t.is_contiguous(), "llm.", op, ": ", name, " must be contiguous (call .contiguous())");
}

void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  LLM_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, "llm.", op, ": ",
            name, " must be float32 or bfloat16, got ", t.scalar_type());
}

void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  LLM_CHECK(t.dim() == dim, "llm.", op, ": ", name, " must have ", dim, " dimensions, got shape ",
            shape_str(t));
}

static Isa detect_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  bool f = __builtin_cpu_supports("avx512f");
  bool bf16 = __builtin_cpu_supports("avx512bf16");
  if (f && bf16) return Isa::avx512_bf16;
  if (f) return Isa::avx512;
#endif
  return Isa::portable;
}

Isa best_isa() {
  static const Isa best = detect_isa();
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512_bf16: return "avx512_bf16";
    case Isa::avx512: return "avx512";
    default: return "portable";
  }
}

static Isa parse_isa(const std::string& name) {
  if (name == "portable") return Isa::portable;
  if (name == "avx512") return Isa::avx512;
  if (name == "avx512_bf16") return Isa::avx512_bf16;
  TORCH_CHECK_VALUE(false, "unknown instruction set '", name,
                    "'; choose one of 'portable', 'avx512', 'avx512_bf16'");
}

static std::atomic<int>& isa_slot() {
  static std::atomic<int> slot([] {
    Isa isa = best_isa();
    if (const char* env = std::getenv("LLM_NATIVE_ISA")) {
      if (*env) {
        Isa want = parse_isa(env);
        if (static_cast<int>(want) < static_cast<int>(isa)) isa = want;
      }
    }
    return static_cast<int>(isa);
  }());
  return slot;
}

Isa current_isa() { return static_cast<Isa>(isa_slot().load(std::memory_order_relaxed)); }
void set_isa(Isa isa) { isa_slot().store(static_cast<int>(isa)); }

static std::string cpu_isa_op() { return isa_name(current_isa()); }
static std::string cpu_best_isa_op() { return isa_name(best_isa()); }
static void set_cpu_isa_op(std::string name) {
  Isa want = parse_isa(name);
  TORCH_CHECK_VALUE(static_cast<int>(want) <= static_cast<int>(best_isa()), "this CPU does not support '",
                    name, "' (best: '", isa_name(best_isa()), "')");
  set_isa(want);
}

static bool has_cuda_kernels_op() {
#ifdef LLM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace llm

TORCH_LIBRARY(llm, m) {
  // Linear layers on pre-packed weights (csrc/linear.cpp).
  m.def("pack_linear_weight(Tensor weight, str format) -> (Tensor, Tensor)");
  m.def(
      "packed_linear(Tensor x, Tensor packed, Tensor scales, int n, Tensor? bias=None, "
      "Tensor? residual=None, str activation='none') -> Tensor");
  // Normalization and activation (csrc/layer_norm.cpp, csrc/bias_gelu.cpp).
  m.def("layer_norm(Tensor x, Tensor weight, Tensor? bias, float eps) -> Tensor");
  m.def("add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor? bias, float eps) -> (Tensor, Tensor)");
  m.def("bias_gelu(Tensor x, Tensor? bias) -> Tensor");
  // KV cache (csrc/attention.cpp).
  m.def("cached_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor q_pos, Tensor? key_valid) -> Tensor");
  m.def("kv_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor pos) -> ()");
  // Sampling from logits (csrc/sampling.cpp, csrc/cuda/sampling.cu).
  m.def("sample_top_k_top_p(Tensor logits, Tensor uniform, float temperature, int top_k, float top_p) -> Tensor");
  // Introspection.
  m.def("cpu_isa() -> str", &llm::cpu_isa_op);
  m.def("cpu_best_isa() -> str", &llm::cpu_best_isa_op);
  m.def("set_cpu_isa(str name) -> ()", &llm::set_cpu_isa_op);
  m.def("has_cuda_kernels() -> bool", &llm::has_cuda_kernels_op);
}

// `import llm._C` loads this shared library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "llm's C++/CUDA operators (torch.ops.llm)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
