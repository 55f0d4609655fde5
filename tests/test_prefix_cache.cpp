// The prefix cache (sim/prefix_cache.h), its workloads (sim/prefix_workload.h) and the measured
// reuse on stories260K (traces/model/prefix_reuse.h). Expected hits and evictions are worked out
// by hand in the comments, with 1 byte per token so that capacities read as tokens.
#include <doctest/doctest.h>

#include <numeric>
#include <set>

#include "model_test_util.h"
#include "sim/base/error.h"
#include "sim/base/spec.h"
#include "sim/prefix_cache.h"
#include "sim/prefix_workload.h"
#include "sim/strategies/quant_codecs.h"
#include "skip.h"
#include "traces/model/model.h"
#include "traces/model/prefix_reuse.h"
#include "traces/model/runner.h"

using namespace kvsim;

namespace {

PrefixCacheOptions opts(int64_t block, double capacity, double ttl = std::numeric_limits<double>::infinity()) {
  PrefixCacheOptions o;
  o.block = block, o.capacity_bytes = capacity, o.bytes_per_token = 1.0, o.ttl = ttl;
  return o;
}

std::vector<int64_t> hits_of(const PrefixStats& s) {
  std::vector<int64_t> h;
  for (const auto& r : s.served) h.push_back(r.hit);
  return h;
}

std::vector<PrefixRequest> timed(const std::vector<std::vector<int32_t>>& ids, const std::vector<double>& at) {
  std::vector<PrefixRequest> w;
  for (size_t i = 0; i < ids.size(); ++i) w.push_back({ids[i], at[i], ""});
  return w;
}

}  // namespace

TEST_CASE("prefix cache: identical requests reuse all but the block holding their last token") {
  // n = 8, block 4: 2 blocks cached; a repeat reuses floor(7/4) = 1 block (its last token must run).
  const std::vector<int32_t> a{1, 2, 3, 4, 5, 6, 7, 8};
  PrefixStats s = simulate_prefix_cache(timed({a, a, a}, {0, 1, 2}), opts(4, 1000));
  CHECK(hits_of(s) == std::vector<int64_t>{0, 4, 4});
  CHECK(s.token_hit_rate() == doctest::Approx(8.0 / 24.0).epsilon(1e-15));
  CHECK(s.request_hit_rate() == doctest::Approx(2.0 / 3.0).epsilon(1e-15));
  CHECK(s.final_bytes == 8);
  // n = 9: floor(8/4) = 2 blocks reused; the 9th token never fills a block.
  const std::vector<int32_t> b{1, 2, 3, 4, 5, 6, 7, 8, 9};
  s = simulate_prefix_cache(timed({b, b, b}, {0, 1, 2}), opts(4, 1000));
  CHECK(hits_of(s) == std::vector<int64_t>{0, 8, 8});
  CHECK(s.hit_tokens == 16);
  CHECK(s.final_bytes == 8);
  CHECK(s.evictions_lru == 0);
  CHECK(s.evictions_ttl == 0);
}

TEST_CASE("prefix cache: TTL expires a block idle longer than ttl, not one idle exactly ttl") {
  // ttl 10: cached at 0, reused at 10 (idle 10, not > 10), then idle 10.5 at 20.5: both blocks expire.
  const std::vector<int32_t> a{1, 2, 3, 4, 5};
  const PrefixStats s = simulate_prefix_cache(timed({a, a, a}, {0, 10, 20.5}), opts(2, 100, 10.0));
  CHECK(hits_of(s) == std::vector<int64_t>{0, 4, 0});
  CHECK(s.evictions_ttl == 2);
  CHECK(s.evictions_lru == 0);
  CHECK(s.final_bytes == 4);  // re-cached at 20.5
  // Without a TTL the third request hits.
  CHECK(hits_of(simulate_prefix_cache(timed({a, a, a}, {0, 10, 20.5}), opts(2, 100))) == std::vector<int64_t>{0, 4, 4});
}

TEST_CASE("prefix cache: LRU evicts the least recently used block, not the oldest") {
  // capacity 2 blocks of 2 tokens; A, B, C one cached block each (n = 3).
  // t0 A {A} | t1 B {A,B} | t2 A hit, A used at 2 | t3 C evicts B (used 1; FIFO would evict A)
  // t4 B miss, evicts A (2) | t5 A miss, evicts C (3) | t6 B hit.
  const std::vector<int32_t> A{1, 2, 9}, B{3, 4, 9}, C{5, 6, 9};
  const PrefixStats s = simulate_prefix_cache(timed({A, B, A, C, B, A, B}, {0, 1, 2, 3, 4, 5, 6}), opts(2, 4));
  CHECK(hits_of(s) == std::vector<int64_t>{0, 0, 2, 0, 0, 0, 2});
  CHECK(s.evictions_lru == 3);
  CHECK(s.evictions_ttl == 0);
  CHECK(s.hit_requests == 2);
  CHECK(s.token_hit_rate() == doctest::Approx(4.0 / 21.0).epsilon(1e-15));
  CHECK(s.peak_bytes == 4);
}

