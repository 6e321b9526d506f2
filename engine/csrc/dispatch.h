// Run-time ISA selection. The best ISA the CPU supports (CPUID) is chosen on first use unless BINPOSE_ISA names one
// (amx | avx512 | avx2 | scalar); naming one the CPU or the build lacks is an error.
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace binpose {

std::vector<std::string> available_isas();  // best first; always ends with "scalar"
const IsaTable& active_isa();               // throws std::runtime_error for a bad BINPOSE_ISA
const IsaTable& isa_by_name(const std::string& name);  // throws std::invalid_argument if unavailable
void set_isa(const std::string& name);                 // throws std::invalid_argument if unavailable
// AMX-INT8 present and usable: the CPU has it, the build has the kernels and Linux granted this process the tile
// state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once).
bool cpu_has_amx();
// cpu_has_amx() and the CPU also has AMX-BF16 (and the build its kernel).
bool cpu_has_amx_bf16();

}  // namespace binpose
