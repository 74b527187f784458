#include "engine/json_file.h"

#include "common/errors.h"
#include "common/mapped_file.h"

namespace sparseserve {

nlohmann::json read_json_file(const std::string& path, size_t max_bytes) {
  const std::string text = read_config_file(path, max_bytes);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw ModelFileError(path, std::string("not valid JSON: ") + e.what());
  }
}

nlohmann::json parse_json_bounded(std::string_view text, int max_depth, bool* too_deep_out) {
  bool too_deep = false;
  nlohmann::json v = nlohmann::json::parse(
      text,
      [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
        if (depth > max_depth && (event == nlohmann::json::parse_event_t::object_start ||
                                  event == nlohmann::json::parse_event_t::array_start)) {
          too_deep = true;
          return false;  // skipped, not built
        }
        return true;
      },
      /*allow_exceptions=*/false);
  if (too_deep_out != nullptr) *too_deep_out = too_deep;
  return too_deep ? nlohmann::json(nlohmann::json::value_t::discarded) : v;
}

std::string json_excerpt(const nlohmann::json& v) {
  if (v.is_array()) return "an array of " + std::to_string(v.size()) + (v.size() == 1 ? " element" : " elements");
  if (v.is_object()) return "an object of " + std::to_string(v.size()) + (v.size() == 1 ? " member" : " members");
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

}  // namespace sparseserve
