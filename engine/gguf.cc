// GGUF layout (all little-endian; "string" = u64 byte length + bytes, no terminator):
//   u32 magic "GGUF" | u32 version (2 or 3) | u64 n_tensors | u64 n_kv
//   n_kv x  { string key | u32 value_type | value }
//           array value = u32 element_type | u64 count | count elements (arrays may nest)
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to general.alignment (default 32) | data section; tensor offsets are relative to it.
// Version 1 (u32 counts) is rejected. Every count is checked against the bytes that remain before
// anything is allocated for it, and metadata array elements are capped in all (kMaxArrayElements),
// so no untrusted count can cause a large allocation.
#include "engine/gguf.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <limits>
#include <utility>

#include "common/errors.h"

namespace sparseserve {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxDims = 4;              // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 16;       // arrays of arrays nest at most this deep
// Metadata array elements in all: each becomes a GgufValue (~48 bytes) whatever its encoded size, so
// counts bounded by the file alone could still cost 48 times a (sparse) file. The largest real
// metadata (a 262K vocabulary: tokens, types, scores, merges) holds about 1.5M.
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 23;
constexpr uint64_t kMaxAlignment = uint64_t{1} << 30;

using VType = GgufValue::Type;

const char* type_name(VType t) {
  switch (t) {
    case VType::U8: return "u8";
    case VType::I8: return "i8";
    case VType::U16: return "u16";
    case VType::I16: return "i16";
    case VType::U32: return "u32";
    case VType::I32: return "i32";
    case VType::F32: return "f32";
    case VType::BOOL: return "bool";
    case VType::STRING: return "string";
    case VType::ARRAY: return "array";
    case VType::U64: return "u64";
    case VType::I64: return "i64";
    case VType::F64: return "f64";
  }
  return "?";
}

bool is_value_type(uint32_t raw) { return raw <= static_cast<uint32_t>(VType::F64); }

// Smallest encoding of one value of a type: the bound used to reject impossible counts.
uint64_t min_encoded_size(VType t) {
  switch (t) {
    case VType::U8:
    case VType::I8:
    case VType::BOOL: return 1;
    case VType::U16:
    case VType::I16: return 2;
    case VType::U32:
    case VType::I32:
    case VType::F32: return 4;
    case VType::U64:
    case VType::I64:
    case VType::F64:
    case VType::STRING: return 8;
    case VType::ARRAY: return 12;  // element type + count
  }
  return 1;
}

// Bounds-checked little-endian cursor over the image; every failure names the offset.
class Reader {
 public:
  Reader(std::span<const std::byte> bytes, const std::string& name) : bytes_(bytes), name_(name) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  [[noreturn]] void fail(const std::string& problem) const { throw ModelFileError(name_, problem); }

  void need(uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      fail(fmt::format("truncated: {} needs {} bytes at offset {}, but only {} remain", what, n,
                       pos_, remaining()));
    }
  }

  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const std::string& what) {
    const auto len = read<uint64_t>(what + " length");
    need(len, fmt::format("{} ({} bytes)", what, len));
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  // Counts array elements against kMaxArrayElements, for the whole file.
  void count_array_elements(uint64_t count, const std::string& what) {
    array_elements_ += count;
    if (array_elements_ > kMaxArrayElements) {
      fail(fmt::format("{}: metadata arrays hold more than {} elements in all, more than this reader accepts", what,
                       kMaxArrayElements));
    }
  }

  // Rejects a count of items, each at least min_size bytes, that cannot fit in what remains.
  void check_count(uint64_t count, uint64_t min_size, const std::string& what) const {
    if (count > remaining() / min_size) {
      fail(fmt::format("{} count {} cannot fit in the remaining {} bytes at offset {}", what, count,
                       remaining(), pos_));
    }
  }

 private:
  std::span<const std::byte> bytes_;
  const std::string& name_;
  size_t pos_ = 0;
  uint64_t array_elements_ = 0;
};

