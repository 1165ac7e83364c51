// Top-k / top-p (nucleus) sampling from logits without sorting: one block of 1024 threads
// per row.
//  1. top-k: the k-th largest logit by radix select on order-preserving 32-bit keys of the
//     floats, 8 bits per pass (4 passes, a 256-bin histogram in shared memory); keys below
//     it are dropped (ties with it kept, as llm.generation.filter_logits does).
//  2. top-p: the same radix select weighted by probability mass: the largest key t whose
//     tokens at or above t hold >= top_p of the (top-k) mass; keys below t are dropped,
//     so the kept set is the shortest prefix of the sorted tokens reaching top_p.
//  3. draw: the token where the running mass (in index order) passes uniform * kept mass,
//     from a block-wide prefix sum over per-thread chunks.
// temperature <= 0 returns the first argmax. Limit: V < 2^31. Ties at the top-p cut are
// all kept (a sort would keep some of them).
#include "common.cuh"
#include "kernels.h"

namespace llm {
namespace cuda {

namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ unsigned int ordered_key(float f) {
  unsigned int u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Radix select from the top: the key t with weight(keys > t) < target <= weight(keys >= t),
// over keys >= floor. weight = 1 per key (count) or its probability mass.
template <bool kMass>
__device__ unsigned int select_key(const float* __restrict__ lr, int64_t V, float inv_t, float mx,
                                   unsigned int floor, float target, float* bins, unsigned int* sh_bin,
                                   float* sh_target) {
  unsigned int prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) bins[i] = 0.0f;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
      const float x = lr[i];
      const unsigned int key = ordered_key(x);
      if (key >= floor && (key & mask) == prefix)
        atomicAdd(&bins[(key >> shift) & 255u], kMass ? __expf(x * inv_t - mx) : 1.0f);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      float cum = 0.0f;
      unsigned int chosen = 0;
      bool found = false;
      for (int bin = 255; bin >= 0; --bin) {
        if (bins[bin] == 0.0f) continue;
        chosen = static_cast<unsigned int>(bin);  // rounding: fall back to the lowest non-empty bin
        if (cum + bins[bin] >= target) {
          found = true;
          break;
        }
        cum += bins[bin];
      }
      *sh_bin = chosen;
      *sh_target = found ? target - cum : bins[chosen];
    }
    __syncthreads();
    prefix |= *sh_bin << shift;
    mask |= 255u << shift;
    target = *sh_target;
    __syncthreads();
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* __restrict__ logits,
                                                          const float* __restrict__ uniform,
                                                          int64_t* __restrict__ out, int64_t V, float temperature,
                                                          int64_t top_k, float top_p) {
  __shared__ float scratch[32];
  __shared__ float bins[256];
  __shared__ float scan[kThreads];
  __shared__ unsigned int sh_bin;
  __shared__ float sh_target;
  __shared__ int sh_index;
  const int64_t row = blockIdx.x;
  const float* lr = logits + row * V;
  const bool greedy = temperature <= 0.0f;
  const float inv_t = greedy ? 1.0f : 1.0f / temperature;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, lr[i] * inv_t);
  mx = block_max(mx, scratch);
  if (threadIdx.x == 0) sh_index = 0x7fffffff;
  __syncthreads();
  if (greedy) {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
      if (lr[i] == mx) atomicMin(&sh_index, static_cast<int>(i));
    __syncthreads();
    if (threadIdx.x == 0) out[row] = sh_index;
    return;
  }
  unsigned int floor = 0;
  if (top_k > 0 && top_k < V)
    floor = select_key<false>(lr, V, inv_t, mx, 0u, static_cast<float>(top_k), bins, &sh_bin, &sh_target);
  if (top_p < 1.0f) {
    float z = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
      if (ordered_key(lr[i]) >= floor) z += __expf(lr[i] * inv_t - mx);
    z = block_sum(z, scratch);
    floor = select_key<true>(lr, V, inv_t, mx, floor, top_p * z, bins, &sh_bin, &sh_target);
  }
  // Draw: each thread owns a contiguous chunk; an inclusive scan of the chunk masses finds
  // the chunk where uniform * total falls.
  const int64_t per = (V + blockDim.x - 1) / blockDim.x;
  const int64_t lo = threadIdx.x * per, hi = min(V, lo + per);
  float mine = 0.0f;
  int last_kept = -1;
  for (int64_t i = lo; i < hi; ++i)
    if (ordered_key(lr[i]) >= floor) {
      mine += __expf(lr[i] * inv_t - mx);
      last_kept = static_cast<int>(i);
    }
  scan[threadIdx.x] = mine;
  __syncthreads();
  for (int off = 1; off < static_cast<int>(blockDim.x); off <<= 1) {
    const float add = threadIdx.x >= static_cast<unsigned int>(off) ? scan[threadIdx.x - off] : 0.0f;
    __syncthreads();
    scan[threadIdx.x] += add;
    __syncthreads();
  }
  const float total = scan[blockDim.x - 1];
  const float goal = uniform[row] * total;
  const float before = scan[threadIdx.x] - mine;
  if (threadIdx.x == 0) sh_index = -1;
  __syncthreads();
  if (mine > 0.0f && goal >= before && goal < before + mine) {
    float run = before;
    int pick = last_kept;
    for (int64_t i = lo; i < hi; ++i) {
      if (ordered_key(lr[i]) < floor) continue;
      run += __expf(lr[i] * inv_t - mx);
      if (goal < run) {
        pick = static_cast<int>(i);
        break;
      }
    }
    atomicMax(&sh_index, pick);
  }
  __syncthreads();
  if (sh_index < 0) atomicMax(&sh_index, last_kept);  // goal rounded past the total
  __syncthreads();
  if (threadIdx.x == 0) out[row] = sh_index;
}

}  // namespace

cudaError_t sample_top_k_top_p(const float* logits, const float* uniform, int64_t* out, int64_t B, int64_t V,
                               float temperature, int64_t top_k, float top_p, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  if (V < 1 || V >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  sample_kernel<<<static_cast<unsigned int>(B), kThreads, 0, stream>>>(logits, uniform, out, V, temperature, top_k,
                                                                       top_p);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace llm
