// Made-up weights for `load_format: dummy` (as vLLM's): every tensor a model needs, of the shape its
// config gives, filled from a seeded hash so a load is repeatable and takes no file. For timing
// and memory work on shapes whose weights are not at hand (Llama-3-8B); the model's replies mean
// nothing.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace sparseserve {

// How a made-up tensor is filled (all stored as BF16, as Hugging Face checkpoints usually are):
//   kMatrix: uniform with standard deviation 1/sqrt(cols), so a product keeps its input's scale;
//   kGain:   1.0 (RMSNorm gains);
//   kBias:   uniform with standard deviation 0.02.
enum class DummyFill { kMatrix, kGain, kBias };

class DummyTensors {
 public:
  explicit DummyTensors(uint64_t seed = 0) : seed_(seed) {}

  // A new tensor named `name` of `shape` (outermost first). Its values depend only on the seed, the
  // name and the element's index (not on threads or call order). The view stays valid as long as
  // this object. Fills rows in parallel (OpenMP).
  const TensorView& make(const std::string& name, const std::vector<int64_t>& shape, DummyFill fill);

 private:
  uint64_t seed_;
  std::deque<TensorView> views_;
  std::vector<std::unique_ptr<std::byte[]>> buffers_;
};

}  // namespace sparseserve
