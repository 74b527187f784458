#include "kvcache/head_roles.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "common/errors.h"
#include "kvcache/sparsity_profile.h"

namespace sparseserve::kvcache {
namespace {

constexpr HeadRole R = HeadRole::kRetrieval;
constexpr HeadRole S = HeadRole::kStreaming;

TEST(HeadRoles, RejectsBadShapes) {
  EXPECT_THROW(HeadRoles(2, 2, {R, R, R}), InvalidArgument);
  EXPECT_THROW(HeadRoles(0, 2, {}), InvalidArgument);
  EXPECT_THROW(HeadRoles(2, 0, {}), InvalidArgument);
  EXPECT_THROW(HeadRoles(1, 2, {R, static_cast<HeadRole>(7)}), InvalidArgument);
  EXPECT_THROW(HeadRoles::all_retrieval(-1, 4), InvalidArgument);
}

TEST(HeadRoles, SlotsFollowKvHeadOrderPerRole) {
  // layer 0: R S R S; layer 1: S S S R
  const HeadRoles roles(2, 4, {R, S, R, S, S, S, S, R});
  EXPECT_EQ(roles.heads(0, R), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(roles.heads(0, S), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(roles.heads(1, R), (std::vector<int32_t>{3}));
  EXPECT_EQ(roles.heads(1, S), (std::vector<int32_t>{0, 1, 2}));
  // Lanes are numbered layer-major within each role.
  EXPECT_EQ(roles.slot(0, 0), 0);
  EXPECT_EQ(roles.slot(0, 2), 1);
  EXPECT_EQ(roles.slot(0, 3), 1);
  EXPECT_EQ(roles.slot(1, 2), 4);
  EXPECT_EQ(roles.slot(1, 3), 2);
  EXPECT_EQ(roles.role(1, 3), R);
  EXPECT_EQ(roles.slots(R), 3);
  EXPECT_EQ(roles.slots(S), 5);
  EXPECT_EQ(roles.count(R), 3);
  EXPECT_EQ(roles.count(S), 5);
  EXPECT_FALSE(roles.all_retrieval());
}

TEST(HeadRoles, AllRetrieval) {
  const HeadRoles roles = HeadRoles::all_retrieval(3, 8);
  EXPECT_TRUE(roles.all_retrieval());
  EXPECT_EQ(roles.slots(R), 24);
  EXPECT_EQ(roles.slots(S), 0);
  EXPECT_EQ(roles.count(R), 24);
  for (int32_t l = 0; l < 3; ++l) {
    EXPECT_TRUE(roles.heads(l, S).empty());
    for (int32_t h = 0; h < 8; ++h) EXPECT_EQ(roles.slot(l, h), l * 8 + h);
  }
}

TEST(HeadRoles, OutOfRangeIsInternalError) {
  const HeadRoles roles = HeadRoles::all_retrieval(2, 2);
  EXPECT_THROW(roles.role(2, 0), InternalError);
  EXPECT_THROW(roles.role(0, -1), InternalError);
  EXPECT_THROW(roles.slot(0, 2), InternalError);
  EXPECT_THROW(roles.heads(-1, R), InternalError);
  EXPECT_THROW(roles.slots(static_cast<HeadRole>(2)), InternalError);
}

// Random role matrices: heads()/slot() are inverse; lanes are unique per role and dense.
TEST(HeadRoles, RandomMatricesAreConsistent) {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 200; ++iter) {
    const int32_t n_layers = 1 + static_cast<int32_t>(rng() % 6), n_heads = 1 + static_cast<int32_t>(rng() % 9);
    std::vector<HeadRole> v(static_cast<size_t>(n_layers * n_heads));
    for (auto& r : v) r = rng() % 2 ? R : S;
    const HeadRoles roles(n_layers, n_heads, v);
    int32_t count[2] = {0, 0};
    for (int32_t l = 0; l < n_layers; ++l) {
      for (const HeadRole role : {R, S}) {
        const auto& heads = roles.heads(l, role);
        const auto k = static_cast<int>(role);
        EXPECT_TRUE(std::is_sorted(heads.begin(), heads.end()));
        for (size_t s = 0; s < heads.size(); ++s) {
          EXPECT_EQ(roles.role(l, heads[s]), role);
          EXPECT_EQ(roles.slot(l, heads[s]), count[k]++) << "lanes are layer-major and dense";
        }
      }
      EXPECT_EQ(roles.heads(l, R).size() + roles.heads(l, S).size(), static_cast<size_t>(n_heads));
    }
    EXPECT_EQ(roles.slots(R), count[0]);
    EXPECT_EQ(roles.slots(S), count[1]);
    EXPECT_EQ(roles.count(R), count[0]);
    EXPECT_EQ(roles.count(S), count[1]);
  }
}

TEST(SparsityProfile, DenseIsAllRetrievalWithNothingSparse) {
  const SparsityProfile p = SparsityProfile::dense(4, 2);
  EXPECT_EQ(p.name, "dense");
  EXPECT_TRUE(p.is_dense());
  EXPECT_FALSE(p.streaming.has_value());
  EXPECT_EQ(p.roles.n_layers(), 4);
  EXPECT_EQ(p.roles.n_kv_heads(), 2);
  EXPECT_EQ(p.roles.slots(R), 8);
  EXPECT_EQ(p.roles.slots(S), 0);
}

}  // namespace
}  // namespace sparseserve::kvcache
