// server/server_config: the shipped configs/server.yaml loads; flags override the file; unknown keys
// and bad values are rejected naming the file and line (or the flag).
#include "server/server_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/errors.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ServerConfigTest : public ::testing::Test {
 protected:
  std::string write(const std::string& text) {
    // The process id in the name: ctest runs this binary's tests in parallel processes.
    const fs::path p = fs::path(::testing::TempDir()) /
                       ("server_config_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++) + ".yaml");
    std::ofstream(p) << text;
    return p.string();
  }
  // The message of the InvalidArgument that loading throws ("" when it loads).
  std::string error_of(const std::string& yaml, const std::vector<ServerConfig::Override>& o = {}) {
    try {
      ServerConfig::load(yaml.empty() ? "" : write(yaml), o);
    } catch (const InvalidArgument& e) {
      return e.what();
    }
    return "";
  }
  int counter_ = 0;
};

TEST_F(ServerConfigTest, ShippedFileLoads) {
  const ServerConfig c = ServerConfig::load(std::string(SPARSESERVE_SOURCE_DIR) + "/configs/server.yaml", {});
  EXPECT_EQ(c.host, "0.0.0.0");
  EXPECT_EQ(c.http_port, 8000);
  EXPECT_EQ(c.grpc_port, 50051);
  EXPECT_EQ(c.model, "models/SmolLM2-135M-Instruct.Q4_1.gguf");
  EXPECT_EQ(c.model_config, "configs/models/smollm2-135m-instruct.yaml");
  EXPECT_EQ(c.served_model_name, "");
  EXPECT_EQ(c.backend, "auto");
  EXPECT_EQ(c.load_format, "auto");
  EXPECT_EQ(c.generation_config, "auto");
  EXPECT_FALSE(c.kv_cache_bytes.has_value());
  EXPECT_DOUBLE_EQ(c.gpu_memory_utilization, 0.9);
  EXPECT_EQ(c.max_num_seqs, 64);
  EXPECT_EQ(c.max_num_batched_tokens, 2048);
  EXPECT_EQ(c.max_waiting, 1024);
  EXPECT_TRUE(c.enable_prefix_caching);
  EXPECT_FALSE(c.enable_prompt_tokens_details);
  EXPECT_FALSE(c.api_key.has_value());
  EXPECT_EQ(c.max_body_bytes, size_t{8} << 20);
  EXPECT_EQ(c.max_prompt_tokens, 0);
  EXPECT_DOUBLE_EQ(c.shutdown_grace_seconds, 20.0);
  EXPECT_DOUBLE_EQ(c.grpc_write_stall_seconds, 60.0);
  EXPECT_EQ(c.log_level, "info");
  const EngineConfig e = c.engine_config();
  EXPECT_EQ(e.max_num_seqs, 64);
  EXPECT_EQ(e.kv_cache_bytes, size_t{2} << 30);
  EXPECT_EQ(e.max_waiting, 1024);
  EXPECT_TRUE(e.enable_prefix_caching);
  EXPECT_FALSE(ServerConfig::load(write("model: a\nenable_prefix_caching: false\n"), {}).engine_config().enable_prefix_caching);
}

TEST_F(ServerConfigTest, FlagsOverrideTheFile) {
  const std::string path = write("model: a.gguf\nhttp_port: 9000\napi_key: null\nkv_cache_bytes: 1GiB\n");
  const ServerConfig c = ServerConfig::load(path, {{"http_port", "8080", "--http-port"},
                                                   {"api_key", "secret", "--api-key"},
                                                   {"max_body_bytes", "1MiB", "--max-body-bytes"}});
  EXPECT_EQ(c.model, "a.gguf");
  EXPECT_EQ(c.http_port, 8080);
  EXPECT_EQ(c.api_key.value_or(""), "secret");
  EXPECT_EQ(c.kv_cache_bytes.value_or(0), size_t{1} << 30);
  EXPECT_EQ(c.engine_config().kv_cache_bytes, size_t{1} << 30);
  EXPECT_EQ(c.max_body_bytes, size_t{1} << 20);
}

