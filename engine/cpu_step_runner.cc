// The CPU backend of the engine's step seam: PagedKvBackend (fp32 head-slot pages, every sparsity
// profile) under CpuForward, both in batch-invariant numerics so that a request's tokens do not
// depend on what it was batched with.
#include <fmt/format.h>
#include <unistd.h>

#include "common/errors.h"
#include "engine/cpu_forward.h"
#include "engine/paged_kv.h"
#include "engine/step_runner.h"

namespace sparseserve {

namespace {

class CpuStepRunner final : public StepRunner {
 public:
  CpuStepRunner(const Model& model, kvcache::KvCacheManager& manager)
      : backend_(model.config, manager, kernels::cpu::Numerics::kBatchInvariant),
        forward_(model, kernels::cpu::Numerics::kBatchInvariant) {}

  void add_sequence(uint64_t id, const kvcache::SparsityProfile& profile, int64_t stored) override {
    backend_.add_sequence(id, profile, stored);
  }
  void release(uint64_t id) override { backend_.release(id); }
  void copy_pages(std::span<const kvcache::PageCopy> copies) override { backend_.copy_pages(copies); }
  void forward(std::span<const ForwardSeq> batch, std::span<const DeviceDraw> draws, std::vector<float>& logits,
               std::vector<int32_t>& drawn) override {
    check(draws.empty(), "CpuStepRunner: the CPU backend draws no tokens itself");
    drawn.clear();
    forward_.forward(batch, backend_, logits);
  }
  SelectionStats selection_stats() const override { return backend_.selection_stats(); }

 private:
  PagedKvBackend backend_;
  CpuForward forward_;
};

}  // namespace

StepBackend cpu_step_backend() {
  StepBackend b;
  b.name = "cpu";
  b.bytes_per_element = 4;
  b.with_metadata = true;
  b.unsupported = [](const Model&, const kvcache::SparsityProfile&) { return std::string(); };
  b.check_kv_bytes = [](const Model&, size_t bytes, const StepLimits&) {
    // Host memory is granted lazily: a cache past the machine's memory would end in the OOM killer
    // under load, so it is refused at start.
    const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_size <= 0) return;
    const double machine = static_cast<double>(pages) * static_cast<double>(page_size);
    if (static_cast<double>(bytes) > machine) {
      throw InvalidArgument(fmt::format("kv_cache_bytes: {:.1f} GiB is more than this machine's memory ({:.1f} GiB)",
                                        static_cast<double>(bytes) / (1 << 30), machine / (1 << 30)));
    }
  };
  b.make = [](const Model& model, kvcache::KvCacheManager& manager, const StepLimits&) -> std::unique_ptr<StepRunner> {
    return std::make_unique<CpuStepRunner>(model, manager);
  };
  return b;
}

}  // namespace sparseserve
