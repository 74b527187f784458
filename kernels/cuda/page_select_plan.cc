// Page selection's host-side plan (page_select_plan.h).
#include "kernels/cuda/page_select_plan.h"

#include <bit>
#include <climits>
#include <string>

#include "common/errors.h"

namespace sparseserve::kernels::cuda {

void check_page_select_config(const PageSelectConfig& c, const char* who, const std::source_location& loc) {
  const auto require = [&](bool ok, const char* what) {
    if (!ok) throw InternalError(std::string(who) + ": " + what, loc);
  };
  require(c.page_tokens >= 1 && c.logical_page_tokens >= 1 && c.page_tokens % c.logical_page_tokens == 0,
          "logical_page_tokens must divide page_tokens");
  require(std::has_single_bit(static_cast<uint32_t>(c.page_tokens / c.logical_page_tokens)),
          "page_tokens / logical_page_tokens must be a power of two");
  require(c.sink_tokens >= 0 && c.token_budget >= 0, "sink_tokens and token_budget must be ≥ 0");
}

std::vector<int32_t> plan_selected_indptr(std::span<const int32_t> seq_lens, const PageSelectConfig& config,
                                          std::source_location loc) {
  check_page_select_config(config, "plan_selected_indptr", loc);
  std::vector<int32_t> indptr(seq_lens.size() + 1, 0);
  int64_t total = 0;
  for (size_t r = 0; r < seq_lens.size(); ++r) {
    check(seq_lens[r] >= 0, "plan_selected_indptr: negative sequence length", loc);
    total += selected_page_count(seq_lens[r], config);
    check(total <= INT32_MAX, "plan_selected_indptr: selected pages past int32", loc);
    indptr[r + 1] = static_cast<int32_t>(total);
  }
  return indptr;
}

}  // namespace sparseserve::kernels::cuda
