// The linear driver (linear.h): picks the instruction set's micro-kernels (kernels.h), runs
// them over blocks of kRowBlock rows and one tile at a time, and applies the epilogue to
// each 64-column block of sums while it is in L1. Row quantization for int8 weights.
#include <algorithm>
#include <cmath>

#include "kernels.h"
#include "linear.h"
#include "rows.h"

namespace llm {

const KernelTable* kernels_for(Isa isa) {
  switch (isa) {
    case Isa::portable: return portable_kernels();
    case Isa::avx2:
    case Isa::avx2_vnni: return avx2_kernels(isa);
    case Isa::avx512:
    case Isa::avx512_vnni:
    case Isa::avx512_bf16: return avx512_kernels(isa);
    case Isa::neon:
    case Isa::neon_dotprod:
    case Isa::neon_bf16: return neon_kernels(isa);
    default: return nullptr;
  }
}

// Round half to even for |v| < 2^22 without a libm call, so the loop vectorizes: adding
// 1.5 * 2^23 leaves no fraction bits and the FPU rounds to nearest even on the way.
static inline float round_even(float v) { return (v + 12582912.0f) - 12582912.0f; }

void quantize_rows(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t kp, Isa isa, int8_t* q,
                   float* scale) {
  const uint8_t offset = static_cast<uint8_t>(kernels_for(isa)->x_offset);
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float a = std::fabs(xm[k]);
      amax = a > amax ? a : amax;
    }
    for (int64_t k = 0; k < K; ++k) amax = std::isnan(xm[k]) ? xm[k] : amax;  // NaN in, NaN out
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    uint8_t* qm = reinterpret_cast<uint8_t*>(q + m * kp);
    for (int64_t k = 0; k < K; ++k) {
      float r = round_even(xm[k] * inv);
      r = r >= -127.0f ? (r <= 127.0f ? r : 127.0f) : -127.0f;  // NaN (amax inf or NaN) -> -127
      qm[k] = static_cast<uint8_t>(static_cast<int8_t>(r)) + offset;
    }
    for (int64_t k = K; k < kp; ++k) qm[k] = offset;
    scale[m] = amax / 127.0f;
  }
}

namespace {

// The kernels of one linear call and how they address the rows.
struct RowSource {
  const KernelFn* fns;
  const char* x;
  int64_t ldx;   // elements
  size_t esize;  // bytes per element
  int64_t klen;
};

RowSource row_source(const PackedView& w, const LinearInput& in, const KernelTable& kt) {
  switch (w.format) {
    case WFormat::f32: return {kt.f32, reinterpret_cast<const char*>(in.x), in.ldx, 4, w.k};
    case WFormat::bf16: return {kt.bf16, reinterpret_cast<const char*>(in.xb), w.kp, 2, w.kp};
    default: return {kt.int8, reinterpret_cast<const char*>(in.xq), w.kp, 1, w.kp};
  }
}

}  // namespace

void linear_tiles(const PackedView& w, const LinearInput& in, int64_t M, const Epilogue& e, int64_t t0,
                  int64_t t1, Isa isa) {
  const RowSource src = row_source(w, in, *kernels_for(isa));
  const bool integer = w.format == WFormat::int8;
  alignas(64) float acc[kRowBlock * kTileN];
  const int32_t* iacc = reinterpret_cast<const int32_t*>(acc);
  for (int64_t t = t0; t < t1; ++t) {
    const char* wt = static_cast<const char*>(w.data) + t * w.tile_bytes();
    const int64_t n0 = t * kTileN;
    const int64_t cols = std::min<int64_t>(kTileN, w.n - n0);
    for (int64_t m0 = 0; m0 < M; m0 += kRowBlock) {
      const int64_t mr = std::min<int64_t>(kRowBlock, M - m0);
      src.fns[mr - 1](src.x + m0 * src.ldx * src.esize, src.ldx, wt, src.klen, acc);
      for (int64_t m = 0; m < mr; ++m) {
        const int64_t row = m0 + m;
        const float* a = acc + m * kTileN;
        const int32_t* ai = iacc + m * kTileN;
        const float xs = integer ? in.xq_scale[row] : 1.0f;
        float* out = e.out + row * e.ld_out + n0;
        const float* res = e.residual ? e.residual + row * e.ld_residual + n0 : nullptr;
        uint16_t* ob = e.out_bf16 ? e.out_bf16 + row * e.ld_out_bf16 + n0 : nullptr;
        for (int64_t j = 0; j < cols; ++j) {
          float y = integer ? static_cast<float>(ai[j]) * xs : a[j];
          if (w.scales) y *= w.scales[n0 + j];
          if (e.bias) y += e.bias[n0 + j];
          if (e.gelu) y = gelu_tanh(y);
          if (res) y += res[j];
          out[j] = y;
          if (ob) ob[j] = float_to_bf16(y);
        }
      }
    }
  }
}

}  // namespace llm
