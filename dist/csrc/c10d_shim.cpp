// The c10d engine of libtorch behind a C interface (see c10d_shim.h).
//
// Compiled against the torch wheel's headers with -DUSE_C10D_GLOO (and -DUSE_C10D_NCCL
// when the wheel has CUDA and NCCL's header is found); gloo's headers are Debian's
// libgloo-dev, used for declarations only: the code that runs is libtorch's.
#include "c10d_shim.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

struct DinoStore {
  c10::intrusive_ptr<c10d::TCPStore> store;
};

// Reference-counted: the autograd graph of a differentiable all-reduce keeps the group
// alive until its backward has run (after destroy, that backward fails cleanly).
struct DinoPg : torch::CustomClassHolder {
  DinoPg(c10::intrusive_ptr<c10d::Backend> b, std::chrono::milliseconds t)
      : backend(std::move(b)), timeout(t) {}
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  bool failed = false;
};

namespace {

char* copy_message(const std::string& msg) {
  char* out = static_cast<char*>(std::malloc(msg.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, msg.c_str(), msg.size() + 1);
  }
  return out;
}

// Runs f, turning any C++ exception into an error string; c10 errors lose their backtrace.
template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

// As guarded, and marks the group failed so that destroy aborts instead of shutting down.
template <typename F>
char* guarded_op(DinoPg* pg, F&& f) {
  char* err = guarded(std::forward<F>(f));
  if (err != nullptr) {
    pg->failed = true;
  }
  return err;
}

void wait_work(DinoPg* pg, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(pg->timeout)) {
    throw std::runtime_error("timed out after " + std::to_string(pg->timeout.count()) + " ms");
  }
}

at::Tensor& as_tensor(void* ptr) {
  return *static_cast<at::Tensor*>(ptr);
}

// Sums a contiguous tensor over the group, in place.
void all_reduce_sum_in_place(DinoPg* pg, at::Tensor& tensor) {
  std::vector<at::Tensor> tensors{tensor};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::SUM;
  opts.timeout = pg->timeout;
  wait_work(pg, pg->backend->allreduce(tensors, opts));
}

// The sum over the group as a new tensor, whose backward sums the incoming gradient over
// the group too (torch.distributed.nn.functional.all_reduce): with every rank's loss
// depending on the sum, that is the gradient of the sum of their losses.
class AllReduceSum : public torch::autograd::Function<AllReduceSum> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const c10::intrusive_ptr<DinoPg>& pg) {
    at::Tensor out = input.clone(at::MemoryFormat::Contiguous);
    all_reduce_sum_in_place(pg.get(), out);
    ctx->saved_data["pg"] = c10::IValue::make_capsule(pg);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto pg = c10::static_intrusive_pointer_cast<DinoPg>(ctx->saved_data["pg"].toCapsule());
    at::Tensor grad = grads[0].clone(at::MemoryFormat::Contiguous);
    try {
      all_reduce_sum_in_place(pg.get(), grad);
    } catch (...) {
      pg->failed = true;
      throw;
    }
    return {grad, at::Tensor()};
  }
};

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world_size,
                                            std::chrono::milliseconds timeout,
                                            const char* iface, const char* host) {
  auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
  if (iface != nullptr) {
    // A comma-separated list, as torch.distributed reads GLOO_SOCKET_IFNAME: one device each.
    std::string list(iface);
    for (size_t start = 0, end; start <= list.size(); start = end + 1) {
      end = std::min(list.find(',', start), list.size());
      if (end > start) {
        opts->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(list.substr(start, end - start)));
      }
    }
  } else if (host != nullptr) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
  } else {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, opts);
}

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store,
                                            int rank, int world_size,
                                            std::chrono::milliseconds timeout) {
#ifdef USE_C10D_NCCL
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, opts);
#else
  (void)store, (void)rank, (void)world_size, (void)timeout;
  throw std::runtime_error("ProcessGroupNCCL was not compiled in");
#endif
}

}  // namespace

extern "C" {

void dino_c10d_free(void* ptr) { std::free(ptr); }

char* dino_c10d_store_create(const char* host, uint16_t port, int is_server, int world_size,
                             int64_t timeout_ms, DinoStore** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new DinoStore{std::move(store)};
  });
}

void dino_c10d_store_destroy(DinoStore* store) {
  try {
    delete store;
  } catch (...) {
    // Destructors of c10d objects do not throw; nothing may unwind into Rust regardless.
  }
}

char* dino_c10d_store_wait_for_workers(DinoStore* store) {
  return guarded([&] { store->store->waitForWorkers(); });
}

