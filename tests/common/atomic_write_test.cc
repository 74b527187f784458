#include "common/atomic_write.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/errors.h"

namespace sparseserve {
namespace {

class AtomicWriteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/atomic_write_test_" + std::to_string(::getpid());
    ::mkdir(dir_.c_str(), 0700);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  static std::string content(const std::string& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::string dir_;
};

TEST_F(AtomicWriteTest, CreatesAndReplacesLeavingNoTemporaryFile) {
  const std::string p = dir_ + "/heads.tsv";
  write_file_atomically(p, "1.0\t0.0\n");
  EXPECT_EQ(content(p), "1.0\t0.0\n");
  write_file_atomically(p, "");
  EXPECT_EQ(content(p), "");
  EXPECT_EQ(names(), std::vector<std::string>{"heads.tsv"});
  // The mode a plain create gives: 0666 less the umask.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask);
}

TEST_F(AtomicWriteTest, NeverTouchesAnotherFile) {
  // A user's file that happens to have the old fixed temporary name survives both calls.
  const std::string p = dir_ + "/heads.tsv";
  std::ofstream(p + ".tmp") << "keep";
  check_can_write_next_to(p);
  EXPECT_EQ(names(), std::vector<std::string>{"heads.tsv.tmp"});
  write_file_atomically(p, "x");
  EXPECT_EQ(content(p + ".tmp"), "keep");
  EXPECT_EQ(content(p), "x");
  EXPECT_EQ(names(), (std::vector<std::string>{"heads.tsv", "heads.tsv.tmp"}));
}

// Replacing a file keeps its permission bits; through a symbolic link, the link's target is
// replaced and the link stays a link.
TEST_F(AtomicWriteTest, KeepsTheModeAndFollowsLinks) {
  const std::string p = dir_ + "/heads.tsv", link = dir_ + "/link.tsv";
  write_file_atomically(p, "old");
  ASSERT_EQ(::chmod(p.c_str(), 0600), 0);
  ASSERT_EQ(::symlink("heads.tsv", link.c_str()), 0);
  write_file_atomically(link, "new");
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(content(p), "new");
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  check_can_write_next_to(link);
  EXPECT_EQ(names(), (std::vector<std::string>{"heads.tsv", "link.tsv"}));
  // A link whose target does not exist yet: the target is created, the link stays.
  const std::string dangling = dir_ + "/dangling.tsv";
  ASSERT_EQ(::symlink("new.tsv", dangling.c_str()), 0);
  write_file_atomically(dangling, "fresh");
  EXPECT_TRUE(std::filesystem::is_symlink(dangling));
  EXPECT_EQ(content(dir_ + "/new.tsv"), "fresh");
}

TEST_F(AtomicWriteTest, FailuresNameTheTargetAndLeaveNothing) {
  const auto problem_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const ModelFileError& e) {
      return e.problem();
    }
    return "no error";
  };
  const std::string missing = dir_ + "/no/such/heads.tsv";
  EXPECT_NE(problem_of([&] { check_can_write_next_to(missing); }).find("No such file or directory"), std::string::npos);
  EXPECT_NE(problem_of([&] { write_file_atomically(missing, "x"); }).find("cannot write (creating"), std::string::npos);
  // A folder in the target's place: the rename fails, the folder stays, no temporary file is left.
  const std::string folder = dir_ + "/folder";
  ASSERT_EQ(::mkdir(folder.c_str(), 0700), 0);
  EXPECT_NE(problem_of([&] { write_file_atomically(folder, "x"); }).find("rename"), std::string::npos);
  EXPECT_EQ(names(), std::vector<std::string>{"folder"});
  ::rmdir(folder.c_str());
}

}  // namespace
}  // namespace sparseserve
