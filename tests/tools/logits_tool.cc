// Test tool for tests/python: runs the CPU engine on a prompt and reports what the reference checks.
//   logits_tool --model M (--prompt TEXT | --ids 1,2,3) [--chunk N] [--logits-out F] [--greedy N]
// Prints JSON {"ids": prompt ids, "greedy": greedy continuation ids (EOS ignored)} on stdout;
// --logits-out writes float32 logits [n_prompt, vocab] for every prompt position, computed in
// chunks of --chunk tokens through the KV cache.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/logging.h"
#include "engine/cpu_forward.h"
#include "engine/dense_kv.h"
#include "engine/model.h"

using namespace sparseserve;

int main(int argc, char** argv) {
  CLI::App app{"logits_tool"};
  std::string model_path, prompt, ids_csv, logits_out;
  int64_t chunk = 0, greedy = 0;
  bool add_bos = false;
  app.add_option("--model", model_path)->required();
  app.add_option("--prompt", prompt);
  app.add_option("--ids", ids_csv);
  app.add_flag("--add-bos", add_bos);
  app.add_option("--chunk", chunk, "prompt tokens per forward call (0 = all at once)");
  app.add_option("--logits-out", logits_out);
  app.add_option("--greedy", greedy);
  CLI11_PARSE(app, argc, argv);
  sparseserve::init_logging("warn");
  try {
    const auto model = load_model(model_path);
    std::vector<int32_t> ids;
    if (!ids_csv.empty()) {
      std::stringstream ss(ids_csv);
      for (std::string tok; std::getline(ss, tok, ',');) ids.push_back(std::stoi(tok));
    } else {
      ids = model->tokenizer.encode(prompt, add_bos, /*parse_special=*/true);
    }
    CpuForward fwd(*model);
    DenseKvBackend kv(model->config);
    kv.add_sequence(0);
    const int64_t V = model->config.vocab_size;
    const auto n = static_cast<int64_t>(ids.size());
    const int64_t step = chunk > 0 ? chunk : n;
    std::vector<float> all, logits;
    for (int64_t off = 0; off < n; off += step) {
      const ForwardSeq seq{0, off,
                           std::span<const int32_t>(ids).subspan(static_cast<size_t>(off),
                                                                 static_cast<size_t>(std::min(step, n - off))),
                           !logits_out.empty(), n};
      fwd.forward(std::span(&seq, 1), kv, logits);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    if (!logits_out.empty()) {
      std::ofstream out(logits_out, std::ios::binary);
      out.write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size() * sizeof(float)));
    }
    std::vector<int32_t> gen;
    std::vector<float> last(all.end() - V, all.end());
    for (int64_t i = 0; i < greedy; ++i) {
      const auto tok = static_cast<int32_t>(std::max_element(last.begin(), last.end()) - last.begin());
      gen.push_back(tok);
      const ForwardSeq seq{0, n + i, std::span(&gen.back(), 1), false, n};
      fwd.forward(std::span(&seq, 1), kv, last);
    }
    std::cout << nlohmann::json{{"ids", ids}, {"greedy", gen}}.dump() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "logits_tool: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
