#include "engine/value_regex.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>
#include <vector>

namespace sparseserve {

namespace {

// format_regex's table (the header says what each format is).
const std::map<std::string, std::string, std::less<>> kFormats = [] {
  const std::string year = R"((\d{3}[1-9]|\d\d[1-9]\d|\d[1-9]\d\d|[1-9]\d{3}))";
  const std::string leap = R"((\d\d(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00))";
  const std::string date = "(" + year + R"(-((0[13578]|1[02])-(0[1-9]|[12]\d|3[01])|(0[469]|11)-(0[1-9]|[12]\d|30)|02-(0[1-9]|1\d|2[0-8]))|)" +
                           leap + "-02-29)";
  const std::string time = R"(([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))";
  const std::string octet = R"((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))";
  return std::map<std::string, std::string, std::less<>>{
      {"date", date},
      {"time", time},
      {"date-time", date + "T" + time},
      {"uuid", R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"},
      {"ipv4", "(" + octet + R"(\.){3})" + octet},
      {"email", R"([A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"},
  };
}();

// Digit strings of one length from x to y (x ≤ y as numbers), as a regex: the first digit's
// branches at most once each way, so the size is linear in the length.
std::string same_length_range(const std::string& x, const std::string& y) {
  const size_t n = x.size(), rest = n - 1;
  const auto all = [](std::string_view t, char c) { return t.find_first_not_of(c) == std::string_view::npos; };
  const std::string any = rest == 0 ? "" : "\\d{" + std::to_string(rest) + "}";
  if (x == y) return x;
  if (n == 1 || (all(x.substr(1), '0') && all(y.substr(1), '9'))) {
    return std::string("[") + x[0] + "-" + y[0] + "]" + any;
  }
  if (x[0] == y[0]) return x.substr(0, 1) + "(" + same_length_range(x.substr(1), y.substr(1)) + ")";
  std::vector<std::string> parts;
  char lo = x[0], hi = y[0];
  if (!all(x.substr(1), '0')) {  // x's first digit with the rest from x's up
    parts.push_back(x.substr(0, 1) + "(" + same_length_range(x.substr(1), std::string(rest, '9')) + ")");
    ++lo;
  }
  std::string last;
  if (!all(y.substr(1), '9')) {  // y's first digit with the rest up to y's
    last = y.substr(0, 1) + "(" + same_length_range(std::string(rest, '0'), y.substr(1)) + ")";
    --hi;
  }
  if (lo <= hi) parts.push_back(std::string("[") + lo + "-" + hi + "]" + any);
  if (!last.empty()) parts.push_back(last);
  std::string r;
  for (const std::string& p : parts) r += (r.empty() ? "" : "|") + p;
  return r;
}

// Non-negative integers a..b (b < 0: no end), written as JSON writes them (no leading zero).
std::string natural_range(int64_t a, int64_t b) {
  std::string r;
  const auto digits = [](int64_t v) { return static_cast<int>(std::to_string(v).size()); };
  int64_t low = 1;  // 10^(d-1)
  for (int d = 1; d < digits(a); ++d) low *= 10;
  for (int d = digits(a); b < 0 ? d == digits(a) : d <= digits(b); ++d, low *= 10) {
    const int64_t x = std::max(a, d == 1 ? int64_t{0} : low), y = b < 0 ? low * 10 - 1 : std::min(b, low * 10 - 1);
    if (x > y) continue;
    r += (r.empty() ? "(" : "|(") + same_length_range(std::to_string(x), std::to_string(y)) + ")";
  }
  if (b < 0) r += "|[1-9]\\d{" + std::to_string(digits(a)) + ",}";  // every longer one
  return r;
}

// The integers from lo to hi (absent: no bound), as a regex of their JSON texts (no "-0").
std::string integer_range(std::optional<int64_t> lo, std::optional<int64_t> hi) {
  std::vector<std::string> alts;
  if (!hi || *hi >= 0) alts.push_back(natural_range(lo && *lo > 0 ? *lo : 0, hi ? *hi : -1));
  if (!lo || *lo < 0) alts.push_back("-(" + natural_range(hi && *hi < 0 ? -*hi : 1, lo ? -*lo : -1) + ")");
  std::string r;
  for (const std::string& a : alts) r += (r.empty() ? "(" : "|(") + a + ")";
  return r;
}

__extension__ typedef __int128 Int128;  // 10^15 bounds on a 10^-7 grid, and 17-digit mantissas

// The least (lower) or greatest (upper) integer n with n × 10^-f inside the bound (|bound| ≤ 10^15,
// f ≤ 7: |n| ≤ 10^22).
Int128 scaled_limit(const DecimalBound& b, int f, bool lower) {
  const int32_t e = b.exponent + f;
  Int128 floor = 0;
  bool exact = true;
  if (e >= 0) {
    floor = b.digits;
    for (int32_t k = 0; k < e; ++k) floor *= 10;
  } else if (e < -18) {
    floor = b.digits < 0 ? -1 : 0;
    exact = b.digits == 0;
  } else {
    int64_t div = 1;
    for (int32_t k = 0; k < -e; ++k) div *= 10;
    floor = b.digits / div;
    const int64_t r = b.digits % div;
    if (r < 0) --floor;
    exact = r == 0;
  }
  if (lower) return exact && !b.exclusive ? floor : floor + 1;
  return exact && b.exclusive ? floor - 1 : floor;
}

// Non-negative numbers with exactly f fraction digits whose value × 10^f is in a..b (0 ≤ a ≤ b).
std::string fixed_point_range(int64_t a, int64_t b, int f) {
  if (f == 0) return natural_range(a, b);
  int64_t p = 1;
  for (int k = 0; k < f; ++k) p *= 10;
  const auto pad = [&](int64_t r) {
    const std::string t = std::to_string(r);
    return std::string(static_cast<size_t>(f) - t.size(), '0') + t;
  };
  const int64_t qa = a / p, ra = a % p, qb = b / p, rb = b % p;
  if (qa == qb) return std::to_string(qa) + "\\.(" + same_length_range(pad(ra), pad(rb)) + ")";
  std::string r = std::to_string(qa) + "\\.(" + same_length_range(pad(ra), pad(p - 1)) + ")";
  if (qb - qa >= 2) r += "|(" + natural_range(qa + 1, qb - 1) + ")\\.\\d{" + std::to_string(f) + "}";
  return r + "|" + std::to_string(qb) + "\\.(" + same_length_range(pad(0), pad(rb)) + ")";
}

}  // namespace

std::string number_texts(const std::optional<DecimalBound>& lo, const std::optional<DecimalBound>& hi) {
  std::string r;
  int64_t cap = 1;  // 10^(integer digits + f)
  for (int k = 0; k < kBoundedIntegerDigits; ++k) cap *= 10;
  for (int f = 0; f <= kBoundedFraction; ++f, cap *= 10) {
    // Clamped to the written range on both sides before narrowing (a bound may be ~10^21 here).
    const auto clamp = [&](Int128 v) { return static_cast<int64_t>(std::clamp<Int128>(v, -cap, cap)); };
    const int64_t least = std::max(lo ? clamp(scaled_limit(*lo, f, true)) : -(cap - 1), -(cap - 1));
    const int64_t most = std::min(hi ? clamp(scaled_limit(*hi, f, false)) : cap - 1, cap - 1);
    if (least > most) continue;
    if (most >= 0) r += (r.empty() ? "(" : "|(") + fixed_point_range(std::max<int64_t>(least, 0), most, f) + ")";
    if (least < 0) {  // -m for m in max(1, -most) .. -least
      r += (r.empty() ? "-(" : "|-(") + fixed_point_range(std::max<int64_t>(1, -most), -least, f) + ")";
    }
  }
  return r;
}


DecimalBound DecimalBound::of(int64_t v, bool exclusive) { return {v, 0, exclusive}; }

DecimalBound DecimalBound::of(double v, bool exclusive) {
  DecimalBound b{0, 0, exclusive};
  char buf[64];  // std::to_chars: the shortest text that reads back as v (nlohmann's dump may be longer)
  const std::string t(buf, std::to_chars(buf, buf + sizeof buf, v).ptr);  // "-0.3", "1e-07"
  size_t i = t[0] == '-' ? 1 : 0;
  int32_t fraction = 0;
  bool dot = false;
  for (; i < t.size() && t[i] != 'e' && t[i] != 'E'; ++i) {
    if (t[i] == '.') {
      dot = true;
    } else if (b.digits < INT64_MAX / 10) {  // the shortest text has at most 17 significant digits
      b.digits = b.digits * 10 + (t[i] - '0');
      fraction += dot ? 1 : 0;
    } else {
      fraction -= dot ? 0 : 1;  // a digit dropped before the point (not reached for these sizes)
    }
  }
  b.exponent = (i < t.size() ? std::stoi(t.substr(i + 1)) : 0) - fraction;
  if (t[0] == '-') b.digits = -b.digits;
  return b;
}

DecimalBound tighter(const DecimalBound& a, const DecimalBound& b, bool lower) {
  // On the 10^-(kBoundedFraction + 1) grid: bounds that meet the same grid point there meet the same
  // points of every coarser grid, the only ones texts are written on.
  const Int128 x = scaled_limit(a, kBoundedFraction + 1, lower), y = scaled_limit(b, kBoundedFraction + 1, lower);
  return lower ? (x > y ? a : b) : (x < y ? a : b);
}

std::string integer_texts(const std::optional<DecimalBound>& lo, const std::optional<DecimalBound>& hi) {
  const auto limit = [](const std::optional<DecimalBound>& b, bool lower) {  // |bound| ≤ 10^15: fits
    return b ? std::optional(static_cast<int64_t>(scaled_limit(*b, 0, lower))) : std::nullopt;
  };
  const std::optional<int64_t> least = limit(lo, true), most = limit(hi, false);
  return !least || !most || *least <= *most ? integer_range(least, most) : "";
}

const std::string* format_regex(std::string_view format) {
  const auto it = kFormats.find(format);
  return it == kFormats.end() ? nullptr : &it->second;
}

}  // namespace sparseserve
