#include "engine/python_json.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <system_error>
#include <vector>

#include "engine/json_file.h"  // kMaxJsonDepth

namespace sparseserve {

namespace {

// A double as Python's repr writes it: the shortest digits that read back to the same double
// (correctly rounded, as std::to_chars gives them), positional when the decimal point falls within
// 16 places of the digits' start (1e-4 ≤ |v| < 1e16), with ".0" on integral values; otherwise
// d.ddde±XX with at least two exponent digits.
std::string python_float_repr(double v) {
  if (!std::isfinite(v)) return std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";  // json.dumps' words
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  if (ec != std::errc()) return nlohmann::json(v).dump();
  const std::string_view sci(buf, static_cast<size_t>(end - buf));  // [-]d[.ddd]e±XX
  const size_t e = sci.find('e');
  const bool negative = sci.front() == '-';
  std::string digits;
  for (const char c : sci.substr(negative ? 1 : 0, e - (negative ? 1 : 0)))
    if (c != '.') digits += c;
  const int exp10 = std::atoi(std::string(sci.substr(e + 1)).c_str());
  const int point = exp10 + 1;  // the value is 0.<digits> × 10^point
  const int n = static_cast<int>(digits.size());
  std::string out = negative ? "-" : "";
  if (point > -4 && point <= 16) {
    if (point <= 0) {
      out.append("0.").append(static_cast<size_t>(-point), '0').append(digits);
    } else if (point < n) {
      out.append(digits, 0, static_cast<size_t>(point)).append(".").append(digits, static_cast<size_t>(point));
    } else {
      out.append(digits).append(static_cast<size_t>(point - n), '0').append(".0");
    }
    return out;
  }
  out.append(digits, 0, 1);
  if (n > 1) out.append(".").append(digits, 1);
  const int shown = std::abs(exp10);
  out.append(exp10 < 0 ? "e-" : "e+");
  if (shown < 10) out += '0';
  return out.append(std::to_string(shown));
}

// nlohmann's SAX events written out as json.dumps(json.loads(...)) would. Each open container
// gathers its items' texts and is written when it closes (a nested item's text already carries
// the indentation of its depth); an object keeps one member per key, the last value in the first
// key's place, as a Python dict does.
class PythonDumps {
 public:
  using J = nlohmann::json;
  explicit PythonDumps(int indent) : indent_(indent) {}
  const std::string& text() const { return root_; }

  bool null() { return put("null"); }
  bool boolean(bool v) { return put(v ? "true" : "false"); }
  bool number_integer(J::number_integer_t v) { return put(std::to_string(v)); }
  bool number_unsigned(J::number_unsigned_t v) { return put(std::to_string(v)); }
  // An integer literal past 64 bits arrives here as a double: Python keeps its digits.
  bool number_float(J::number_float_t v, const J::string_t& raw) {
    const bool integer = raw.find_first_of(".eE") == std::string::npos;
    return put(integer ? raw : python_float_repr(v));
  }
  bool string(J::string_t& v) { return put(quoted(v)); }
  bool binary(J::binary_t&) { return false; }
  bool start_object(std::size_t) { return open(true); }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(false); }
  bool end_array() { return close(); }
  bool key(J::string_t& k) {
    open_.back().key = std::move(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }

 private:
  struct Open {
    bool object;
    std::vector<std::string> items;      // each item's text: `"key": value` in objects
    std::map<std::string, size_t> slot;  // objects: a key's item
    std::string key;                     // objects: the key of the member being read
  };

  static std::string quoted(const std::string& s) { return J(s).dump(-1, ' ', false, J::error_handler_t::replace); }

  bool put(std::string v) {
    if (open_.empty()) {
      root_ = std::move(v);
      return true;
    }
    Open& o = open_.back();
    if (!o.object) {
      o.items.push_back(std::move(v));
      return true;
    }
    std::string member = quoted(o.key) + ": " + v;
    const auto [at, fresh] = o.slot.try_emplace(std::move(o.key), o.items.size());
    if (fresh) {
      o.items.push_back(std::move(member));
    } else {
      o.items[at->second] = std::move(member);
    }
    return true;
  }
  bool open(bool object) {
    open_.push_back(Open{object, {}, {}, {}});
    return open_.size() <= static_cast<size_t>(kMaxJsonDepth);
  }
  bool close() {
    Open o = std::move(open_.back());
    open_.pop_back();
    const size_t depth = open_.size();  // the closed container's own level
    std::string text(1, o.object ? '{' : '[');
    std::string step;  // what precedes each item: a newline and the items' indentation, or nothing
    if (indent_ >= 0) step.append(1, '\n').append((depth + 1) * static_cast<size_t>(indent_), ' ');
    for (size_t i = 0; i < o.items.size(); ++i) {
      if (i > 0) text += indent_ < 0 ? ", " : ",";
      text += step;
      text += o.items[i];
    }
    if (indent_ >= 0 && !o.items.empty()) text.append("\n").append(depth * static_cast<size_t>(indent_), ' ');
    text += o.object ? '}' : ']';
    return put(std::move(text));
  }

  int indent_;
  std::vector<Open> open_;
  std::string root_;
};

}  // namespace

std::optional<std::string> python_dumps(std::string_view text, int indent) {
  PythonDumps w(indent);
  if (!nlohmann::json::sax_parse(text, &w)) return std::nullopt;
  return w.text();
}

}  // namespace sparseserve
