// Seeded request workloads for the prefix cache (`kvsim prefix --synth KIND:key=value,...`), the
// cases serving users ask about. Token ids are uniform in [3, vocab) (0..2 are left to the special
// tokens); arrivals are a Poisson stream of `rate` requests per second (exponential gaps), the
// same seed giving the same workload. Lengths drawn "about N" are uniform in [N/2, 3N/2].
//   system-prompt  requests=200 system=1024 user=128 prompts=1 zipf=0: each request is one of
//                  `prompts` shared system prompts followed by its own user turn; prompt k is chosen
//                  with probability proportional to 1 / (k + 1)^zipf (0: uniformly);
//   chat           sessions=16 turns=8 system=256 user=64 reply=128: multi-turn chats that grow;
//                  turn j of a session re-sends its system prompt and every earlier user turn and
//                  reply, then the new user turn; sessions take turns (turn 1 of every session,
//                  then turn 2, ...), so a session comes back every `sessions` requests;
//   agent          loops=8 steps=16 context=2048 obs=64: agent loops re-sending one long context
//                  (their own, fixed) plus every observation so far, one more (about obs tokens)
//                  per step; interleaved like chat;
//   random         requests=200 len=1024: uniform random prompts, the no-reuse control.
// Every kind takes seed=0 and rate=1 (requests per second).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sim/prefix_cache.h"

namespace kvsim {

// Throws UsageError for an unknown kind or parameter, or a non-positive size or rate.
std::vector<PrefixRequest> synth_prefix_workload(const std::string& spec, int64_t vocab);
std::vector<std::string> prefix_workload_kinds();

}  // namespace kvsim
