// Instruction-set detection (see isa.h): CPUID through the compiler's builtins on x86-64,
// HWCAP bits from the kernel (Linux) or sysctl (macOS) on aarch64.
#include "isa.h"

#if defined(__x86_64__) || defined(_M_X64)
#define LLM_X86 1
#include <cpuid.h>
#elif defined(__aarch64__)
#define LLM_ARM64 1
#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

namespace llm {

namespace {

constexpr const char* kNames[] = {"portable",    "avx2",        "avx2_vnni", "avx512",       "avx512_vnni",
                                  "avx512_bf16", "neon",        "neon_dotprod", "neon_bf16"};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<int>(Isa::count));

struct Features {
  bool avx2 = false, avx2_vnni = false, avx512 = false, avx512_vnni = false, avx512_bf16 = false;
  bool x86_bf16 = false, amx_bf16 = false;  // the instructions alone, whatever else is there
  bool neon = false, dotprod = false, arm_bf16 = false;
};

#ifdef LLM_ARM64
#if defined(__linux__)
constexpr unsigned long kHwcapAsimdDp = 1ul << 20;  // HWCAP_ASIMDDP
constexpr unsigned long kHwcap2Bf16 = 1ul << 14;    // HWCAP2_BF16
#elif defined(__APPLE__)
bool sysctl_flag(const char* name) {
  int v = 0;
  size_t size = sizeof(v);
  return sysctlbyname(name, &v, &size, nullptr, 0) == 0 && v != 0;
}
#endif
#endif

Features detect() {
  Features f;
#ifdef LLM_X86
  __builtin_cpu_init();  // the builtins also check that the OS saves the wider registers
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  f.avx2_vnni = f.avx2 && __builtin_cpu_supports("avxvnni");
  f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  f.avx512_vnni = f.avx512 && __builtin_cpu_supports("avx512vnni");
  f.x86_bf16 = __builtin_cpu_supports("avx512bf16");
  f.avx512_bf16 = f.avx512_vnni && f.x86_bf16;
  unsigned a, b, c, d;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) f.amx_bf16 = (d >> 22) & 1u;  // CPUID.7.0:EDX[22]
#elif defined(LLM_ARM64)
  f.neon = true;  // Advanced SIMD is part of every ARMv8-A profile Linux and macOS run on
#if defined(__linux__)
  f.dotprod = (getauxval(AT_HWCAP) & kHwcapAsimdDp) != 0;
  f.arm_bf16 = (getauxval(AT_HWCAP2) & kHwcap2Bf16) != 0;
#elif defined(__APPLE__)
  f.dotprod = sysctl_flag("hw.optional.arm.FEAT_DotProd");
  f.arm_bf16 = sysctl_flag("hw.optional.arm.FEAT_BF16");
#endif
#endif
  return f;
}

const Features& features() {
  static const Features f = detect();
  return f;
}

}  // namespace

const char* isa_name(Isa isa) {
  const int i = static_cast<int>(isa);
  return i >= 0 && i < static_cast<int>(Isa::count) ? kNames[i] : "unknown";
}

bool parse_isa(const std::string& name, Isa* out) {
  for (int i = 0; i < static_cast<int>(Isa::count); ++i)
    if (name == kNames[i]) {
      *out = static_cast<Isa>(i);
      return true;
    }
  return false;
}

std::string isa_choices() {
  std::string s;
  for (int i = 0; i < static_cast<int>(Isa::count); ++i) s += std::string(i ? ", '" : "'") + kNames[i] + "'";
  return s;
}

bool isa_supported(Isa isa) {
  const Features& f = features();
  switch (isa) {
    case Isa::portable: return true;
    case Isa::avx2: return f.avx2;
    case Isa::avx2_vnni: return f.avx2_vnni;
    case Isa::avx512: return f.avx512;
    case Isa::avx512_vnni: return f.avx512_vnni;
    case Isa::avx512_bf16: return f.avx512_bf16;
    case Isa::neon: return f.neon;
    case Isa::neon_dotprod: return f.neon && f.dotprod;
    case Isa::neon_bf16: return f.neon && f.dotprod && f.arm_bf16;
    default: return false;
  }
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = 0; i < static_cast<int>(Isa::count); ++i)
    if (isa_supported(static_cast<Isa>(i))) out.push_back(static_cast<Isa>(i));
  return out;
}

Isa best_isa() { return supported_isas().back(); }

bool cpu_has_bf16_arithmetic() {
  const Features& f = features();
  return f.x86_bf16 || f.amx_bf16 || f.arm_bf16;
}

}  // namespace llm
