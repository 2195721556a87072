;; `weir udf check` fixture: a valid ABI v1 module whose UDF-typed exports
;; carry no `<kind>:` prefix and no `weir:exports` declaration, as a
;; toolchain that cannot put ':' in export names produces them. The host sees
;; no functions: `weir udf check` lists `upper` and `identity` as ignored
;; and exits 1 with a hint.
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (func (export "weir_abi_version") (result i32) (i32.const 1))
  (func (export "weir_alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $len)))
    (local.get $p))
  (func $identity (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.extend_i32_u (local.get $ptr))
            (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 32))))
  (export "identity" (func $identity))
  (export "upper" (func $identity))
  ;; Not of the UDF type: not a candidate, not listed.
  (func (export "helper") (param i32) (result i32) (local.get 0))
)
