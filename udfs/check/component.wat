;; `weir udf check` fixture: a WebAssembly component (component model), as
;; componentize-py or jco produce, reduced to its interface: it imports a
;; WASI interface and exports a function, but not the interface weir:udf/udf
;; of ABI v2: the engine refuses it, naming what it imports and exports.
(component
  (import "wasi:cli/environment@0.2.0" (instance))
  (core module $m
    (func (export "double") (param i32) (result i32)
      (i32.mul (local.get 0) (i32.const 2))))
  (core instance $i (instantiate $m))
  (func $double (param "x" s32) (result s32) (canon lift (core func $i "double")))
  (export "double" (func $double))
)
