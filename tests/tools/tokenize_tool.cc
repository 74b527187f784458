// tokenize_tool: drives the tokenizer from JSON lines, for tests/python/test_tokenizer.py.
//
//   tokenize_tool (--model FILE.gguf | --hf-json tokenizer.json) [--input FILE] [--decode] ...
//
// Encode mode (default): each input line is a JSON string, or {"hex": "..."} for raw bytes that
// need not be UTF-8; each output line is the JSON array of ids.
// Decode mode: each input line is a JSON array of ids; each output line is
// {"text": decoded bytes as UTF-8 with ill-formed parts as U+FFFD, "hex": the raw bytes,
//  "stream": the concatenated output of an IncrementalDetokenizer fed the ids one by one}.
// Input comes from --input or stdin. Exit status 1 with a message on stderr on any error.
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/utf8.h"

namespace {

using nlohmann::json;
using sparseserve::Tokenizer;

std::string to_hex(const std::string& bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

std::string from_hex(const std::string& hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw sparseserve::InvalidArgument("bad hex digit");
  };
  if (hex.size() % 2 != 0) throw sparseserve::InvalidArgument("odd-length hex string");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    out.push_back(static_cast<char>(nibble(hex[i]) * 16 + nibble(hex[i + 1])));
  }
  return out;
}

struct Options {
  std::string model;
  std::string hf_json;
  std::string input;
  bool decode = false;
  bool no_add_special = false;
  bool no_parse_special = false;
  bool skip_special = false;
};

void run(const Options& opt, std::istream& in) {
  const Tokenizer tok = opt.model.empty()
                            ? Tokenizer::from_hf_json(opt.hf_json)
                            : Tokenizer::from_gguf(sparseserve::GgufFile::open(opt.model));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const json j = json::parse(line);
    if (!opt.decode) {
      const std::string text =
          j.is_string() ? j.get<std::string>() : from_hex(j.at("hex").get<std::string>());
      const json ids = tok.encode(text, !opt.no_add_special, !opt.no_parse_special);
      std::cout << ids.dump() << '\n';
      continue;
    }
    const auto ids = j.get<std::vector<int32_t>>();
    const std::string bytes = tok.decode(ids, opt.skip_special);
    sparseserve::IncrementalDetokenizer detok(tok, opt.skip_special);
    std::string stream;
    for (int32_t id : ids) stream += detok.push(id);
    stream += detok.flush();
    const json out = {{"text", sparseserve::utf8::to_lossy(bytes)},
                      {"hex", to_hex(bytes)},
                      {"stream", stream}};
    std::cout << out.dump() << '\n';
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Encode or decode JSON lines with the sparseserve tokenizer"};
  Options opt;
  auto* model = app.add_option("--model", opt.model, "GGUF model file");
  auto* hf = app.add_option("--hf-json", opt.hf_json, "Hugging Face tokenizer.json");
  model->excludes(hf);
  app.add_option("--input", opt.input, "input file of JSON lines (default: stdin)");
  app.add_flag("--decode", opt.decode, "decode arrays of ids instead of encoding strings");
  app.add_flag("--no-add-special", opt.no_add_special, "do not prepend BOS");
  app.add_flag("--no-parse-special", opt.no_parse_special, "encode special-token text as text");
  app.add_flag("--skip-special", opt.skip_special, "decode: drop control tokens");
  CLI11_PARSE(app, argc, argv);
  if (opt.model.empty() == opt.hf_json.empty()) {
    std::cerr << "tokenize_tool: give exactly one of --model or --hf-json\n";
    return 2;
  }
  try {
    std::ios::sync_with_stdio(false);
    if (opt.input.empty()) {
      run(opt, std::cin);
    } else {
      std::ifstream f(opt.input, std::ios::binary);
      if (!f) throw sparseserve::InvalidArgument("cannot open " + opt.input);
      run(opt, f);
    }
  } catch (const std::exception& e) {
    std::cerr << "tokenize_tool: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
