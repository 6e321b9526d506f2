#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#if defined(BINPOSE_HAVE_AMX)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace binpose {

namespace {

bool cpu_has_avx512() {
#if defined(BINPOSE_HAVE_AVX512)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if defined(BINPOSE_HAVE_AVX2)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool amx_granted() {
#if defined(BINPOSE_HAVE_AMX) && defined(SYS_arch_prctl)
  __builtin_cpu_init();
  if (!cpu_has_avx512() || !__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-int8")) return false;
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;  // ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
#else
  return false;
#endif
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

std::atomic<const IsaTable*> g_active{nullptr};

}  // namespace

bool cpu_has_amx() {
  static const bool granted = amx_granted();
  return granted;
}

bool cpu_has_amx_bf16() {
#if defined(BINPOSE_HAVE_AMX_BF16)
  return cpu_has_amx() && __builtin_cpu_supports("amx-bf16") != 0;
#else
  return false;
#endif
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  if (cpu_has_amx()) out.emplace_back("amx");
  if (cpu_has_avx512()) out.emplace_back("avx512");
  if (cpu_has_avx2()) out.emplace_back("avx2");
  out.emplace_back("scalar");
  return out;
}

const IsaTable& isa_by_name(const std::string& name) {
#if defined(BINPOSE_HAVE_AMX)
  if (name == "amx" && cpu_has_amx()) return isa_amx();
#endif
#if defined(BINPOSE_HAVE_AVX512)
  if (name == "avx512" && cpu_has_avx512()) return isa_avx512();
#endif
#if defined(BINPOSE_HAVE_AVX2)
  if (name == "avx2" && cpu_has_avx2()) return isa_avx2();
#endif
  if (name == "scalar") return isa_scalar();
  throw std::invalid_argument("ISA '" + name + "' is not available on this CPU/build; choose one of: " +
                              joined(available_isas()));
}

const IsaTable& active_isa() {
  const IsaTable* t = g_active.load(std::memory_order_acquire);
  if (t) return *t;
  const char* env = std::getenv("BINPOSE_ISA");
  if (env && *env) {
    try {
      t = &isa_by_name(env);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(std::string("BINPOSE_ISA: ") + e.what() + " (or unset BINPOSE_ISA)");
    }
  } else {
    t = &isa_by_name(available_isas().front());
  }
  const IsaTable* expected = nullptr;
  g_active.compare_exchange_strong(expected, t);
  return *g_active.load();
}

void set_isa(const std::string& name) { g_active.store(&isa_by_name(name), std::memory_order_release); }

}  // namespace binpose
