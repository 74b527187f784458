// A gtest fixture holding the default model (SmolLM2-135M-Instruct Q4_1, fetched by
// scripts/fetch-model.sh), loaded once per test suite; tests skip when it has not been fetched.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_profiles.h"

namespace sparseserve {

inline constexpr const char* kDefaultModel = SPARSESERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
inline constexpr const char* kDefaultModelYaml = SPARSESERVE_SOURCE_DIR "/configs/models/smollm2-135m-instruct.yaml";

class DefaultModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (std::filesystem::exists(kDefaultModel)) model_ = load_model(kDefaultModel).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "default model not fetched (scripts/fetch-model.sh)";
  }
  static ModelProfiles profiles() {
    return ModelProfiles::load(kDefaultModelYaml, static_cast<int32_t>(model_->config.n_layers),
                               static_cast<int32_t>(model_->config.n_kv_heads));
  }
  static inline Model* model_ = nullptr;
};

// A request's whole text and its last delta (finished = false if it never ended).
struct StreamResult {
  std::string text;
  RequestOutput last;
};
inline StreamResult drain_stream(RequestStream& stream) {
  StreamResult r;
  for (int k = 0; k < 100000 && !r.last.finished; ++k) {
    if (auto out = stream.next(std::chrono::milliseconds(200))) {
      r.text += out->text;
      if (out->finished) r.last = *out;
    }
  }
  return r;
}

}  // namespace sparseserve
