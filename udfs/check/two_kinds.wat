;; `weir udf call` fixture: two functions with one name and two kinds
;; (`map:same` and `flat_map:same`, both return their input). A job names
;; the kind through its operation; `weir udf call` needs `--kind`.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (if (i32.gt_u (global.get $heap) (i32.shl (memory.size) (i32.const 16)))
      (then (drop (memory.grow (i32.add (i32.shr_u (local.get $len) (i32.const 16)) (i32.const 1))))))
    (local.get $p))
  (func $identity (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.extend_i32_u (local.get $ptr))
            (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 32))))
  (export "map:same" (func $identity))
  (export "flat_map:same" (func $identity))
)
