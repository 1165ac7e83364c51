// The micro-kernels behind linear_tiles (linear.h), one table per instruction set. Internal
// to csrc/cpu: each kernels_<isa>.cpp fills its table, compiled with target attributes so
// any compiler flags build every file; a table whose CPU family differs from the build's is
// null.
//
// A kernel adds MR rows x 64 columns of sums over `klen` inputs of one tile to acc[MR][64];
// the driver zeroes acc and calls it block after block of inputs (a block of the tile stays
// in L1 while every block of rows passes over it):
//   f32   x fp32 [MR, ldx],  acc fp32
//   bf16  x bf16 [MR, ldx],  acc fp32 (bf16 products, fp32 sums)
//   int8  x int8 [MR, ldx],  acc int32 += sum_k (x[m][k] + x_offset) * w[n][k], exact (the
//         driver takes x_offset * the column's sum back out)
// Float kernels sum in blocks of kBlockK inputs, each block's partial sum then added to
// acc: the rounding error grows with K / kBlockK + kBlockK instead of K (a blocked GEMM's).
#pragma once

#include <cstdint>

#include "linear.h"

namespace llm {

constexpr int64_t kBlockK = 64;

using KernelFn = void (*)(const void* x, int64_t ldx, const void* w, int64_t klen, void* acc);

struct KernelTable {
  KernelFn f32[kMaxRows], bf16[kMaxRows], int8[kMaxRows];  // by rows - 1; null past a kernel's most
  int x_offset;  // int8 wants x + x_offset as unsigned bytes (128: vpdpbusd), else 0
};

const KernelTable* portable_kernels();
const KernelTable* avx2_kernels(Isa isa);    // avx2, avx2_vnni
const KernelTable* avx512_kernels(Isa isa);  // avx512, avx512_vnni, avx512_bf16
const KernelTable* neon_kernels(Isa isa);    // neon, neon_dotprod, neon_bf16

// The table of `isa` (null when this build has no code for it).
const KernelTable* kernels_for(Isa isa);

#define LLM_KERNEL_ROWS(fn) \
  { fn<1>, fn<2>, fn<3>, fn<4>, nullptr, nullptr }
#define LLM_KERNEL_ROWS6(fn) \
  { fn<1>, fn<2>, fn<3>, fn<4>, fn<5>, fn<6> }

// The int32 column sums a tile of int8 weights keeps after its quad rows.
inline const int32_t* int8_tile_colsums(const void* tile, int64_t kp) {
  return reinterpret_cast<const int32_t*>(static_cast<const int8_t*>(tile) + kp * kTileN);
}

}  // namespace llm