TEST_CASE("prefix cache: a request longer than the capacity caches the blocks that fit") {
  // capacity 2 blocks: X takes one; R (5 blocks) evicts X for its second block, then stops.
  std::vector<int32_t> R(10);
  std::iota(R.begin(), R.end(), 1);
  const std::vector<int32_t> X{70, 80, 90};
  const PrefixStats s = simulate_prefix_cache(timed({X, R, R}, {0, 1, 2}), opts(2, 4));
  CHECK(hits_of(s) == std::vector<int64_t>{0, 0, 4});
  CHECK(s.served[1].inserted == 4);
  CHECK(s.served[2].inserted == 0);  // its own blocks are never evicted for itself
  CHECK(s.evictions_lru == 1);
  CHECK(s.final_bytes == 4);
}

TEST_CASE("prefix cache: capacity zero caches nothing") {
  const std::vector<int32_t> a{1, 2, 3, 4, 5, 6, 7, 8, 9};
  const PrefixStats s = simulate_prefix_cache(timed({a, a, a}, {0, 1, 2}), opts(2, 0));
  CHECK(s.hit_tokens == 0);
  CHECK(s.hit_requests == 0);
  CHECK(s.peak_bytes == 0);
  CHECK(s.evictions_lru == 0);
  CHECK(s.evictions_ttl == 0);
}

TEST_CASE("prefix cache: requests share their common block prefix (radix tree)") {
  // blocks of 2: [1,2][3,4][5,6] cached; the second request shares two blocks and adds [8,9];
  // the third diverges inside the second block: one block.
  const PrefixStats s = simulate_prefix_cache(
      timed({{1, 2, 3, 4, 5, 6, 7}, {1, 2, 3, 4, 8, 9, 10}, {1, 2, 3, 9, 9}}, {0, 1, 2}), opts(2, 100));
  CHECK(hits_of(s) == std::vector<int64_t>{0, 4, 2});
  CHECK(s.served[1].bytes_after == 8);
  CHECK(s.served[2].bytes_after == 10);  // + [3,9] under [1,2]
}

TEST_CASE("prefix cache: bad options and decreasing arrivals are UsageErrors") {
  CHECK_THROWS_AS(PrefixCache(opts(0, 10)), UsageError);
  CHECK_THROWS_AS(PrefixCache(opts(2, -1)), UsageError);
  CHECK_THROWS_AS(PrefixCache(opts(2, 10, -1)), UsageError);
  CHECK_THROWS_AS(simulate_prefix_cache(timed({{1, 2, 3}, {1, 2, 3}}, {5, 4}), opts(2, 10)), UsageError);
}

TEST_CASE("prefix cache: bytes per token from the codecs' accounting, by hand") {
  // D = 16. fp16: 2 bytes x D x (key + value) = 64. nf4 (block 64 >= D): D/2 + 4 D/64 = 9 per tensor.
  CHECK(codec_bytes_per_token(identity_codec(), 16, 256) == 64.0);
  CHECK(codec_bytes_per_token(*make_codec(parse_spec("nf4")), 16, 256) == 18.0);
  // kivi:bits=2 (group 32, vgroup 16, residual 32 paper) after 256 tokens: keys quantized in chunks of
  // 32 once 33 are pending -> 224 at 2 bits + fp16 scale and min per 32 tokens (4 + 2 = 6 bytes),
  // 32 in fp16 (32 bytes); values keep 33 in fp16, 223 at 4 + 4 bytes: (224*6 + 32*32 + 223*8 + 33*32) / 256.
  CHECK(codec_bytes_per_token(*make_codec(parse_spec("kivi:bits=2")), 16, 256) == 5208.0 / 256.0);
  CHECK_THROWS_AS(codec_bytes_per_token(*make_codec(parse_spec("quant:bits=4,group=32")), 16, 8), UsageError);
}

TEST_CASE("prefix workloads: seeded, and the shared system prompt hits exactly its blocks") {
  const auto w = synth_prefix_workload("system-prompt:requests=20,system=64,user=16,seed=3", 1000);
  CHECK(w.size() == 20);
  const auto again = synth_prefix_workload("system-prompt:requests=20,system=64,user=16,seed=3", 1000);
  int64_t tokens = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    CHECK(w[i].ids == again[i].ids);
    CHECK(w[i].arrival == again[i].arrival);
    CHECK(std::equal(w[0].ids.begin(), w[0].ids.begin() + 64, w[i].ids.begin()));
    CHECK(w[i].ids.size() >= 64 + 8);  // user turns about 16: [8, 24]
    CHECK(w[i].ids.size() <= 64 + 24);
    tokens += static_cast<int64_t>(w[i].ids.size());
  }
  PrefixCacheOptions o = opts(16, 1e12);
  // every later request reuses the 4 blocks of the system prompt (its own turn is new): 64 x 19
  const PrefixStats s = simulate_prefix_cache(w, o);
  CHECK(s.hit_tokens == 64 * 19);
  CHECK(s.tokens == tokens);
  CHECK(s.hit_requests == 19);
  CHECK(synth_prefix_workload("system-prompt:requests=20,system=64,user=16,seed=4", 1000)[0].ids != w[0].ids);
}

