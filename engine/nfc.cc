#include "engine/nfc.h"

#include <climits>

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>

#include "common/errors.h"

namespace sparseserve {

std::string to_nfc(std::string_view utf8) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err)) throw InternalError(std::string("ICU: no NFC normalizer: ") + u_errorName(err));
  if (utf8.size() > INT32_MAX) throw InvalidArgument("text past 2 GiB cannot be normalized");
  const icu::StringPiece in(utf8.data(), static_cast<int32_t>(utf8.size()));
  if (nfc->isNormalizedUTF8(in, err) && U_SUCCESS(err)) return std::string(utf8);
  err = U_ZERO_ERROR;
  std::string out;
  icu::StringByteSink<std::string> sink(&out);
  nfc->normalizeUTF8(0, in, sink, nullptr, err);
  if (U_FAILURE(err)) throw InternalError(std::string("ICU: NFC normalization failed: ") + u_errorName(err));
  return out;
}

}  // namespace sparseserve