GgufValue read_value(Reader& r, VType type, const std::string& what, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case VType::U8: v.value = uint64_t{r.read<uint8_t>(what)}; break;
    case VType::U16: v.value = uint64_t{r.read<uint16_t>(what)}; break;
    case VType::U32: v.value = uint64_t{r.read<uint32_t>(what)}; break;
    case VType::U64: v.value = r.read<uint64_t>(what); break;
    case VType::I8: v.value = int64_t{r.read<int8_t>(what)}; break;
    case VType::I16: v.value = int64_t{r.read<int16_t>(what)}; break;
    case VType::I32: v.value = int64_t{r.read<int32_t>(what)}; break;
    case VType::I64: v.value = r.read<int64_t>(what); break;
    case VType::F32: v.value = double{r.read<float>(what)}; break;
    case VType::F64: v.value = r.read<double>(what); break;
    case VType::BOOL: {
      const auto b = r.read<uint8_t>(what);
      if (b > 1)
        r.fail(fmt::format("{}: bool byte {} at offset {} is not 0 or 1", what, b, r.pos() - 1));
      v.value = b == 1;
      break;
    }
    case VType::STRING: v.value = r.read_string(what); break;
    case VType::ARRAY: {
      if (depth >= kMaxArrayDepth) {
        r.fail(fmt::format("{}: arrays nested deeper than {}", what, kMaxArrayDepth));
      }
      const auto raw = r.read<uint32_t>(what + " element type");
      if (!is_value_type(raw)) {
        r.fail(
            fmt::format("{}: unknown array element type {} at offset {}", what, raw, r.pos() - 4));
      }
      const auto elem = static_cast<VType>(raw);
      const auto count = r.read<uint64_t>(what + " element count");
      r.check_count(count, min_encoded_size(elem), what + " element");
      r.count_array_elements(count, what);
      std::vector<GgufValue> items;
      items.reserve(static_cast<size_t>(count));
      for (uint64_t i = 0; i < count; ++i) {
        items.push_back(read_value(r, elem, fmt::format("{}[{}]", what, i), depth + 1));
      }
      v.value = std::move(items);
      break;
    }
  }
  return v;
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

// ---- GgufValue ---------------------------------------------------------------------------------

int64_t GgufValue::as_int() const {
  if (const auto* u = std::get_if<uint64_t>(&value)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw InvalidArgument(fmt::format("value {} does not fit in int64", *u));
    }
    return static_cast<int64_t>(*u);
  }
  if (const auto* i = std::get_if<int64_t>(&value)) return *i;
  throw InvalidArgument(fmt::format("value is {}, expected an integer", type_name(type)));
}

double GgufValue::as_float() const {
  if (const auto* d = std::get_if<double>(&value)) return *d;
  if (const auto* u = std::get_if<uint64_t>(&value)) return static_cast<double>(*u);
  if (const auto* i = std::get_if<int64_t>(&value)) return static_cast<double>(*i);
  throw InvalidArgument(fmt::format("value is {}, expected a number", type_name(type)));
}

bool GgufValue::as_bool() const {
  if (const auto* b = std::get_if<bool>(&value)) return *b;
  throw InvalidArgument(fmt::format("value is {}, expected a bool", type_name(type)));
}

const std::string& GgufValue::as_string() const {
  if (const auto* s = std::get_if<std::string>(&value)) return *s;
  throw InvalidArgument(fmt::format("value is {}, expected a string", type_name(type)));
}

const std::vector<GgufValue>& GgufValue::as_array() const {
  if (const auto* a = std::get_if<std::vector<GgufValue>>(&value)) return *a;
  throw InvalidArgument(fmt::format("value is {}, expected an array", type_name(type)));
}

// ---- GgufFile ----------------------------------------------------------------------------------

GgufFile GgufFile::open(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  GgufFile g = parse(file->bytes(), path);
  g.file_ = std::move(file);
  return g;
}

