#include "sim/strategies/codecs_8bit.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "sim/base/error.h"
#include "sim/kernels/quant.h"

namespace kvsim {

namespace {

// How the fp8 scale is set (methods.md §4.1): `one` s = 1; `dynamic` vLLM's calculate_kv_scales,
// max |K| / 200 and max |V| / 100 over the layer's prompt, frozen; `tensor` / `head` amax / 448 (the
// format's max) over the prompt of the layer / of the KV head (the calibration data is the
// evaluated prompt: in-sample); `token` max |x_t| / max per token and KV head.
enum class Fp8Scale { tensor, one, dynamic, head, token };
const std::vector<std::string> kFp8ScaleNames = {"tensor", "one", "dynamic", "head", "token"};

bool from_prompt(Fp8Scale s) { return s == Fp8Scale::tensor || s == Fp8Scale::dynamic || s == Fp8Scale::head; }

// Shared by fp8 and int8: every token quantized on arrival; bytes of merged slots in fp16.
class Quant8State : public CodecState {
 public:
  Quant8State(int64_t D, int64_t T) : D_(D), quantized_(static_cast<size_t>(T), 0) {}

  void store(SlotCache& cache, int32_t t, const float* k, const float* v) override {
    cache.append_exact(t, k, v);
    const int64_t s = cache.size() - 1;
    roundtrip(k, cache.key(s), 0);
    roundtrip(v, cache.value(s), 1);
    cache.set_exact(s, false);
    quantized_[static_cast<size_t>(t)] = 1;
  }

  double bytes(const SlotCache& cache) const override {
    if (cache.size() == 0) return 0;
    double b = fixed_bytes();
    for (int64_t s = 0; s < cache.size(); ++s)
      b += cache.n_members(s) == 1 && quantized_[static_cast<size_t>(cache.pos(s))] ? token_bytes()
                                                                                    : 4.0 * static_cast<double>(D_);
    return b;
  }

 protected:
  // x [D] -> its dequantized copy in out [D]; tensor 0 keys, 1 values.
  virtual void roundtrip(const float* x, float* out, int tensor) const = 0;
  virtual double token_bytes() const = 0;           // key + value of one quantized token
  virtual double fixed_bytes() const { return 0; }  // scales held once per cache
  int64_t D_;

 private:
  std::vector<uint8_t> quantized_;  // [T] by position
};

class Fp8State final : public Quant8State {
 public:
  Fp8State(int64_t D, int64_t T, Fp8Format f, Fp8Scale mode) : Quant8State(D, T), format_(f), mode_(mode) {}

  void calibrate(const float* k, const float* v, int64_t Hkv, int64_t T, int64_t kv, int64_t P) override {
    if (!from_prompt(mode_)) return;
    const float fmax = format_ == Fp8Format::e4m3 ? 448.0f : 57344.0f;
    const int64_t h0 = mode_ == Fp8Scale::head ? kv : 0, h1 = mode_ == Fp8Scale::head ? kv + 1 : Hkv;
    const float* x[2] = {k, v};
    for (int i = 0; i < 2; ++i) {
      float m = 0;
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t j = 0; j < P * D_; ++j) m = std::max(m, std::fabs(x[i][h * T * D_ + j]));
      const float div = mode_ == Fp8Scale::dynamic ? (i == 0 ? 200.0f : 100.0f) : fmax;
      scale_[i] = m > 0 ? m / div : 1.0f;  // an all-zero prompt: any scale, 1 as with scale=one
    }
    shared_by_ = mode_ == Fp8Scale::head ? 1 : Hkv;
    calibrated_ = true;
  }

