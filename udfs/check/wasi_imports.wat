;; `weir udf check` fixture: what a module built against WASI (or a C
;; runtime's environment) imports. The host provides only `weir.log`;
;; `weir udf check` lists every import with whether it is provided (the
;; loader stops at the first one).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func (param i32 i64 i32) (result i32)))
  (import "env" "abort" (func (param i32 i32 i32 i32)))
  (import "weir" "log" (func (param i32 i32)))
  (memory (export "memory") 2 16)
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param $len i32) (result i32) (i32.const 1024))
  (func (export "map:identity") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.extend_i32_u (local.get $ptr))
            (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 32))))
)
