#include "engine/hf_tokenizer_config.h"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>
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
  if (it == j.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  // A list of named templates (Hermes 2 Pro, Hermes 3): transformers uses the one named "default".
  if (it->is_array()) {
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.contains("name") && entry.at("name") == "default" && entry.contains("template") &&
          entry.at("template").is_string()) {
        return entry.at("template").get<std::string>();
      }
    }
    spdlog::warn("{}: chat_template lists no template named 'default'; the model has no chat template", p.string());
  }
  return std::nullopt;
}

}  // namespace sparseserve
