// Portable C++ micro-kernels (kernels.h): the definition the vector paths are tested
// against, and the path of any CPU without one. The inner loops over 64 columns are left
// to the compiler's baseline vectorization (SSE2 on x86-64, NEON on aarch64).
#include <algorithm>
#include <cstring>

#include "kernels.h"
#include "rows.h"

namespace llm {

namespace {

inline void add_block(float* acc, const float* a, int rows) {
  for (int64_t i = 0; i < rows * kTileN; ++i) acc[i] += a[i];
}

template <int MR>
void f32_portable(const void* xv, int64_t ldx, const void* wv, int64_t K, void* accv) {
  const float* x = static_cast<const float*>(xv);
  const float* w = static_cast<const float*>(wv);
  float* acc = static_cast<float*>(accv);
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    float a[MR][kTileN] = {};
    for (int64_t k = k0; k < std::min(K, k0 + kBlockK); ++k) {
      const float* wk = w + k * kTileN;
      for (int m = 0; m < MR; ++m) {
        const float xm = x[m * ldx + k];
        for (int j = 0; j < kTileN; ++j) a[m][j] += xm * wk[j];
      }
    }
    add_block(acc, &a[0][0], MR);
  }
}

template <int MR>
void bf16_portable(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  const uint16_t* x = static_cast<const uint16_t*>(xv);
  const uint16_t* w = static_cast<const uint16_t*>(wv);
  float* acc = static_cast<float*>(accv);
  for (int64_t p0 = 0; p0 < kp / 2; p0 += kBlockK / 2) {
    float a[MR][kTileN] = {};
    for (int64_t p = p0; p < std::min(kp / 2, p0 + kBlockK / 2); ++p) {
      const uint16_t* wp = w + p * 2 * kTileN;
      float w0[kTileN], w1[kTileN];
      for (int j = 0; j < kTileN; ++j) {
        w0[j] = bf16_to_float(wp[2 * j]);
        w1[j] = bf16_to_float(wp[2 * j + 1]);
      }
      for (int m = 0; m < MR; ++m) {
        const float x0 = bf16_to_float(x[m * ldx + 2 * p]), x1 = bf16_to_float(x[m * ldx + 2 * p + 1]);
        for (int j = 0; j < kTileN; ++j) a[m][j] += x0 * w0[j] + x1 * w1[j];
      }
    }
    add_block(acc, &a[0][0], MR);
  }
}

template <int MR>
void int8_portable(const void* xv, int64_t ldx, const void* wv, int64_t kp, void* accv) {
  const int8_t* x = static_cast<const int8_t*>(xv);
  const int8_t* w = static_cast<const int8_t*>(wv);
  int32_t* acc = static_cast<int32_t*>(accv);
  for (int64_t q = 0; q < kp / 4; ++q) {
    const int8_t* wq = w + q * 4 * kTileN;
    for (int m = 0; m < MR; ++m) {
      const int8_t* xq = x + m * ldx + 4 * q;
      int32_t* a = acc + m * kTileN;
      for (int j = 0; j < kTileN; ++j)
        a[j] += xq[0] * wq[4 * j] + xq[1] * wq[4 * j + 1] + xq[2] * wq[4 * j + 2] + xq[3] * wq[4 * j + 3];
    }
  }
}

const KernelTable kPortable = {LLM_KERNEL_ROWS(f32_portable), LLM_KERNEL_ROWS(bf16_portable),
                               LLM_KERNEL_ROWS(int8_portable), 0};

}  // namespace

const KernelTable* portable_kernels() { return &kPortable; }

}  // namespace llm
