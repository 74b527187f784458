// Logprobs of a logits row as the OpenAI API reports them (the model's own distribution, before any
// sampling transform).
#pragma once

#include <cstdint>
#include <span>

#include "engine/request.h"

namespace sparseserve {

// The log-softmax of a logits row: the k most likely ids (best first; ties in no set order) with
// their logprobs in top, and lse, the row's log-sum-exp (an id's logprob is row[id] − lse).
TokenLogprob top_logprobs(std::span<const float> row, int32_t k, double& lse);

// vLLM's rank of `token` in a logits row: the ids at least as likely as it, itself included (ties
// count ahead of it).
int32_t logprob_rank(std::span<const float> row, int32_t token);

}  // namespace sparseserve
