// A small fixed thread pool for the kernels (no OpenMP, so it never fights torch's intra-op pool).
//
// parallel_for(n, fn) runs fn(i) for every task i in [0, n) on the caller plus (threads - 1) workers, with dynamic
// scheduling (an atomic counter). Calls are serialized; a call made from inside a task runs inline.
// Thread count: BINPOSE_THREADS (default: the CPUs this process may run on), changeable with set_threads().
#pragma once
#include <cstdint>
#include <functional>

namespace binpose {

int default_threads();
int get_threads();
void set_threads(int n);  // n >= 1
void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& fn);
// on: every parallel_for called from this thread runs its tasks on this thread alone (no pool, no waiting for it),
// for callers that run several independent inferences on their own threads.
void set_thread_inline(bool on);

}  // namespace binpose
