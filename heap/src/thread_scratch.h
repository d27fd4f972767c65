// Per-thread scratch objects (vectors kept from call to call, so that the heap lock's holds make
// no malloc or free) that a heap call may still reach while its thread's thread_local objects
// are destroyed: a handle freed from a user's thread_local destructor at thread exit.
// thread_scratch<T, Tag>() is the thread's object while it lives and null after, and the caller
// then uses an object of its own instead of a destroyed one.
#pragma once

namespace valet::detail {

template <class T, class Tag>
T* thread_scratch() {
  // Trivially destructible, so readable to the thread's very end; set when the holder goes.
  static thread_local bool gone = false;
  struct Holder {
    T value{};
    ~Holder() { gone = true; }
  };
  if (gone) return nullptr;
  static thread_local Holder holder;
  return &holder.value;
}

// The thread's scratch object, or (once it is gone) one of this call's own: what a heap call
// that keeps a vector from call to call declares.
template <class T, class Tag>
class ScratchOrOwn {
 public:
  T& get() { return shared_ ? *shared_ : own_; }

 private:
  T* shared_ = thread_scratch<T, Tag>();
  T own_{};
};

}  // namespace valet::detail
