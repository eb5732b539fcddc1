// A persistent pool of std::threads that runs "task i of n" jobs synchronously: the calling thread takes
// part, and run() returns when every task has finished. Kernels call parallel_for(), which runs small
// jobs inline (waking sleeping threads costs tens of microseconds, more than a small kernel takes).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <type_traits>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace clipcap {

// One pause of a spin-wait loop (the core's hint that this thread is waiting for another).
inline void cpu_pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__) && defined(__GNUC__)
  asm volatile("yield");
#endif
}

class ThreadPool {
 public:
  // `threads` counts the caller, so a pool of 1 starts no thread at all.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(task) for every task in [0, ntasks), handed out dynamically, and returns when all are done.
  // Calls from inside a task run inline. Scratch memory must be thread_local (or indexed by task), not
  // indexed by thread. The first exception a task throws is rethrown here after the job finishes.
  template <typename Fn>
  void run(int64_t ntasks, Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    auto thunk = [](void* ctx, int64_t task) { (*static_cast<F*>(ctx))(task); };
    dispatch(ntasks, const_cast<void*>(static_cast<const void*>(&fn)), thunk);
  }

 private:
  using Thunk = void (*)(void*, int64_t);
  void dispatch(int64_t ntasks, void* ctx, Thunk thunk);
  void worker_main(int index);
  // Claims and runs tasks of job `gen` until none is left.
  void work(uint32_t gen);

  static constexpr uint64_t pack(uint32_t gen, uint32_t index) { return (uint64_t{gen} << 32) | index; }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one job at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  bool stop_ = false;
  // The current job, published by `generation_` (0: none yet). A task is claimed by a compare-and-swap on
  // next_ = (generation << 32 | next task index), so a worker that wakes late, after its job has finished,
  // claims nothing: run() returns as soon as every task is done, without waiting for sleeping or
  // descheduled workers (on a shared machine a worker may not get a core for a whole time slice).
  uint32_t last_gen_ = 0;
  std::atomic<uint32_t> generation_{0};
  std::atomic<uint64_t> next_{0};
  std::atomic<int64_t> finished_{0};
  std::atomic<void*> ctx_{nullptr};
  std::atomic<Thunk> thunk_{nullptr};
  std::atomic<int64_t> ntasks_{0};
  std::exception_ptr error_;
};

// The process-wide pool. Its size comes from CLIPCAP_THREADS (default: hardware concurrency).
ThreadPool& pool();
int num_threads();
// Replaces the pool with one of `threads` threads (benchmarks compare fixed thread counts). Not safe to
// call while another thread is running kernels.
void set_num_threads(int threads);

// True on a pool worker thread or while this thread is running a pool job: nested parallel_for calls run
// inline there.
bool in_parallel_region();

// How parallel_for splits [0, n): `chunks` pieces of `per` items (the last may be shorter).
struct Split {
  int64_t chunks = 1;
  int64_t per = 0;
};

// Splits n items into a few chunks per thread when n * cost_per_item (a rough count of flops or bytes)
// is large enough to pay for waking the threads; otherwise into a single chunk, run inline.
Split plan_split(int64_t n, double cost_per_item);

// Runs fn(begin, end, chunk) over the chunks of `split` (chunk indexes are stable, so per-chunk partial
// results reduce in a fixed order: for a given thread count the results do not depend on scheduling).
template <typename Fn>
void parallel_chunks(int64_t n, const Split& split, Fn&& fn) {
  if (n <= 0) return;
  if (split.chunks <= 1) {
    fn(int64_t{0}, n, int64_t{0});
    return;
  }
  pool().run(split.chunks, [&](int64_t c) {
    const int64_t begin = c * split.per;
    const int64_t end = begin + split.per < n ? begin + split.per : n;
    if (begin < end) fn(begin, end, c);
  });
}

template <typename Fn>
void parallel_for(int64_t n, double cost_per_item, Fn&& fn) {
  parallel_chunks(n, plan_split(n, cost_per_item), fn);
}

}  // namespace clipcap
