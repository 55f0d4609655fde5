#include "traces/model/tokenizer.h"

#include <cstdio>
#include <cstring>
#include <filesystem>

#include "sim/base/error.h"
#include "traces/model/mapped_file.h"

namespace kvsim::model {

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    if (id == bos_id() && prev < 0) {  // a leading BOS is not text
      prev = id;
      continue;
    }
    out += piece(prev, id);
    prev = id;
  }
  return out;
}

Llama2cTokenizer::Llama2cTokenizer(const std::string& path) : path_(path) {
  MappedFile f(path);
  const uint8_t* p = f.data();
  const uint64_t n = f.size();
  if (n < 4) throw FormatError(path + ": " + std::to_string(n) + " bytes, too short for a llama2.c tokenizer");
  uint64_t off = 4;  // max_token_length: not needed
  while (off < n) {
    float score;
    int32_t len;
    if (off + 8 > n)
      throw FormatError(path + ": truncated at token " + std::to_string(vocab_.size()) + " (byte " +
                        std::to_string(off) + " of " + std::to_string(n) + ")");
    std::memcpy(&score, p + off, 4);
    std::memcpy(&len, p + off + 4, 4);
    off += 8;
    if (len < 0 || static_cast<uint64_t>(len) > n - off)
      throw FormatError(path + ": token " + std::to_string(vocab_.size()) + " claims " + std::to_string(len) +
                        " bytes at byte " + std::to_string(off) + " of " + std::to_string(n));
    vocab_.emplace_back(reinterpret_cast<const char*>(p + off), static_cast<size_t>(len));
    scores_.push_back(score);
    off += static_cast<uint64_t>(len);
  }
  if (vocab_.size() < 259)
    throw FormatError(path + ": " + std::to_string(vocab_.size()) +
                      " tokens; a llama2.c vocabulary has <unk>, BOS, EOS and 256 byte tokens first");
  for (size_t i = 0; i < vocab_.size(); ++i) index_.emplace(vocab_[i], static_cast<int32_t>(i));  // first wins
}

int32_t Llama2cTokenizer::lookup(const std::string& s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

std::vector<int32_t> Llama2cTokenizer::encode(const std::string& text, bool bos) const {
  // As llama2.c's encode(): dummy-prefix space, one token per UTF-8 code point (or its bytes via
  // byte fallback <0xXX> = 3 + byte), then greedily merge the adjacent pair whose merged piece
  // has the highest score, until no pair merges.
  std::vector<int32_t> ids;
  if (bos) ids.push_back(bos_id());
  if (text.empty()) return ids;
  std::vector<int32_t> t;
  if (int32_t sp = lookup(" "); sp >= 0) t.push_back(sp);
  for (size_t i = 0; i < text.size();) {
    size_t len = 1;
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0xC0) {  // a UTF-8 lead byte: take its continuation bytes (at most 3)
      while (i + len < text.size() && len < 4 && (static_cast<unsigned char>(text[i + len]) & 0xC0) == 0x80) ++len;
    }
    const std::string cp = text.substr(i, len);
    if (int32_t id = lookup(cp); id >= 0) {
      t.push_back(id);
    } else {
      for (char b : cp) t.push_back(static_cast<int32_t>(static_cast<unsigned char>(b)) + 3);
    }
    i += len;
  }
  std::string merged;
  while (true) {
    float best = -1e10f;
    int32_t best_id = -1;
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      merged = vocab_[static_cast<size_t>(t[i])] + vocab_[static_cast<size_t>(t[i + 1])];
      int32_t id = lookup(merged);
      if (id >= 0 && scores_[static_cast<size_t>(id)] > best) {
        best = scores_[static_cast<size_t>(id)];
        best_id = id;
        best_i = i;
      }
    }
    if (best_id < 0) break;
    t[best_i] = best_id;
    t.erase(t.begin() + static_cast<std::ptrdiff_t>(best_i) + 1);
  }
  ids.insert(ids.end(), t.begin(), t.end());
  return ids;
}

std::string Llama2cTokenizer::piece(int32_t prev, int32_t token) const {
  if (token < 0 || token >= vocab_size())
    throw UsageError(path_ + ": token id " + std::to_string(token) + " is outside the vocabulary [0, " +
                     std::to_string(vocab_size()) + ")");
  const std::string& s = vocab_[static_cast<size_t>(token)];
  unsigned int byte = 0;
  if (s.size() == 6 && std::sscanf(s.c_str(), "<0x%02X>", &byte) == 1) return std::string(1, static_cast<char>(byte));
  if (prev == bos_id() && !s.empty() && s[0] == ' ') return s.substr(1);
  return s;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (std::filesystem::path(path).extension() == ".model") return std::make_unique<SentencePieceTokenizer>(path);
  return std::make_unique<Llama2cTokenizer>(path);
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] == ' ' || s[i] == ',' || s[i] == '\t' || s[i] == '\n' || s[i] == '[' || s[i] == ']') {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    if (j == i || j - i > 9)
      throw UsageError("--ids: '" + s.substr(i, std::min<size_t>(12, s.size() - i)) +
                       "' is not a token id (expected non-negative integers separated by spaces or commas)");
    out.push_back(static_cast<int32_t>(std::stol(s.substr(i, j - i))));
    i = j;
  }
  return out;
}

std::unique_ptr<Tokenizer> tokenizer_for_model(const std::string& model_path, const std::string& explicit_path) {
  namespace fs = std::filesystem;
  if (!explicit_path.empty()) {
    if (!fs::exists(explicit_path)) throw UsageError("--tokenizer " + explicit_path + ": file not found");
    return load_tokenizer(explicit_path);
  }
  std::error_code ec;
  const fs::path dir = fs::is_directory(model_path, ec) ? fs::path(model_path) : fs::path(model_path).parent_path();
  std::vector<fs::path> tried;
  for (const char* name : {"tokenizer.model", "tok512.bin", "tokenizer.bin"}) {
    fs::path p = dir / name;
    if (fs::exists(p, ec)) return load_tokenizer(p.string());
    tried.push_back(p);
  }
  std::string list;
  for (const auto& p : tried) list += (list.empty() ? "" : ", ") + p.string();
  throw UsageError(model_path + ": no tokenizer found (tried " + list + "); pass --tokenizer or use --ids");
}

}  // namespace kvsim::model
