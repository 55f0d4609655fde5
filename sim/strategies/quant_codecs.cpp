#include "sim/strategies/quant_codecs.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"

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
  double bytes_per_token(int64_t D) const {
    const double d = static_cast<double>(D);
    if (kind == nf4) {
      const double b = static_cast<double>(block);
      return d / 2 + (dq ? d / b * 1.0 + d / (b * 256.0) * 4.0 : d / b * 4.0);
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
      return;
    }
    if (axis == QuantAxis::token && D % group != 0)
      throw UsageError(codec + ": group=" + std::to_string(group) + " does not divide D = " + std::to_string(D));
  }
};

class QuantCodecState final : public CodecState {
 public:
  QuantCodecState(const Quantizer& kq, const Quantizer& vq, int64_t residual, int64_t D, int64_t T)
      : kq_(kq), vq_(vq), residual_(residual), D_(D), quantized_(static_cast<size_t>(T), 0) {
    tile_ = std::max(kq.tokens_per_tile(D), vq.tokens_per_tile(D));
    // Both tensors must form whole tiles from the same tokens.
    KVSIM_ASSERT(tile_ % kq.tokens_per_tile(D) == 0 && tile_ % vq.tokens_per_tile(D) == 0);
  }

  void store(SlotCache& cache, int32_t t, const float* k, const float* v) override {
    cache.append_exact(t, k, v);
    pending_.push_back(t);
    // Forget pending tokens that were evicted or merged since.
    std::vector<int64_t> slot_of;
    std::vector<int32_t> live;
    for (int32_t p : pending_) {
      const int64_t s = cache.find(p);
      if (s >= 0 && cache.n_members(s) == 1) live.push_back(p);
    }
    pending_.swap(live);
    while (static_cast<int64_t>(pending_.size()) >= residual_ + tile_) quantize_oldest(cache);
  }

  double bytes(const SlotCache& cache) const override {
    const double fp16 = 4.0 * static_cast<double>(D_);  // key + value, 2 bytes per element
    const double qtok = kq_.bytes_per_token(D_) + vq_.bytes_per_token(D_);
    double b = (kq_.kind == Quantizer::nf4 && kq_.dq ? 4.0 : 0.0) + (vq_.kind == Quantizer::nf4 && vq_.dq ? 4.0 : 0.0);
    for (int64_t s = 0; s < cache.size(); ++s)
      b += (cache.n_members(s) == 1 && quantized_[static_cast<size_t>(cache.pos(s))]) ? qtok : fp16;
    return b;
  }

 private:
  void quantize_oldest(SlotCache& cache) {
    std::vector<float> kt(static_cast<size_t>(tile_ * D_)), vt(kt.size());
    std::vector<int64_t> slots(static_cast<size_t>(tile_));
    for (int64_t i = 0; i < tile_; ++i) {
      slots[static_cast<size_t>(i)] = cache.find(pending_[static_cast<size_t>(i)]);
      KVSIM_ASSERT(slots[static_cast<size_t>(i)] >= 0);
      std::copy(cache.key(slots[static_cast<size_t>(i)]), cache.key(slots[static_cast<size_t>(i)]) + D_,
                kt.begin() + i * D_);
      std::copy(cache.value(slots[static_cast<size_t>(i)]), cache.value(slots[static_cast<size_t>(i)]) + D_,
                vt.begin() + i * D_);
    }
    // Keys and values may tile differently (kivi: keys per channel over the tile, values per token).
    for (int64_t off = 0; off < tile_; off += kq_.tokens_per_tile(D_))
      kq_.roundtrip(kt.data() + off * D_, kq_.tokens_per_tile(D_), D_);
    for (int64_t off = 0; off < tile_; off += vq_.tokens_per_tile(D_))
      vq_.roundtrip(vt.data() + off * D_, vq_.tokens_per_tile(D_), D_);
    for (int64_t i = 0; i < tile_; ++i) {
      const int64_t s = slots[static_cast<size_t>(i)];
      std::copy(kt.begin() + i * D_, kt.begin() + (i + 1) * D_, cache.key(s));
      std::copy(vt.begin() + i * D_, vt.begin() + (i + 1) * D_, cache.value(s));
      cache.set_exact(s, false);
      quantized_[static_cast<size_t>(pending_[static_cast<size_t>(i)])] = 1;
    }
    pending_.erase(pending_.begin(), pending_.begin() + tile_);
  }

  Quantizer kq_, vq_;
  int64_t residual_, D_, tile_ = 1;
  std::vector<int32_t> pending_;    // exact tokens awaiting quantization, oldest first
  std::vector<uint8_t> quantized_;  // [T] by position
};

class QuantCodec final : public Codec {
 public:
  QuantCodec(std::string name, std::string spec, Quantizer kq, Quantizer vq, int64_t residual)
      : name_(std::move(name)), spec_(std::move(spec)), kq_(kq), vq_(vq), residual_(residual) {}
  std::string name() const override { return name_; }
  std::unique_ptr<CodecState> make_state(int64_t D, int64_t T) const override {
    Quantizer kq = kq_, vq = vq_;
    // group 0 (the default) on a token axis means min(32, D): per-token groups never span tokens.
    for (Quantizer* q : {&kq, &vq})
      if (q->kind == Quantizer::uniform && q->group == 0)
        q->group = q->axis == QuantAxis::token ? std::min<int64_t>(32, D) : 32;
    kq.validate(name_ + " keys", D);
    vq.validate(name_ + " values", D);
    return std::make_unique<QuantCodecState>(kq, vq, residual_, D, T);
  }

 private:
  std::string name_, spec_;
  Quantizer kq_, vq_;
  int64_t residual_;
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

}  // namespace

std::vector<std::string> codec_names() { return {"quant", "kivi", "nf4"}; }

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
    // channels; the newest `residual` tokens stay in fp16 until a further full group has formed.
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
    if ((k.group * k.bits) % 8 != 0 || (v.group * v.bits) % 8 != 0)
      throw UsageError("kivi: group and vgroup times bits must be multiples of 8");
    out = std::make_unique<QuantCodec>("kivi", spec.text, k, v, residual);
  } else if (spec.name == "nf4") {
    Quantizer q;
    q.kind = Quantizer::nf4;
    q.block = read_positive(p, "nf4", "block", 64, "elements per absmax block");
    if (q.block % 2 != 0) throw UsageError("nf4: block=" + std::to_string(q.block) + " must be even");
    const int64_t dq = p.get_int("dq", 0, "double-quantize the absmax values (8-bit, blocks of 256)");
    if (dq != 0 && dq != 1) throw UsageError("nf4: dq=" + std::to_string(dq) + " must be 0 or 1");
    q.dq = dq == 1;
    out = std::make_unique<QuantCodec>("nf4", spec.text, q, q, 0);
  } else {
    std::string list;
    for (const auto& n : codec_names()) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("unknown codec '" + spec.name + "' (valid: " + list + ")");
  }
  p.finish();
  if (resolved) *resolved = p.resolved();
  return out;
}

}  // namespace kvsim
