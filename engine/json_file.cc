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

}  // namespace sparseserve
