#include "common/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace sparseserve {

void init_logging(const std::string& level) {
  static const auto logger = [] {
    auto l = spdlog::stderr_color_mt("sparseserve");
    spdlog::set_default_logger(l);
    spdlog::set_pattern("[%H:%M:%S.%e] [%^%l%$] %v");
    return l;
  }();
  (void)logger;
  spdlog::set_level(spdlog::level::from_str(level));
}

}  // namespace sparseserve
