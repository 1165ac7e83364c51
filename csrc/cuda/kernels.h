// Launchers of the CUDA kernels in csrc/cuda/*.cu. Plain pointers and a stream: the .cu
// files include no torch header (they build with nvcc alone); csrc/cuda/binding.cpp turns
// tensors into these arguments. `bf16` selects __nv_bfloat16 storage, else float; all math
// is fp32. Each launcher returns cudaGetLastError() of its launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace llm {
namespace cuda {

// rows x C; b nullable. out = layer_norm(x) * w + b. C <= 65536.
cudaError_t layer_norm(const void* x, const void* w, const void* b, void* out, int64_t rows, int64_t C, float eps,
                       bool bf16, cudaStream_t stream);

// out = gelu_tanh(x + bias[i % C]); bias nullable.
cudaError_t bias_gelu(const void* x, const void* bias, void* out, int64_t n, int64_t C, bool bf16,
                      cudaStream_t stream);

// Split-K ("flash decoding") attention of Tq queries per (row, head) over a static cache:
// q [B, nh, Tq, hs], caches [B, nh, S, hs], q_pos [Tq], key_valid [B, S] (nullable),
// out [B, nh, Tq, hs]. workspace: attention_workspace_floats(...) floats. hs <= 256.
int64_t attention_workspace_floats(int64_t B, int64_t nh, int64_t Tq, int64_t S, int64_t hs);
cudaError_t cached_attention(const void* q, const void* k_cache, const void* v_cache, const int64_t* q_pos,
                             const bool* key_valid, void* out, float* workspace, int64_t B, int64_t nh, int64_t Tq,
                             int64_t S, int64_t hs, bool bf16, cudaStream_t stream);

}  // namespace cuda
}  // namespace llm
