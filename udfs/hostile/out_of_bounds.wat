;; Hostile: results that point outside linear memory (1 page = 64 KiB).
;; Expected: MalformedOutput ("lies outside linear memory"), no host crash.
;;   map:oob       16 bytes at 0xffff0000, far past the end of memory
;;   map:straddle  starts inside memory (at 65530) and runs 100 bytes past its end
;;   map:oob_error an error message (bit 63) at 0xfffffff0
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  ;; A bump allocator that never frees (each task gets a fresh instance).
  (func (export "weir_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  ;; A well-behaved function: returns its input batch unchanged.
  (func (export "map:identity") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.extend_i32_u (local.get $ptr))
            (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 32))))
  (func (export "map:oob") (param $ptr i32) (param $len i32) (result i64)
    (i64.const 0x00000010ffff0000))
  (func (export "map:straddle") (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.const 65530) (i64.shl (i64.const 100) (i64.const 32))))
  (func (export "map:oob_error") (param $ptr i32) (param $len i32) (result i64)
    (i64.const 0x80000010fffffff0))
)
