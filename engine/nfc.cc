#include "engine/nfc.h"

#include <climits>

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>
#include <unicode/utf8.h>

#include "common/errors.h"

namespace sparseserve {
namespace {

// HF tokenizers normalizes with the unicode-normalization-alignments crate, whose tables are
// Unicode 9.0's. A code point assigned since is, to it, unassigned: combining class 0, no
// decomposition, no composition. ICU (72: Unicode 15) would reorder such a combining mark, so the
// text is normalized in pieces between those code points, which stay as they are.
constexpr uint8_t kHfUnicodeMajor = 9;

bool newer_than_hf(UChar32 c) {
  UVersionInfo age;
  u_charAge(c, age);
  return age[0] > kHfUnicodeMajor;
}

void normalize_piece(const icu::Normalizer2& nfc, std::string_view piece, std::string& out) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::StringPiece in(piece.data(), static_cast<int32_t>(piece.size()));
  if (nfc.isNormalizedUTF8(in, err) && U_SUCCESS(err)) {
    out.append(piece);
    return;
  }
  err = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(&out);
  nfc.normalizeUTF8(0, in, sink, nullptr, err);
  if (U_FAILURE(err)) throw InternalError(std::string("ICU: NFC normalization failed: ") + u_errorName(err));
}

}  // namespace

std::string to_nfc(std::string_view utf8) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err)) throw InternalError(std::string("ICU: no NFC normalizer: ") + u_errorName(err));
  if (utf8.size() > INT32_MAX) throw InvalidArgument("text past 2 GiB cannot be normalized");
  std::string out;
  out.reserve(utf8.size());
  const auto n = static_cast<int32_t>(utf8.size());
  int32_t piece = 0;  // start of the piece being gathered
  for (int32_t i = 0; i < n;) {
    const int32_t at = i;
    UChar32 c;
    U8_NEXT(utf8.data(), i, n, c);
    if (c < 0 || !newer_than_hf(c)) continue;
    normalize_piece(*nfc, utf8.substr(static_cast<size_t>(piece), static_cast<size_t>(at - piece)), out);
    out.append(utf8.substr(static_cast<size_t>(at), static_cast<size_t>(i - at)));
    piece = i;
  }
  normalize_piece(*nfc, utf8.substr(static_cast<size_t>(piece)), out);
  return out;
}

}  // namespace sparseserve
