// The strategy interface (design.md §3, §5). A `Strategy` is one configured strategy, immutable
// and shared by all instances and threads; `make_state` creates the mutable state of one instance:
// one (layer, KV head), or one whole layer for layer-coupled strategies (tova), which then manage
// Hkv caches at once. The engine drives an instance through
//     prefill -> for t = P..T-1: [append via codec] -> [attend, measure] -> observe -> evict
// and hands it plain data only (LayerView), so the same code can run inside a model runner.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sim/base/rope.h"
#include "sim/base/spec.h"
#include "sim/strategies/codec.h"
#include "sim/strategies/slot.h"

namespace kvsim {

// How per-query-head attention is combined into one per-KV-head score (sim/strategies/STRATEGIES.md,
// "GQA"). One order everywhere: each query row's G attention rows are combined into one row, then
// rows are summed over queries (prompt queries, decode steps). `none` combines nothing: every query
// head selects for its own cache (G caches per KV head, the reference code after repeat_kv).
enum class Gqa { mean, max, sum, none };
Gqa parse_gqa(const std::string& s);
// out[s] = combine over g of w[g * n + s] (with `none`, G must be 1: a copy).
void combine_gqa(const float* w,  // [G, n]
                 int64_t G, int64_t n, Gqa how, float* out /* [n] */);

// The query heads that read one cache: KV head kv, query heads q0 .. q0 + n - 1.
struct HeadGroup {
  int64_t kv = 0, q0 = 0, n = 1;
};

// Plain data of one layer of one sequence (prefix 0..T-1 of the tokens). A strategy reads q, k, v
// and prompt_colsums of the prompt (positions < P) in prefill only, and the per-token k_norm and
// entropy of token t from step t on, never ahead: inside the model runner (traces/model/
// strategy_cache.h) these arrays are filled as the tokens arrive. A strategy that needs_queries()
// may also read row t of q from step t on (the runner then keeps q and fills it as tokens arrive).
struct LayerView {
  int64_t H = 0, Hkv = 0, T = 0, D = 0;
  const float* q = nullptr;       // [H, T, D] after RoPE
  const float* k = nullptr;       // [Hkv, T, D] after RoPE
  const float* v = nullptr;       // [Hkv, T, D]
  const float* k_norm = nullptr;  // [Hkv, T] L2 norm of each key
  // Column sums of the prompt's exact causal attention: colsum[h, i] = sum_{j=i}^{P-1} P_j,i for
  // query head h, or nullptr when no strategy asked for them (Strategy::needs_prompt_colsums()).
  const float* prompt_colsums = nullptr;  // [H, P]
  // Entropy (nats) of each query's exact attention row over 0..t, from the reference statistics.
  const float* entropy = nullptr;  // [H, T]
  // Keys before RoPE, or nullptr unless the strategy asked for them (Strategy::needs_pre_rope()),
  // with the rotation that turns them into k (sim/base/rope.h): ShadowKV's low-rank factors.
  const float* k_pre = nullptr;  // [Hkv, T, D]
  // Queries before RoPE, or nullptr unless the strategy asked for them (Strategy::needs_q_pre()):
  // row t read from step t on (expected_attention's query statistics).
  const float* q_pre = nullptr;  // [H, T, D]
  // ||W_o,h v_i||_1 per query head and token, or nullptr unless the strategy asked for it
  // (Strategy::needs_vo_norm()); recorded with kvsim record --record vo_norm (traces/FORMAT.md).
  const float* vo_norm = nullptr;  // [H, T]
  // KVzip's context-reconstruction scores per KV head and token, or nullptr unless the strategy asked
  // for them (Strategy::needs_kvzip_score()); recorded with kvsim record --record kvzip: they score the
  // first kvzip_context tokens (the trace's context_len, else its prompt) and are 0 after them.
  const float* kvzip_score = nullptr;  // [Hkv, T]
  int64_t kvzip_context = 0;
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::none;
  int64_t G() const { return H / Hkv; }
  const float* q_head(int64_t h) const { return q + h * T * D; }
  const float* k_head(int64_t kv) const { return k + kv * T * D; }
  const float* v_head(int64_t kv) const { return v + kv * T * D; }
  const float* k_pre_head(int64_t kv) const { return k_pre + kv * T * D; }
};

// How the cache meets decoding (sim/strategies/STRATEGIES.md, "Protocols"):
//   evict    A: after every decode step the strategy evicts back to its budget (design.md §3 d);
//   prefill  B: compress once: prefill cuts the prompt to the budget by the strategy's own scores,
//            then every token is appended and none is evicted (B_p + t - P + 1 slots at step t);
//   sparse   C: nothing is evicted; a selector picks, per query head and step, the slots it reads.
enum class Protocol { evict, prefill, sparse };
const char* protocol_name(Protocol p);
Protocol parse_protocol(const std::string& s);  // UsageError listing the three

struct InstanceContext {
  int64_t layer = 0, n_layers = 1;
  int64_t kv0 = 0;                     // first KV head of this instance
  int64_t q0 = 0;                      // query head of cache 0's first row (kv0 * G, but see per_query_head)
  int64_t n_caches = 1;                // 1, Hkv for a layer-coupled strategy, G under per_query_head
  int64_t T = 0, P = 0, D = 0, G = 1;  // G: the model's query heads per KV head
  // gqa=none: cache c of the instance belongs to query head q0 + c alone, and holds KV head kv0.
  // The driver gives each cache its own strategy state, whose context has n_caches = 1.
  bool per_query_head = false;
  uint64_t seed = 0;
  Protocol protocol = Protocol::evict;
  // The sequence's cross-layer plan (Strategy::needs_model_plan: cake's layer budgets), owned by the
  // driver; null for other strategies. Filled before the first prefill of the sequence, so a state
  // reads it in prefill and later, never in make_state (check_fits builds states without one).
  const std::vector<double>* plan = nullptr;
  int64_t rows() const { return per_query_head ? 1 : G; }  // query heads reading each cache
  int64_t kv_of(int64_t c) const { return per_query_head ? kv0 : kv0 + c; }
  int64_t q_head(int64_t c, int64_t g) const { return q0 + c * rows() + g; }
  HeadGroup group(int64_t c = 0) const { return {kv_of(c), q_head(c, 0), rows()}; }
};

// What one query head attends over at one step under protocol C (sim/strategies/STRATEGIES.md,
// "Selectors"): the row `slots` (indices into the cache, or into the selector's own slot-aligned
// copy `from`: ShadowKV's rebuilt keys), an optional additive logit correction per entry (MagicPIG's
// importance weights, SparQ's mixture with the mean value), and how many leading entries are K/V
// the step loads (the rest enter the row through metadata already counted: SparQ's v̄).
struct Selection {
  std::vector<int32_t> slots;
  std::vector<float> bias;          // empty, or one per entry of slots, added to the slot's own bias
  int64_t loaded = -1;              // slots[0..loaded) are read from the cache; -1: all of them
  const SlotCache* from = nullptr;  // nullptr: the instance's cache; else the same slots, other keys
  int64_t n_loaded() const { return loaded < 0 ? static_cast<int64_t>(slots.size()) : loaded; }
  void clear() { slots.clear(), bias.clear(), loaded = -1, from = nullptr; }
};

// A scorer's view of the prompt at the cut, for the budget allocators that wrap it (adakv.BASE,
// chunkkv.BASE: sim/strategies/allocator.h). Indexed by position i < P: score[i] (higher keeps),
// forced[i] = 1 for tokens the base keeps whatever their score (SnapKV's window, sinks, recent),
// and keep = the base's budget B, the slots it would keep of the prompt (forced ones included; the
// prompt fits when keep >= P).
struct PromptScores {
  std::vector<double> score;
  std::vector<uint8_t> forced;
  int64_t keep = 0;
};

class StrategyState {
 public:
  virtual ~StrategyState() = default;
  // caches[c] (KV head kv0 + c) holds tokens 0..P-1 exactly; compress to the budget.
  virtual void prefill(std::span<SlotCache> caches, const LayerView& lv, int64_t P) = 0;
  // attn[c] is the compressed attention [rows, n_c] of step t over the slots of caches[c] (rows =
  // InstanceContext::rows(): G, or 1 under per_query_head), where
  // slot s of cache c has position caches[c].pos(s). Called every step, evaluated or not.
  virtual void observe(std::span<const SlotCache> caches, std::span<const float* const> attn, int64_t t) {
    (void)caches, (void)attn, (void)t;
  }
  // Reduce every cache to at most its budget.
  virtual void evict(std::span<SlotCache> caches, int64_t t) = 0;
  // Scorers (Strategy::exposes_prompt_scores): `cache` holds tokens 0..P-1 exactly; fill `out` with
  // the scores this state would cut the prompt by, without cutting. Called instead of prefill.
  virtual void prompt_scores(const SlotCache& cache, const LayerView& lv, int64_t P, PromptScores& out) {
    (void)cache, (void)lv, (void)P, (void)out;
  }
  // After a replay under protocol evict or prefill: one line per way cache c degenerated, worded
  // the same for every cache (Instance::degeneracies prefixes the strategy's name). The default:
  // a cache that never dropped a token never reached its budget, so the run is `full` in disguise.
  virtual std::vector<std::string> degeneracies(const SlotCache& cache, int64_t c) const {
    (void)c;
    if (cache.size() == 0) return {};
    int64_t last = 0;
    for (int64_t s = 0; s < cache.size(); ++s) last = std::max<int64_t>(last, cache.pos(s));
    if (cache.size() != last + 1) return {};
    return {"the cache never dropped a token (its budget was never reached: the run equals full)"};
  }
  // Bytes of the strategy's own state for cache c (scores, counters), counted in `bytes`.
  virtual double state_bytes(int64_t c) const {
    (void)c;
    return 0;
  }
  // Under protocol B, once prefill has compressed: the part of the state the cache still needs
  // (members of merged slots, say); scores that only ranked tokens for the cut are freed.
  virtual double frozen_state_bytes(int64_t c) const {
    (void)c;
    return 0;
  }

