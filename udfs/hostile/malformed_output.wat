;; Hostile: functions that return results the host must refuse.
;; Expected: MalformedOutput for each, never a silently accepted batch.
;;   map:bad       a "batch" of 3 records whose first value has tag 0xff
;;   map:short     an empty batch (0 values) whatever the input count
;;   map:trailing  a valid batch of one i64 followed by junk bytes
;;   map:bad_utf8  one string whose bytes are not UTF-8
;;   filter:not_bool  one i64 per record instead of booleans
;;   map_with_state:too_many  one group ([1, 2], null): two outputs, for a
;;                 group of one value (at most one output per call)
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
  ;; 03 00 00 00  ff ff ff ff
  (data (i32.const 0) "\03\00\00\00\ff\ff\ff\ff")
  ;; 00 00 00 00
  (data (i32.const 16) "\00\00\00\00")
  ;; 01 00 00 00  03 <8 bytes>  de ad
  (data (i32.const 32) "\01\00\00\00\03\01\00\00\00\00\00\00\00\de\ad")
  ;; 01 00 00 00  05 02 00 00 00 c3 28
  (data (i32.const 64) "\01\00\00\00\05\02\00\00\00\c3\28")
  ;; 01 00 00 00  07 02 00 00 00  08 02 00 00 00  03 <1>  03 <2>  00
  (data (i32.const 128) "\01\00\00\00\07\02\00\00\00\08\02\00\00\00\03\01\00\00\00\00\00\00\00\03\02\00\00\00\00\00\00\00\00")
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.extend_i32_u (local.get $ptr))
            (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 32))))
  (func (export "map:bad") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (i32.const 0) (i32.const 8)))
  (func (export "map:short") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (i32.const 16) (i32.const 4)))
  (func (export "map:trailing") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (i32.const 32) (i32.const 15)))
  (func (export "map:bad_utf8") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (i32.const 64) (i32.const 11)))
  (func (export "map_with_state:too_many") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (i32.const 128) (i32.const 33)))
  ;; The input batch of n i64 records is a batch of n non-booleans.
  (func (export "filter:not_bool") (param $ptr i32) (param $len i32) (result i64)
    (call $pack (local.get $ptr) (local.get $len)))
)
