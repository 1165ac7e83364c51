// Shared helpers for the CPU kernels of llm._C: argument checks that raise Python errors,
// bf16 bit conversions, the run-time instruction-set choice and OpenMP work splitting.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace llm {

// TORCH_CHECK raises c10::Error, which reaches Python as RuntimeError with this message.
#define LLM_CHECK(cond, ...) TORCH_CHECK(cond, __VA_ARGS__)

void check_cpu_tensor(const at::Tensor& t, const char* op, const char* name);
void check_contiguous(const at::Tensor& t, const char* op, const char* name);
void check_float_dtype(const at::Tensor& t, const char* op, const char* name);  // fp32 or bf16
void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name);
std::string shape_str(const at::Tensor& t);

// bf16 <-> fp32 on raw bits; to_bf16 rounds to nearest even (NaN stays NaN).
inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Instruction-set levels of the CPU kernels, chosen at run time: the best the CPU has,
// or a lower one forced with set_cpu_isa / $LLM_NATIVE_ISA (tests use this to run every path).
enum class Isa : int { portable = 0, avx512 = 1, avx512_bf16 = 2 };
Isa best_isa();  // what this CPU (and OS) supports
// What the kernels use now. The first call reads $LLM_NATIVE_ISA and raises c10::ValueError
// for a name it does not know, so call it at an op's boundary, never inside a parallel
// region, and pass the result to the kernels.
Isa current_isa();
void set_isa(Isa isa);
const char* isa_name(Isa isa);

// GPT-2's GELU (tanh form), in fp32.
inline float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  float inner = k * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + std::tanh(inner));
}

// [begin, end) of `n` items for thread `tid` of `nthreads`, in contiguous even chunks.
inline void split_range(int64_t n, int tid, int nthreads, int64_t* begin, int64_t* end) {
  int64_t base = n / nthreads, rem = n % nthreads;
  *begin = tid * base + (tid < rem ? tid : rem);
  *end = *begin + base + (tid < rem ? 1 : 0);
}

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int num_threads_in_team() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}
inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace llm
