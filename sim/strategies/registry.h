// Factories of the built-in strategies, one file each (sim/strategies/NAME.cpp), registered in
// sim/strategies/strategy.cpp. Each reads its parameters from the ParamReader; unknown ones are rejected there.
#pragma once

#include <memory>

#include "sim/base/spec.h"
#include "sim/strategies/strategy.h"

namespace kvsim {

std::unique_ptr<Strategy> make_full(ParamReader& p);
std::unique_ptr<Strategy> make_window(ParamReader& p);
std::unique_ptr<Strategy> make_streaming(ParamReader& p);
std::unique_ptr<Strategy> make_h2o(ParamReader& p);
std::unique_ptr<Strategy> make_tova(ParamReader& p);
std::unique_ptr<Strategy> make_scissorhands(ParamReader& p);
std::unique_ptr<Strategy> make_snapkv(ParamReader& p);
std::unique_ptr<Strategy> make_pyramidkv(ParamReader& p);
std::unique_ptr<Strategy> make_knorm(ParamReader& p);
std::unique_ptr<Strategy> make_random(ParamReader& p);
std::unique_ptr<Strategy> make_entropy_merge(ParamReader& p);
std::unique_ptr<Strategy> make_cam(ParamReader& p);
std::unique_ptr<Strategy> make_cms_topk(ParamReader& p);
std::unique_ptr<Strategy> make_kvmerger(ParamReader& p);
std::unique_ptr<Strategy> make_cms_aggregate(ParamReader& p);
// Scorers of 2024-26 (issue 15).
std::unique_ptr<Strategy> make_keydiff(ParamReader& p);
std::unique_ptr<Strategy> make_lagkv(ParamReader& p);
std::unique_ptr<Strategy> make_expected_attention(ParamReader& p);
std::unique_ptr<Strategy> make_simlayerkv(ParamReader& p);
std::unique_ptr<Strategy> make_cake(ParamReader& p);
std::unique_ptr<Strategy> make_duoattention(ParamReader& p);
std::unique_ptr<Strategy> make_headkv(ParamReader& p);
std::unique_ptr<Strategy> make_kvzip(ParamReader& p);
std::unique_ptr<Strategy> make_defensivekv(ParamReader& p);
std::unique_ptr<Strategy> make_rkv(ParamReader& p);
// Selectors (protocol sparse).
std::unique_ptr<Strategy> make_oracle_topk(ParamReader& p);
std::unique_ptr<Strategy> make_quest(ParamReader& p);
std::unique_ptr<Strategy> make_sparq(ParamReader& p);
std::unique_ptr<Strategy> make_magicpig(ParamReader& p);
std::unique_ptr<Strategy> make_pqcache(ParamReader& p);
std::unique_ptr<Strategy> make_rocketkv(ParamReader& p);
std::unique_ptr<Strategy> make_shadowkv(ParamReader& p);

}  // namespace kvsim
