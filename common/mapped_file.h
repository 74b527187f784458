// Read-only memory map of a whole file (RAII), and whole reads of small config files. Both throw
// ModelFileError naming the file on failure, and refuse anything but a regular file before reading
// (a folder, or a FIFO or device, whose open or reads could block the start forever).
#pragma once

#include <cstddef>
#include <span>
#include <string>

namespace sparseserve {

class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  std::string path_;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// The whole content of a config file of at most max_bytes (YAML, TSV: kilobytes in practice; the
// cap keeps a wrong or hostile file from exhausting memory while it is parsed).
std::string read_config_file(const std::string& path, size_t max_bytes = size_t{1} << 20);

}  // namespace sparseserve
