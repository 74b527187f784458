// safetensors reader (SafetensorsSet in engine/hf_model.h).
//
// File layout (https://github.com/huggingface/safetensors, "Format"):
//   [0, 8)            N: header length in bytes, unsigned 64-bit little-endian
//   [8, 8 + N)        header: a UTF-8 JSON object (may be padded with trailing spaces)
//                       { "__metadata__": {string: string} (optional, ignored here),
//                         "<tensor name>": { "dtype": "F32" | "F16" | "BF16" | ...,
//                                            "shape": [d0, d1, ...],        // outermost first
//                                            "data_offsets": [begin, end] } ... }
//   [8 + N, size)     data section; a tensor's bytes are [begin, end) relative to its start,
//                     row-major, little-endian, end - begin == prod(shape) * sizeof(dtype).
// Every header field is checked before a TensorView points into the mapping: offsets inside the
// data section, sizes matching the shape, no two tensors overlapping. Gaps between tensors are
// tolerated (the format forbids them, but they cannot cause an out-of-bounds read).
// Tensor data is not guaranteed to be aligned to its element size; readers copy or use unaligned
// loads.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "engine/hf_model.h"
#include "engine/json_file.h"

namespace sparseserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using kernels::GgmlType;

// Headers larger than this are rejected before parsing (the reference implementation's limit).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DtypeInfo {
  GgmlType type;
  size_t bytes;  // per element
};

// The dtypes this reader accepts; every other safetensors dtype (F64, I64, I32, I16, I8, U8, BOOL,
// F8_E4M3, F8_E5M2, ...) is rejected with a message naming it.
bool lookup_dtype(const std::string& dtype, DtypeInfo* out) {
  if (dtype == "F32") *out = {GgmlType::F32, 4};
  else if (dtype == "F16") *out = {GgmlType::F16, 2};
  else if (dtype == "BF16") *out = {GgmlType::BF16, 2};
  else return false;
  return true;
}

// A shape or data_offsets array for an error message: its integers, anything else as "?" (never
// recursive: a deeply nested element would overflow the stack in dump()).
std::string int_list(const json& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.size(); ++i) {
    if (i > 0) s += ", ";
    s += a[i].is_number_integer() ? a[i].dump() : "?";
  }
  return s + "]";
}

// A non-negative JSON integer, or an error naming the tensor and field.
uint64_t as_count(const json& v, const std::string& file, const std::string& tensor,
                  const char* field) {
  if (!v.is_number_unsigned()) {
    throw ModelFileError(file, "tensor '" + tensor + "': " + field +
                                   " must hold non-negative integers, got " + json_excerpt(v));
  }
  return v.get<uint64_t>();
}

// A tensor entry as the header declares it, with offsets made absolute (from the file start).
struct Entry {
  std::string name;
  DtypeInfo dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // absolute byte offsets in the file
  uint64_t end = 0;
};

Entry parse_entry(const std::string& file, const std::string& name, const json& v,
                  uint64_t data_start, uint64_t data_size) {
  if (!v.is_object()) throw ModelFileError(file, "tensor '" + name + "': entry is not an object");
  Entry e;
  e.name = name;

  const auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) {
    throw ModelFileError(file, "tensor '" + name + "': missing or non-string \"dtype\"");
  }
  const std::string dtype = dt->get<std::string>();
  if (!lookup_dtype(dtype, &e.dtype)) {
    throw ModelFileError(file, "tensor '" + name + "' has unsupported dtype " + dtype +
                                   " (supported: F32, F16, BF16)");
  }

  const auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) {
    throw ModelFileError(file, "tensor '" + name + "': missing or non-array \"shape\"");
  }
  uint64_t numel = 1;
  for (const json& d : *sh) {
    const uint64_t dim = as_count(d, file, name, "shape");
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, dim, &numel)) {
      throw ModelFileError(file, "tensor '" + name + "': shape " + int_list(*sh) + " overflows");
    }
    e.shape.push_back(static_cast<int64_t>(dim));
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, e.dtype.bytes, &nbytes)) {
    throw ModelFileError(file, "tensor '" + name + "': shape " + int_list(*sh) + " overflows");
  }

  const auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2) {
    throw ModelFileError(file, "tensor '" + name + "': \"data_offsets\" must be [begin, end]");
  }
  const uint64_t begin = as_count((*off)[0], file, name, "data_offsets");
  const uint64_t end = as_count((*off)[1], file, name, "data_offsets");
  if (begin > end) {
    throw ModelFileError(file, "tensor '" + name + "': data_offsets " + int_list(*off) +
                                   " has begin after end");
  }
  if (end > data_size) {
    throw ModelFileError(file, "tensor '" + name + "': data_offsets " + int_list(*off) +
                                   " run past the end of the file (data section is " +
                                   std::to_string(data_size) + " bytes)");
  }
  if (end - begin != nbytes) {
    throw ModelFileError(file, "tensor '" + name + "': data_offsets " + int_list(*off) + " span " +
                                   std::to_string(end - begin) + " bytes but shape " +
                                   int_list(*sh) + " of " + dtype + " needs " +
                                   std::to_string(nbytes));
  }
  e.begin = data_start + begin;
  e.end = data_start + end;
  return e;
}

