// The `llm` operator library: every schema in one place, the Python module `llm._C`, the
// boundary checks shared by the CPU bindings and the current instruction set (detected by
// csrc/cpu/isa.cpp, forced by set_cpu_isa or $LLM_NATIVE_ISA).
// Kernels register their implementations with TORCH_LIBRARY_IMPL in their own files
// (csrc/<op>.cpp for CPU, csrc/cuda/binding.cpp for CUDA); Python fakes live in
// llm/ops/native.py so torch.compile can trace every op. The GPTWeights and Decoder classes
// register in csrc/decoder.cpp.
#include <Python.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <vector>

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

// The level the kernels use, or kIsaUnset until the first current_isa() / set_isa(). The
// first current_isa() reads $LLM_NATIVE_ISA; a name it does not know raises there (and on
// every later call until set_isa), never inside a kernel: the ops call current_isa() before
// their parallel regions and hand the level in.
static constexpr int kIsaUnset = -1;
static std::atomic<int> g_isa{kIsaUnset};
static std::mutex g_isa_mutex;

Isa current_isa() {
  int v = g_isa.load(std::memory_order_acquire);
  if (v != kIsaUnset) return static_cast<Isa>(v);
  std::lock_guard<std::mutex> lock(g_isa_mutex);
  v = g_isa.load(std::memory_order_acquire);
  if (v != kIsaUnset) return static_cast<Isa>(v);
  Isa isa = best_isa();
  const char* env = std::getenv("LLM_NATIVE_ISA");
  if (env != nullptr && *env != '\0') {
    Isa want;
    TORCH_CHECK_VALUE(parse_isa(env, &want), "unknown instruction set '", env, "' in $LLM_NATIVE_ISA; choose one of ",
                      isa_choices(), " (or unset it)");
    if (isa_supported(want)) isa = want;  // one this CPU lacks leaves the best (never above it)
  }
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
  return isa;
}

void set_isa(Isa isa) {
  std::lock_guard<std::mutex> lock(g_isa_mutex);  // not overwritten by a first read in flight
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
}

static std::string cpu_isa_op() { return isa_name(current_isa()); }
static std::string cpu_best_isa_op() { return isa_name(best_isa()); }
static std::vector<std::string> cpu_isas_op() {
  std::vector<std::string> out;
  for (Isa isa : supported_isas()) out.push_back(isa_name(isa));
  return out;
}
static bool cpu_has_bf16_op() { return cpu_has_bf16_arithmetic(); }
static void set_cpu_isa_op(std::string name) {
  Isa want;
  TORCH_CHECK_VALUE(parse_isa(name, &want), "unknown instruction set '", name, "'; choose one of ", isa_choices());
  std::string runs;
  for (Isa isa : supported_isas()) runs += std::string(runs.empty() ? "'" : ", '") + isa_name(isa) + "'";
  TORCH_CHECK_VALUE(isa_supported(want), "this CPU does not support '", name, "' (it runs ", runs, ")");
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
  m.def("bias_gelu(Tensor x, Tensor? bias) -> Tensor");
  // Attention over a KV cache (csrc/attention.cpp).
  m.def("cached_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor q_pos, Tensor? key_valid) -> Tensor");
  // Introspection.
  m.def("cpu_isa() -> str", &llm::cpu_isa_op);
  m.def("cpu_best_isa() -> str", &llm::cpu_best_isa_op);
  m.def("cpu_isas() -> str[]", &llm::cpu_isas_op);
  m.def("cpu_has_bf16() -> bool", &llm::cpu_has_bf16_op);
  m.def("set_cpu_isa(str name) -> ()", &llm::set_cpu_isa_op);
  m.def("has_cuda_kernels() -> bool", &llm::has_cuda_kernels_op);
}

// `import llm._C` loads this shared library, which runs the registrations above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "llm's C++/CUDA operators (torch.ops.llm)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
