#include "engine/python_json.h"

#include <nlohmann/json.hpp>
#include <vector>

#include "engine/json_file.h"  // kMaxJsonDepth

namespace sparseserve {

namespace {

// nlohmann's SAX events written out as json.dumps would.
class PythonDumps {
 public:
  using J = nlohmann::json;
  explicit PythonDumps(int indent) : indent_(indent) {}
  const std::string& text() const { return out_; }

  bool null() { return put("null"); }
  bool boolean(bool v) { return put(v ? "true" : "false"); }
  bool number_integer(J::number_integer_t v) { return put(std::to_string(v)); }
  bool number_unsigned(J::number_unsigned_t v) { return put(std::to_string(v)); }
  // An integer literal past 64 bits arrives here as a double: Python keeps its digits.
  bool number_float(J::number_float_t v, const J::string_t& raw) {
    const bool integer = raw.find_first_of(".eE") == std::string::npos;
    return put(integer ? raw : J(v).dump());
  }
  bool string(J::string_t& v) { return put(quoted(v)); }
  bool binary(J::binary_t&) { return false; }
  bool start_object(std::size_t) { return open('{'); }
  bool end_object() { return close('}'); }
  bool start_array(std::size_t) { return open('['); }
  bool end_array() { return close(']'); }
  bool key(J::string_t& k) {
    separate();
    out_ += quoted(k) + ": ";
    after_key_ = true;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }

 private:
  static std::string quoted(const std::string& s) { return J(s).dump(-1, ' ', false, J::error_handler_t::replace); }
  // Before an item of the open container (a key, or a value not after its key).
  void separate() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (items_.empty()) return;
    if (items_.back()++ > 0) out_ += indent_ < 0 ? ", " : ",";
    if (indent_ >= 0) out_.append("\n").append(items_.size() * static_cast<size_t>(indent_), ' ');
  }
  bool put(const std::string& v) {
    separate();
    out_ += v;
    return true;
  }
  bool open(char c) {
    separate();
    out_ += c;
    items_.push_back(0);
    return items_.size() <= static_cast<size_t>(kMaxJsonDepth);
  }
  bool close(char c) {
    const int n = items_.back();
    items_.pop_back();
    if (indent_ >= 0 && n > 0) out_.append("\n").append(items_.size() * static_cast<size_t>(indent_), ' ');
    out_ += c;
    return true;
  }

  int indent_;
  std::string out_;
  std::vector<int> items_;  // per open container: its items so far
  bool after_key_ = false;
};

}  // namespace

std::optional<std::string> python_dumps(std::string_view text, int indent) {
  PythonDumps w(indent);
  if (!nlohmann::json::sax_parse(text, &w)) return std::nullopt;
  return w.text();
}

}  // namespace sparseserve
