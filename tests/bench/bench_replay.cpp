// Replay throughput on a llama3-8b-shape slice (1 layer, Hkv = 8 instances per configuration):
//  - BM_replay_h2o_B256: instance-steps per second for h2o at B = 256 (every step evaluated);
//  - BM_n_configs: the total cost of N configurations on one trace, reference statistics included
//    (computed once and shared), against N separate single-configuration runs (N x BM_n_configs/1).
#include <benchmark/benchmark.h>

#include <memory>

#include "sim/kernels/backend.h"
#include "sim/replay.h"
#include "sim/strategies/strategy.h"
#include "tests/bench/bench_common.h"

namespace {

using namespace kvsim;

constexpr int64_t kT = 2048, kP = 1024;

void replay_n(const std::vector<std::string>& specs, bool with_reference, ExactStats& rs, std::vector<float>& colsums,
              Backend b) {
  auto& s = bench::llama3_slice(kT);
  LayerView lv = s.lv;
  if (with_reference) {
    compute_exact_stats(lv, b, rs);
    compute_prompt_colsums(lv, rs, kP, b, colsums);
  }
  lv.prompt_colsums = colsums.data();
  std::vector<std::unique_ptr<Strategy>> own;
  std::vector<const Strategy*> ptrs;
  std::vector<ConfigResult> res(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    own.push_back(make_strategy(specs[i]));
    ptrs.push_back(own.back().get());
    res[i].heads.resize(lv.H);
  }
  ReplayOptions opt;
  opt.backend = b;
  replay_layer(lv, rs, 0, 1, kP, ptrs, opt, res);
  benchmark::DoNotOptimize(res[0].heads[0].summary[0].mean);
}

void BM_replay_h2o_B256(benchmark::State& st) {
  const Backend b = st.range(0) ? Backend::omp : Backend::ref;
  ExactStats rs;
  std::vector<float> colsums;
  replay_n({"h2o:budget=256"}, true, rs, colsums, b);  // reference outside the timed loop
  for (auto _ : st) replay_n({"h2o:budget=256"}, false, rs, colsums, b);
  const double inst_steps = double(bench::llama3_slice(kT).lv.Hkv) * double(kT - kP);
  st.counters["inst_steps_per_s"] = benchmark::Counter(inst_steps * st.iterations(), benchmark::Counter::kIsRate);
  st.counters["threads"] = b == Backend::omp ? omp_threads() : 1;
}
BENCHMARK(BM_replay_h2o_B256)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_n_configs(benchmark::State& st) {
  const int64_t N = st.range(0);
  std::vector<std::string> specs;
  for (int64_t i = 0; i < N; ++i) specs.push_back("h2o:budget=" + std::to_string(128 + 16 * i));
  ExactStats rs;
  std::vector<float> colsums;
  for (auto _ : st) replay_n(specs, true, rs, colsums, Backend::omp);
  st.counters["configs_per_s"] = benchmark::Counter(double(N) * st.iterations(), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_n_configs)
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->Arg(16)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

}  // namespace

BENCHMARK_MAIN();
