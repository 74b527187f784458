// Dequantizes GGUF tensors or raw block bytes to raw little-endian float32, for
// tests/python/test_dequant.py to compare against gguf-py.
//   dequant_tool tensor --model M.gguf --name blk.0.attn_q.weight --out out.f32
//   dequant_tool raw --type Q4_K --n 512 --in blocks.bin --out out.f32
// Exit status 0 on success, 1 with a message on stderr otherwise.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "common/errors.h"
#include "engine/gguf.h"
#include "kernels/cpu/ggml_types.h"

namespace {

using sparseserve::InvalidArgument;
using sparseserve::kernels::GgmlType;

GgmlType type_by_name(const std::string& name) {
  for (uint32_t raw = 0; raw < 64; ++raw) {
    if (!sparseserve::kernels::is_known_type(raw)) continue;
    const auto type = static_cast<GgmlType>(raw);
    if (sparseserve::kernels::type_traits(type).name == name) return type;
  }
  throw InvalidArgument("unknown type name '" + name + "'");
}

void write_floats(const std::string& path, const std::vector<float>& v) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(v.data()),
            static_cast<std::streamsize>(v.size() * sizeof(float)));
  if (!out) throw InvalidArgument("cannot write " + path);
}

// All rows of the tensor, in storage order (row-major, outermost dimension first).
void dequant_tensor(const std::string& model, const std::string& name, const std::string& out) {
  const auto gguf = sparseserve::GgufFile::open(model);
  const sparseserve::TensorView* t = gguf.find_tensor(name);
  if (t == nullptr) throw InvalidArgument("no tensor '" + name + "' in " + model);
  const int64_t cols = t->cols();
  const size_t row = sparseserve::kernels::row_bytes(t->type, cols);
  std::vector<float> values(static_cast<size_t>(t->numel()));
  for (int64_t r = 0; r < t->rows(); ++r) {
    sparseserve::kernels::dequantize_row(t->type, t->data + static_cast<size_t>(r) * row,
                                         values.data() + r * cols, cols);
  }
  write_floats(out, values);
}

void dequant_raw(const std::string& type_name, int64_t n, const std::string& in,
                 const std::string& out) {
  const GgmlType type = type_by_name(type_name);
  std::ifstream f(in, std::ios::binary);
  if (!f) throw InvalidArgument("cannot read " + in);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(f)),
                                std::istreambuf_iterator<char>());
  const size_t want = sparseserve::kernels::row_bytes(type, n);
  if (bytes.size() != want) {
    throw InvalidArgument(in + " holds " + std::to_string(bytes.size()) + " bytes; " +
                          std::to_string(n) + " elements of " + type_name + " need " +
                          std::to_string(want));
  }
  std::vector<float> values(static_cast<size_t>(n));
  sparseserve::kernels::dequantize_row(type, bytes.data(), values.data(), n);
  write_floats(out, values);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Dequantize GGUF tensors or raw ggml blocks to float32"};
  app.require_subcommand(1);

  std::string model, name, out;
  auto* tensor = app.add_subcommand("tensor", "dequantize one tensor of a GGUF file");
  tensor->add_option("--model", model, "GGUF file")->required();
  tensor->add_option("--name", name, "tensor name")->required();
  tensor->add_option("--out", out, "output file (raw float32)")->required();

  std::string type, in;
  int64_t n = 0;
  auto* raw = app.add_subcommand("raw", "dequantize raw block bytes");
  raw->add_option("--type", type, "ggml type name, e.g. Q4_K")->required();
  raw->add_option("--n", n, "number of elements (a multiple of the block size)")->required();
  raw->add_option("--in", in, "input file of block bytes")->required();
  raw->add_option("--out", out, "output file (raw float32)")->required();

  CLI11_PARSE(app, argc, argv);
  try {
    if (*tensor) dequant_tensor(model, name, out);
    if (*raw) dequant_raw(type, n, in, out);
  } catch (const sparseserve::Error& e) {
    std::cerr << "dequant_tool: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
