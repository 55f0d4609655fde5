#include "sim/strategies/quant_codecs.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"
#include "sim/kernels/quant_core.h"
#include "sim/strategies/codecs_8bit.h"

namespace kvsim {

namespace {

// How one tensor (keys or values) is quantized.
struct Quantizer {
  enum Kind { uniform, nf4 } kind = uniform;
  int bits = 4;
  QuantAxis axis = QuantAxis::token;
  int64_t group = 32;  // uniform: channels per group (token axis) or tokens per group (channel axis)
  int64_t block = 64;  // nf4
  bool dq = false;     // nf4 double quantization

  // Tokens that must be pending before a tile can be quantized.
  int64_t tokens_per_tile(int64_t D) const {
    if (kind == nf4) return block >= D ? block / D : 1;
    return axis == QuantAxis::channel ? group : 1;
  }
  // Physical bytes per token of this tensor once quantized (payload + share of the parameters).
  // nf4: an fp32 absmax per block, or once its group of 256 blocks is double-quantized (second)
  // an 8-bit code per block plus the group's fp32 scale and fp32 mean.
  double bytes_per_token(int64_t D, bool second = false) const {
    const double d = static_cast<double>(D);
    if (kind == nf4) {
      const double b = static_cast<double>(block);
      return d / 2 + (second ? d / b * 1.0 + d / (b * 256.0) * 8.0 : d / b * 4.0);
    }
    const double payload = d * bits / 8.0;
    if (axis == QuantAxis::token) return payload + (d / static_cast<double>(group)) * 4.0;
    return payload + d * 4.0 / static_cast<double>(group);
  }
  // Quantizes and dequantizes a tile x [n_t, D] in place.
  void roundtrip(float* x, int64_t n_t, int64_t D) const {
    if (kind == nf4) {
      auto q = ref::quant_nf4(x, n_t, D, QuantAxis::token, std::min(block, n_t * D), dq);
      ref::dequant_nf4(q, x);
    } else {
      auto q = ref::quant_uniform(x, n_t, D, bits, axis, group);
      ref::dequant_uniform(q, x);
    }
  }
  void validate(const std::string& codec, int64_t D) const {
    if (kind == nf4) {
      if (!((block >= D && block % D == 0) || (block < D && D % block == 0)))
        throw UsageError(codec + ": block=" + std::to_string(block) +
                         " neither divides nor is a multiple of D = " + std::to_string(D));
      if (dq && block < D && 256 % (D / block) != 0)
        throw UsageError(codec + ": dq=1 with block=" + std::to_string(block) + " and D = " + std::to_string(D) +
                         ": the D / block = " + std::to_string(D / block) +
                         " blocks of a token must divide the 256 blocks of a second-level group");
      return;
    }
    if (axis == QuantAxis::token && D % group != 0)
      throw UsageError(codec + ": group=" + std::to_string(group) + " does not divide D = " + std::to_string(D));
  }
};

// One tensor's (keys' or values') path through a cache: tokens wait in fp16, oldest first, and
// once `keep + chunk` of them are pending the oldest `chunk` are quantized together (kivi keys
// under residual_mode=paper: keep 1, chunk R; its values: keep R + 1, chunk 1; every other rule:
// keep R, chunk one tile). Tokens evicted or merged while pending are forgotten.
struct Lane {
  Quantizer q;
  int64_t keep = 0, chunk = 1;
  std::vector<int32_t> pending;
  int64_t chunks_done = 0;
  // nf4 with dq: the first-level tiles of the current second-level group (their codes, exact
  // absmax values and positions), waiting for 256 blocks to complete it.
  struct Tile {
    Nf4Quantized q;
    std::vector<int32_t> pos;
  };
  std::vector<Tile> dq_tiles;
  int64_t dq_blocks = 0, dq_groups_done = 0;
};

class QuantCodecState final : public CodecState {
 public:
  QuantCodecState(std::string codec, const Lane& k, const Lane& v, int64_t D, int64_t T)
      : codec_(std::move(codec)), lanes_{k, v}, D_(D), level_{std::vector<uint8_t>(static_cast<size_t>(T), 0),
                                                              std::vector<uint8_t>(static_cast<size_t>(T), 0)} {
    for (const Lane& l : lanes_) KVSIM_ASSERT(l.chunk >= 1 && l.chunk % l.q.tokens_per_tile(D) == 0);
  }

