// Shared helpers of the torch bindings in csrc/*.cpp: argument checks that raise Python
// errors, the current instruction set, OpenMP work splitting. The kernels themselves, with
// bf16 conversions and instruction-set detection, are torch-free in csrc/cpu/.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "cpu/isa.h"
#include "cpu/rows.h"

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

// The level the kernels use now: the best this CPU supports (cpu/isa.h), or another one it
// supports forced with set_cpu_isa / $LLM_NATIVE_ISA (tests use this to run every path).
// The first call reads $LLM_NATIVE_ISA and raises c10::ValueError for a name it does not
// know, so call it at an op's boundary, never inside a parallel region, and pass the result
// to the kernels.
Isa current_isa();
void set_isa(Isa isa);

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
