// C interface of the c10d shim: what dino-dist's Rust side calls.
//
// Every function that can fail returns NULL on success or an error message allocated with
// malloc (release it with dino_c10d_free): no C++ exception crosses this boundary.
// Tensors are the `at::Tensor*` behind tch's `C_tensor` (torch-sys' `torch::Tensor*`).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct DinoStore DinoStore;
typedef struct DinoPg DinoPg;

enum DinoBackend { DINO_BACKEND_GLOO = 0, DINO_BACKEND_NCCL = 1 };

void dino_c10d_free(void* ptr);

// TCPStore on host:port; the server (rank 0) listens, the others connect, both within
// timeout_ms. world_size sets the worker count of TCPStore's own join counter, which is
// incremented by dino_c10d_store_wait_for_workers, as torch.distributed does on creation.
char* dino_c10d_store_create(const char* host, uint16_t port, int is_server, int world_size,
                             int64_t timeout_ms, DinoStore** out);
void dino_c10d_store_destroy(DinoStore* store);
char* dino_c10d_store_wait_for_workers(DinoStore* store);
char* dino_c10d_store_set(DinoStore* store, const char* key, const uint8_t* value, uint64_t len);
// Blocks until the key exists (or the store's timeout); *value is malloc'd.
char* dino_c10d_store_get(DinoStore* store, const char* key, uint8_t** value, uint64_t* len);
char* dino_c10d_store_add(DinoStore* store, const char* key, int64_t delta, int64_t* result);
char* dino_c10d_store_check(DinoStore* store, const char* key, int* exists);

// The group's store keys are nested as torch.distributed.init_process_group's default
// group ("default_pg", "0/", then "cpu/" or "cuda/"), so Python ranks can join it.
// Gloo: the interfaces of gloo_iface (GLOO_SOCKET_IFNAME's comma-separated list) if non-NULL, else gloo_host (an address of this
// machine) if non-NULL, else c10d's default device.
char* dino_c10d_pg_create(DinoStore* store, int backend, int rank, int world_size,
                          int64_t timeout_ms, const char* gloo_iface, const char* gloo_host,
                          DinoPg** out);
// Releases the group: shutdown after success, abort after a failed operation.
void dino_c10d_pg_destroy(DinoPg* pg);
// Aborts pending operations and communicators (NCCL); the handle must still be destroyed.
void dino_c10d_pg_abort(DinoPg* pg);

char* dino_c10d_all_reduce_sum(DinoPg* pg, void* tensor);
// *output receives a new tensor (free it with tch): the sum of tensor over the group, which
// autograd differentiates by summing the incoming gradient over the group in backward
// (every rank must then run that backward, in the same order as its other collectives).
char* dino_c10d_all_reduce_sum_autograd(DinoPg* pg, void* tensor, void** output);
char* dino_c10d_broadcast(DinoPg* pg, void* tensor, int root);
// outputs receives world_size new tensors (free them with tch), in rank order.
char* dino_c10d_all_gather(DinoPg* pg, void* tensor, void** outputs);
char* dino_c10d_barrier(DinoPg* pg);

#ifdef __cplusplus
}
#endif
