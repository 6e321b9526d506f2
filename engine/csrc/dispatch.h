// Run-time ISA selection. The best ISA the CPU supports (CPUID) is chosen on first use unless BINPOSE_ISA names one
// (avx512 | avx2 | scalar); naming one the CPU or the build lacks is an error.
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace binpose {

std::vector<std::string> available_isas();  // best first; always ends with "scalar"
const IsaTable& active_isa();               // throws std::runtime_error for a bad BINPOSE_ISA
const IsaTable& isa_by_name(const std::string& name);  // throws std::invalid_argument if unavailable
void set_isa(const std::string& name);                 // throws std::invalid_argument if unavailable

}  // namespace binpose
