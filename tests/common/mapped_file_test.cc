#include "common/mapped_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "common/errors.h"

namespace sparseserve {
namespace {

// The message of the ModelFileError that f throws ("" when it throws none).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ModelFileError& e) {
    return e.what();
  }
  return "";
}

class FilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/mapped_file_test_" + std::to_string(::getpid());
    ::mkdir(dir_.c_str(), 0700);
  }
  std::string dir_;
};

TEST_F(FilesTest, ReadsRegularFilesWhole) {
  const std::string p = dir_ + "/a.yaml";
  std::ofstream(p) << "name: x\n";
  EXPECT_EQ(read_config_file(p), "name: x\n");
  const MappedFile m(p);
  EXPECT_EQ(m.size(), 8u);
  const std::string empty = dir_ + "/empty.yaml";
  std::ofstream{empty};
  EXPECT_EQ(read_config_file(empty), "");
}

// Folders and FIFOs are refused before any read: a FIFO without a writer would otherwise block the
// start forever.
TEST_F(FilesTest, RefusesFoldersFifosMissingAndLargeFiles) {
  EXPECT_EQ(error_of([&] { (void)read_config_file(dir_); }), dir_ + ": a folder, not a file");
  EXPECT_EQ(error_of([&] { MappedFile m(dir_); }), dir_ + ": a folder, not a file");
  const std::string fifo = dir_ + "/fifo";
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(error_of([&] { (void)read_config_file(fifo); }), fifo + ": not a regular file");
  EXPECT_EQ(error_of([&] { MappedFile m(fifo); }), fifo + ": not a regular file");
  ::unlink(fifo.c_str());
  EXPECT_EQ(error_of([&] { (void)read_config_file(dir_ + "/none"); }),
            dir_ + "/none: cannot open: No such file or directory");
  const std::string big = dir_ + "/big.yaml";
  std::ofstream(big) << std::string(2048, 'x');
  EXPECT_EQ(error_of([&] { (void)read_config_file(big, 1024); }), big + ": larger than 1 KiB, the most this file may hold");
  EXPECT_EQ(read_config_file(big, 2048).size(), 2048u);
}

}  // namespace
}  // namespace sparseserve