  // Selectors (protocol C; Strategy::is_selector()). prefill builds the metadata and keeps every
  // token; select is called once per decode step after token t was stored, with the G query rows
  // of cache c (row g at q + g * q_stride), and fills sel[g] with the slots query head g reads.
  virtual void select(const SlotCache& cache, int64_t c, const float* q, int64_t q_stride, int64_t t,
                      std::span<Selection> sel) {
    (void)cache, (void)c, (void)q, (void)q_stride, (void)t, (void)sel;
  }
  // Bytes of selector metadata that step t reads for cache c (the engine adds the selected slots:
  // Instance::read_bytes).
  virtual double metadata_read_bytes(const SlotCache& cache, int64_t c, std::span<const Selection> sel) const {
    (void)cache, (void)c, (void)sel;
    return 0;
  }
};

// A state whose KV heads may hold different lengths (head- or layer-wise budgets): when they do
// (varlen_), each cache counts one 4-byte length, the flattened variable-length layout of
// ../shared/methods.md §1.3, before and after the cut.
class VarlenState : public StrategyState {
 public:
  double state_bytes(int64_t) const final { return varlen_ ? 4.0 : 0.0; }
  double frozen_state_bytes(int64_t) const final { return varlen_ ? 4.0 : 0.0; }

 protected:
  bool varlen_ = false;
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  const std::string& name() const { return name_; }
  const std::string& spec_text() const { return spec_text_; }
  // Every parameter with its resolved value (defaults filled in).
  const std::map<std::string, std::string>& params() const { return params_; }
  virtual bool layer_coupled() const { return false; }
  // A query-aware selector (protocol C only) rather than a cache that evicts or merges (A and B).
  virtual bool is_selector() const { return false; }
  virtual bool needs_prompt_colsums() const { return false; }
  // Reads LayerView::entropy (the model runner then computes each decode token's exact row entropy).
  virtual bool needs_entropy() const { return false; }
  // gqa=none: one cache per query head (InstanceContext::per_query_head).
  virtual bool per_query_head() const { return false; }
  // Reads LayerView::k_pre (the trace's pre-RoPE keys; recorded with kvsim record --pre).
  virtual bool needs_pre_rope() const { return false; }
  // Reads LayerView::q_pre (the trace's pre-RoPE queries; recorded with kvsim record --pre).
  virtual bool needs_q_pre() const { return false; }
  // Reads LayerView::vo_norm (recorded with kvsim record --record vo_norm).
  virtual bool needs_vo_norm() const { return false; }
  // Reads LayerView::kvzip_score (recorded with kvsim record --record kvzip), in layer_profile only.
  virtual bool needs_kvzip_score() const { return false; }
  // Its states implement StrategyState::prompt_scores with scores comparable across the KV heads
  // of a layer, so a budget allocator can wrap it (adakv.snapkv, chunkkv.h2o).
  virtual bool exposes_prompt_scores() const { return false; }
  // Reads LayerView::q at decode steps too, row t from step t on (rkv's window of recent queries):
  // the offline replay holds every row; the model runner keeps them as the tokens arrive.
  virtual bool needs_queries() const { return false; }
  // Cross-layer strategies (cake's layer budgets from every layer's prompt): before any layer is cut
  // the driver shows each layer's prompt to layer_profile (the LayerView's q, k, v, rows < P, and
  // k_pre / q_pre when the strategy needs_pre_rope / needs_q_pre), then
  // hands the L profiles, in layer order, to make_plan; every instance of the sequence then reads the
  // result through InstanceContext::plan. The offline replay makes one extra pass over the trace for
  // it; the model runner cuts every layer after the whole prompt's forward pass.
  virtual bool needs_model_plan() const { return false; }
  virtual std::vector<double> layer_profile(const LayerView& lv, int64_t P) const {
    (void)lv, (void)P;
    return {};
  }
  virtual std::vector<double> make_plan(const std::vector<std::vector<double>>& profiles, int64_t T, int64_t P) const {
    (void)profiles, (void)T, (void)P;
    return {};
  }
  // The protocols it runs under: a selector under sparse only, every other strategy under evict and
  // prefill (kvzip under prefill only). A sweep skips the other pairs; a run refuses them in one line.
  virtual bool runs_under(Protocol p) const { return is_selector() == (p == Protocol::sparse); }
  // Whether `name+codec` is meaningful (false for a selector whose keys are not the cache's: shadowkv).
  virtual bool takes_codec() const { return true; }
  virtual const Codec& codec() const { return identity_codec(); }
  virtual std::unique_ptr<StrategyState> make_state(const InstanceContext& ctx) const = 0;

 protected:
  void set_identity(const ParamReader& p) {
    name_ = p.spec().name;
    spec_text_ = p.spec().text;
    params_ = p.resolved();
  }
  std::string name_, spec_text_;
  std::map<std::string, std::string> params_;
};

// The plan a state of `s` reads at prefill: *ctx.plan, or for a one-layer model without one (tests,
// benchmarks: replay_layer of a single layer) the plan made from this layer alone, kept in `own`.
const std::vector<double>& model_plan(const Strategy& s, const InstanceContext& ctx, const LayerView& lv, int64_t P,
                                      std::vector<double>& own);

// Parses a spec and builds the strategy; UsageError lists valid names / parameters.
std::unique_ptr<Strategy> make_strategy(const std::string& spec_text);
std::unique_ptr<Strategy> make_strategy(const StrategySpec& spec);
std::vector<std::string> strategy_names();
// For --help: "full, window, ...; wrappers: adakv.BASE, chunkkv.BASE, criticalkv.BASE".
std::string strategy_names_help();

}  // namespace kvsim