  void store(SlotCache& cache, int32_t t, const float* k, const float* v) override {
    cache.append_exact(t, k, v);
    for (int i = 0; i < 2; ++i) {
      Lane& l = lanes_[i];
      l.pending.push_back(t);
      std::vector<int32_t> live;
      for (int32_t p : l.pending) {
        const int64_t s = cache.find(p);
        if (s >= 0 && cache.n_members(s) == 1) live.push_back(p);
      }
      l.pending.swap(live);
      while (static_cast<int64_t>(l.pending.size()) >= l.keep + l.chunk) quantize_oldest(cache, i);
    }
  }

  double bytes(const SlotCache& cache) const override {
    double b = 0;
    for (int64_t s = 0; s < cache.size(); ++s) {
      const size_t p = static_cast<size_t>(cache.pos(s));
      double slot = 0;  // key + value, summed before adding (the order the bytes were always summed in)
      for (int i = 0; i < 2; ++i) {
        const int lv = cache.n_members(s) == 1 ? level_[i][p] : 0;
        slot += lv == 0 ? 2.0 * static_cast<double>(D_) : lanes_[i].q.bytes_per_token(D_, lv == 2);
      }
      b += slot;
    }
    return b;
  }

  // Degenerate: a lane that never quantized, or (the budget kept fewer tokens than the fp16 residual)
  // whose quantized tokens were all evicted, so that nothing the cache holds at the end is quantized:
  // the codec then only changed which prompt tokens were rounded before the strategy dropped them.
  std::vector<std::string> degeneracies(const SlotCache& cache) const override {
    std::vector<std::string> out;
    const char* what[2] = {"keys", "values"};
    bool none[2] = {false, false};
    for (int i = 0; i < 2; ++i) {
      const Lane& l = lanes_[i];
      bool held = false;
      for (int64_t s = 0; s < cache.size() && !held; ++s)
        held = cache.n_members(s) == 1 && level_[i][static_cast<size_t>(cache.pos(s))] > 0;
      none[i] = !held;
      const std::string need = std::to_string(l.keep + l.chunk) + " fp16 tokens are pending";
      if (l.chunks_done == 0)
        out.push_back(codec_ + ": no " + what[i] + " were ever quantized (they are quantized once " + need +
                      "; the cache never held that many)");
      else if (!held)
        out.push_back(codec_ + ": no " + what[i] +
                      " the cache held at the end were quantized (they are quantized once " + need +
                      "; the budget keeps fewer, so only prompt tokens that were then evicted were)");
      else if (l.q.kind == Quantizer::nf4 && l.q.dq && l.dq_groups_done == 0)
        out.push_back(codec_ + ": dq=1 never completed a group of 256 blocks for the " + what[i] +
                      " (their absmax values stayed fp32)");
    }
    const std::string needs = "keys need " + std::to_string(lanes_[0].keep + lanes_[0].chunk) + " and values " +
                              std::to_string(lanes_[1].keep + lanes_[1].chunk) + " pending fp16 tokens";
    if (lanes_[0].chunks_done == 0 && lanes_[1].chunks_done == 0)
      out = {codec_ + ": nothing was ever quantized (" + needs + "; the cache never held that many)"};
    else if (none[0] && none[1])
      out = {codec_ + ": nothing the cache held at the end was quantized (" + needs +
             "; the budget keeps fewer, so only prompt tokens that were then evicted were)"};
    return out;
  }

