// The three protocols (sim/strategies/STRATEGIES.md) on the instance driver (sim/instance.h), checked by hand:
// A (evict) holds B + 1 slots at attention; B (prefill) holds B_p + t - P + 1; C (sparse) holds
// every token and reads what the selector picks. Bytes are those of the identity codec (fp16 key
// and value, 4·D per slot) plus the strategy's state, so every expected value is small arithmetic.
#include <doctest/doctest.h>

#include <fstream>
#include <map>
#include <set>
#include <vector>

#include "sim/exact_stats.h"
#include "sim/instance.h"
#include "sim/replay.h"
#include "sim_test_util.h"
#include "trace_helpers.h"

using namespace kvsim;
using kvsim::test::Layer;

namespace {

struct Seen {
  int64_t t = 0, n = 0;
  double bytes = 0, read = 0;
  std::set<int32_t> positions;
};

// Runs `spec` under `protocol` on one KV head and records, at every decode step, what the cache
// holds when attention runs (after token t was stored, before observe and evict).
std::vector<Seen> run(const std::string& spec, Protocol protocol, Layer& L, int64_t P) {
  auto s = make_strategy(spec);
  if (s->needs_q_pre() && L.q_pre.empty()) L.q_pre = L.q;  // rope_style none: pre-RoPE = post-RoPE
  if (s->needs_vo_norm() && L.vo_norm.empty()) {           // any positive value norms
    L.vo_norm.resize(static_cast<size_t>(L.H * L.T));
    for (size_t i = 0; i < L.vo_norm.size(); ++i) L.vo_norm[i] = 1.0f + static_cast<float>(i % 7);
  }
  LayerView lv = L.view();
  std::vector<float> kz;  // kvzip's reconstruction scores: any values in [0, 1] over the prompt
  if (s->needs_kvzip_score()) {
    kz.assign(static_cast<size_t>(L.Hkv * L.T), 0.0f);
    for (int64_t kv = 0; kv < L.Hkv; ++kv)
      for (int64_t i = 0; i < P; ++i) kz[kv * L.T + i] = static_cast<float>((i * 37 + kv * 5) % 11) / 11.0f;
    lv.kvzip_score = kz.data(), lv.kvzip_context = P;
  }
  ExactStats rs;
  compute_exact_stats(lv, Backend::ref, rs);
  std::vector<float> colsums;
  compute_prompt_colsums(lv, rs, P, Backend::ref, colsums);
  lv.prompt_colsums = colsums.data();
  lv.entropy = rs.entropy.data();
  Instance inst(*s, make_context(*s, ModelShape{1, L.H, L.Hkv, L.D}, 0, 0, L.T, P, protocol));
  inst.prefill_from(lv);
  std::vector<Seen> out;
  for (int64_t t = P; t < L.T; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
      out.push_back({step, in.cache(0).size(), in.bytes(0), in.read_bytes(0), test::positions(in.cache(0))});
    });
  return out;
}

std::set<int32_t> range(int32_t a, int32_t b) {  // {a, ..., b}
  std::set<int32_t> r;
  for (int32_t i = a; i <= b; ++i) r.insert(i);
  return r;
}

}  // namespace

TEST_CASE("protocols: window under evict holds B + 1 at attention, under prefill B_p + t - P + 1") {
  Layer L(2, 1, 12, 4);
  L.fill_random(3);
  const int64_t P = 6, B = 4, D = 4;
  const auto a = run("window:budget=4", Protocol::evict, L, P);
  const auto b = run("window:budget=4", Protocol::prefill, L, P);
  REQUIRE(a.size() == 6);
  REQUIRE(b.size() == 6);
  for (size_t i = 0; i < a.size(); ++i) {
    const int32_t t = static_cast<int32_t>(P + i);
    CHECK(a[i].n == B + 1);
    CHECK(a[i].positions == range(t - 4, t));  // the newest B, plus the token just stored
    CHECK(a[i].bytes == 4.0 * D * (B + 1));    // fp16 key + value per slot
    CHECK(b[i].n == B + (t - P + 1));          // the prompt cut to B, then every token kept
    CHECK(b[i].positions == range(2, t));      // prompt 0..5 cut to its newest 4: 2..5
    CHECK(b[i].bytes == 4.0 * D * (B + t - P + 1));
    CHECK(b[i].read == b[i].bytes);  // attention reads the whole cache it holds
  }
}

