// Every kvcache/ header compiles in a plain C++ translation unit, and the module includes nothing
// from CUDA, engine/ or server/ (kvcache/README.md).
#include "kvcache/page_table.h"
#include "kvcache/sparsity_profile.h"
#include "kvcache/capacity.h"
#include "kvcache/geometry.h"
#include "kvcache/head_roles.h"
#include "kvcache/kv_cache_manager.h"
#include "kvcache/page_pool.h"
#include "kvcache/sequence_kv.h"

#if defined(__CUDACC__) || defined(__CUDA_RUNTIME_H__) || defined(CUDART_VERSION) || defined(__CUDA_ARCH__)
#error "a kvcache/ header pulled in CUDA"
#endif

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace sparseserve::kvcache {
namespace {

namespace fs = std::filesystem;

TEST(KvCacheHeaders, IncludeOnlyStandardCommonAndKvcache) {
  const fs::path dir = fs::path(SPARSESERVE_SOURCE_DIR) / "kvcache";
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto ext = entry.path().extension();
    if (ext != ".h" && ext != ".cc") continue;
    ++files;
    std::ifstream in(entry.path());
    std::string line;
    while (std::getline(in, line)) {
      const auto pos = line.find("#include");
      if (pos == std::string::npos || line.find_first_not_of(" \t") != pos) continue;
      const std::string target = line.substr(pos + 8);
      const std::string where = entry.path().filename().string() + ": " + line;
      EXPECT_EQ(target.find("cuda"), std::string::npos) << where;
      EXPECT_EQ(target.find("engine/"), std::string::npos) << where;
      EXPECT_EQ(target.find("server/"), std::string::npos) << where;
      EXPECT_EQ(target.find("kernels/"), std::string::npos) << where;
      if (target.find('"') != std::string::npos) {
        EXPECT_TRUE(target.find("\"common/") != std::string::npos || target.find("\"kvcache/") != std::string::npos)
            << where;
      }
    }
  }
  EXPECT_GE(files, 14);
}

}  // namespace
}  // namespace sparseserve::kvcache
