// Minimal fork-join helper for the batched entry points.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/interrupt.hpp"

namespace fk {

// Number of worker threads for a request: 0 means all hardware threads.
inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(hc);
}

// Calls fn(i) for i in [0, n), work-stealing in chunks of `grain` across `threads` threads.
// The first exception thrown by any worker is rethrown on the calling thread. The caller's
// interrupt scope (interrupt.hpp) reaches the workers; an interruption point runs before each
// chunk, and while waiting for the workers the calling thread keeps polling for interrupts.
template <class Fn>
void parallel_for(std::size_t n, int threads, Fn&& fn, std::size_t grain = 1) {
  if (n == 0) return;
  grain = std::max<std::size_t>(1, grain);
  const std::size_t chunks = (n + grain - 1) / grain;
  const int nt = static_cast<int>(std::min<std::size_t>(resolve_threads(threads), chunks));
  if (nt <= 1) {
    for (std::size_t begin = 0; begin < n; begin += grain) {
      interruption_point();
      const std::size_t end = std::min(n, begin + grain);
      for (std::size_t i = begin; i < end; ++i) fn(i);
    }
    return;
  }
  InterruptState* const scope = current_interrupt_state();
  std::atomic<std::size_t> next{0};
  int running = nt - 1;  // workers still busy (guarded by done_mutex)
  std::mutex done_mutex;
  std::condition_variable done;
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    try {
      for (;;) {
        const std::size_t begin = next.fetch_add(grain);
        if (begin >= n) break;
        interruption_point();
        const std::size_t end = std::min(n, begin + grain);
        for (std::size_t i = begin; i < end; ++i) fn(i);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n);
      request_stop();  // workers inside a long item see it at their next interruption point
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (int t = 1; t < nt; ++t) {
    pool.emplace_back([&, scope]() {
      {
        const InterruptBinding bind(scope);
        worker();
      }
      std::lock_guard<std::mutex> lock(done_mutex);
      if (--running == 0) done.notify_one();
    });
  }
  worker();
  // The calling thread is the one that may poll: keep doing so until the workers are done.
  if (scope != nullptr) {
    std::unique_lock<std::mutex> lock(done_mutex);
    while (running > 0) {
      if (done.wait_for(lock, kPollInterval, [&] { return running == 0; })) break;
      lock.unlock();
      try {
        interruption_point();
      } catch (...) {
        std::lock_guard<std::mutex> error_lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n);
      }
      lock.lock();
    }
  }
  for (auto& th : pool) th.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace fk
