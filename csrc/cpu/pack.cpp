// Packing an [n, k] weight into column tiles (layout in linear.h), once per weight.
#include <algorithm>
#include <cmath>

#include "linear.h"
#include "rows.h"

namespace llm {

namespace {

inline float weight_at(const void* src, bool src_bf16, int64_t idx) {
  return src_bf16 ? bf16_to_float(static_cast<const uint16_t*>(src)[idx]) : static_cast<const float*>(src)[idx];
}

void pack_f32(const void* src, bool src_bf16, int64_t n, int64_t k, float* d) {
  const int64_t tiles = (n + kTileN - 1) / kTileN;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t kk = 0; kk < k; ++kk)
      for (int64_t j = 0; j < kTileN; ++j) {
        const int64_t col = t * kTileN + j;
        d[(t * k + kk) * kTileN + j] = col < n ? weight_at(src, src_bf16, col * k + kk) : 0.0f;
      }
}

void pack_bf16(const void* src, bool src_bf16, int64_t n, int64_t k, uint16_t* d) {
  const int64_t tiles = (n + kTileN - 1) / kTileN, kp = padded_k(WFormat::bf16, k);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t kk = 0; kk < kp; ++kk)
      for (int64_t j = 0; j < kTileN; ++j) {
        const int64_t col = t * kTileN + j;
        const float v = (col < n && kk < k) ? weight_at(src, src_bf16, col * k + kk) : 0.0f;
        d[t * kp * kTileN + (kk / 2) * 2 * kTileN + j * 2 + (kk % 2)] = float_to_bf16(v);
      }
}

// Symmetric per column: q = round(w * 127 / amax) in [-127, 127], scale = amax / 127.
void pack_int8(const void* src, bool src_bf16, int64_t n, int64_t k, int8_t* d, float* scales) {
  const int64_t tiles = (n + kTileN - 1) / kTileN, kp = padded_k(WFormat::int8, k);
  const int64_t tile_bytes = (kp + 4) * kTileN;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tiles; ++t) {
    int8_t* tile = d + t * tile_bytes;
    int32_t* colsum = reinterpret_cast<int32_t*>(tile + kp * kTileN);
    for (int64_t j = 0; j < kTileN; ++j) {
      const int64_t col = t * kTileN + j;
      float amax = 0.0f;
      for (int64_t kk = 0; col < n && kk < k; ++kk) amax = std::max(amax, std::fabs(weight_at(src, src_bf16, col * k + kk)));
      const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      scales[col] = amax / 127.0f;
      int32_t sum = 0;
      for (int64_t kk = 0; kk < kp; ++kk) {
        const float q = (col < n && kk < k) ? std::nearbyint(weight_at(src, src_bf16, col * k + kk) * inv) : 0.0f;
        const int8_t b = static_cast<int8_t>(std::max(-127.0f, std::min(127.0f, q)));
        tile[(kk / 4) * 4 * kTileN + j * 4 + (kk % 4)] = b;
        sum += b;
      }
      colsum[j] = sum;
    }
  }
}

}  // namespace

int64_t packed_bytes(WFormat format, int64_t n, int64_t k) {
  PackedView v{format, n, k, padded_k(format, k), (n + kTileN - 1) / kTileN, nullptr, nullptr};
  return v.tiles * v.tile_bytes();
}

void pack_weight(WFormat format, const void* src, bool src_bf16, int64_t n, int64_t k, void* dst, float* scales) {
  switch (format) {
    case WFormat::f32: pack_f32(src, src_bf16, n, k, static_cast<float*>(dst)); break;
    case WFormat::bf16: pack_bf16(src, src_bf16, n, k, static_cast<uint16_t*>(dst)); break;
    default: pack_int8(src, src_bf16, n, k, static_cast<int8_t*>(dst), scales); break;
  }
}

}  // namespace llm
