#include <sentencepiece_processor.h>

#include "sim/base/error.h"
#include "sim/base/regular_file.h"
#include "traces/model/tokenizer.h"

namespace kvsim::model {

struct SentencePieceTokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string path;
};

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  require_regular_file(path, "tokenizer");
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
  // As the llama2.c format does: byte pieces give their byte, U+2581 becomes a space, and the
  // space after BOS (the dummy prefix) is dropped. Whole-sequence DecodeIds would merge the bytes
  // of a character split by byte fallback; piece by piece they must stay raw bytes.
  if (impl_->sp.IsByte(token)) {
    const std::string p = impl_->sp.IdToPiece(token);  // "<0xAB>"
    return std::string(1, static_cast<char>(std::stoi(p.substr(3, 2), nullptr, 16)));
  }
  if (impl_->sp.IsControl(token)) return "";
  std::string p = impl_->sp.IdToPiece(token), out;
  static const std::string kSpace = "\xe2\x96\x81";  // U+2581
  for (size_t i = 0; i < p.size();) {
    if (p.compare(i, 3, kSpace) == 0) {
      out += ' ';
      i += 3;
    } else {
      out += p[i++];
    }
  }
  if ((prev == bos_id() || prev < 0) && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

int64_t SentencePieceTokenizer::vocab_size() const { return impl_->sp.GetPieceSize(); }
int32_t SentencePieceTokenizer::bos_id() const { return impl_->sp.bos_id(); }
int32_t SentencePieceTokenizer::eos_id() const { return impl_->sp.eos_id(); }

}  // namespace kvsim::model
