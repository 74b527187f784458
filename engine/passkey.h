// Synthetic passkey / needle-in-a-haystack prompts (used by `calibrate` and bench/passkey_bench):
// real prose as the haystack (the license texts under /usr/share/common-licenses, or a built-in
// paragraph where they are missing), needles "The pass key of <name> is <5 digits>. Remember it."
// at chosen depths, and a closing question whose answer is the key.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "engine/tokenizer.h"

namespace sparseserve {

struct PasskeyPrompt {
  std::vector<int32_t> prompt;   // exactly the requested number of tokens
  std::vector<int32_t> answer;   // token ids of the answer (" 12345")
  std::string key;               // "12345"
  std::vector<int64_t> needle_positions;  // first token of each needle
};

// Haystack text and where it came from (for logs: prompts, and so calibrations, depend on it).
struct Haystack {
  std::string text;
  std::string source;
};

// The concatenated license texts of this host (Debian 12's on the development machines: another
// host's set gives other prompts), or a built-in paragraph repeated where there are none.
Haystack default_haystack();

// A prompt of exactly `tokens` tokens (≥ 256) with `needles` keys (the first one is asked for)
// placed at `depths` (fractions of the haystack, one per needle; clamped to [0, 1]).
// The haystack is read from a random offset drawn from rng.
PasskeyPrompt make_passkey_prompt(const Tokenizer& tok, const std::string& haystack, int64_t tokens,
                                  const std::vector<double>& depths, std::mt19937_64& rng);

}  // namespace sparseserve
