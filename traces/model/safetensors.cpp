#include "traces/model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "sim/base/error.h"
#include "sim/base/half.h"
#include "sim/base/new_file.h"

namespace kvsim::model {

namespace {

int st_bytes(StDType d) { return d == StDType::f32 ? 4 : 2; }

StDType parse_st_dtype(const std::string& s, const std::string& where) {
  if (s == "F32") return StDType::f32;
  if (s == "F16") return StDType::f16;
  if (s == "BF16") return StDType::bf16;
  throw FormatError(where + ": dtype " + s + " is not supported (F32, F16, BF16)");
}

// A JSON value for a message: at most 48 characters.
std::string short_json(const nlohmann::json& v) {
  std::string s = v.dump();
  return s.size() <= 48 ? s : s.substr(0, 45) + "...";
}

}  // namespace

const char* st_dtype_name(StDType d) {
  switch (d) {
    case StDType::f32: return "F32";
    case StDType::f16: return "F16";
    case StDType::bf16: return "BF16";
  }
  return "?";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  const uint64_t size = file_.size();
  if (size < 8) throw FormatError(path + ": " + std::to_string(size) + " bytes, too short for a safetensors header");
  uint64_t n = 0;
  std::memcpy(&n, file_.data(), 8);
  if (n > size - 8 || n > (uint64_t{100} << 20))
    throw FormatError(path + ": safetensors header length " + std::to_string(n) + " exceeds the file (" +
                      std::to_string(size) + " bytes)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(reinterpret_cast<const char*>(file_.data() + 8),
                              reinterpret_cast<const char*>(file_.data() + 8 + n));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path + ": safetensors header is not JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw FormatError(path + ": safetensors header is not a JSON object");
  const uint64_t data_size = size - 8 - n;
  const uint8_t* base = file_.data() + 8 + n;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const std::string where = path + ": tensor " + it.key();
    StTensor t;
    t.name = it.key();
    try {
      const auto& e = it.value();
      t.dtype = parse_st_dtype(e.at("dtype").get<std::string>(), where);
      uint64_t numel = 1;
      const auto& shape = e.at("shape");
      if (!shape.is_array()) throw FormatError(where + ": shape " + short_json(shape) + " is not an array");
      for (const auto& d : shape) {
        // An exact non-negative integer: JSON numbers such as 512.5, -1 or 1e3 are refused, not truncated.
        if (!d.is_number_unsigned())
          throw FormatError(where + ": shape " + short_json(shape) + ": dimension " + short_json(d) +
                            " is not a non-negative integer");
        const uint64_t v = d.get<uint64_t>();
        if (v > (uint64_t{1} << 40)) throw FormatError(where + ": shape dimension " + std::to_string(v));
        t.shape.push_back(static_cast<int64_t>(v));
        numel *= static_cast<uint64_t>(v);
        if (numel > (uint64_t{1} << 40)) throw FormatError(where + ": shape too large");
      }
      const auto& off = e.at("data_offsets");
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        throw FormatError(where + ": data_offsets " + short_json(off) + " must be [begin, end], non-negative integers");
      const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
      if (b > en || en > data_size)
        throw FormatError(where + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(en) +
                          "] outside the data section of " + std::to_string(data_size) + " bytes");
      const uint64_t want = numel * static_cast<uint64_t>(st_bytes(t.dtype));
      if (en - b != want)
        throw FormatError(where + ": data_offsets span " + std::to_string(en - b) + " bytes but " +
                          st_dtype_name(t.dtype) + " " + shape_str(t.shape) + " needs " + std::to_string(want));
      t.data = base + b;
      t.bytes = want;
      if (want > 0) ranges.emplace_back(b, en);
    } catch (const nlohmann::json::exception& ex) {
      throw FormatError(where + ": malformed header entry (" + ex.what() + ")");
    }
    tensors_.emplace(t.name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      throw FormatError(path + ": tensors overlap at data offset " + std::to_string(ranges[i].first));
}

std::vector<float> to_f32(const StTensor& t, const std::vector<int64_t>& shape, const std::string& file) {
  if (t.shape != shape)
    throw ShapeMismatch(file + ": tensor " + t.name + " has shape " + shape_str(t.shape) + ", expected " +
                        shape_str(shape));
  const size_t n = static_cast<size_t>(t.bytes / static_cast<uint64_t>(st_bytes(t.dtype)));
  std::vector<float> out(n);
  if (t.dtype == StDType::f32) {
    std::memcpy(out.data(), t.data, n * 4);
  } else {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, t.data + 2 * i, 2);
      out[i] = t.dtype == StDType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
    }
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<StOut>& tensors, StDType dtype,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json h;
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    uint64_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<uint64_t>(d);
    const uint64_t bytes = numel * static_cast<uint64_t>(st_bytes(dtype));
    h[t.name] = {{"dtype", st_dtype_name(dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  NewFile out(path);
  const uint64_t n = header.size();
  out.write(&n, 8);
  out.write(header.data(), header.size());
  std::vector<uint16_t> buf;
  for (const auto& t : tensors) {
    size_t numel = 1;
    for (int64_t d : t.shape) numel *= static_cast<size_t>(d);
    if (dtype == StDType::f32) {
      out.write(t.data, numel * 4);
    } else {
      buf.resize(numel);
      for (size_t i = 0; i < numel; ++i)
        buf[i] = dtype == StDType::f16 ? f32_to_f16(t.data[i]) : f32_to_bf16(t.data[i]);
      out.write(buf.data(), numel * 2);
    }
  }
  out.commit();
}

}  // namespace kvsim::model
