// KV-cache append: cache[bh, pos[t], :] = new[bh, t, :] for keys and values, one thread
// per element of the new rows (a decode step writes B * nh * hs elements).
#include "common.cuh"
#include "kernels.h"

namespace llm {
namespace cuda {

namespace {

template <typename T>
__global__ void __launch_bounds__(256) kv_append_kernel(T* __restrict__ kc, T* __restrict__ vc,
                                                        const T* __restrict__ k, const T* __restrict__ v,
                                                        const int64_t* __restrict__ pos, int64_t n, int64_t S,
                                                        int64_t T_, int64_t hs) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = i % hs, t = (i / hs) % T_, bh = i / (hs * T_);
    const int64_t slot = pos[t];
    if (slot < 0 || slot >= S) continue;  // checked on the host except under graph capture
    const int64_t dst = (bh * S + slot) * hs + d;
    kc[dst] = k[i];
    vc[dst] = v[i];
  }
}

template <typename T>
cudaError_t launch(void* kc, void* vc, const void* k, const void* v, const int64_t* pos, int64_t BH, int64_t S,
                   int64_t T_, int64_t hs, cudaStream_t stream) {
  const int64_t n = BH * T_ * hs;
  if (n == 0) return cudaSuccess;
  unsigned int blocks = ceil_div(n, 256);
  if (blocks > 65535u * 8u) blocks = 65535u * 8u;
  kv_append_kernel<T><<<blocks, 256, 0, stream>>>(static_cast<T*>(kc), static_cast<T*>(vc), static_cast<const T*>(k),
                                                  static_cast<const T*>(v), pos, n, S, T_, hs);
  return cudaGetLastError();
}

}  // namespace

cudaError_t kv_append(void* k_cache, void* v_cache, const void* k, const void* v, const int64_t* pos, int64_t BH,
                      int64_t S, int64_t T, int64_t hs, bool bf16, cudaStream_t stream) {
  return bf16 ? launch<__nv_bfloat16>(k_cache, v_cache, k, v, pos, BH, S, T, hs, stream)
              : launch<float>(k_cache, v_cache, k, v, pos, BH, S, T, hs, stream);
}

}  // namespace cuda
}  // namespace llm
