#include "strata/io/imatrix.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <set>

#include "strata/core/error.hpp"
#include "strata/io/gguf.hpp"
#include "strata/io/mapped_file.hpp"

namespace strata::io {

namespace {

constexpr std::string_view kSums = ".in_sum2", kCounts = ".counts", kLinearSums = ".in_sum";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::vector<float> floats_of(std::span<const std::byte> bytes) {
  std::vector<float> v(bytes.size() / sizeof(float));
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

void check_values(const std::string& file, const ImatrixEntry& e) {
  require(!e.counts.empty() && e.columns > 0 && e.sums.size() == static_cast<size_t>(e.columns) * e.counts.size(),
          file, ": imatrix entry '", e.name, "' has ", e.sums.size(), " sums for ", e.counts.size(), " matrices of ",
          e.columns, " columns");
  for (float s : e.sums)
    require(std::isfinite(s) && s >= 0, file, ": imatrix entry '", e.name, "' holds a sum of squares ", s);
  for (float c : e.counts)
    require(std::isfinite(c) && c >= 0, file, ": imatrix entry '", e.name, "' holds a count ", c);
}

Imatrix parse_gguf(std::span<const std::byte> bytes, const std::string& name) {
  const GgufFile g = GgufFile::parse(bytes, name);
  Imatrix m;
  if (const GgufValue* t = g.find("general.type"))
    require(std::holds_alternative<std::string>(*t) && std::get<std::string>(*t) == "imatrix", name,
            ": general.type is not \"imatrix\": a GGUF model, not an importance matrix");
  if (const GgufValue* v = g.find("imatrix.datasets")) {
    const auto* arr = std::get_if<GgufArray>(v);
    require(arr && arr->type() == GgufValueType::string, name, ": imatrix.datasets is not an array of strings");
    m.datasets = std::get<std::vector<std::string>>(arr->items);
  }
  if (const GgufValue* v = g.find("imatrix.chunk_count")) m.chunk_count = gguf_as_int(*v).value_or(0);
  if (const GgufValue* v = g.find("imatrix.chunk_size")) m.chunk_size = gguf_as_int(*v).value_or(0);
  require(m.chunk_count >= 0 && m.chunk_size >= 0, name, ": negative imatrix.chunk_count or imatrix.chunk_size");

  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> parts;  // sums, counts
  for (const auto& t : g.tensors()) {
    std::string_view n = t.name;
    if (ends_with(n, kSums))
      parts[std::string(n.substr(0, n.size() - kSums.size()))].first = &t;
    else if (ends_with(n, kCounts))
      parts[std::string(n.substr(0, n.size() - kCounts.size()))].second = &t;
    else if (!ends_with(n, kLinearSums))
      fail(name, ": tensor '", t.name, "' is not part of an importance matrix (.in_sum2, .counts or .in_sum)");
  }
  require(!parts.empty(), name, ": no '.in_sum2' tensors: not an importance matrix");
  for (const auto& [entry, p] : parts) {
    const auto [sums, counts] = p;
    require(sums != nullptr, name, ": imatrix entry '", entry, "' has counts but no '", entry, kSums, "'");
    require(counts != nullptr, name, ": imatrix entry '", entry, "' has sums but no '", entry, kCounts, "'");
    for (const GgufTensorInfo* t : {sums, counts})
      require(t->type == GgmlType::F32, name, ": tensor '", t->name, "' is not F32");
    const int64_t cols = sums->ne.empty() ? 0 : sums->ne[0];
    const int64_t mats = sums->ne.size() > 1 ? sums->numel() / std::max<int64_t>(cols, 1) : 1;
    require(cols > 0 && counts->numel() == mats && (counts->ne.empty() || counts->ne[0] == 1), name,
            ": tensor '", counts->name, "' holds ", counts->numel(), " counts for ", mats, " matrices of '", sums->name,
            "'");
    ImatrixEntry e{entry, cols, floats_of(g.data(*sums)), floats_of(g.data(*counts))};
    check_values(name, e);
    m.entries.push_back(std::move(e));
  }
  return m;
}

Imatrix parse_legacy(std::span<const std::byte> bytes, const std::string& name) {
  ByteReader r(bytes, name);
  const int32_t n = r.read<int32_t>("entry count");
  // Each entry takes at least its three int32 fields and one value.
  require(n >= 1 && static_cast<uint64_t>(n) <= r.remaining() / 16, name, ": entry count ", n,
          " is not possible in a file of ", bytes.size(), " bytes (neither a GGUF nor a legacy imatrix file?)");
  Imatrix m;
  m.legacy = true;
  std::set<std::string> seen;
  for (int32_t i = 0; i < n; ++i) {
    const std::string field = "entry " + std::to_string(i);
    const int32_t len = r.read<int32_t>(field + " name length");
    require(len >= 1 && static_cast<uint64_t>(len) <= r.remaining(), name, ": ", field, " name length ", len,
            " (", r.remaining(), " bytes left)");
    ImatrixEntry e;
    e.name = std::string(r.take_string(static_cast<uint64_t>(len), field + " name"));
    const int32_t ncall = r.read<int32_t>(field + " ncall");
    const int32_t nval = r.read<int32_t>(field + " value count");
    require(ncall >= 0, name, ": entry '", e.name, "' has ncall ", ncall);
    require(nval >= 1 && static_cast<uint64_t>(nval) <= r.remaining() / sizeof(float), name, ": entry '", e.name,
            "' has value count ", nval, " (", r.remaining(), " bytes left)");
    e.sums = floats_of(r.take(static_cast<uint64_t>(nval) * sizeof(float), field + " values"));
    e.columns = nval;
    e.counts = {static_cast<float>(ncall)};
    require(seen.insert(e.name).second, name, ": entry '", e.name, "' appears twice");
    check_values(name, e);
    m.entries.push_back(std::move(e));
  }
  // The trailing chunk count and dataset name are optional, but not half there.
  if (r.remaining() > 0) {
    m.chunk_count = r.read<int32_t>("chunk count");
    require(m.chunk_count >= 0, name, ": chunk count ", m.chunk_count);
    if (r.remaining() > 0) {
      const int32_t len = r.read<int32_t>("dataset name length");
      require(len >= 0 && static_cast<uint64_t>(len) <= r.remaining(), name, ": dataset name length ", len, " (",
              r.remaining(), " bytes left)");
      if (len > 0) m.datasets.emplace_back(r.take_string(static_cast<uint64_t>(len), "dataset name"));
      require(r.remaining() == 0, name, ": ", r.remaining(), " bytes after the dataset name");
    }
  }
  std::sort(m.entries.begin(), m.entries.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return m;
}

void check_writable(const Imatrix& m) {
  require(!m.entries.empty(), "imatrix: nothing to write (no entries)");
  for (const auto& e : m.entries) check_values("imatrix", e);
}

template <class T>
void put(std::vector<std::byte>& out, T v) {
  const auto* p = reinterpret_cast<const std::byte*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}

}  // namespace

std::vector<double> ImatrixEntry::mean_sq() const {
  std::vector<double> out(sums.size());
  for (size_t i = 0; i < sums.size(); ++i) {
    const double c = counts[i / static_cast<size_t>(columns)];
    out[i] = c > 0 ? sums[i] / c : 1.0;
  }
  return out;
}

const ImatrixEntry* Imatrix::find(std::string_view name) const {
  for (const auto& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

Imatrix parse_imatrix(std::span<const std::byte> bytes, std::string name) {
  uint32_t magic = 0;
  if (bytes.size() >= 4) std::memcpy(&magic, bytes.data(), 4);
  return magic == kGgufMagic ? parse_gguf(bytes, name) : parse_legacy(bytes, name);
}

Imatrix read_imatrix(const std::filesystem::path& path) {
  const MappedFile f(path);
  return parse_imatrix(f.bytes(), path.string());
}

std::vector<std::byte> imatrix_gguf_bytes(const Imatrix& m) {
  check_writable(m);
  GgufWriter w;
  w.set("general.type", std::string("imatrix"));
  w.set("imatrix.datasets", GgufArray{m.datasets});
  w.set("imatrix.chunk_count", static_cast<uint32_t>(m.chunk_count));
  w.set("imatrix.chunk_size", static_cast<uint32_t>(m.chunk_size));
  std::vector<const ImatrixEntry*> sorted;
  for (const auto& e : m.entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  auto bytes_of = [](const std::vector<float>& v) {
    std::vector<std::byte> b(v.size() * sizeof(float));
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  };
  for (const ImatrixEntry* e : sorted) {
    w.add_tensor(e->name + std::string(kSums), GgmlType::F32, {e->columns, e->matrices()}, bytes_of(e->sums));
    w.add_tensor(e->name + std::string(kCounts), GgmlType::F32, {1, e->matrices()}, bytes_of(e->counts));
  }
  return w.to_bytes();
}

std::vector<std::byte> imatrix_legacy_bytes(const Imatrix& m) {
  check_writable(m);
  std::vector<const ImatrixEntry*> sorted;
  for (const auto& e : m.entries) sorted.push_back(&e);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  require(sorted.size() <= static_cast<size_t>(std::numeric_limits<int32_t>::max()), "imatrix: too many entries");
  std::vector<std::byte> out;
  put(out, static_cast<int32_t>(sorted.size()));
  for (const ImatrixEntry* e : sorted) {
    put(out, static_cast<int32_t>(e->name.size()));
    const auto* p = reinterpret_cast<const std::byte*>(e->name.data());
    out.insert(out.end(), p, p + e->name.size());
    // A legacy entry holds E[x^2] * ncall. Read from the legacy layout, the numbers go back as they
    // were; from token counts, ncall is the chunks they make (rounded up, as llama-imatrix does).
    const float max_count = *std::max_element(e->counts.begin(), e->counts.end());
    int32_t ncall = static_cast<int32_t>(max_count);
    if (!m.legacy) {
      const double chunk = m.chunk_size > 0 ? static_cast<double>(m.chunk_size) : std::max(1.0f, max_count);
      ncall = static_cast<int32_t>(std::ceil(max_count / chunk));
    }
    put(out, ncall);
    put(out, static_cast<int32_t>(e->sums.size()));
    const std::vector<double> mean = e->mean_sq();
    for (size_t i = 0; i < mean.size(); ++i) {
      const float v = m.legacy ? e->sums[i] : static_cast<float>(mean[i]) * static_cast<float>(ncall);
      put(out, v);
    }
  }
  put(out, static_cast<int32_t>(m.chunk_count));
  const std::string dataset = m.datasets.empty() ? std::string() : m.datasets.back();
  put(out, static_cast<int32_t>(dataset.size()));
  const auto* p = reinterpret_cast<const std::byte*>(dataset.data());
  out.insert(out.end(), p, p + dataset.size());
  return out;
}

void write_imatrix(const Imatrix& imatrix, const std::filesystem::path& path) {
  const std::vector<std::byte> bytes =
      path.extension() == ".dat" ? imatrix_legacy_bytes(imatrix) : imatrix_gguf_bytes(imatrix);
  AtomicFileWriter w(path);
  w.write(bytes);
  w.commit();
}

void check_imatrix(const Imatrix& imatrix, std::span<const std::pair<std::string, int64_t>> layers,
                   std::string_view file) {
  std::map<std::string_view, int64_t> cols;
  for (const auto& [name, c] : layers) cols[name] = c;
  for (const auto& e : imatrix.entries) {
    const auto it = cols.find(e.name);
    require(it != cols.end(), file, ": imatrix entry '", e.name,
            "' is not a linear layer of this model (an importance matrix made for another model?)");
    require(e.matrices() == 1 && e.columns == it->second, file, ": imatrix entry '", e.name, "' has ", e.matrices(),
            " matrices of ", e.columns, " columns; the model's tensor has ", it->second,
            " input columns (an importance matrix made for another model?)");
  }
  require(!imatrix.entries.empty(), file, ": the importance matrix has no entries");
}

}  // namespace strata::io
