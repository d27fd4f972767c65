// Error codes and Result<T>: how every Valet call reports failure.
//
// Valet never throws from its own code paths: every fallible call returns a Result<T> (or Status,
// which is Result<void>). Reading value() of a failed result is a programming error and throws
// BadResultAccess, so it never turns into undefined behaviour.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace valet {

enum class Errc : std::uint8_t {
  ok = 0,
  invalid_argument,   // zero or absurd size, bad alignment, malformed request
  out_of_memory,      // the capacity (physical pages) cannot hold the request
  out_of_address_space,
  invalid_handle,     // null handle, or index out of range
  stale_handle,       // the object was freed (generation mismatch): includes double free
  foreign_handle,     // a handle made by another heap
  pinned,             // the operation needs an unpinned object
  shut_down,          // the heap was shut down
  invalid_state,      // the backend refuses: map onto mapped memory, unmap of unmapped memory...
  not_found,          // unknown page, stream or event
  unsupported,        // the backend cannot do this (no CUDA driver, no device)
  driver_error,       // a CUDA driver call failed; the message names the call and the CUresult
  system_error,       // an OS call failed; the message names the call and errno
  data_mismatch,      // a verify found bytes that differ from the pattern
  internal,           // a broken invariant: a bug in Valet
};

std::string_view errc_name(Errc code) noexcept;

struct Error {
  Errc code = Errc::internal;
  std::string message;

  std::string to_string() const;
};

class BadResultAccess : public std::logic_error {
 public:
  explicit BadResultAccess(const Error& e) : std::logic_error(e.to_string()), error_(e) {}
  const Error& error() const noexcept { return error_; }

 private:
  Error error_;
};

inline Error make_error(Errc code, std::string message) { return Error{code, std::move(message)}; }

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}      // NOLINT

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }

  T& value() & {
    check();
    return std::get<0>(v_);
  }
  const T& value() const& {
    check();
    return std::get<0>(v_);
  }
  T&& value() && {
    check();
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  // Precondition: !ok().
  const Error& error() const {
    if (ok()) throw std::logic_error("valet::Result::error() on a successful result");
    return std::get<1>(v_);
  }
  Errc code() const noexcept { return ok() ? Errc::ok : std::get<1>(v_).code; }

 private:
  void check() const {
    if (!ok()) throw BadResultAccess(std::get<1>(v_));
  }
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), failed_(true) {}  // NOLINT

  bool ok() const noexcept { return !failed_; }
  explicit operator bool() const noexcept { return ok(); }
  void value() const {
    if (failed_) throw BadResultAccess(error_);
  }
  const Error& error() const {
    if (!failed_) throw std::logic_error("valet::Status::error() on a successful status");
    return error_;
  }
  Errc code() const noexcept { return failed_ ? error_.code : Errc::ok; }

 private:
  Error error_;
  bool failed_ = false;
};

using Status = Result<void>;

inline Status ok_status() { return {}; }

}  // namespace valet

// Propagates a failed Status/Result from the current function.
#define VALET_TRY(expr)                                   \
  do {                                                    \
    auto valet_try_result_ = (expr);                      \
    if (!valet_try_result_.ok()) return valet_try_result_.error(); \
  } while (0)