// Parses one mapped file's header into views over its data. Throws ModelFileError(path, ...).
std::vector<TensorView> parse_file(const MappedFile& mf) {
  const std::string& file = mf.path();
  const auto bytes = mf.bytes();
  if (bytes.size() < 8) {
    throw ModelFileError(file, "too short for a safetensors header (" +
                                   std::to_string(bytes.size()) + " bytes)");
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<uint64_t>(bytes[static_cast<size_t>(i)]);
  }
  if (header_len > bytes.size() - 8) {
    throw ModelFileError(file, "header length " + std::to_string(header_len) +
                                   " exceeds the file size (" + std::to_string(bytes.size()) +
                                   " bytes)");
  }
  if (header_len > kMaxHeaderBytes) {
    throw ModelFileError(file, "header length " + std::to_string(header_len) +
                                   " exceeds the 100 MiB limit");
  }
  const char* text = reinterpret_cast<const char*>(bytes.data() + 8);

  // Duplicate top-level keys would silently overwrite each other in nlohmann::json; catch them.
  std::set<std::string> seen;
  std::string duplicate;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t event,
                                               json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json header;
  try {
    header = json::parse(text, text + header_len, on_event);
  } catch (const json::exception& e) {
    throw ModelFileError(file, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw ModelFileError(file, "header is not a JSON object");
  if (!duplicate.empty()) {
    throw ModelFileError(file, "tensor '" + duplicate + "' is declared twice in the header");
  }

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - data_start;
  std::vector<Entry> entries;
  for (const auto& [name, v] : header.items()) {
    if (name == "__metadata__") continue;
    entries.push_back(parse_entry(file, name, v, data_start, data_size));
  }

  // Overlap check: sorted by begin, each non-empty tensor must start at or after the previous end.
  std::vector<const Entry*> by_offset;
  for (const Entry& e : entries) {
    if (e.end > e.begin) by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      throw ModelFileError(file, "tensors '" + by_offset[i - 1]->name + "' and '" +
                                     by_offset[i]->name + "' overlap in the data section");
    }
  }

  std::vector<TensorView> views;
  views.reserve(entries.size());
  for (Entry& e : entries) {
    TensorView t;
    t.name = std::move(e.name);
    t.type = e.dtype.type;
    t.shape = std::move(e.shape);
    t.data = bytes.data() + e.begin;
    t.nbytes = static_cast<size_t>(e.end - e.begin);
    views.push_back(std::move(t));
  }
  return views;
}

// A shard name from an index must be a plain relative path that stays inside the directory.
bool is_safe_shard_name(const std::string& name) {
  if (name.empty()) return false;
  const fs::path p(name);
  if (p.is_absolute()) return false;
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

SafetensorsSet SafetensorsSet::open_file(const std::string& path) {
  SafetensorsSet set;
  auto mf = std::make_shared<MappedFile>(path);
  for (TensorView& t : parse_file(*mf)) {
    std::string name = t.name;  // keys are unique within a file (checked by parse_file)
    set.tensors_.emplace(std::move(name), std::move(t));
  }
  set.files_.push_back(std::move(mf));
  return set;
}

SafetensorsSet SafetensorsSet::open_dir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw ModelFileError(dir, "not a directory");
  const fs::path root(dir);

  const fs::path index_path = root / "model.safetensors.index.json";
  const fs::path single_path = root / "model.safetensors";
  std::vector<std::string> shards;  // file names relative to dir, in load order
  std::map<std::string, std::string> weight_map;  // tensor name -> shard name (index only)

  if (fs::exists(index_path, ec)) {
    const std::string index_file = index_path.string();
    const json index = read_json_file(index_file, kJsonListingMaxBytes);
    const auto wm = index.is_object() ? index.find("weight_map") : index.end();
    if (wm == index.end() || !wm->is_object()) {
      throw ModelFileError(index_file, "missing \"weight_map\" object");
    }
    std::set<std::string> listed;
    for (const auto& [tensor, shard] : wm->items()) {
      if (!shard.is_string() || !is_safe_shard_name(shard.get<std::string>())) {
        throw ModelFileError(index_file, "tensor '" + tensor + "' maps to an invalid shard name " +
                                             json_excerpt(shard));
      }
      weight_map.emplace(tensor, shard.get<std::string>());
      if (listed.insert(shard.get<std::string>()).second) shards.push_back(shard.get<std::string>());
    }
    if (shards.empty()) throw ModelFileError(index_file, "\"weight_map\" lists no tensors");
    for (const std::string& shard : shards) {
      if (!fs::is_regular_file(root / shard, ec)) {
        throw ModelFileError(index_file, "shard '" + shard + "' is missing from " + dir);
      }
    }
  } else if (fs::exists(single_path, ec)) {
    shards.push_back("model.safetensors");
  } else {
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec)) {
        shards.push_back(entry.path().filename().string());
      }
    }
    std::sort(shards.begin(), shards.end());
    if (shards.empty()) {
      throw ModelFileError(dir, "no model.safetensors, model.safetensors.index.json or "
                                "*.safetensors file");
    }
  }

  SafetensorsSet set;
  std::map<std::string, std::string> owner;  // tensor name -> shard it came from
  for (const std::string& shard : shards) {
    const std::string path = (root / shard).string();
    auto mf = std::make_shared<MappedFile>(path);
    for (TensorView& t : parse_file(*mf)) {
      const auto [it, inserted] = owner.emplace(t.name, shard);
      if (!inserted) {
        throw ModelFileError(path, "tensor '" + t.name + "' also appears in shard '" +
                                       it->second + "'");
      }
      std::string name = t.name;
      set.tensors_.emplace(std::move(name), std::move(t));
    }
    set.files_.push_back(std::move(mf));
  }

  // Every tensor the index names must be in the shard it names.
  for (const auto& [tensor, shard] : weight_map) {
    const auto it = owner.find(tensor);
    if (it == owner.end() || it->second != shard) {
      throw ModelFileError(index_path.string(),
                           "tensor '" + tensor + "' is mapped to shard '" + shard + "', which does not contain it");
    }
  }
  return set;
}

const TensorView* SafetensorsSet::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

}  // namespace sparseserve
