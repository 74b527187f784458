#include "engine/json_file.h"

#include <map>
#include <type_traits>
#include <vector>

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

namespace {

// Builds a Json from nlohmann's SAX events, at most max_depth + 1 containers deep (a container opened
// at depth > max_depth is refused, as parse_json_bounded's callback used to refuse it). An ordered
// object's members are appended to its vector directly, a hash index per open object finding a
// repeated key in O(1).
template <class Json>
class BoundedBuilder {
 public:
  explicit BoundedBuilder(int max_depth) : max_depth_(max_depth) {}

  bool null() { return put(Json(nullptr)); }
  bool boolean(bool b) { return put(Json(b)); }
  bool number_integer(typename Json::number_integer_t v) { return put(Json(v)); }
  bool number_unsigned(typename Json::number_unsigned_t v) { return put(Json(v)); }
  bool number_float(typename Json::number_float_t v, const typename Json::string_t&) { return put(Json(v)); }
  bool string(typename Json::string_t& s) { return put(Json(std::move(s))); }
  bool binary(typename Json::binary_t& b) { return put(Json::binary(std::move(b))); }
  bool start_object(std::size_t) { return open(Json::object()); }
  bool key(typename Json::string_t& k) {
    open_.back().key = std::move(k);
    return true;
  }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(Json::array()); }
  bool end_array() { return close(); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    error_ = e.what();
    return false;
  }

  Json take() { return std::move(root_); }
  bool too_deep() const { return too_deep_; }
  const std::string& error() const { return error_; }

 private:
  static constexpr bool kOrdered = std::is_same_v<Json, nlohmann::ordered_json>;
  struct Open {
    Json value;
    std::map<std::string, size_t> index;  // ordered objects: the keys' places (a tree: no hash to collide)
    std::string key;                                // the key of the member being read
  };

  bool open(Json v) {
    if (static_cast<int>(open_.size()) > max_depth_) {
      too_deep_ = true;
      return false;
    }
    open_.push_back(Open{std::move(v), {}, {}});
    return true;
  }
  bool close() {
    Json v = std::move(open_.back().value);
    open_.pop_back();
    return put(std::move(v));
  }
  bool put(Json v) {
    if (open_.empty()) {
      root_ = std::move(v);
      return true;
    }
    Open& o = open_.back();
    if (o.value.is_array()) {
      o.value.template get_ref<typename Json::array_t&>().push_back(std::move(v));
    } else if constexpr (kOrdered) {
      auto& members = static_cast<typename Json::object_t::Container&>(o.value.template get_ref<typename Json::object_t&>());
      const auto [at, fresh] = o.index.try_emplace(o.key, members.size());
      if (fresh) {
        members.emplace_back(std::move(o.key), std::move(v));
      } else {
        members[at->second].second = std::move(v);
      }
    } else {
      o.value.template get_ref<typename Json::object_t&>().insert_or_assign(std::move(o.key), std::move(v));
    }
    return true;
  }

  int max_depth_;
  std::vector<Open> open_;
  Json root_;
  bool too_deep_ = false;
  std::string error_;
};

}  // namespace

template <class Json>
Json parse_json_bounded(std::string_view text, int max_depth, bool* too_deep_out, std::string* error_out) {
  BoundedBuilder<Json> builder(max_depth);
  const bool ok = Json::sax_parse(text, &builder);
  if (too_deep_out != nullptr) *too_deep_out = builder.too_deep();
  if (error_out != nullptr) *error_out = builder.error();
  return ok ? builder.take() : Json(Json::value_t::discarded);
}

template nlohmann::json parse_json_bounded<nlohmann::json>(std::string_view, int, bool*, std::string*);
template nlohmann::ordered_json parse_json_bounded<nlohmann::ordered_json>(std::string_view, int, bool*, std::string*);

}  // namespace sparseserve
