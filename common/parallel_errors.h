// Carries exceptions out of OpenMP regions: one escaping a region's thread calls std::terminate,
// which serving code must never reach (DESIGN.md §7). Each iteration's body runs in run(); after
// the region, rethrow() throws the first exception caught (the other iterations still ran).
#pragma once

#include <exception>
#include <mutex>

namespace sparseserve {

class ParallelErrors {
 public:
  template <class F>
  void run(F&& body) noexcept {
    try {
      body();
    } catch (...) {
      std::lock_guard lock(mu_);
      if (!first_) first_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::mutex mu_;
  std::exception_ptr first_;
};

}  // namespace sparseserve