 private:
  void quantize_oldest(SlotCache& cache, int i) {
    Lane& l = lanes_[i];
    const int64_t tile = l.q.tokens_per_tile(D_);
    std::vector<float> x(static_cast<size_t>(tile * D_));
    for (int64_t off = 0; off < l.chunk; off += tile) {
      std::vector<int64_t> slots(static_cast<size_t>(tile));
      for (int64_t j = 0; j < tile; ++j) {
        const int64_t s = cache.find(l.pending[static_cast<size_t>(off + j)]);
        KVSIM_ASSERT(s >= 0);
        slots[static_cast<size_t>(j)] = s;
        const float* src = i == 0 ? cache.key(s) : cache.value(s);
        std::copy(src, src + D_, x.begin() + j * D_);
      }
      if (l.q.kind == Quantizer::nf4) {
        // First level now, with the exact absmax (bitsandbytes computes the 4-bit codes before it
        // compresses the absmax values).
        Nf4Quantized q = ref::quant_nf4(x.data(), tile, D_, QuantAxis::token, std::min(l.q.block, tile * D_), false);
        ref::dequant_nf4(q, x.data());
        if (l.q.dq) {
          l.dq_blocks += static_cast<int64_t>(q.absmax.size());
          l.dq_tiles.push_back(
              {std::move(q), std::vector<int32_t>(l.pending.begin() + off, l.pending.begin() + off + tile)});
        }
      } else {
        l.q.roundtrip(x.data(), tile, D_);
      }
      for (int64_t j = 0; j < tile; ++j) {
        const int64_t s = slots[static_cast<size_t>(j)];
        std::copy(x.begin() + j * D_, x.begin() + (j + 1) * D_, i == 0 ? cache.key(s) : cache.value(s));
        cache.set_exact(s, false);
        level_[i][static_cast<size_t>(l.pending[static_cast<size_t>(off + j)])] = 1;
      }
      if (l.q.kind == Quantizer::nf4 && l.q.dq)
        while (l.dq_blocks >= kDqGroup) second_level(cache, i);
    }
    l.pending.erase(l.pending.begin(), l.pending.begin() + l.chunk);
    ++l.chunks_done;
  }

  // QLoRA's double quantization of the oldest 256 first-level blocks: their absmax values minus
  // their mean as 8-bit codes with one fp32 scale (sim/kernels/quant_core.h, the kernels' own
  // arithmetic); the group's live tokens are decoded again with the reconstructed absmax.
  void second_level(SlotCache& cache, int i) {
    Lane& l = lanes_[i];
    std::vector<float> absmax;
    for (const auto& tl : l.dq_tiles) absmax.insert(absmax.end(), tl.q.absmax.begin(), tl.q.absmax.end());
    KVSIM_ASSERT(static_cast<int64_t>(absmax.size()) >= kDqGroup);  // tiles never straddle groups (validate)
    absmax.resize(static_cast<size_t>(kDqGroup));
    const float mean = core::nf4_dq_mean(absmax.data(), kDqGroup);
    float scale = 0;
    std::vector<int8_t> codes(static_cast<size_t>(kDqGroup));
    core::nf4_dq_group_item(absmax.data(), kDqGroup, mean, 0, &scale, codes.data());
    int64_t b = 0;
    size_t n_done = 0;
    for (auto& tl : l.dq_tiles) {
      if (b == kDqGroup) break;
      for (float& a : tl.q.absmax) a = core::nf4_block_scale(absmax.data(), codes.data(), &scale, mean, b++);
      std::vector<float> x(static_cast<size_t>(tl.q.n_t * D_));
      ref::dequant_nf4(tl.q, x.data());
      for (size_t j = 0; j < tl.pos.size(); ++j) {
        const int64_t s = cache.find(tl.pos[j]);
        if (s < 0 || cache.n_members(s) != 1) continue;  // evicted or merged since
        std::copy(x.begin() + static_cast<int64_t>(j) * D_, x.begin() + static_cast<int64_t>(j + 1) * D_,
                  i == 0 ? cache.key(s) : cache.value(s));
        level_[i][static_cast<size_t>(tl.pos[j])] = 2;
      }
      ++n_done;
    }
    l.dq_tiles.erase(l.dq_tiles.begin(), l.dq_tiles.begin() + static_cast<int64_t>(n_done));
    l.dq_blocks -= kDqGroup;
    ++l.dq_groups_done;
  }

