#include "strata/io/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

namespace strata::io {

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  require(fd >= 0, path.string(), ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path.string(), ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail(path.string(), ": cannot map ", size_, " bytes: ", std::strerror(err));
    }
    data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

AtomicFileWriter::AtomicFileWriter(const std::filesystem::path& path)
    : path_(path), tmp_(path.string() + ".tmp-" + std::to_string(::getpid())) {
  file_ = std::fopen(tmp_.c_str(), "wb");
  require(file_ != nullptr, path_.string(), ": cannot create temporary file ", tmp_.string(), ": ",
          std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (file_) {
    std::fclose(file_);
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
}

void AtomicFileWriter::write(const void* data, uint64_t n) {
  require(file_ != nullptr, path_.string(), ": write after commit");
  if (n == 0) return;
  require(std::fwrite(data, 1, n, file_) == n, path_.string(), ": write failed: ", std::strerror(errno));
  written_ += n;
}

void AtomicFileWriter::pad_to(uint64_t alignment) {
  static constexpr std::byte zeros[256] = {};
  uint64_t pad = (alignment - written_ % alignment) % alignment;
  while (pad > 0) {
    const uint64_t n = pad < sizeof(zeros) ? pad : sizeof(zeros);
    write(zeros, n);
    pad -= n;
  }
}

void AtomicFileWriter::commit() {
  require(file_ != nullptr, path_.string(), ": committed twice");
  const bool ok = std::fflush(file_) == 0 && ::fsync(::fileno(file_)) == 0;
  const int err = errno;
  std::fclose(file_);
  file_ = nullptr;
  if (!ok) {
    std::filesystem::remove(tmp_);
    fail(path_.string(), ": flushing failed: ", std::strerror(err));
  }
  std::error_code ec;
  std::filesystem::rename(tmp_, path_, ec);
  if (ec) {
    std::filesystem::remove(tmp_);
    fail(path_.string(), ": cannot rename the finished file into place: ", ec.message());
  }
}

}  // namespace strata::io
