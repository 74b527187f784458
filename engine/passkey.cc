#include "engine/passkey.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/errors.h"

namespace sparseserve {

Haystack default_haystack() {
  std::string text;
  const std::filesystem::path dir = "/usr/share/common-licenses";
  size_t n_files = 0;
  if (std::filesystem::is_directory(dir)) {
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.is_regular_file()) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f);
      std::stringstream ss;
      ss << in.rdbuf();
      text += ss.str() + "\n";
      ++n_files;
    }
  }
  if (text.size() >= 100000) return {text, dir.string() + " (" + std::to_string(n_files) + " files)"};
  {
    const std::string para =
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
        "The town council met on a quiet Tuesday evening to discuss the repairs to the old bridge, "
        "and after a long debate about costs the members agreed to ask the county for help. ";
    text.clear();
    while (text.size() < 300000) text += para;
  }
  return {text, "the built-in paragraph"};
}

PasskeyPrompt make_passkey_prompt(const Tokenizer& tok, const std::string& haystack, int64_t tokens,
                                  const std::vector<double>& depths, std::mt19937_64& rng) {
  if (tokens < 256) throw InvalidArgument("passkey prompts need at least 256 tokens");
  if (depths.empty()) throw InvalidArgument("passkey prompts need at least one needle");
  if (haystack.empty()) throw InvalidArgument("passkey prompts need a haystack text");
  static const char* kNames[] = {"Alice", "Bruno", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana"};
  PasskeyPrompt p;
  std::uniform_int_distribution<int> digit(10000, 99999);
  std::vector<std::string> keys;
  for (size_t i = 0; i < depths.size(); ++i) keys.push_back(std::to_string(digit(rng)));
  p.key = keys[0];
  const std::string who = kNames[0];

  const auto head = tok.encode(
      "There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
      "I will quiz you about the important information there.\n\n", false, false);
  const auto question = tok.encode("\n\nWhat is the pass key of " + who + "? The pass key of " + who + " is", false, false);
  p.answer = tok.encode(" " + p.key, false, false);
  std::vector<std::vector<int32_t>> needles;
  int64_t fixed = static_cast<int64_t>(head.size() + question.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string name = kNames[i % 8] + (i >= 8 ? std::to_string(i) : std::string());
    needles.push_back(tok.encode(" The pass key of " + name + " is " + keys[i] + ". Remember it. " + keys[i] +
                                     " is the pass key of " + name + ". ",
                                 false, false));
    fixed += static_cast<int64_t>(needles.back().size());
  }
  const int64_t hay_tokens = tokens - fixed;
  if (hay_tokens < 16) throw InvalidArgument("passkey prompt too short for its needles");
  // Haystack tokens from a random offset (wrapping around the text).
  std::uniform_int_distribution<size_t> off(0, haystack.size() / 2);
  std::vector<int32_t> hay;
  size_t at = off(rng);
  while (static_cast<int64_t>(hay.size()) < hay_tokens) {
    const size_t n = std::min<size_t>(20000, haystack.size() - at);
    const auto part = tok.encode(haystack.substr(at, n), false, false);
    hay.insert(hay.end(), part.begin(), part.end());
    at = (at + n) % haystack.size();
  }
  hay.resize(static_cast<size_t>(hay_tokens));

  // Needles in order of depth; insertion points in haystack tokens.
  std::vector<size_t> order(needles.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return depths[a] < depths[b]; });
  p.prompt = head;
  p.needle_positions.assign(needles.size(), 0);
  int64_t taken = 0;
  for (size_t i : order) {
    const int64_t cut = std::clamp<int64_t>(static_cast<int64_t>(std::clamp(depths[i], 0.0, 1.0) * static_cast<double>(hay_tokens)), taken, hay_tokens);
    p.prompt.insert(p.prompt.end(), hay.begin() + taken, hay.begin() + cut);
    taken = cut;
    p.needle_positions[i] = static_cast<int64_t>(p.prompt.size());
    p.prompt.insert(p.prompt.end(), needles[i].begin(), needles[i].end());
  }
  p.prompt.insert(p.prompt.end(), hay.begin() + taken, hay.end());
  p.prompt.insert(p.prompt.end(), question.begin(), question.end());
  return p;
}

}  // namespace sparseserve
