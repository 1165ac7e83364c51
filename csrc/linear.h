// Linear layers on weights packed once into column tiles (csrc/linear.cpp).
//
// Layout: output columns in tiles of 64; within a tile, the 64 weights of one input index k
// sit together, so a tile is one contiguous stream the prefetchers follow:
//   f32  [NT][K][64]            bf16 [NT][Kp/2][64][2] (pairs of k, Kp = K rounded up to even)
//   int8 [NT][K][64] + one fp32 scale per output column (symmetric, per channel)
// A micro-kernel keeps a 4-row x 64-column block of sums in registers, so each weight
// loaded serves up to 4 rows; more rows reuse the tile from L2. Columns past N are zero.
#pragma once

#include <cstdint>

#include "common.h"

namespace llm {

constexpr int64_t kTileN = 64;  // output columns per packed tile
constexpr int64_t kRowBlock = 4;  // rows per micro-kernel call

enum class WFormat : int { f32 = 0, bf16 = 1, int8 = 2 };

struct PackedView {
  WFormat format;
  int64_t n, k;        // logical output / input size
  int64_t kp;          // k rounded up to even for bf16, else k
  int64_t tiles;       // ceil(n / 64)
  const void* data;    // the packed tiles
  const float* scales; // int8 only: [tiles * 64]
  int64_t tile_elems() const { return (format == WFormat::bf16 ? kp : k) * kTileN; }
};

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

// Rows [0, M) through tiles [t0, t1) with the micro-kernels of `isa` (current_isa(), read
// before the parallel region): x fp32 [M, ldx] for f32/int8 weights, xb bf16 [M, kp] for
// bf16 weights (see rows_to_bf16). Runs on the calling thread.
void linear_tiles(const PackedView& w, const float* x, int64_t ldx, const uint16_t* xb, int64_t M,
                  const Epilogue& e, int64_t t0, int64_t t1, Isa isa);

// x [M, K] fp32 -> out [M, kp] bf16 bits, rounded to nearest even, zero padded.
void rows_to_bf16(const float* x, int64_t ldx, int64_t M, int64_t K, uint16_t* out, int64_t kp);

}  // namespace llm

#include <ATen/core/Tensor.h>

namespace llm {
// Checks that `packed` (+ `scales`) came from pack_linear_weight for an [n, k] weight and
// returns its view; errors name `op`.
PackedView packed_view(const at::Tensor& packed, const at::Tensor& scales, int64_t n, int64_t k, const char* op);
std::tuple<at::Tensor, at::Tensor> pack_linear_weight(const at::Tensor& weight, c10::string_view format);
}  // namespace llm
