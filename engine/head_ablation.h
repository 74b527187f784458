// The end-to-end score of calibrate's kAblation method for one prompt: the answer's negative
// log-likelihood when a single (layer, KV head) attends under its streaming Λ band — every query
// head of its GQA group, at every row (key j visible to query i iff j ≤ i and (j < sink or
// i − j < local), DESIGN.md §5) — and every other head attends densely.
//
// How: the constructor runs the prompt densely in two steps, rows [0, r0) with
// r0 = min(sink + local, first answer row) — rows that see every key under the band, so they and
// their K/V are the same whichever head streams — then the tail rows [r0, n), keeping the residual
// stream entering each layer. streaming_nll(l, h) resumes the tail step at layer l from that stream
// with (l, h) under the band: n_layers − l layer passes over the tail rows, not a whole forward.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/calibrate.h"
#include "engine/cpu_forward.h"
#include "engine/model.h"
#include "kvcache/geometry.h"

namespace sparseserve {

class HeadAblation {
 public:
  // Runs the dense pass. The model must outlive this object.
  HeadAblation(const Model& model, CalibrationPrompt prompt, kvcache::StreamingWindow window);
  ~HeadAblation();

  // Σ over the answer rows of −log p(answer token), nats, everything dense.
  double dense_nll() const { return dense_nll_; }
  // The same with (layer, head) streaming (its kAblation score is this − dense_nll()).
  // InvalidArgument for a pair outside the model.
  double streaming_nll(int64_t layer, int64_t head);

 private:
  class Backend;
  // LayerTap body: keeps the answer rows of the stream after the last layer.
  void keep_answer_rows(int64_t layer, std::span<const float> stream);
  double answer_nll();  // of the answer rows kept by the last pass

  const Model& model_;
  CpuForward fwd_;
  CalibrationPrompt prompt_;
  int64_t r0_;  // first tail row
  std::unique_ptr<Backend> kv_;
  std::vector<std::vector<float>> stream_;  // dense stream entering each layer, tail rows × hidden
  std::vector<float> answer_stream_, logits_;  // answer rows after the last layer; their logits
  double dense_nll_ = 0;
};

}  // namespace sparseserve
