// The CPU instruction sets the kernels have code paths for, and which of them this CPU runs.
//
// One build serves every CPU: each path is compiled with its own target attributes and the
// level is chosen at run time from CPUID (x86-64) or the kernel's HWCAP bits (aarch64).
// A CPU supports a set of levels, not a prefix of a list (a Skylake-X has avx512 but not
// avx2_vnni), so callers ask isa_supported() rather than comparing levels. Torch-free:
// csrc/registration.cpp binds it (the current level, $LLM_NATIVE_ISA, the ops).
#pragma once

#include <string>
#include <vector>

namespace llm {

enum class Isa : int {
  portable = 0,  // plain C++, any CPU
  // x86-64
  avx2,         // AVX2 + FMA: fp32 FMA, bf16 widened by shifts, int8 by vpmaddubsw / vpmaddwd
  avx2_vnni,    // + AVX-VNNI (vpdpbusd on 256 bits)
  avx512,       // AVX-512 F/BW/DQ/VL (+ AVX2, FMA)
  avx512_vnni,  // + AVX512_VNNI
  avx512_bf16,  // + AVX512_BF16 (vdpbf16ps)
  // aarch64
  neon,          // Advanced SIMD (every ARMv8-A CPU)
  neon_dotprod,  // + the dot-product extension (sdot)
  neon_bf16,     // + BF16 (bfdot)
  count
};

const char* isa_name(Isa isa);
bool parse_isa(const std::string& name, Isa* out);  // false for a name it does not know
std::string isa_choices();                           // "'portable', 'avx2', ..." for messages
bool isa_supported(Isa isa);                         // this CPU (and OS) runs that path
std::vector<Isa> supported_isas();                   // every supported level, slowest first
Isa best_isa();                                      // the last of supported_isas()

// Whether the CPU does bf16 arithmetic in hardware (AVX512_BF16, AMX-BF16, ARM BF16); where
// it does not, a bf16 matmul in torch is emulated and runs far slower than fp32.
bool cpu_has_bf16_arithmetic();

}  // namespace llm