TEST_CASE("protocols: h2o under prefill keeps its cut, and frees its scores after it") {
  Layer L(2, 1, 14, 4);
  L.fill_random(5);
  const int64_t P = 8, B = 4, D = 4;
  const auto a = run("h2o:budget=4", Protocol::evict, L, P);
  const auto b = run("h2o:budget=4", Protocol::prefill, L, P);
  // The cut at prefill is the same under both (h2o's prompt scores); B then only appends.
  std::set<int32_t> cut = b[0].positions;
  cut.erase(static_cast<int32_t>(P));
  CHECK(cut.size() == static_cast<size_t>(B));
  std::set<int32_t> cut_a = a[0].positions;
  cut_a.erase(static_cast<int32_t>(P));
  CHECK(cut == cut_a);
  for (size_t i = 0; i < b.size(); ++i) {
    const int64_t t = P + static_cast<int64_t>(i);
    std::set<int32_t> expect = cut;
    for (int32_t p = static_cast<int32_t>(P); p <= t; ++p) expect.insert(p);
    CHECK(b[i].positions == expect);
    CHECK(b[i].bytes == 4.0 * D * b[i].n);                   // no scores once the cut is made
    CHECK(a[i].bytes == 4.0 * D * (B + 1) + 4.0 * (B + 1));  // under A the fp32 scores stay
  }
}

TEST_CASE("protocols: oracle_topk reads each query head's top slots from the full cache") {
  // D = 2, one KV head, G = 2. Keys on the first axis with logits z = q·k/√2; query head 0 looks
  // along +x, query head 1 along -x, so they pick opposite ends.
  Layer L(2, 1, 6, 2);
  const float kx[6] = {3, -2, 1, 0, -3, 2};
  for (int64_t t = 0; t < 6; ++t) L.K(0, t, 0) = kx[t], L.V(0, t, 1) = float(t);
  for (int64_t t = 0; t < 6; ++t) L.Q(0, t, 0) = 1, L.Q(1, t, 0) = -1;
  auto s = make_strategy("oracle_topk:budget=2");
  LayerView lv = L.view();
  Instance inst(*s, make_context(*s, ModelShape{1, 2, 1, 2}, 0, 0, 6, 3, Protocol::sparse));
  inst.prefill_from(lv);
  CHECK(inst.cache(0).size() == 3);  // nothing is cut
  int steps = 0;
  for (int64_t t = 3; t < 6; ++t)
    inst.step(lv, t, kernels(Backend::ref).attend_slots, [&](const Instance& in, int64_t step) {
      ++steps;
      CHECK(in.cache(0).size() == step + 1);  // every token held
      const std::set<int32_t> up = test::positions(in.attended(0, 0)), down = test::positions(in.attended(0, 1));
      // Step 3: keys 3, -2, 1, 0 -> head 0 reads {0, 2}, head 1 {1, 3}; step 4 adds -3 (head 1:
      // {1, 4}); step 5 adds 2 (head 0: {0, 5}).
      if (step == 3) CHECK((up == std::set<int32_t>{0, 2} && down == std::set<int32_t>{1, 3}));
      if (step == 4) CHECK((up == std::set<int32_t>{0, 2} && down == std::set<int32_t>{1, 4}));
      if (step == 5) CHECK((up == std::set<int32_t>{0, 5} && down == std::set<int32_t>{1, 4}));
      // bytes: the full cache, 4·D per token; read: the 4 distinct slots of the two heads, no metadata.
      CHECK(in.bytes(0) == 8.0 * (step + 1));
      CHECK(in.read_bytes(0) == 8.0 * 4);
      // Each head's weights are the softmax over its own two slots (they sum to 1).
      CHECK(in.weights(0, 0)[0] + in.weights(0, 0)[1] == doctest::Approx(1.0));
    });
  CHECK(steps == 3);
}