GgufFile GgufFile::parse(std::span<const std::byte> bytes, const std::string& name) {
  GgufFile g;
  g.name_ = name;
  Reader r(bytes, name);

  // Header.
  const auto magic = r.read<uint32_t>("magic");
  if (magic != kMagic) {
    r.fail(
        fmt::format("not a GGUF file (magic 0x{:08x}, expected 0x{:08x} \"GGUF\")", magic, kMagic));
  }
  g.version_ = r.read<uint32_t>("version");
  if (g.version_ == 1) r.fail("GGUF version 1 is not supported (only versions 2 and 3)");
  if (g.version_ != 2 && g.version_ != 3) {
    const uint32_t swapped = __builtin_bswap32(g.version_);
    if (swapped == 2 || swapped == 3) r.fail("big-endian GGUF files are not supported");
    r.fail(fmt::format("unsupported GGUF version {} (only versions 2 and 3)", g.version_));
  }
  const auto n_tensors = r.read<uint64_t>("tensor count");
  const auto n_kv = r.read<uint64_t>("metadata count");

  // Metadata: each entry takes at least key length (8) + value type (4) + a 1-byte value.
  r.check_count(n_kv, 13, "metadata");
  for (uint64_t i = 0; i < n_kv; ++i) {
    const size_t at = r.pos();
    std::string key = r.read_string(fmt::format("metadata key #{}", i));
    const std::string what = fmt::format("metadata key '{}'", key);
    const auto raw = r.read<uint32_t>(what + " value type");
    if (!is_value_type(raw)) {
      r.fail(fmt::format("{}: unknown value type {} at offset {}", what, raw, r.pos() - 4));
    }
    GgufValue v = read_value(r, static_cast<VType>(raw), what, 0);
    if (!g.metadata_.emplace(std::move(key), std::move(v)).second) {
      r.fail(fmt::format("duplicate {} (entry #{} at offset {})", what, i, at));
    }
  }

  // general.alignment: a power of two; 32 when absent.
  if (const GgufValue* a = g.find("general.alignment")) {
    const bool integer =
        std::holds_alternative<uint64_t>(a->value) || std::holds_alternative<int64_t>(a->value);
    if (!integer) {
      r.fail(fmt::format("general.alignment is {}, expected an integer", type_name(a->type)));
    }
    const int64_t align = a->as_int();
    if (align <= 0 || static_cast<uint64_t>(align) > kMaxAlignment ||
        !std::has_single_bit(static_cast<uint64_t>(align))) {
      r.fail(fmt::format("general.alignment {} is not a power of two in [1, 2^30]", align));
    }
    g.alignment_ = static_cast<uint64_t>(align);
  }

  // Tensor infos: each takes at least name length (8) + n_dims (4) + ne[0] (8) + type (4) +
  // offset (8) bytes.
  r.check_count(n_tensors, 32, "tensor");
  struct Info {
    uint64_t offset;  // relative to the data section
  };
  std::vector<Info> infos;
  infos.reserve(static_cast<size_t>(n_tensors));
  g.tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorView t;
    t.name = r.read_string(fmt::format("tensor #{} name", i));
    const std::string what = fmt::format("tensor '{}'", t.name);
    if (g.tensor_index_.count(t.name) != 0) {
      r.fail(fmt::format("duplicate {} (tensor #{})", what, i));
    }
    const auto n_dims = r.read<uint32_t>(what + " n_dims");
    if (n_dims < 1 || n_dims > kMaxDims) {
      r.fail(fmt::format("{} has n_dims {}, expected 1 to {}", what, n_dims, kMaxDims));
    }
    std::vector<int64_t> ne(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto n = r.read<uint64_t>(fmt::format("{} ne[{}]", what, d));
      if (n == 0 || n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        r.fail(fmt::format("{} has ne[{}] = {}, expected 1 to 2^63-1", what, d, n));
      }
      ne[d] = static_cast<int64_t>(n);
      if (ne[d] > std::numeric_limits<int64_t>::max() / numel) {
        r.fail(fmt::format("{} element count overflows int64 at ne[{}] = {}", what, d, n));
      }
      numel *= ne[d];
    }
    const auto raw_type = r.read<uint32_t>(what + " type");
    if (!kernels::is_known_type(raw_type)) {
      r.fail(fmt::format("{} has unknown or unsupported ggml type {}", what, raw_type));
    }
    t.type = static_cast<kernels::GgmlType>(raw_type);
    const kernels::TypeTraits& traits = kernels::type_traits(t.type);
    if (ne[0] % traits.block_elems != 0) {
      r.fail(fmt::format("{} row of {} elements is not a multiple of the {} block size {}", what,
                         ne[0], traits.name, traits.block_elems));
    }
    const auto blocks = static_cast<uint64_t>(ne[0] / traits.block_elems);
    if (blocks > std::numeric_limits<size_t>::max() / traits.block_bytes) {
      r.fail(fmt::format("{} row byte size overflows ({} blocks of {} bytes)", what, blocks,
                         traits.block_bytes));
    }
    const size_t row = static_cast<size_t>(blocks) * traits.block_bytes;
    const auto rows = static_cast<uint64_t>(numel / ne[0]);
    if (rows > std::numeric_limits<size_t>::max() / row) {
      r.fail(fmt::format("{} byte size overflows ({} rows of {} bytes)", what, rows, row));
    }
    t.nbytes = row * static_cast<size_t>(rows);
    const auto offset = r.read<uint64_t>(what + " offset");
    if (offset % g.alignment_ != 0) {
      r.fail(fmt::format("{} offset {} is not a multiple of the alignment {}", what, offset,
                         g.alignment_));
    }
    t.shape.assign(ne.rbegin(), ne.rend());
    g.tensor_index_.emplace(t.name, g.tensors_.size());
    g.tensors_.push_back(std::move(t));
    infos.push_back({offset});
  }

  // Data section: starts at the first aligned offset after the tensor infos.
  const uint64_t size = bytes.size();
  const uint64_t data_start = align_up(r.pos(), g.alignment_);  // pos <= size, alignment <= 2^30
  for (size_t i = 0; i < g.tensors_.size(); ++i) {
    TensorView& t = g.tensors_[i];
    const uint64_t offset = infos[i].offset;
    if (t.nbytes > size) {
      r.fail(fmt::format("tensor '{}' needs {} bytes, more than the whole file (size {})", t.name,
                         t.nbytes, size));
    }
    if (data_start > size || offset > size - data_start) {
      r.fail(
          fmt::format("tensor '{}' data offset {} (data section at {}) lies beyond the end of the "
                      "file (size {})",
                      t.name, offset, data_start, size));
    }
    const uint64_t begin = data_start + offset;
    if (t.nbytes > size - begin) {
      r.fail(fmt::format("tensor '{}' data [{}, {}) lies beyond the end of the file (size {})",
                         t.name, begin, begin + t.nbytes, size));
    }
    t.data = bytes.data() + begin;
  }
  return g;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

