#include "threadpool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>

namespace clipcap {

namespace {
thread_local bool t_in_parallel = false;

// How long an idle thread spins before it blocks: CLIPCAP_SPIN_US microseconds (default 1000). Model code
// issues kernels back to back with short gaps of JS in between; a worker that went to sleep must be woken
// through the kernel (and, in a VM, its virtual CPU rescheduled by the host), which was measured to cost
// more than the kernel itself for sub-millisecond GEMMs. 1 ms keeps workers hot through such gaps and
// bounds the CPU burnt after the last kernel.
int64_t spin_ns_from_env() {
  const char* s = std::getenv("CLIPCAP_SPIN_US");
  if (s != nullptr && *s != '\0') {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v >= 0 && v <= 1000000) return static_cast<int64_t>(v) * 1000;
  }
  return 1000 * 1000;
}
const int64_t kSpinNs = spin_ns_from_env();

// How long a wait may spin, learnt per waiting site: a wait that ended within kSpinNs (spinning would have
// caught it) doubles the budget back towards kSpinNs; a longer one (the other thread was descheduled: on a
// shared, overloaded machine it may not run again for tens of milliseconds) halves it, down to nothing.
// Spinning through such waits burns this process's share of the CPU for nothing, and the scheduler then
// treats its threads as CPU hogs, queued behind the ones that sleep; on an idle machine waits are short and
// the budget stays at kSpinNs.
class SpinBudget {
 public:
  int64_t ns() const { return ns_.load(std::memory_order_relaxed); }
  void learn(int64_t waited_ns) {
    const int64_t b = ns();
    const int64_t next = waited_ns <= kSpinNs ? std::min<int64_t>(kSpinNs, 2 * b + 1000) : b / 2;
    ns_.store(next, std::memory_order_relaxed);
  }

 private:
  std::atomic<int64_t> ns_{kSpinNs};
};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Spins until done() or budget_ns have passed (the clock is read every 64 pauses); returns done().
template <typename Done>
bool spin_until(Done done, int64_t budget_ns) {
  if (done()) return true;
  if (budget_ns <= 0) return false;
  const int64_t start = now_ns();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_pause();
    }
    if (now_ns() - start >= budget_ns) return done();
  }
}

SpinBudget g_dispatch_spin;  // the caller waiting for a job's last tasks

int threads_from_env() {
  const char* s = std::getenv("CLIPCAP_THREADS");
  if (s != nullptr && *s != '\0') {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v >= 1 && v <= 1024) return static_cast<int>(v);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

std::unique_ptr<ThreadPool>& pool_slot() {
  // Leaked on purpose at exit: joining threads from a static destructor can deadlock when the process
  // exits from inside a Node callback.
  static std::unique_ptr<ThreadPool>* slot = new std::unique_ptr<ThreadPool>();
  return *slot;
}
}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker_main(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work(uint32_t gen) {
  // Fields read before the claim may belong to a later job; then the claim fails (dispatch resets next_
  // before it rewrites them, all seq_cst), so a task only ever runs with its own job's fields.
  void* const ctx = ctx_.load();
  const Thunk thunk = thunk_.load();
  const int64_t ntasks = ntasks_.load();
  for (;;) {
    uint64_t v = next_.load();
    if (static_cast<uint32_t>(v >> 32) != gen) return;
    const int64_t task = static_cast<int64_t>(v & 0xffffffffu);
    if (task >= ntasks) return;
    if (!next_.compare_exchange_weak(v, v + 1)) continue;
    try {
      thunk(ctx, task);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    if (finished_.fetch_add(1) + 1 == ntasks) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

void ThreadPool::worker_main(int index) {
  (void)index;
  t_in_parallel = true;
  uint32_t seen = 0;
  SpinBudget budget;  // this worker's wait for the next job
  for (;;) {
    // Spin a little for the next job (see SpinBudget), then block so idle threads do not burn shared cores.
    const int64_t idle_from = now_ns();
    spin_until([&] { return generation_.load(std::memory_order_acquire) != seen; }, budget.ns());
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
    }
    budget.learn(now_ns() - idle_from);
    work(seen);
  }
}

void ThreadPool::dispatch(int64_t ntasks, void* ctx, Thunk thunk) {
  if (ntasks <= 0) return;
  // Nested calls, single tasks and a pool of one run here.
  if (t_in_parallel || ntasks == 1 || workers_.empty()) {
    const bool was = t_in_parallel;
    t_in_parallel = true;
    try {
      for (int64_t i = 0; i < ntasks; ++i) thunk(ctx, i);
    } catch (...) {
      t_in_parallel = was;
      throw;
    }
    t_in_parallel = was;
    return;
  }
  if (ntasks > 0xffffffffLL) throw std::length_error("thread pool: too many tasks");
  // A second JS thread (worker_threads) waits for the current job to finish.
  std::lock_guard<std::mutex> run_lock(run_mutex_);
  uint32_t gen = last_gen_ + 1;
  if (gen == 0) gen = 1;  // 0 means "no job"
  last_gen_ = gen;
  next_.store(pack(0, 0));  // no claim of an earlier job can succeed while the fields change
  ctx_.store(ctx);
  thunk_.store(thunk);
  ntasks_.store(ntasks);
  finished_.store(0);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    error_ = nullptr;
    next_.store(pack(gen, 0));
    generation_.store(gen);
  }
  wake_.notify_all();
  t_in_parallel = true;
  work(gen);
  t_in_parallel = false;
  const int64_t wait_from = now_ns();
  spin_until([&] { return finished_.load(std::memory_order_acquire) == ntasks; }, g_dispatch_spin.ns());
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return finished_.load() == ntasks; });
    g_dispatch_spin.learn(now_ns() - wait_from);
    error = error_;
    error_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

ThreadPool& pool() {
  auto& slot = pool_slot();
  if (!slot) slot = std::make_unique<ThreadPool>(threads_from_env());
  return *slot;
}

int num_threads() { return pool().size(); }

void set_num_threads(int threads) {
  if (threads < 1) threads = 1;
  auto& slot = pool_slot();
  slot.reset();
  slot = std::make_unique<ThreadPool>(threads);
}

bool in_parallel_region() { return t_in_parallel; }

Split plan_split(int64_t n, double cost_per_item) {
  Split s;
  s.per = n > 0 ? n : 0;
  if (n <= 1 || in_parallel_region()) return s;
  const int threads = num_threads();
  // ~0.2 M flops/bytes is a few tens of microseconds of work: about what a wake-up round trip costs.
  if (threads <= 1 || static_cast<double>(n) * cost_per_item < 2e5) return s;
  // A few chunks per thread balance uneven rows (and cores shared with other processes).
  int64_t chunks = static_cast<int64_t>(threads) * 4;
  if (chunks > n) chunks = n;
  s.per = (n + chunks - 1) / chunks;
  s.chunks = (n + s.per - 1) / s.per;
  return s;
}

}  // namespace clipcap
