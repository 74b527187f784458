#include "engine/stop_strings.h"

#include <gtest/gtest.h>

namespace sparseserve {
namespace {

std::string feed(StopStringFilter& f, const std::vector<std::string>& pieces, bool& stopped, std::string& matched) {
  std::string out;
  for (const auto& p : pieces) {
    auto r = f.push(p);
    out += r.text;
    if (r.stopped) {
      stopped = true;
      matched = r.matched;
      return out;
    }
  }
  out += f.flush();
  return out;
}

TEST(StopStrings, StopSplitAcrossPiecesNeverLeaks) {
  StopStringFilter f({"\n\nUser:"});
  auto r1 = f.push("Hello world.\n");
  EXPECT_EQ(r1.text, "Hello world.");  // "\n" may start the stop string: held back
  auto r2 = f.push("\nUs");
  EXPECT_EQ(r2.text, "");
  auto r3 = f.push("er: hi");
  EXPECT_TRUE(r3.stopped);
  EXPECT_EQ(r3.text, "");
  EXPECT_EQ(r3.matched, "\n\nUser:");
}

TEST(StopStrings, FalseStartIsReleased) {
  StopStringFilter f({"STOP"});
  bool stopped = false;
  std::string matched;
  EXPECT_EQ(feed(f, {"ST", "ART and ", "STO", "RE"}, stopped, matched), "START and STORE");
  EXPECT_FALSE(stopped);
}

TEST(StopStrings, EarliestMatchWins) {
  StopStringFilter f({"world", "lo w"});
  bool stopped = false;
  std::string matched;
  EXPECT_EQ(feed(f, {"hello world"}, stopped, matched), "hel");
  EXPECT_TRUE(stopped);
  EXPECT_EQ(matched, "lo w");
}

TEST(StopStrings, NoStopsPassesThrough) {
  StopStringFilter f({});
  EXPECT_EQ(f.push("abc").text, "abc");
  EXPECT_EQ(f.flush(), "");
}

}  // namespace
}  // namespace sparseserve