template <class T, class F>
T typed(const GgufFile& g, const std::string& key, F get) {
  const GgufValue* v = g.find(key);
  if (v == nullptr) {
    throw ModelFileError(g.path(), fmt::format("metadata key '{}' is missing", key));
  }
  try {
    return get(*v);
  } catch (const InvalidArgument& e) {
    throw ModelFileError(g.path(), fmt::format("metadata key '{}': {}", key, e.what()));
  }
}

template <class T, class F>
std::optional<T> opt_typed(const GgufFile& g, const std::string& key, F get) {
  if (g.find(key) == nullptr) return std::nullopt;
  return typed<T>(g, key, get);
}

}  // namespace

std::string GgufFile::get_string(const std::string& key) const {
  return typed<std::string>(*this, key, [](const GgufValue& v) { return v.as_string(); });
}
int64_t GgufFile::get_int(const std::string& key) const {
  return typed<int64_t>(*this, key, [](const GgufValue& v) { return v.as_int(); });
}
double GgufFile::get_float(const std::string& key) const {
  return typed<double>(*this, key, [](const GgufValue& v) { return v.as_float(); });
}
std::optional<std::string> GgufFile::opt_string(const std::string& key) const {
  return opt_typed<std::string>(*this, key, [](const GgufValue& v) { return v.as_string(); });
}
std::optional<int64_t> GgufFile::opt_int(const std::string& key) const {
  return opt_typed<int64_t>(*this, key, [](const GgufValue& v) { return v.as_int(); });
}
std::optional<double> GgufFile::opt_float(const std::string& key) const {
  return opt_typed<double>(*this, key, [](const GgufValue& v) { return v.as_float(); });
}

const TensorView* GgufFile::find_tensor(const std::string& name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace sparseserve
