#include <sentencepiece_processor.h>

#include "sim/error.h"
#include "traces/model/tokenizer.h"

namespace kvsim::model {

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string path;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  const auto st = impl_->sp.Load(path);
  if (!st.ok()) throw FormatError(path + ": not a SentencePiece model (" + st.ToString() + ")");
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(const std::string& text, bool bos) const {
  std::vector<int> ids;
  const auto st = impl_->sp.Encode(text, &ids);
  if (!st.ok()) throw FormatError(impl_->path + ": cannot encode (" + st.ToString() + ")");
  std::vector<int32_t> out;
  if (bos) out.push_back(bos_id());
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

std::string SentencePieceTokenizer::piece(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size())
    throw UsageError(impl_->path + ": token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                     std::to_string(vocab_size()) + ")");
  // Decoding one piece alone drops its leading space; decode the pair and strip the first part.
  if (prev < 0 || prev == bos_id()) return impl_->sp.DecodeIds({token});
  const std::string a = impl_->sp.DecodeIds({prev});
  const std::string ab = impl_->sp.DecodeIds({prev, token});
  return ab.size() >= a.size() ? ab.substr(a.size()) : ab;
}

int64_t SentencePieceTokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }
int32_t SentencePieceTokenizer::bos_id() const { return impl_->sp.bos_id(); }
int32_t SentencePieceTokenizer::eos_id() const { return impl_->sp.eos_id(); }

}  // namespace kvsim::model