TEST_CASE("protocols: oracle_topk with a budget of at least T equals full exactly, on every metric") {
  Layer L(4, 2, 37, 8);
  L.fill_random(11, 1.5f);
  LayerView lv = L.view();
  ExactStats rs;
  compute_exact_stats(lv, Backend::ref, rs);
  lv.entropy = rs.entropy.data();
  auto full = make_strategy("full"), oracle = make_strategy("oracle_topk:budget=37");
  auto replay = [&](const Strategy& s, Protocol p) { return test::replay_one_layer(lv, rs, s, p, 5); };
  const ConfigResult a = replay(*full, Protocol::evict), b = replay(*oracle, Protocol::sparse);
  for (int m = 0; m < kNumMetrics; ++m) {
    INFO(metric_name(m));
    CHECK(a.summary[m].mean == b.summary[m].mean);
    CHECK(a.summary[m].worst == b.summary[m].worst);
  }
}

TEST_CASE("protocols: a selector runs only under sparse, a cache strategy never under it") {
  const ModelShape shape{1, 2, 1, 4};
  auto msg = [&](const char* spec, Protocol p) {
    try {
      check_fits(*make_strategy(spec), shape, 20, 5, p);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg("oracle_topk:budget=4", Protocol::sparse) == "no error");
  CHECK(msg("oracle_topk:budget=4", Protocol::evict).find("is a query-aware selector") != std::string::npos);
  CHECK(msg("oracle_topk:budget=4+kivi:bits=2", Protocol::prefill).find("--protocol sparse") != std::string::npos);
  CHECK(msg("h2o:budget=4", Protocol::sparse).find("evicts or merges") != std::string::npos);
  CHECK(msg("h2o:budget=4", Protocol::prefill) == "no error");
  CHECK(parse_protocol("prefill") == Protocol::prefill);
  CHECK_THROWS_AS(parse_protocol("grow"), UsageError);
}

TEST_CASE("protocols: press_ratio is kvpress's compression_ratio, the fraction of the prompt removed") {
  // kvpress keeps int(P (1 - r)) tokens: P = 10, r = 0.25 -> int(7.5) = 7; r = 0 keeps the whole prompt.
  Layer L(2, 1, 16, 4);
  L.fill_random(9);
  const auto a = run("window:press_ratio=0.25", Protocol::prefill, L, 10);
  CHECK(a[0].n == 7 + 1);
  CHECK(a[0].positions == range(3, 10));  // the newest 7 of the prompt, then token 10
  const auto b = run("window:press_ratio=0", Protocol::prefill, L, 10);
  CHECK(b[0].n == 10 + 1);
  auto msg = [](const char* spec) {
    try {
      (void)make_strategy(spec);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(msg("window:press_ratio=1").find("must be in [0, 1)") != std::string::npos);
  CHECK(msg("window:press_ratio=0.5,budget=3").find("exactly one of budget") != std::string::npos);
}

TEST_CASE("protocols: every cache strategy runs under evict and prefill, under prefill the cut stays and B_p + t - P + 1 slots are held") {
  // Every registered eviction, merging and sketch strategy (selectors run under sparse only) on one
  // layer of 2 KV heads, G = 2: under prefill the slots after the cut stay exactly as cut (same
  // members, same keys), every decode token is appended, and bytes = codec bytes + frozen state
  // (the identity codec: 4·D per slot, checked against the slot count when the strategy keeps no
  // state after the cut). Under evict the cache never exceeds B + 1 at attention.
  Layer L(4, 2, 28, 4);
  L.fill_random(11);
  const int64_t P = 16, B = 8, D = 4;
  int ran = 0;
  for (const std::string& name : strategy_names()) {
    if (name == "magicpig") continue;  // a selector that takes no budget (K and L set what it reads)
    std::string spec = name == "full" ? "full" : name + ":budget=8";
    // simlayerkv takes no budget: with delta=0 every layer is lazy and keeps 2 + 5 = 7 slots.
    if (name == "simlayerkv") spec = "simlayerkv:initial=2,recent=6,delta=0";
    // duoattention takes no budget either: with head_ratio=1 every head streams with 2 + 5 = 7 slots
    // (the head scores from a file: the layer has no pre-RoPE tensors). headkv reads its head scores
    // from a file: equal ones give every head C = 6 past slots + the window 2.
    const test::TempDir tmp;
    std::ofstream(tmp.file("kv.tsv")) << "1 1\n";
    std::ofstream(tmp.file("q.tsv")) << "1 1 1 1\n";
    if (name == "duoattention") spec = "duoattention:sink=2,recent=5,head_ratio=1,scores=" + tmp.file("kv.tsv");
    if (name == "headkv") spec = "headkv:budget=6,window=2,scores=" + tmp.file("q.tsv");
    // Protected windows that fit a budget of 8 where a default would not.
    const std::map<std::string, std::string> fit = {{"snapkv", ",window=2"},
                                                    {"pyramidkv", ",window=2"},
                                                    {"scissorhands", ",recent=2"},
                                                    {"entropy_merge", ",recent=2,sinks=1"},
                                                    {"cam", ",recent=2,sinks=1"},
                                                    {"kvmerger", ",recent=2,sinks=1"},
                                                    {"cms_topk", ",recent=2,sinks=1"},
                                                    {"cms_aggregate", ",recent=2,sinks=1"},
                                                    {"lagkv", ",sinks=2"},
                                                    {"expected_attention", ",sinks=2"},
                                                    {"rkv", ",window=2,buffer=1"},
                                                    {"cake", ",window=2"},
                                                    {"defensivekv", ",window=2"}};
    if (auto it = fit.find(name); it != fit.end()) spec += it->second;
    if (make_strategy(spec)->is_selector()) continue;
    INFO(spec);
    // kvzip compresses once and has no decode rule: protocol evict is refused (one line).
    const bool prefill_only = name == "kvzip";
    if (prefill_only)
      CHECK_THROWS_WITH_AS(run(spec, Protocol::evict, L, P), doctest::Contains("--protocol prefill"), UsageError);
    const auto b = run(spec, Protocol::prefill, L, P);
    const auto a = prefill_only ? b : run(spec, Protocol::evict, L, P);
    REQUIRE(a.size() == static_cast<size_t>(L.T - P));
    REQUIRE(b.size() == a.size());
    const int64_t bp = b[0].n - 1;  // the cut, before token P was appended
    // cms_aggregate holds its depth x width = 2 x 16 bucket slots beside the B exact ones.
    const int64_t cap = name == "full" ? P : B + (name == "cms_aggregate" ? 32 : 0);
    CHECK(bp <= cap);
    for (size_t i = 0; i < b.size(); ++i) {
      const int32_t t = static_cast<int32_t>(P + i);
      CHECK(b[i].n == bp + (t - P + 1));
      for (int32_t p = static_cast<int32_t>(P); p <= t; ++p) CHECK(b[i].positions.count(p) == 1);
      if (name != "full" && !prefill_only) CHECK(a[i].n <= cap + 1);
      CHECK(b[i].read == 4.0 * D * b[i].n);  // attention reads the slots it holds, fp16 key + value
      if (name == "entropy_merge")
        CHECK(b[i].bytes >= 4.0 * D * b[i].n);  // + the member lists of its merged slots
      else if (name == "kvzip")                 // + one 4-byte length when its heads hold different lengths
        CHECK((b[i].bytes == 4.0 * D * b[i].n || b[i].bytes == 4.0 * D * b[i].n + 4));
      else
        CHECK(b[i].bytes == 4.0 * D * b[i].n);  // scores and sketches are freed after the cut
    }
    // The prompt part never changes after the cut: what step P held below P is what the last step holds.
    std::set<int32_t> first, last;
    for (int32_t p : b.front().positions)
      if (p < P) first.insert(p);
    for (int32_t p : b.back().positions)
      if (p < P) last.insert(p);
    CHECK(first == last);
    ++ran;
  }
  CHECK(ran >= 14);
}
