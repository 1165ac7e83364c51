// Fused bias add + GELU (tanh form, GPT-2's): out = gelu_tanh(x + bias[i % C]), fp32 math,
// grid-stride over the elements. Memory-bound: one read and one write per element.
#include "common.cuh"
#include "kernels.h"

namespace llm {
namespace cuda {

namespace {

template <typename T>
__global__ void __launch_bounds__(256) bias_gelu_kernel(const T* __restrict__ x, const T* __restrict__ bias,
                                                        T* __restrict__ out, int64_t n, int64_t C) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = load_f(x, i) + (bias ? load_f(bias, i % C) : 0.0f);
    store_f(out, i, 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v))));
  }
}

template <typename T>
cudaError_t launch(const void* x, const void* bias, void* out, int64_t n, int64_t C, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  unsigned int blocks = ceil_div(n, 256);
  if (blocks > 65535u * 8u) blocks = 65535u * 8u;
  bias_gelu_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(bias),
                                                  static_cast<T*>(out), n, C);
  return cudaGetLastError();
}

}  // namespace

cudaError_t bias_gelu(const void* x, const void* bias, void* out, int64_t n, int64_t C, bool bf16,
                      cudaStream_t stream) {
  return bf16 ? launch<__nv_bfloat16>(x, bias, out, n, C, stream) : launch<float>(x, bias, out, n, C, stream);
}

}  // namespace cuda
}  // namespace llm
