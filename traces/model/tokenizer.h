// Tokenizers: the llama2.c tokenizer.bin format (BPE by merge score, byte fallback), SentencePiece
// .model files (libsentencepiece), and raw ids. BOS = 1, EOS = 2 in every Llama-family vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace kvsim::model {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text`, with BOS in front when `bos`.
  virtual std::vector<int32_t> encode(const std::string& text, bool bos) const = 0;
  // The text of `token` as it follows `prev` (the space after BOS is dropped; byte tokens give bytes).
  virtual std::string piece(int32_t prev, int32_t token) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const { return 1; }
  virtual int32_t eos_id() const { return 2; }

  std::string decode(const std::vector<int32_t>& ids) const;
};

// llama2.c format: int32 max_token_length, then per token: float32 score, int32 length, bytes.
class Llama2cTokenizer final : public Tokenizer {
 public:
  explicit Llama2cTokenizer(const std::string& path);
  std::vector<int32_t> encode(const std::string& text, bool bos) const override;
  std::string piece(int32_t prev, int32_t token) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(vocab_.size()); }

 private:
  int32_t lookup(const std::string& s) const;  // -1 if absent
  std::string path_;
  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> index_;
};

// A SentencePiece model (tokenizer.model) through libsentencepiece.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path);
  ~SentencePieceTokenizer() override;
  std::vector<int32_t> encode(const std::string& text, bool bos) const override;
  std::string piece(int32_t prev, int32_t token) const override;
  int64_t vocab_size() const override;
  int32_t bos_id() const override;
  int32_t eos_id() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// By extension: ".model" is SentencePiece, anything else llama2.c.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// "1 410, 469 347" -> ids; throws UsageError on anything that is not a non-negative integer.
std::vector<int32_t> parse_ids(const std::string& s);

// The tokenizer for a model: `explicit_path` if given; otherwise, for a Hugging Face directory, its
// tokenizer.model or tokenizer.bin; for a llama2.c checkpoint, tok512.bin or tokenizer.bin next to
// it. Throws UsageError naming the places it looked.
std::unique_ptr<Tokenizer> tokenizer_for_model(const std::string& model_path, const std::string& explicit_path);

}  // namespace kvsim::model