  static constexpr int64_t kDqGroup = 256;  // blocks per second-level group (QLoRA)
  std::string codec_;
  Lane lanes_[2];  // keys, values
  int64_t D_;
  std::vector<uint8_t> level_[2];  // [T] by position: 0 fp16, 1 quantized, 2 quantized with a double-quantized absmax
};

// How kivi keeps its newest tokens in fp16 (sim/strategies/STRATEGIES.md, "Storage codecs").
enum class Residual {
  paper,  // KIVI's reference code: R keys quantized together once R are pending and a new one arrives
          // (1..R fp16 keys at attention); values one at a time, the newest R + 1 in fp16 at attention
  window  // kvsim's earlier rule: once R + G tokens are pending the oldest G (keys and values) are quantized
};

class QuantCodec final : public Codec {
 public:
  QuantCodec(std::string name, std::string spec, Quantizer kq, Quantizer vq, int64_t residual,
             Residual mode = Residual::window)
      : name_(std::move(name)), spec_(std::move(spec)), kq_(kq), vq_(vq), residual_(residual), mode_(mode) {}
  std::string name() const override { return name_; }
  std::unique_ptr<CodecState> make_state(int64_t D, int64_t T) const override {
    Quantizer kq = kq_, vq = vq_;
    // group 0 (the default) on a token axis means min(32, D): per-token groups never span tokens.
    for (Quantizer* q : {&kq, &vq})
      if (q->kind == Quantizer::uniform && q->group == 0)
        q->group = q->axis == QuantAxis::token ? std::min<int64_t>(32, D) : 32;
    kq.validate(name_ + " keys", D);
    vq.validate(name_ + " values", D);
    Lane k, v;
    k.q = kq, v.q = vq;
    if (mode_ == Residual::paper) {
      k.keep = 1, k.chunk = residual_;  // residual_ is a positive multiple of the key group (make_codec)
      v.keep = residual_ + 1, v.chunk = vq.tokens_per_tile(D);
    } else {
      // Both tensors form whole tiles from the same tokens.
      const int64_t tile = std::max(kq.tokens_per_tile(D), vq.tokens_per_tile(D));
      KVSIM_ASSERT(tile % kq.tokens_per_tile(D) == 0 && tile % vq.tokens_per_tile(D) == 0);
      k.keep = v.keep = residual_;
      k.chunk = v.chunk = tile;
    }
    return std::make_unique<QuantCodecState>(name_, k, v, D, T);
  }

