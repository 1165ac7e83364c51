// The linear driver (linear.h): picks the instruction set's micro-kernels (kernels.h) and
// runs them tile by tile; within a tile, block of inputs by block (one L1-sized piece of
// the tile) over every block of rows, then the epilogue on each row's 64 sums. Row
// quantization for int8 weights.
#include <algorithm>
#include <cmath>
#include <vector>

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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LLM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LLM_CLONES
#endif

// max |x| over a row with 16 partial maxima (vectorizes); NaN when the row holds a NaN or an
// infinity (x - x), so such a row's outputs come out NaN.
static inline float row_amax(const float* x, int64_t K) {
  float part[16] = {}, bad[16] = {};
  int64_t k = 0;
  for (; k + 16 <= K; k += 16)
    for (int t = 0; t < 16; ++t) {
      const float a = std::fabs(x[k + t]);
      part[t] = a > part[t] ? a : part[t];
      bad[t] += x[k + t] - x[k + t];
    }
  for (int t = 0; k < K; ++k, ++t) {
    const float a = std::fabs(x[k]);
    part[t] = a > part[t] ? a : part[t];
    bad[t] += x[k] - x[k];
  }
  float amax = 0.0f, b = 0.0f;
  for (int t = 0; t < 16; ++t) {
    amax = part[t] > amax ? part[t] : amax;
    b += bad[t];
  }
  return b == 0.0f ? amax : NAN;
}

LLM_CLONES
void quantize_rows(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t kp, Isa isa, int8_t* q,
                   float* scale) {
  const uint8_t offset = static_cast<uint8_t>(kernels_for(isa)->x_offset);
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    const float amax = row_amax(xm, K);
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
  int64_t ldx;    // elements
  size_t esize;   // bytes per element of x
  int64_t klen;   // inputs the kernels run over (K, or kp)
  int64_t chunk;  // inputs per kernel call: 16 KB of a tile (a multiple of kBlockK)
  int64_t wrow;   // bytes of the tile per input
};

RowSource row_source(const PackedView& w, const LinearInput& in, const KernelTable& kt) {
  switch (w.format) {
    case WFormat::f32: return {kt.f32, reinterpret_cast<const char*>(in.x), in.ldx, 4, w.k, 64, 4 * kTileN};
    case WFormat::bf16: return {kt.bf16, reinterpret_cast<const char*>(in.xb), w.kp, 2, w.kp, 256, 2 * kTileN};
    default: return {kt.int8, reinterpret_cast<const char*>(in.xq), w.kp, 1, w.kp, 512, kTileN};
  }
}

// The epilogue of one row's block of `cols` sums (fp32 ones, or exact int32 ones of int8
// rows: those less offset x the column sums, times the row's scale), as simple loops the
// compiler vectorizes (and compiles for AVX-512 and AVX2 too, picked by CPUID at load).
LLM_CLONES
void finish_row(const float* fsum, const int32_t* isum, const int32_t* colsum, uint32_t offset, float xs,
                int64_t cols, const float* scale, const Epilogue& e, int64_t row, int64_t n0) {
  alignas(64) float y[kTileN];
  if (isum)  // unsigned arithmetic wraps as the vector units do
    for (int64_t j = 0; j < cols; ++j)
      y[j] = static_cast<float>(static_cast<int32_t>(static_cast<uint32_t>(isum[j]) -
                                                     offset * static_cast<uint32_t>(colsum[j]))) * xs;
  else
    for (int64_t j = 0; j < cols; ++j) y[j] = fsum[j];
  if (scale)
    for (int64_t j = 0; j < cols; ++j) y[j] *= scale[j];
  if (e.bias)
    for (int64_t j = 0; j < cols; ++j) y[j] += e.bias[n0 + j];
  if (e.gelu)
    for (int64_t j = 0; j < cols; ++j) y[j] = gelu_tanh(y[j]);
  if (e.residual) {
    const float* res = e.residual + row * e.ld_residual + n0;
    for (int64_t j = 0; j < cols; ++j) y[j] += res[j];
  }
  float* out = e.out + row * e.ld_out + n0;
  for (int64_t j = 0; j < cols; ++j) out[j] = y[j];
  if (e.out_bf16) {
    uint16_t* ob = e.out_bf16 + row * e.ld_out_bf16 + n0;
    for (int64_t j = 0; j < cols; ++j) ob[j] = float_to_bf16(y[j]);
  }
}

}  // namespace

void linear_tiles(const PackedView& w, const LinearInput& in, int64_t M, const Epilogue& e, int64_t t0,
                  int64_t t1, Isa isa) {
  const KernelTable& kt = *kernels_for(isa);
  const RowSource src = row_source(w, in, kt);
  const bool integer = w.format == WFormat::int8;
  int64_t rows = kMaxRows;  // the kernels' most rows per call
  while (src.fns[rows - 1] == nullptr) --rows;
  // as few blocks as that allows, of sizes as even as possible (8 rows: 4 + 4, not 6 + 2)
  const int64_t blocks = (M + rows - 1) / rows, base = M / blocks, extra = M % blocks;
  auto mr_of = [&](int64_t b) { return base + (b < extra ? 1 : 0); };
  thread_local std::vector<float> sums;  // [M][64]: fp32 sums, or int32 ones for int8
  sums.resize(static_cast<size_t>(M * kTileN));
  int32_t* isums = reinterpret_cast<int32_t*>(sums.data());
  for (int64_t t = t0; t < t1; ++t) {
    const char* wt = static_cast<const char*>(w.data) + t * w.tile_bytes();
    const int64_t n0 = t * kTileN;
    const int64_t cols = std::min<int64_t>(kTileN, w.n - n0);
    std::fill(sums.begin(), sums.end(), 0.0f);  // all-zero bits: 0 as int32 too
    for (int64_t k0 = 0; k0 < src.klen; k0 += src.chunk) {
      const int64_t klen = std::min(src.chunk, src.klen - k0);
      for (int64_t m0 = 0, b = 0; m0 < M; m0 += mr_of(b++)) {
        const int64_t mr = mr_of(b);
        src.fns[mr - 1](src.x + (m0 * src.ldx + k0) * src.esize, src.ldx, wt + k0 * src.wrow, klen,
                        sums.data() + m0 * kTileN);
      }
    }
    const int32_t* colsum = integer ? int8_tile_colsums(wt, w.kp) : nullptr;
    for (int64_t m = 0; m < M; ++m)
      finish_row(sums.data() + m * kTileN, integer ? isums + m * kTileN : nullptr, colsum,
                 static_cast<uint32_t>(kt.x_offset), integer ? in.xq_scale[m] : 1.0f, cols,
                 integer ? w.scales + n0 : nullptr, e, m, n0);
  }
}

}  // namespace llm
