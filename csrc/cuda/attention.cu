// Attention of a few queries per (row, head) over a static KV cache, split over the cache
// ("flash decoding"): a decode step has one query per head, too few blocks to fill a GPU,
// so the cache is cut into `splits` chunks, each block computes an online-softmax partial
// (max m, sum l, unnormalized output) for its chunk, and a second kernel merges the chunks.
// Query i of row b sits at slot q_pos[i] and sees slots j <= q_pos[i] with key_valid[b, j]
// (or j == q_pos[i]), as the CPU kernel and the torch reference.
// Block: 4 warps; warp w takes slots start + w, start + w + 4, ...; a slot's dot product is
// spread over the 32 lanes (hs / 32 elements each) and reduced with shuffles.
// Limits: hs <= 256.
#include "common.cuh"
#include "kernels.h"

namespace llm {
namespace cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxPerLane = 8;  // hs <= 32 * 8
constexpr int64_t kMinChunk = 64;
constexpr int64_t kMaxSplits = 32;

int64_t num_splits(int64_t S) {
  int64_t s = (S + kMinChunk - 1) / kMinChunk;
  return s < 1 ? 1 : (s > kMaxSplits ? kMaxSplits : s);
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32) partial_kernel(const T* __restrict__ q, const T* __restrict__ kc,
                                                              const T* __restrict__ vc,
                                                              const int64_t* __restrict__ q_pos,
                                                              const bool* __restrict__ valid, float* __restrict__ ws,
                                                              int64_t nh, int64_t Tq, int64_t S, int64_t hs,
                                                              int64_t chunk, float scale) {
  __shared__ float sm_acc[kWarps][32 * kMaxPerLane];
  __shared__ float sm_m[kWarps], sm_l[kWarps];
  const int64_t task = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int64_t qi = task % Tq, bh = task / Tq, b = bh / nh;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // an out-of-range position (checked on the host except under graph capture) sees nothing
  const int64_t pos = q_pos[qi] < S ? q_pos[qi] : -1;
  const int64_t start = split * chunk;
  const int64_t end = min(start + chunk, pos + 1);
  float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    qv[i] = d < hs ? load_f(q, task * hs + d) * scale : 0.0f;
    acc[i] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  const T* kbase = kc + bh * S * hs;
  const T* vbase = vc + bh * S * hs;
  for (int64_t j = start + warp; j < end; j += kWarps) {
    if (valid && !valid[b * S + j] && j != pos) continue;  // the same for the whole warp
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < hs) s += qv[i] * load_f(kbase, j * hs + d);
    }
    s = warp_sum(s);
    const float m_new = fmaxf(m, s);
    const float corr = __expf(m - m_new), p = __expf(s - m_new);
    l = l * corr + p;
#pragma unroll
    for (int i = 0; i < kMaxPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < hs) acc[i] = acc[i] * corr + p * load_f(vbase, j * hs + d);
    }
    m = m_new;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) sm_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w]);
  float* out_acc = ws + (task * splits + split) * (hs + 2);
  for (int64_t d = threadIdx.x; d < hs; d += blockDim.x) {
    float o = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sm_m[w] != -INFINITY) o += __expf(sm_m[w] - M) * sm_acc[w][d];
    out_acc[2 + d] = o;
  }
  if (threadIdx.x == 0) {
    float L = 0.0f;
    for (int w = 0; w < kWarps; ++w)
      if (sm_m[w] != -INFINITY) L += __expf(sm_m[w] - M) * sm_l[w];
    out_acc[0] = M;  // -inf when this chunk holds no visible slot
    out_acc[1] = L;
  }
}

template <typename T>
__global__ void __launch_bounds__(128) merge_kernel(const float* __restrict__ ws, T* __restrict__ out, int64_t hs,
                                                    int64_t splits) {
  const int64_t task = blockIdx.x;
  const float* part = ws + task * splits * (hs + 2);
  float M = -INFINITY;
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, part[s * (hs + 2)]);
  float L = 0.0f;
  for (int64_t s = 0; s < splits; ++s) {
    const float ms = part[s * (hs + 2)];
    if (ms != -INFINITY) L += __expf(ms - M) * part[s * (hs + 2) + 1];
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;  // L > 0 unless the position was out of range
  for (int64_t d = threadIdx.x; d < hs; d += blockDim.x) {
    float o = 0.0f;
    for (int64_t s = 0; s < splits; ++s) {
      const float ms = part[s * (hs + 2)];
      if (ms != -INFINITY) o += __expf(ms - M) * part[s * (hs + 2) + 2 + d];
    }
    store_f(out, task * hs + d, o * inv);
  }
}

template <typename T>
cudaError_t launch(const void* q, const void* kc, const void* vc, const int64_t* q_pos, const bool* valid, void* out,
                   float* ws, int64_t B, int64_t nh, int64_t Tq, int64_t S, int64_t hs, cudaStream_t stream) {
  const int64_t tasks = B * nh * Tq;
  if (tasks == 0) return cudaSuccess;
  if (hs > 32 * kMaxPerLane || hs < 1) return cudaErrorInvalidValue;
  const int64_t splits = num_splits(S), chunk = (S + splits - 1) / splits;
  const float scale = rsqrtf(static_cast<float>(hs));
  dim3 grid(static_cast<unsigned int>(tasks), static_cast<unsigned int>(splits));
  partial_kernel<T><<<grid, kWarps * 32, 0, stream>>>(static_cast<const T*>(q), static_cast<const T*>(kc),
                                                      static_cast<const T*>(vc), q_pos, valid, ws, nh, Tq, S, hs,
                                                      chunk, scale);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  merge_kernel<T><<<static_cast<unsigned int>(tasks), 128, 0, stream>>>(ws, static_cast<T*>(out), hs, splits);
  return cudaGetLastError();
}

}  // namespace

int64_t attention_workspace_floats(int64_t B, int64_t nh, int64_t Tq, int64_t S, int64_t hs) {
  return B * nh * Tq * num_splits(S) * (hs + 2);
}

cudaError_t cached_attention(const void* q, const void* k_cache, const void* v_cache, const int64_t* q_pos,
                             const bool* key_valid, void* out, float* workspace, int64_t B, int64_t nh, int64_t Tq,
                             int64_t S, int64_t hs, bool bf16, cudaStream_t stream) {
  return bf16 ? launch<__nv_bfloat16>(q, k_cache, v_cache, q_pos, key_valid, out, workspace, B, nh, Tq, S, hs, stream)
              : launch<float>(q, k_cache, v_cache, q_pos, key_valid, out, workspace, B, nh, Tq, S, hs, stream);
}

}  // namespace cuda
}  // namespace llm
