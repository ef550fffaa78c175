//! Declarations of `csrc/c10d_shim.h` and the conversion of its error strings.
use std::ffi::{CStr, c_char, c_int, c_void};

#[repr(C)]
pub struct DinoStore {
    _private: [u8; 0],
}

#[repr(C)]
pub struct DinoPg {
    _private: [u8; 0],
}

pub const BACKEND_GLOO: c_int = 0;
pub const BACKEND_NCCL: c_int = 1;

unsafe extern "C" {
    pub fn dino_c10d_free(ptr: *mut c_void);

    pub fn dino_c10d_store_create(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut DinoStore,
    ) -> *mut c_char;
    pub fn dino_c10d_store_destroy(store: *mut DinoStore);
    pub fn dino_c10d_store_wait_for_workers(store: *mut DinoStore) -> *mut c_char;
    pub fn dino_c10d_store_set(
        store: *mut DinoStore,
        key: *const c_char,
        value: *const u8,
        len: u64,
    ) -> *mut c_char;
    pub fn dino_c10d_store_get(
        store: *mut DinoStore,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut u64,
    ) -> *mut c_char;
    pub fn dino_c10d_store_add(
        store: *mut DinoStore,
        key: *const c_char,
        delta: i64,
        result: *mut i64,
    ) -> *mut c_char;
    pub fn dino_c10d_store_check(
        store: *mut DinoStore,
        key: *const c_char,
        exists: *mut c_int,
    ) -> *mut c_char;

    #[allow(clippy::too_many_arguments)]
    pub fn dino_c10d_pg_create(
        store: *mut DinoStore,
        backend: c_int,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        gloo_iface: *const c_char,
        gloo_host: *const c_char,
        out: *mut *mut DinoPg,
    ) -> *mut c_char;
    pub fn dino_c10d_pg_destroy(pg: *mut DinoPg);
    pub fn dino_c10d_pg_abort(pg: *mut DinoPg);

    pub fn dino_c10d_all_reduce_sum(pg: *mut DinoPg, tensor: *mut c_void) -> *mut c_char;
    pub fn dino_c10d_all_reduce_sum_autograd(
        pg: *mut DinoPg,
        tensor: *mut c_void,
        output: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn dino_c10d_broadcast(pg: *mut DinoPg, tensor: *mut c_void, root: c_int) -> *mut c_char;
    pub fn dino_c10d_all_gather(
        pg: *mut DinoPg,
        tensor: *mut c_void,
        outputs: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn dino_c10d_barrier(pg: *mut DinoPg) -> *mut c_char;
}

/// Turns a shim return value into `Err(message)`, releasing the C string.
pub fn check(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the shim.
    let msg = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: released once, with the shim's own free.
    unsafe { dino_c10d_free(err.cast()) };
    Err(msg)
}