char* dino_c10d_store_set(DinoStore* store, const char* key, const uint8_t* value, uint64_t len) {
  return guarded([&] { store->store->set(key, std::vector<uint8_t>(value, value + len)); });
}

char* dino_c10d_store_get(DinoStore* store, const char* key, uint8_t** value, uint64_t* len) {
  return guarded([&] {
    std::vector<uint8_t> bytes = store->store->get(key);
    auto* buf = static_cast<uint8_t*>(std::malloc(bytes.size() + 1));
    if (buf == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(buf, bytes.data(), bytes.size());
    *value = buf;
    *len = bytes.size();
  });
}

char* dino_c10d_store_add(DinoStore* store, const char* key, int64_t delta, int64_t* result) {
  return guarded([&] { *result = store->store->add(key, delta); });
}

char* dino_c10d_store_check(DinoStore* store, const char* key, int* exists) {
  return guarded([&] { *exists = store->store->check({std::string(key)}) ? 1 : 0; });
}

char* dino_c10d_pg_create(DinoStore* store, int backend, int rank, int world_size,
                          int64_t timeout_ms, const char* gloo_iface, const char* gloo_host,
                          DinoPg** out) {
  return guarded([&] {
    const std::chrono::milliseconds timeout(timeout_ms);
    c10::intrusive_ptr<c10d::Store> prefixed =
        c10::make_intrusive<c10d::PrefixStore>("default_pg", store->store);
    prefixed = c10::make_intrusive<c10d::PrefixStore>("0/", prefixed);
    const bool nccl = backend == DINO_BACKEND_NCCL;
    prefixed = c10::make_intrusive<c10d::PrefixStore>(nccl ? "cuda/" : "cpu/", prefixed);
    auto made = nccl ? make_nccl(prefixed, rank, world_size, timeout)
                     : make_gloo(prefixed, rank, world_size, timeout, gloo_iface, gloo_host);
    *out = c10::make_intrusive<DinoPg>(std::move(made), timeout).release();
  });
}

void dino_c10d_pg_abort(DinoPg* pg) {
  char* err = guarded([&] { pg->backend->abort(); });
  pg->failed = true;
  std::free(err);
}

void dino_c10d_pg_destroy(DinoPg* pg) {
  char* err = guarded([&] {
    if (pg->failed) {
      pg->backend->abort();
    } else {
      pg->backend->shutdown();
    }
  });
  std::free(err);
  try {
    // Freed here unless a pending differentiable all-reduce still holds it.
    c10::intrusive_ptr<DinoPg>::reclaim(pg);
  } catch (...) {
  }
}

char* dino_c10d_all_reduce_sum(DinoPg* pg, void* tensor) {
  return guarded_op(pg, [&] { all_reduce_sum_in_place(pg, as_tensor(tensor)); });
}

char* dino_c10d_all_reduce_sum_autograd(DinoPg* pg, void* tensor, void** output) {
  return guarded_op(pg, [&] {
    auto group = c10::intrusive_ptr<DinoPg>::reclaim_copy(pg);
    *output = new at::Tensor(AllReduceSum::apply(as_tensor(tensor), group));
  });
}

char* dino_c10d_broadcast(DinoPg* pg, void* tensor, int root) {
  return guarded_op(pg, [&] {
    std::vector<at::Tensor> tensors{as_tensor(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = pg->timeout;
    wait_work(pg, pg->backend->broadcast(tensors, opts));
  });
}

char* dino_c10d_all_gather(DinoPg* pg, void* tensor, void** outputs) {
  return guarded_op(pg, [&] {
    const at::Tensor& input = as_tensor(tensor);
    std::vector<at::Tensor> inputs{input};
    std::vector<std::vector<at::Tensor>> gathered(1);
    for (int i = 0; i < pg->backend->getSize(); ++i) {
      gathered[0].push_back(at::empty_like(input, at::MemoryFormat::Contiguous));
    }
    c10d::AllgatherOptions opts;
    opts.timeout = pg->timeout;
    wait_work(pg, pg->backend->allgather(gathered, inputs, opts));
    for (size_t i = 0; i < gathered[0].size(); ++i) {
      outputs[i] = new at::Tensor(std::move(gathered[0][i]));
    }
  });
}

char* dino_c10d_barrier(DinoPg* pg) {
  return guarded_op(pg, [&] {
    c10d::BarrierOptions opts;
    opts.timeout = pg->timeout;
    wait_work(pg, pg->backend->barrier(opts));
  });
}

}  // extern "C"