 private:
  std::string name_, spec_;
  Quantizer kq_, vq_;
  int64_t residual_;
  Residual mode_;
};

int read_bits(ParamReader& p, const std::string& codec, std::initializer_list<int> allowed, int def) {
  const int64_t b = p.get_int("bits", def, "bits per element");
  std::string list;
  for (int a : allowed) {
    if (b == a) return a;
    list += (list.empty() ? "" : ", ") + std::to_string(a);
  }
  throw UsageError(codec + ": bits=" + std::to_string(b) + " is not supported (choose " + list + ")");
}

int64_t read_positive(ParamReader& p, const std::string& codec, const std::string& key, int64_t def,
                      const std::string& doc) {
  const int64_t v = p.get_int(key, def, doc);
  if (v < 1) throw UsageError(codec + ": " + key + "=" + std::to_string(v) + " must be >= 1");
  return v;
}

// protect= on any codec (IntactKV-style pivot tokens, methods.md §4.7): the protected positions bypass
// the codec and stay exact (fp16 in bytes, 4·D per token, which the inner codec already counts for a
// slot it never quantized), plus 4 bytes for each one's position unless the set is a prefix 0..n-1.
class ProtectedCodecState final : public CodecState {
 public:
  ProtectedCodecState(std::unique_ptr<CodecState> inner, const std::vector<int32_t>& pos, bool prefix, int64_t T)
      : inner_(std::move(inner)), protect_(static_cast<size_t>(T), 0), prefix_(prefix) {
    for (int32_t p : pos)
      if (p < T) protect_[static_cast<size_t>(p)] = 1;
  }
  void store(SlotCache& cache, int32_t t, const float* k, const float* v) override {
    if (protect_[static_cast<size_t>(t)])
      cache.append_exact(t, k, v);
    else
      inner_->store(cache, t, k, v);
  }
  double bytes(const SlotCache& cache) const override {
    double b = inner_->bytes(cache);
    if (!prefix_)
      for (int64_t s = 0; s < cache.size(); ++s)
        if (cache.n_members(s) == 1 && protect_[static_cast<size_t>(cache.pos(s))]) b += 4.0;
    return b;
  }
  void calibrate(const float* k, const float* v, int64_t Hkv, int64_t T, int64_t kv, int64_t P) override {
    inner_->calibrate(k, v, Hkv, T, kv, P);
  }
  std::vector<std::string> degeneracies(const SlotCache& cache) const override { return inner_->degeneracies(cache); }

 private:
  std::unique_ptr<CodecState> inner_;
  std::vector<uint8_t> protect_;  // [T] by position
  bool prefix_;
};

class ProtectedCodec final : public Codec {
 public:
  ProtectedCodec(std::unique_ptr<Codec> inner, std::vector<int32_t> pos, bool prefix)
      : inner_(std::move(inner)), pos_(std::move(pos)), prefix_(prefix) {}
  std::string name() const override { return inner_->name(); }
  std::unique_ptr<CodecState> make_state(int64_t D, int64_t T) const override {
    return std::make_unique<ProtectedCodecState>(inner_->make_state(D, T), pos_, prefix_, T);
  }

 private:
  std::unique_ptr<Codec> inner_;
  std::vector<int32_t> pos_;
  bool prefix_;
};

// `sinks:N` (the first N positions) or a list of positions; UsageError otherwise.
std::vector<int32_t> parse_protect(const std::string& codec, const std::string& text, bool* prefix) {
  const std::string bad =
      codec + ": protect=" + text + " is not sinks:N or a list of positions (protect=sinks:4, protect=0,5,9)";
  auto to_int = [&](const std::string& s) {
    if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) throw UsageError(bad);
    return static_cast<int32_t>(std::stol(s));
  };
  std::vector<int32_t> pos;
  if (text.rfind("sinks:", 0) == 0) {
    const int32_t n = to_int(text.substr(6));
    for (int32_t i = 0; i < n; ++i) pos.push_back(i);
  } else {
    size_t a = 0;
    while (a <= text.size()) {
      const size_t b = std::min(text.find(',', a), text.size());
      pos.push_back(to_int(text.substr(a, b - a)));
      a = b + 1;
    }
  }
  std::sort(pos.begin(), pos.end());
  pos.erase(std::unique(pos.begin(), pos.end()), pos.end());
  *prefix = pos.empty() || pos.back() == static_cast<int32_t>(pos.size()) - 1;
  return pos;
}
}  // namespace

std::vector<std::string> codec_names() { return {"quant", "kivi", "nf4", "fp8", "int8"}; }

