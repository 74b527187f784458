// GGUF v2/v3 reader: metadata (every value type, arrays included), tensor infos, aligned data section.
// Every read is bounds-checked; a truncated or corrupted file throws ModelFileError naming the file
// and the problem (never an out-of-bounds read).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "common/mapped_file.h"
#include "engine/tensor.h"

namespace sparseserve {

// A metadata value. Arrays hold their elements (arrays of arrays are allowed by the format).
struct GgufValue {
  enum class Type : uint32_t {
    U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
    STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
  };
  Type type = Type::U8;
  std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<GgufValue>> value;

  // Typed accessors; throw InvalidArgument on a type mismatch (integers convert when in range).
  int64_t as_int() const;
  double as_float() const;
  bool as_bool() const;
  const std::string& as_string() const;
  const std::vector<GgufValue>& as_array() const;
};

class GgufFile {
 public:
  // Maps and parses the file. Throws ModelFileError(path, problem).
  static GgufFile open(const std::string& path);
  // Parses an in-memory image (for tests and the fuzzer); `name` is used in error messages.
  // The bytes must outlive the returned object.
  static GgufFile parse(std::span<const std::byte> bytes, const std::string& name);

  const std::string& path() const { return name_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const GgufValue* find(const std::string& key) const;   // nullptr when absent
  // Typed look-ups; the throwing versions name the file and key.
  std::string get_string(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_float(const std::string& key) const;
  std::optional<std::string> opt_string(const std::string& key) const;
  std::optional<int64_t> opt_int(const std::string& key) const;
  std::optional<double> opt_float(const std::string& key) const;

  // Tensors in file order; shape is outermost first (GGUF's ne[] reversed).
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find_tensor(const std::string& name) const;  // nullptr when absent

 private:
  GgufFile() = default;
  std::shared_ptr<MappedFile> file_;  // null for parse()
  std::string name_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> metadata_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace sparseserve
