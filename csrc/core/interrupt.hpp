// Cooperative interruption of long native calls (Ctrl-C while the GIL is released).
//
// The core stays free of Python: a binding opens an InterruptScope with a poll function (which
// asks Python whether a signal such as SIGINT is pending) around the work it runs without the
// GIL. Long loops call interruption_point(): on the thread that opened the scope it calls the
// poll function at most every kPollInterval; once that reports a pending interrupt, every thread
// of the call (parallel_for hands the scope to its workers) throws fk::Interrupted at its next
// interruption point. Without a scope (plain C++ callers) interruption_point() does nothing.
#pragma once
#include <atomic>
#include <chrono>
#include <exception>
#include <thread>

namespace fk {

// Thrown out of a native call whose poll function reported an interrupt.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};

// Returns true when the call must stop. Called only on the thread that opened the scope.
using PollFunction = bool (*)();

constexpr std::chrono::milliseconds kPollInterval{100};

struct InterruptState {
  std::atomic<bool> stop{false};
  PollFunction poll = nullptr;
  std::thread::id owner;
  std::chrono::steady_clock::time_point next_poll;
};

namespace detail {
inline thread_local InterruptState* current_interrupt = nullptr;
}  // namespace detail

// The scope of the current thread (nullptr when none); parallel_for passes it to its workers.
inline InterruptState* current_interrupt_state() { return detail::current_interrupt; }

// Makes `state` the current thread's scope for its lifetime (workers: the caller's state).
class InterruptBinding {
 public:
  explicit InterruptBinding(InterruptState* state) : prev_(detail::current_interrupt) {
    detail::current_interrupt = state;
  }
  ~InterruptBinding() { detail::current_interrupt = prev_; }
  InterruptBinding(const InterruptBinding&) = delete;
  InterruptBinding& operator=(const InterruptBinding&) = delete;

 private:
  InterruptState* prev_;
};

// Opened by a binding around GIL-free work: this thread polls, its workers follow.
class InterruptScope {
 public:
  explicit InterruptScope(PollFunction poll) : binding_(&state_) {
    state_.poll = poll;
    state_.owner = std::this_thread::get_id();
    state_.next_poll = std::chrono::steady_clock::now() + kPollInterval;
  }

 private:
  InterruptState state_;
  InterruptBinding binding_;
};

// Throws Interrupted when the current call must stop. Cost: one thread-local load without a
// scope; an atomic load plus (on the polling thread) a clock read with one. Call it where a
// loop has done at least a few microseconds of work since the last call.
inline void interruption_point() {
  InterruptState* s = detail::current_interrupt;
  if (s == nullptr) return;
  if (s->stop.load(std::memory_order_relaxed)) throw Interrupted();
  if (s->poll == nullptr || std::this_thread::get_id() != s->owner) return;
  const auto now = std::chrono::steady_clock::now();
  if (now < s->next_poll) return;
  s->next_poll = now + kPollInterval;
  if (s->poll()) {
    s->stop.store(true, std::memory_order_relaxed);
    throw Interrupted();
  }
}

// Stops the other threads of the current call (after an error on one of them).
inline void request_stop() {
  if (InterruptState* s = detail::current_interrupt) s->stop.store(true, std::memory_order_relaxed);
}

}  // namespace fk
