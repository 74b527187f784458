// Runs texts through a compiled regex (engine/regex_dfa.h), for tests/python/test_regex.py to compare
// with Python's re. One JSON object per input line:
//   in:  {"pattern": "...", "texts": ["...", ...]}  (texts as latin-1: each code point < 256 one byte)
//   out: {"states": N, "results": [[walkable, match, completion], ...]}  or  {"error": "<why refused>"}
// walkable: no byte of the text left the automaton; match: the whole text is one match; completion
// (walkable texts, else null): the shortest bytes that make text + completion a match, found by a
// breadth-first walk over the automaton (smallest byte first), as a latin-1 string of those bytes.
#include <iostream>
#include <nlohmann/json.hpp>
#include <queue>
#include <string>
#include <vector>

#include "common/errors.h"
#include "engine/regex_dfa.h"

namespace {

std::string completion(const sparseserve::RegexDfa& dfa, int32_t from) {
  std::vector<int32_t> prev(static_cast<size_t>(dfa.num_states()), -2);
  std::vector<uint8_t> via(static_cast<size_t>(dfa.num_states()), 0);
  std::queue<int32_t> q;
  prev[static_cast<size_t>(from)] = -1;
  q.push(from);
  int32_t end = -1;
  while (!q.empty() && end < 0) {
    const int32_t s = q.front();
    q.pop();
    if (dfa.accepting(s)) {
      end = s;
      break;
    }
    for (int b = 0; b < 256; ++b) {
      const int32_t t = dfa.next(s, static_cast<uint8_t>(b));
      if (t == sparseserve::RegexDfa::kDead || prev[static_cast<size_t>(t)] != -2) continue;
      prev[static_cast<size_t>(t)] = s;
      via[static_cast<size_t>(t)] = static_cast<uint8_t>(b);
      q.push(t);
    }
  }
  if (end < 0) return "\xff<none>";  // a live state always reaches a match: the test fails on this
  std::string bytes;
  for (int32_t s = end; prev[static_cast<size_t>(s)] != -1; s = prev[static_cast<size_t>(s)]) {
    bytes.insert(bytes.begin(), static_cast<char>(via[static_cast<size_t>(s)]));
  }
  return bytes;
}

std::string latin1(const std::string& bytes) {  // each byte as the code point of its value, in UTF-8
  std::string out;
  for (unsigned char c : bytes) {
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back(static_cast<char>(0xC0 | (c >> 6)));
      out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
  }
  return out;
}

// The inverse: a JSON string whose code points are all below 256, as those bytes.
std::string latin1_decode(const nlohmann::json& t) {
  const std::string& s = t.get_ref<const std::string&>();
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out.push_back(static_cast<char>(c));
    } else {  // a two-byte sequence of U+0080..U+00FF
      out.push_back(static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(s[++i]) & 0x3F)));
    }
  }
  return out;
}

}  // namespace

int main() {
  using nlohmann::json;
  std::string line;
  while (std::getline(std::cin, line)) {
    const json in = json::parse(line);
    json out;
    try {
      const auto dfa = sparseserve::RegexDfa::compile(in["pattern"].get<std::string>());
      json results = json::array();
      for (const json& t : in["texts"]) {
        const std::string text = latin1_decode(t);
        const int32_t s = dfa.walk(sparseserve::RegexDfa::start(), text);
        const bool walkable = s != sparseserve::RegexDfa::kDead;
        results.push_back({walkable, dfa.matches(text), walkable ? json(latin1(completion(dfa, s))) : json(nullptr)});
      }
      out["states"] = dfa.num_states();
      out["results"] = results;
    } catch (const sparseserve::InvalidArgument& e) {
      out["error"] = e.what();
    }
    std::cout << out.dump() << std::endl;
  }
  return 0;
}
