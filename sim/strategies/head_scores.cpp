#include "sim/strategies/head_scores.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "sim/base/error.h"
#include "sim/strategies/strategy.h"

namespace kvsim {

namespace {

HeadScores read_json(const std::string& path, const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw UsageError(path + ": not a JSON object of head scores (" + e.what() + ")");
  }
  if (!j.is_object() || j.empty()) throw UsageError(path + ": expected a JSON object {\"LAYER-HEAD\": [scores]}");
  std::map<std::pair<int64_t, int64_t>, double> m;
  int64_t L = 0, H = 0;
  for (const auto& [key, val] : j.items()) {
    const size_t dash = key.find('-');
    char *e1 = nullptr, *e2 = nullptr;
    const long l = dash == std::string::npos ? -1 : std::strtol(key.c_str(), &e1, 10);
    const long h = dash == std::string::npos ? -1 : std::strtol(key.c_str() + dash + 1, &e2, 10);
    if (dash == std::string::npos || e1 != key.c_str() + dash || *e2 != '\0' || l < 0 || h < 0)
      throw UsageError(path + ": key '" + key + "' is not LAYER-HEAD");
    double sum = 0;
    int64_t n = 0;
    if (val.is_number()) {
      sum = val.get<double>(), n = 1;
    } else if (val.is_array() && !val.empty()) {
      for (const auto& x : val) {
        if (!x.is_number()) throw UsageError(path + ": key '" + key + "' holds a value that is not a number");
        sum += x.get<double>(), ++n;
      }
    } else {
      throw UsageError(path + ": key '" + key + "' holds neither a number nor a list of numbers");
    }
    if (!std::isfinite(sum)) throw UsageError(path + ": key '" + key + "' has a score that is not finite");
    m[{l, h}] = sum / static_cast<double>(n);
    L = std::max<int64_t>(L, l + 1), H = std::max<int64_t>(H, h + 1);
  }
  if (static_cast<int64_t>(m.size()) != L * H)
    throw UsageError(path + ": " + std::to_string(m.size()) + " heads, not every LAYER-HEAD of " + std::to_string(L) +
                     " layers x " + std::to_string(H) + " heads");
  HeadScores s;
  s.rows = L, s.cols = H;
  for (const auto& [lh, v] : m) s.value.push_back(v);  // std::map: layer-major order
  return s;
}

}  // namespace

HeadScores read_head_scores(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) throw UsageError(what + ": cannot read the head scores file " + path);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') return read_json(path, text);
  HeadScores s;
  std::istringstream lines(text);
  std::string line;
  int64_t row = 0;
  while (std::getline(lines, line)) {
    ++row;
    std::istringstream ss(line);
    std::vector<double> r;
    std::string tok;
    while (ss >> tok) {
      char* end = nullptr;
      const double v = std::strtod(tok.c_str(), &end);
      if (end == tok.c_str() || *end != '\0' || !std::isfinite(v))
        throw UsageError(path + ":" + std::to_string(row) + ": '" + tok + "' is not a number (head scores)");
      r.push_back(v);
    }
    if (r.empty()) continue;
    if (s.rows > 0 && static_cast<int64_t>(r.size()) != s.cols)
      throw UsageError(path + ":" + std::to_string(row) + ": " + std::to_string(r.size()) +
                       " head scores where the first row has " + std::to_string(s.cols));
    s.cols = static_cast<int64_t>(r.size());
    s.value.insert(s.value.end(), r.begin(), r.end());
    ++s.rows;
  }
  if (s.rows == 0) throw UsageError(what + ": " + path + " holds no head scores");
  return s;
}

std::vector<double> retrieval_scores(const LayerView& lv, const std::vector<int32_t>& tokens, int64_t P, int64_t ns,
                                     int64_t ne, int64_t steps, const std::vector<int32_t>& stop,
                                     std::vector<int32_t>* generated) {
  KVSIM_ASSERT(P >= 1 && ns >= 0 && ns < ne && ne <= P && static_cast<int64_t>(tokens.size()) == lv.T);
  std::vector<double> score(static_cast<size_t>(lv.H), 0.0);
  if (generated) generated->clear();
  const int64_t G = lv.G(), D = lv.D;
  for (int64_t t = P - 1, n = 0; t + 1 < lv.T && n < steps; ++t, ++n) {
    const int32_t next = tokens[static_cast<size_t>(t + 1)];
    if (generated) generated->push_back(next);
    for (int64_t h = 0; h < lv.H; ++h) {
      const float* q = lv.q_head(h) + t * D;
      const float* k = lv.k_head(h / G);
      int64_t best = 0;
      double top = -INFINITY;
      for (int64_t j = 0; j <= t; ++j) {
        double z = 0;
        for (int64_t d = 0; d < D; ++d) z += static_cast<double>(q[d]) * static_cast<double>(k[j * D + d]);
        if (z > top) top = z, best = j;
      }
      if (best >= ns && best < ne && tokens[static_cast<size_t>(best)] == next)
        score[static_cast<size_t>(h)] += 1.0 / static_cast<double>(ne - ns);
    }
    if (std::find(stop.begin(), stop.end(), next) != stop.end()) break;
  }
  return score;
}

double needle_recall(const std::vector<int32_t>& needle, const std::vector<int32_t>& generated) {
  if (needle.empty()) return 0.0;
  std::map<int32_t, int64_t> have;
  for (int32_t id : generated) ++have[id];
  int64_t hit = 0;
  for (int32_t id : needle)
    if (auto it = have.find(id); it != have.end() && it->second > 0) --it->second, ++hit;
  return static_cast<double>(hit) / static_cast<double>(needle.size());
}

}  // namespace kvsim