TEST_CASE("prefix workloads: zipf skews which system prompt a request carries") {
  // 4 prompts of 32 tokens: uniform draws use several; zipf=60 gives prompt 0 probability 1 - 1e-18.
  auto first_prompts = [](const std::vector<PrefixRequest>& w) {
    std::set<std::vector<int32_t>> s;
    for (const auto& q : w) s.insert(std::vector<int32_t>(q.ids.begin(), q.ids.begin() + 32));
    return s.size();
  };
  CHECK(first_prompts(synth_prefix_workload("system-prompt:requests=40,system=32,user=8,prompts=4", 1000)) == 4);
  CHECK(first_prompts(synth_prefix_workload("system-prompt:requests=40,system=32,user=8,prompts=4,zipf=60", 1000)) ==
        1);
  CHECK_THROWS_AS(synth_prefix_workload("system-prompt:zipf=-1", 1000), UsageError);
}

TEST_CASE("prefix workloads: chats grow by their turns, random prompts do not reuse") {
  const auto chat = synth_prefix_workload("chat:sessions=3,turns=4,system=32,user=8,reply=8", 1000);
  REQUIRE(chat.size() == 12);
  for (size_t i = 3; i < chat.size(); ++i) {  // turn j of session s is request 3 j + s
    const auto& prev = chat[i - 3].ids;
    CHECK(chat[i].session == chat[i - 3].session);
    CHECK(chat[i].ids.size() > prev.size());
    CHECK(std::equal(prev.begin(), prev.end(), chat[i].ids.begin()));
  }
  const auto agent = synth_prefix_workload("agent:loops=2,steps=3,context=64,obs=8", 1000);
  REQUIRE(agent.size() == 6);
  CHECK(std::equal(agent[0].ids.begin(), agent[0].ids.begin() + 64, agent[4].ids.begin()));
  const auto rnd = synth_prefix_workload("random:requests=50,len=64,seed=1", 32000);
  CHECK(simulate_prefix_cache(rnd, opts(16, 1e12)).hit_tokens == 0);
  CHECK_THROWS_AS(synth_prefix_workload("nope", 1000), UsageError);
  CHECK_THROWS_AS(synth_prefix_workload("chat:turns=0", 1000), UsageError);
  CHECK_THROWS_AS(synth_prefix_workload("chat:rate=-1", 1000), UsageError);
  CHECK_THROWS_AS(synth_prefix_workload("random:bogus=1", 1000), UsageError);
}

TEST_CASE("prefix reuse on stories260K: the identity codec's continuation equals the uncached one") {
  if (!test::have_models()) KVSIM_SKIP("no ../shared/models (stories260K)");
  const model::Model m = model::load_model(kvsim_test::stories_bin());
  std::vector<int32_t> a(70), b;
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<int32_t>(3 + (i * 37) % 500);
  b = a;
  b.resize(40);
  for (int i = 0; i < 9; ++i) b.push_back(100 + i);
  // request 0 (70 tokens) reuses 48 or 64 tokens; request 1 shares 32 of them.
  const std::vector<std::vector<int64_t>> hits{{48, 32}, {64, 0}};
  for (const char* backend : {"ref", "cpu"}) {
    CAPTURE(backend);
    const auto rs =
        model::measure_prefix_reuse(m, {a, b}, hits, identity_codec(), 12, model::parse_runner_backend(backend));
    REQUIRE(rs.size() == 2);
    CHECK(rs[0].hit_requests == 2);
    CHECK(rs[0].hit_tokens == 80);
    CHECK(rs[1].hit_requests == 1);
    for (const auto& r : rs) {
      CHECK(r.positions == 12 * r.hit_requests);
      CHECK(r.agree == r.positions);
      if (std::string(backend) == "ref") {  // the plain loops give a split prefill the same numbers
        CHECK(r.max_logit_diff == 0.0);
        CHECK(r.nll_cached == r.nll_uncached);
      } else {  // omp's blocked kernels round a split prefill differently (about 1e-5 in the logits)
        CHECK(r.max_logit_diff < 1e-3);
      }
    }
  }
  // nf4 changes the reused KV: the run still completes, and its logits differ.
  const auto nf4 = make_codec(parse_spec("nf4"));
  const auto rq = model::measure_prefix_reuse(m, {a}, {{64}}, *nf4, 12, model::parse_runner_backend("ref"));
  CHECK(rq[0].max_logit_diff > 0.0);
  CHECK(rq[0].agree <= rq[0].positions);
  CHECK_THROWS_AS(model::measure_prefix_reuse(m, {std::vector<int32_t>(510, 5)}, {{0}}, identity_codec(), 12,
                                              model::parse_runner_backend("ref")),
                  UsageError);
}
