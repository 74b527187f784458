// Request-reading helpers the OpenAI protocol files share (server-internal).
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "engine/json_schema.h"
#include "server/openai_protocol.h"

namespace sparseserve::openai {

// A schema from a request, compiled for the engine; 400 naming `param` when outside the subset.
// vLLM also takes the schema as its JSON text.
std::shared_ptr<const JsonSchema> compile_schema(const json& schema, const std::string& param);

// Typed access to optional fields of a JSON object: absent and null read as "not given".
class Fields {
 public:
  explicit Fields(const json& obj, std::string prefix = "") : obj_(obj), prefix_(std::move(prefix)) {}

  const json* get(const char* key) const {
    const auto it = obj_.find(key);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }
  std::string name(const char* key) const { return prefix_ + key; }

  std::optional<bool> boolean(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) throw wrong_type(key, "a boolean");
    return v->get<bool>();
  }
  std::optional<double> number(const char* key, double lo, double hi, bool lo_open = false) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) throw wrong_type(key, "a number");
    const double x = v->get<double>();
    // The engine takes these as floats: a value that rounds to an open bound is the bound.
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && static_cast<float>(x) == static_cast<float>(lo))) {
      throw bad_request(name(key) + " must be in " + std::string(lo_open ? "(" : "[") + fmt(lo) + ", " + fmt(hi) +
                            "], got " + v->dump(),
                        name(key));
    }
    return x;
  }
  std::optional<int64_t> integer(const char* key, int64_t lo, int64_t hi) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) throw wrong_type(key, "an integer");
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) throw out_of_range(key, lo, hi, *v);
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) throw out_of_range(key, lo, hi, *v);
    return x;
  }
  std::optional<std::string> string(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) throw wrong_type(key, "a string");
    return v->get<std::string>();
  }
  ApiError wrong_type(const char* key, const char* what) const {
    return bad_request(name(key) + " must be " + what + ", got " + type_name(*get(key)), name(key));
  }

  static std::string type_name(const json& v) {
    if (v.is_number_integer()) return "an integer";
    if (v.is_number()) return "a number";
    if (v.is_string()) return "a string";
    if (v.is_boolean()) return "a boolean";
    if (v.is_array()) return "an array";
    if (v.is_object()) return "an object";
    return "null";
  }

 private:
  static std::string fmt(double x) {
    std::string s = std::to_string(x);
    s.erase(s.find_last_not_of('0') + 1);
    if (!s.empty() && s.back() == '.') s.pop_back();
    return s;
  }
  ApiError out_of_range(const char* key, int64_t lo, int64_t hi, const json& v) const {
    return bad_request(name(key) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump(),
                       name(key));
  }
  const json& obj_;
  std::string prefix_;
};

}  // namespace sparseserve::openai
