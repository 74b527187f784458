#include "engine/hf_tokenizer_config.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <system_error>

#include "common/mapped_file.h"
#include "engine/json_file.h"

namespace sparseserve {

std::optional<std::string> read_hf_chat_template(const std::string& dir) {
  const std::filesystem::path base(dir);
  // A file that is there but cannot be read is an error (ModelFileError), not a missing template.
  const auto present = [](const std::filesystem::path& p) {
    std::error_code ec;
    return std::filesystem::exists(std::filesystem::symlink_status(p, ec)) && !ec;
  };
  if (const auto jinja = base / "chat_template.jinja"; present(jinja)) {
    return read_config_file(jinja.string());
  }
  const std::filesystem::path p = base / "tokenizer_config.json";
  if (!present(p)) return std::nullopt;
  const nlohmann::json j = read_json_file(p.string(), kJsonListingMaxBytes);
  if (!j.is_object()) return std::nullopt;
  const auto it = j.find("chat_template");
  if (it == j.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

}  // namespace sparseserve