 protected:
  void roundtrip(const float* x, float* out, int tensor) const override {
    if (from_prompt(mode_) && !calibrated_)
      throw UsageError("fp8: scale=" + kFp8ScaleNames[static_cast<size_t>(mode_)] +
                       " sets its scales from the layer's prompt, which this engine does not hand the codec "
                       "(only the offline replay does); use scale=one or scale=token");
    const float one = 1.0f;
    const float* s = mode_ == Fp8Scale::token ? nullptr : mode_ == Fp8Scale::one ? &one : &scale_[tensor];
    const Fp8Quantized q = ref::quant_fp8(x, 1, D_, format_, s);
    ref::dequant_fp8(q, out);
  }
  double token_bytes() const override {
    return 2.0 * (static_cast<double>(D_) + (mode_ == Fp8Scale::token ? 4.0 : 0.0));
  }
  double fixed_bytes() const override { return from_prompt(mode_) ? 2.0 * 4.0 / static_cast<double>(shared_by_) : 0.0; }

 private:
  Fp8Format format_;
  Fp8Scale mode_;
  float scale_[2] = {1.0f, 1.0f};  // keys, values
  int64_t shared_by_ = 1;          // caches sharing one scale per tensor (Hkv for a per-layer scale)
  bool calibrated_ = false;
};

class Fp8Codec final : public Codec {
 public:
  Fp8Codec(Fp8Format f, Fp8Scale mode) : format_(f), mode_(mode) {}
  std::string name() const override { return "fp8"; }
  std::unique_ptr<CodecState> make_state(int64_t D, int64_t T) const override {
    return std::make_unique<Fp8State>(D, T, format_, mode_);
  }

 private:
  Fp8Format format_;
  Fp8Scale mode_;
};

class Int8State final : public Quant8State {
 public:
  Int8State(int64_t D, int64_t T, int64_t group) : Quant8State(D, T), group_(group) {}

 protected:
  void roundtrip(const float* x, float* out, int) const override {
    const Int8Quantized q = ref::quant_int8(x, 1, D_, group_);
    ref::dequant_int8(q, out);
  }
  double token_bytes() const override {
    const double d = static_cast<double>(D_);
    return 2.0 * (d + 2.0 * d / static_cast<double>(group_));
  }

 private:
  int64_t group_;
};

class Int8Codec final : public Codec {
 public:
  explicit Int8Codec(int64_t group) : group_(group) {}
  std::string name() const override { return "int8"; }
  std::unique_ptr<CodecState> make_state(int64_t D, int64_t T) const override {
    const int64_t g = group_ == 0 ? D : group_;
    if (D % g != 0) throw UsageError("int8: group=" + std::to_string(g) + " does not divide D = " + std::to_string(D));
    return std::make_unique<Int8State>(D, T, g);
  }

 private:
  int64_t group_;
};

}  // namespace

std::unique_ptr<Codec> make_fp8_codec(ParamReader& p) {
  const Fp8Format f = p.get_choice("format", {"e4m3", "e5m2"}) == "e5m2" ? Fp8Format::e5m2 : Fp8Format::e4m3;
  const std::string s = p.get_choice("scale", kFp8ScaleNames);
  const auto at = std::find(kFp8ScaleNames.begin(), kFp8ScaleNames.end(), s);
  return std::make_unique<Fp8Codec>(f, static_cast<Fp8Scale>(at - kFp8ScaleNames.begin()));
}

std::unique_ptr<Codec> make_int8_codec(ParamReader& p) {
  const int64_t sym = p.get_int("sym", 1, "symmetric (1; the asymmetric form is quant:bits=8,axis=token)");
  if (sym != 1)
    throw UsageError("int8: sym=" + std::to_string(sym) +
                     " is not supported (int8 is symmetric; the asymmetric form is quant:bits=8,axis=token,group=D)");
  const int64_t group = p.get_int("group", 0, "channels per fp16 scale; 0: D (one scale per token)");
  if (group < 0) throw UsageError("int8: group=" + std::to_string(group) + " must be >= 1 (or 0 for D)");
  return std::make_unique<Int8Codec>(group);
}

}  // namespace kvsim
