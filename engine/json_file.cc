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

std::string json_excerpt(const nlohmann::json& v) {
  if (v.is_array()) return "an array of " + std::to_string(v.size()) + (v.size() == 1 ? " element" : " elements");
  if (v.is_object()) return "an object of " + std::to_string(v.size()) + (v.size() == 1 ? " member" : " members");
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

}  // namespace sparseserve
