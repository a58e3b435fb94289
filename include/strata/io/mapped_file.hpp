#pragma once
// Read-only memory map of a whole file, and a bounds-checked cursor over bytes for parsers.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "strata/core/error.hpp"

namespace strata::io {

class MappedFile {
 public:
  // Maps `path` read-only. Throws strata::Error naming the file if it cannot be opened or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::span<const std::byte> bytes() const { return {data_, size_}; }
  uint64_t size() const { return size_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  uint64_t size_ = 0;
};

// Sequential little-endian reader over a byte span. Every read checks the remaining length first
// and throws strata::Error naming `what` (the file) and the field being read.
class ByteReader {
 public:
  ByteReader(std::span<const std::byte> bytes, std::string what) : bytes_(bytes), what_(std::move(what)) {}

  uint64_t offset() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }
  const std::string& what() const { return what_; }

  template <class T>
  T read(std::string_view field) {
    static_assert(std::is_trivially_copyable_v<T>);
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::span<const std::byte> take(uint64_t n, std::string_view field) {
    need(n, field);
    auto s = bytes_.subspan(pos_, n);
    pos_ += n;
    return s;
  }
  std::string_view take_string(uint64_t n, std::string_view field) {
    auto s = take(n, field);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }
  void seek(uint64_t pos, std::string_view field) {
    require(pos <= bytes_.size(), what_, ": ", field, " at offset ", pos, " lies past the end (", bytes_.size(),
            " bytes)");
    pos_ = pos;
  }
  void need(uint64_t n, std::string_view field) const {
    require(n <= remaining(), what_, ": truncated while reading ", field, " at offset ", pos_, " (need ", n,
            " bytes, ", remaining(), " left)");
  }

 private:
  std::span<const std::byte> bytes_;
  std::string what_;
  uint64_t pos_ = 0;
};

// Writes a file atomically: data goes to "<path>.tmp-<pid>" and is renamed over `path` only by
// commit(). If the writer is destroyed without commit() (an error was thrown), the temporary file is
// removed and `path` is left untouched.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(const std::filesystem::path& path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, uint64_t n);
  void write(std::span<const std::byte> s) { write(s.data(), s.size()); }
  void pad_to(uint64_t alignment);  // zero bytes up to the next multiple of alignment
  uint64_t written() const { return written_; }
  void commit();  // flush, fsync, rename

 private:
  std::filesystem::path path_, tmp_;
  std::FILE* file_ = nullptr;
  uint64_t written_ = 0;
};

}  // namespace strata::io