TEST_F(ServerConfigTest, FlagsAloneWork) {
  const ServerConfig c = ServerConfig::load("", {{"model", "m.gguf", "--model"}, {"backend", "auto", "--backend"}});
  EXPECT_EQ(c.model, "m.gguf");
  EXPECT_EQ(c.backend, "auto");
  EXPECT_EQ(ServerConfig::load("", {{"model", "m", "--model"}, {"backend", "cpu", "--backend"}}).backend, "cpu");
  EXPECT_EQ(ServerConfig::load("", {{"model", "m", "--model"}, {"load_format", "dummy", "--load-format"}}).load_format,
            "dummy");
  EXPECT_EQ(c.http_port, 8000);
  EXPECT_EQ(c.default_profile, "");
  EXPECT_EQ(ServerConfig::load("", {{"model", "m", "--model"}, {"default_profile", "dense", "--default-profile"}})
                .default_profile,
            "dense");
}

// The defaults `serve --help` shows are the defaults: each given as a flag changes nothing.
TEST_F(ServerConfigTest, ShownDefaultsAreTheDefaults) {
  const ServerConfig plain = ServerConfig::load("", {{"model", "m.gguf", "--model"}});
  for (const ServerSetting& s : server_settings()) {
    if (s.default_text == nullptr) continue;
    const ServerConfig c = ServerConfig::load("", {{"model", "m.gguf", "--model"}, {s.key, s.default_text, "--x"}});
    EXPECT_TRUE(c == plain) << s.key << " = " << s.default_text;
  }
}

// yaml-cpp stops deep nesting with the message "bad file".
TEST_F(ServerConfigTest, DeepNestingIsNamed) {
  EXPECT_THAT(error_of("model: a\nhost: " + std::string(1000, '[') + std::string(1000, ']') + "\n"),
              HasSubstr(".yaml:2: nested too deeply"));
}

TEST_F(ServerConfigTest, UnknownKeyNamesFileAndLine) {
  const std::string msg = error_of("model: a.gguf\nhttp_prot: 8000\n");
  EXPECT_THAT(msg, HasSubstr(".yaml:2: unknown key 'http_prot'"));
  EXPECT_THAT(msg, HasSubstr("http_port"));  // the known keys are listed
}

TEST_F(ServerConfigTest, BadValuesNameFileLineAndKey) {
  EXPECT_THAT(error_of("model: a\nhttp_port: abc\n"), HasSubstr(".yaml:2: http_port: expected an integer"));
  EXPECT_THAT(error_of("model: a\nhttp_port: 70000\n"), HasSubstr(".yaml:2: http_port"));
  EXPECT_THAT(error_of("model: a\nmax_num_seqs: 0\n"), HasSubstr(".yaml:2: max_num_seqs"));
  EXPECT_THAT(error_of("model: a\n\nkv_cache_bytes: 2 GiB\n"), HasSubstr(".yaml:3: kv_cache_bytes"));
  EXPECT_THAT(error_of("model: a\nkv_cache_bytes: 0\n"), HasSubstr(".yaml:2: kv_cache_bytes"));
  EXPECT_THAT(error_of("model: a\ngpu_memory_utilization: 0\n"), HasSubstr("gpu_memory_utilization: expected a number in (0, 1]"));
  EXPECT_THAT(error_of("model: a\ngpu_memory_utilization: 1.5\n"), HasSubstr("gpu_memory_utilization"));
  EXPECT_THAT(error_of("model: a\ngpu_memory_utilization: nan\n"), HasSubstr("gpu_memory_utilization"));
  EXPECT_THAT(error_of("model: a\nbackend: tpu\n"), HasSubstr(".yaml:2: backend: expected one of auto | cpu | cuda"));
  EXPECT_THAT(error_of("model: a\nload_format: pt\n"), HasSubstr(".yaml:2: load_format: expected one of auto | dummy, got 'pt'"));
  EXPECT_THAT(error_of("model: a\ngeneration_config: hf\n"),
              HasSubstr(".yaml:2: generation_config: expected one of auto | vllm, got 'hf'"));
  EXPECT_THAT(error_of("model: a\nlog_level: loud\n"), HasSubstr("log_level"));
  EXPECT_THAT(error_of("model: a\nenable_prefix_caching: yes\n"),
              HasSubstr(".yaml:2: enable_prefix_caching: expected one of true | false, got 'yes'"));
  EXPECT_THAT(error_of("model: a\nenable_prompt_tokens_details: 1\n"), HasSubstr("enable_prompt_tokens_details"));
  EXPECT_THAT(error_of("model: a\nshutdown_grace_seconds: -1\n"), HasSubstr("shutdown_grace_seconds"));
  EXPECT_THAT(error_of("model: a\ngrpc_write_stall_seconds: 0\n"), HasSubstr("grpc_write_stall_seconds: must be at least 0.001"));
  EXPECT_THAT(error_of("model: a\ngrpc_write_stall_seconds: 0.0001\n"), HasSubstr("grpc_write_stall_seconds"));
  EXPECT_THAT(error_of("model: a\nhost: [a, b]\n"), HasSubstr(".yaml:2: host: expected a single value"));
  EXPECT_THAT(error_of("model: a\nhttp_port: null\n"), HasSubstr("http_port: must not be null"));
  EXPECT_THAT(error_of("model: a\napi_key: ''\n"), HasSubstr("api_key: must not be empty"));
  EXPECT_THAT(error_of("model: a\ndefault_profile: ''\n"), HasSubstr("default_profile: must not be empty"));
  EXPECT_THAT(error_of("model: a\nmodel: b\n"), HasSubstr(".yaml:2: duplicate key 'model'"));
  EXPECT_THAT(error_of("model: [unclosed\n"), HasSubstr(".yaml:"));
  EXPECT_THAT(error_of("- a\n- b\n"), HasSubstr("expected a mapping"));
}

