#include "threadpool.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

namespace binpose {

namespace {

thread_local bool t_in_task = false;
thread_local bool t_inline = false;  // set_thread_inline: this thread runs every parallel_for alone

// One parallel_for call. Lives on the caller's stack; workers hold a reference (refs) while they may touch it.
struct Job {
  const std::function<void(std::int64_t)>* fn = nullptr;
  std::int64_t n = 0;
  std::atomic<std::int64_t> next{0};
  std::atomic<std::int64_t> done{0};
  std::atomic<int> refs{0};
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void execute(Job& job) {
  t_in_task = true;
  for (;;) {
    const std::int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.n) break;
    (*job.fn)(i);
    job.done.fetch_add(1, std::memory_order_release);
  }
  t_in_task = false;
}

// The caller always takes part and finishes as soon as every task is done: a worker that the OS schedules late
// (other processes on the cores) finds nothing left to do and never delays the call.
class Pool {
 public:
  ~Pool() { stop_workers(); }

  int threads() {
    std::lock_guard<std::mutex> g(run_mu_);
    return nthreads_;
  }

  void resize(int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: need at least 1 thread, got " + std::to_string(n));
    std::lock_guard<std::mutex> g(run_mu_);
    if (n == nthreads_) return;
    stop_workers();
    nthreads_ = n;
    stop_ = false;
    const std::uint64_t gen = generation_.load();  // no run is in flight: run_mu_ is held
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, gen] { worker_loop(gen); });
  }

  void run(std::int64_t n, const std::function<void(std::int64_t)>& fn) {
    if (n <= 0) return;
    if (t_in_task || t_inline) {  // nested call from inside a task, or a thread that works alone: run inline
      for (std::int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    std::lock_guard<std::mutex> g(run_mu_);
    Job job;
    job.fn = &fn;
    job.n = n;
    if (nthreads_ == 1 || n == 1) {
      execute(job);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    execute(job);
    for (int spin = 0; job.done.load(std::memory_order_acquire) < n; ++spin) {
      if (spin < 4096) cpu_relax(); else std::this_thread::yield();
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = nullptr;
    }
    for (int spin = 0; job.refs.load(std::memory_order_acquire) > 0; ++spin) {
      if (spin < 4096) cpu_relax(); else std::this_thread::yield();
    }
  }

 private:
  void worker_loop(std::uint64_t seen) {
    for (;;) {
      // Spin briefly before sleeping: back-to-back layers arrive within microseconds.
      for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin) cpu_relax();
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
      Job* job = job_;
      if (!job) continue;
      job->refs.fetch_add(1, std::memory_order_relaxed);
      lk.unlock();
      execute(*job);
      job->refs.fetch_sub(1, std::memory_order_release);
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::mutex run_mu_;  // one parallel_for at a time
  std::mutex mu_;      // guards job_, stop_ and the generation handshake
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
  int nthreads_ = 1;
  bool stop_ = false;
  std::atomic<std::uint64_t> generation_{0};
  Job* job_ = nullptr;
};

}  // namespace

namespace {

Pool& pool() {
  static Pool* p = [] {
    auto* q = new Pool();  // leaked on purpose: workers must not be joined during interpreter teardown
    q->resize(default_threads());
    return q;
  }();
  return *p;
}

}  // namespace

int default_threads() {
  if (const char* env = std::getenv("BINPOSE_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v >= 1 && v <= 1024) return static_cast<int>(v);
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? static_cast<int>(hc) : 1;
}

int get_threads() { return pool().threads(); }
void set_threads(int n) { pool().resize(n); }
void parallel_for(std::int64_t n, const std::function<void(std::int64_t)>& fn) { pool().run(n, fn); }

void set_thread_inline(bool on) { t_inline = on; }

}  // namespace binpose