bool is_codec_name(const std::string& name) {
  auto n = codec_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

std::unique_ptr<Codec> make_codec(const StrategySpec& spec, std::map<std::string, std::string>* resolved) {
  ParamReader p(spec);
  std::unique_ptr<Codec> out;
  if (spec.name == "quant") {
    // quant: uniform asymmetric b-bit for keys and values alike.
    Quantizer q;
    q.bits = read_bits(p, "quant", {2, 4, 8}, 4);
    q.axis = p.get_choice("axis", {"token", "channel"}) == "channel" ? QuantAxis::channel : QuantAxis::token;
    q.group = p.get_int("group", 0, "channels (axis=token) or tokens (axis=channel) per group; 0: min(32, D) or 32");
    if (q.group < 0)
      throw UsageError("quant: group=" + std::to_string(q.group) + " must be >= 1 (or 0 for the default)");
    if ((q.group * q.bits) % 8 != 0)
      throw UsageError("quant: group=" + std::to_string(q.group) + " with bits=" + std::to_string(q.bits) +
                       " must fill whole bytes (group * bits a multiple of 8)");
    out = std::make_unique<QuantCodec>("quant", spec.text, q, q, 0);
  } else if (spec.name == "kivi") {
    // kivi: keys per channel over groups of `group` tokens, values per token in groups of `vgroup`
    // channels; the newest tokens stay in fp16 by `residual_mode` (Residual above).
    Quantizer k, v;
    k.bits = v.bits = read_bits(p, "kivi", {2, 4}, 2);
    k.axis = QuantAxis::channel;
    k.group = read_positive(p, "kivi", "group", 32, "tokens per key group (per-channel quantization)");
    v.axis = QuantAxis::token;
    v.group = p.get_int("vgroup", 0, "channels per value group (per-token); 0: min(32, D)");
    if (v.group < 0)
      throw UsageError("kivi: vgroup=" + std::to_string(v.group) + " must be >= 1 (or 0 for the default)");
    const int64_t residual = p.get_int("residual", 32, "newest tokens kept in fp16");
    if (residual < 0) throw UsageError("kivi: residual=" + std::to_string(residual) + " must be >= 0");
    const Residual mode =
        p.get_choice("residual_mode", {"paper", "window"}) == "window" ? Residual::window : Residual::paper;
    if (mode == Residual::paper && (residual < k.group || residual % k.group != 0))
      throw UsageError("kivi: residual=" + std::to_string(residual) +
                       " must be a positive multiple of group=" + std::to_string(k.group) +
                       " with residual_mode=paper (the R residual keys are quantized as R / G groups)");
    if ((k.group * k.bits) % 8 != 0 || (v.group * v.bits) % 8 != 0)
      throw UsageError("kivi: group and vgroup times bits must be multiples of 8");
    out = std::make_unique<QuantCodec>("kivi", spec.text, k, v, residual, mode);
  } else if (spec.name == "nf4") {
    Quantizer q;
    q.kind = Quantizer::nf4;
    q.block = read_positive(p, "nf4", "block", 64, "elements per absmax block");
    if (q.block % 2 != 0) throw UsageError("nf4: block=" + std::to_string(q.block) + " must be even");
    const int64_t dq = p.get_int("dq", 0, "double-quantize the absmax values (8-bit, blocks of 256)");
    if (dq != 0 && dq != 1) throw UsageError("nf4: dq=" + std::to_string(dq) + " must be 0 or 1");
    q.dq = dq == 1;
    out = std::make_unique<QuantCodec>("nf4", spec.text, q, q, 0);
  } else if (spec.name == "fp8") {
    out = make_fp8_codec(p);
  } else if (spec.name == "int8") {
    out = make_int8_codec(p);
  } else {
    std::string list;
    for (const auto& n : codec_names()) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("unknown codec '" + spec.name + "' (valid: " + list + ")");
  }
  if (p.has("protect")) {
    bool prefix = true;
    auto pos = parse_protect(spec.name, p.get_string("protect", ""), &prefix);
    out = std::make_unique<ProtectedCodec>(std::move(out), std::move(pos), prefix);
  }
  p.finish();
  if (resolved) *resolved = p.resolved();
  return out;
}

}  // namespace kvsim