// `backend: cuda` is accepted only where the server was built with the GPU backend.
TEST_F(ServerConfigTest, CudaOnlyInABuildWithCuda) {
#ifdef SPARSESERVE_SERVER_CUDA
  EXPECT_EQ(ServerConfig::load("", {{"model", "m.gguf", "--model"}, {"backend", "cuda", "--backend"}}).backend, "cuda");
#else
  EXPECT_THAT(error_of("model: a\nbackend: cuda\n"), HasSubstr("the CUDA backend is not available in this build"));
#endif
}

TEST_F(ServerConfigTest, FlagErrorsNameTheFlag) {
  EXPECT_THAT(error_of("model: a\n", {{"http_port", "-5", "--http-port"}}), HasSubstr("--http-port: http_port"));
  EXPECT_THAT(error_of("", {{"model", "a", "--model"}, {"grpc_port", "8000", "--grpc-port"}}),
              HasSubstr("grpc_port: 8000 is also the http_port"));
}

TEST_F(ServerConfigTest, ModelIsRequired) {
  EXPECT_THAT(error_of("http_port: 8000\n"), HasSubstr("model: required"));
  EXPECT_THAT(error_of("# only a comment\n"), HasSubstr("model: required"));
}

TEST_F(ServerConfigTest, MissingFileIsNamed) {
  try {
    ServerConfig::load("/nonexistent/server.yaml", {});
    FAIL() << "loaded a missing file";
  } catch (const InvalidArgument& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/server.yaml: cannot open: No such file or directory"));
  }
}

TEST_F(ServerConfigTest, FoldersFifosAndComplexKeysAreNamed) {
  const auto error_for = [](const std::string& path) {
    try {
      ServerConfig::load(path, {});
      return std::string("loaded");
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
  };
  const std::string dir = ::testing::TempDir() + "/server_config_test_dir_" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0700);
  EXPECT_THAT(error_for(dir), HasSubstr(dir + ": a folder, not a file"));
  const std::string fifo = dir + "/fifo.yaml";
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THAT(error_for(fifo), HasSubstr(fifo + ": not a regular file"));  // refused at once, no blocking read
  ::unlink(fifo.c_str());
  EXPECT_THAT(error_of("[a, b]: 1\n"), HasSubstr(":1: keys must be plain names"));
  EXPECT_THAT(error_of("model: a.gguf\n---\nhttp_port: 1\n"), HasSubstr("several YAML documents"));
}

TEST_F(ServerConfigTest, EverySettingHasAFlagHelp) {
  for (const ServerSetting& s : server_settings()) {
    EXPECT_TRUE(s.key && *s.key);
    EXPECT_TRUE(s.help && *s.help);
  }
  EXPECT_GE(server_settings().size(), 16u);
}

}  // namespace
}  // namespace sparseserve
