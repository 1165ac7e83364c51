// LayerNorm over rows of C: one block of 256 threads per row, three passes over the row
// (sum, centered sum of squares, output), fp32 statistics; the row is re-read from L1/L2.
// Limits: C <= 65536 (any C works, larger rows are just slower).
#include "common.cuh"
#include "kernels.h"

namespace llm {
namespace cuda {

namespace {

template <typename T>
__global__ void __launch_bounds__(256) layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                         const T* __restrict__ b, T* __restrict__ out, int64_t C,
                                                         float eps) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * C;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s += load_f(xr, c);
  const float mean = block_sum(s, scratch) / static_cast<float>(C);
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float d = load_f(xr, c) - mean;
    ss += d * d;
  }
  const float rstd = rsqrtf(block_sum(ss, scratch) / static_cast<float>(C) + eps);
  T* orow = out + row * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    float y = (load_f(xr, c) - mean) * rstd * load_f(w, c) + (b ? load_f(b, c) : 0.0f);
    store_f(orow, c, y);
  }
}

template <typename T>
cudaError_t launch(const void* x, const void* w, const void* b, void* out, int64_t rows, int64_t C, float eps,
                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  layer_norm_kernel<T><<<static_cast<unsigned int>(rows), 256, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(w), static_cast<const T*>(b), static_cast<T*>(out), C, eps);
  return cudaGetLastError();
}

}  // namespace

cudaError_t layer_norm(const void* x, const void* w, const void* b, void* out, int64_t rows, int64_t C, float eps,
                       bool bf16, cudaStream_t stream) {
  return bf16 ? launch<__nv_bfloat16>(x, w, b, out, rows, C, eps, stream)
              : launch<float>(x, w, b, out, rows, C, eps, stream);
}

}  // namespace cuda
}  // namespace llm
