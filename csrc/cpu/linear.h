// Linear layers on weights packed once into column tiles: y = x @ W.T (+ bias, GELU,
// residual), for the few rows of a decode step up to the hundreds of a prefill. Torch-free;
// csrc/linear.cpp binds it as torch ops and csrc/decoder.cpp calls it directly.
//
// Layout: output columns in tiles of 64; within a tile, the weights of one input index k
// (or of a small group of consecutive k) for all 64 columns sit together, so a tile is one
// contiguous stream the prefetchers follow:
//   f32  [NT][K][64]
//   bf16 [NT][kp/2][64][2]     pairs of k; kp = K rounded up to 2
//   int8 [NT][kp/4 + 1][64][4] quads of k; kp = K rounded up to 4; one fp32 scale per column
//                              (symmetric, per channel); the last quad row of a tile holds
//                              the 64 columns' int32 sums of their int8 weights
// Columns past N and inputs past K are zero.
//
// int8 weights multiply int8 rows: each row of x is quantized on the fly with its own scale
// (quantize_rows) and the dot products run on integers (vpmaddubsw, vpdpbusd, sdot), so a
// weight costs a quarter of fp32's bytes and far fewer instructions than widening it to
// fp32 would. The same arithmetic serves every batch size, so a row's result never depends
// on the rows beside it; integer sums are exact, so every instruction set returns the same
// bits. Limits: K, N >= 1; int8 K <= 131072 (int32 sums of 127 * 127 products).
#pragma once

#include <cstdint>

#include "isa.h"

namespace llm {

constexpr int64_t kTileN = 64;   // output columns per packed tile
constexpr int64_t kMaxRows = 6;  // rows per micro-kernel call, at most (per kernel: 4 or 6)

enum class WFormat : int { f32 = 0, bf16 = 1, int8 = 2 };

// k rounded up to the format's group of inputs (1, 2 or 4).
inline int64_t padded_k(WFormat f, int64_t k) {
  return f == WFormat::bf16 ? (k + 1) / 2 * 2 : (f == WFormat::int8 ? (k + 3) / 4 * 4 : k);
}

struct PackedView {
  WFormat format;
  int64_t n, k;         // logical output / input size
  int64_t kp;           // padded_k(format, k)
  int64_t tiles;        // ceil(n / 64)
  const void* data;     // the packed tiles
  const float* scales;  // int8 only: [tiles * 64]
  int64_t tile_bytes() const {
    switch (format) {
      case WFormat::f32: return k * kTileN * 4;
      case WFormat::bf16: return kp * kTileN * 2;
      default: return (kp + 4) * kTileN;
    }
  }
};

// Bytes of the packed tiles of an [n, k] weight.
int64_t packed_bytes(WFormat format, int64_t n, int64_t k);

// Packs an [n, k] row-major weight (fp32, or bf16 bits when src_bf16) into `dst`
// (packed_bytes) and, for int8, `scales` [ceil(n / 64) * 64]. Threads over tiles (OpenMP).
void pack_weight(WFormat format, const void* src, bool src_bf16, int64_t n, int64_t k, void* dst, float* scales);

// The rows a linear layer reads; which fields it needs depends on the weights:
//   f32   x [M, ldx] fp32
//   bf16  xb [M, kp] bf16 bits, zero padded (rows_to_bf16, rows.h)
//   int8  xq [M, kp] + xq_scale [M] from quantize_rows
struct LinearInput {
  const float* x = nullptr;
  int64_t ldx = 0;
  const uint16_t* xb = nullptr;
  const int8_t* xq = nullptr;
  const float* xq_scale = nullptr;
};

// x [M, ldx] fp32 -> q [M, kp] int8 (zero past K) and scale [M]: q = round(x * 127 / amax),
// scale = amax / 127 per row, for the kernels of `isa` (which may want the bytes offset).
void quantize_rows(const float* x, int64_t ldx, int64_t M, int64_t K, int64_t kp, Isa isa, int8_t* q,
                   float* scale);

// What happens to each sum before it is stored:
//   y = acc * scale[n] (int8) + bias[n]; y = gelu_tanh(y) if gelu; y += residual[m, n];
//   out[m, n] = y (residual may alias out); out_bf16[m, n] = bf16(y) when given.
struct Epilogue {
  const float* bias = nullptr;
  bool gelu = false;
  const float* residual = nullptr;
  int64_t ld_residual = 0;
  float* out = nullptr;
  int64_t ld_out = 0;
  uint16_t* out_bf16 = nullptr;
  int64_t ld_out_bf16 = 0;
};

// Rows [0, M) through tiles [t0, t1) with the micro-kernels of `isa` (which must be
// supported; read it before a parallel region and pass it in). Runs on the calling thread.
void linear_tiles(const PackedView& w, const LinearInput& in, int64_t M, const Epilogue& e, int64_t t0,
                  int64_t t1, Isa isa);

}  // namespace llm
