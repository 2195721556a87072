;; WordCount in WebAssembly text with plain export names: the same code as
;; udfs/wat/wordcount.wat, but its UDF exports are named as a toolchain that
;; cannot put ':' in an export name would name them (`split`, `pair`,
;; `wc_sum`, `subtract`), and a custom section `weir:exports` tells the host
;; which kind each one is (docs/udf-abi.md, section 1). A job uses it exactly
;; like the other WordCounts (`wordcount.split`, `wordcount.sum`, ...), with
;; the same output byte for byte. `wc_sum = reduce:sum` shows the renaming
;; form: export `wc_sum` is the reduce function `sum`.
(module
  (@custom "weir:exports" "# export = kind[:function]\nsplit = flat_map\npair = map\nwc_sum = reduce:sum\nsubtract = reduce\n")
  (memory (export "memory") 1)

  (global $heap_base i32 (i32.const 1024))
  (global $heap (mut i32) (i32.const 1024))

  ;; Error messages: offset, length.
  (data (i32.const 0) "malformed input batch")              ;; 0, 21
  (data (i32.const 32) "expected a string")                 ;; 32, 17
  (data (i32.const 64) "expected a list of i64 values")     ;; 64, 29
  (data (i32.const 96) "a group to reduce is empty")        ;; 96, 26

  (func (export "weir_abi_version") (result i32)
    (i32.const 1))

  (func (export "weir_alloc") (param $len i32) (result i32)
    (global.set $heap (global.get $heap_base))
    (call $alloc (local.get $len)))

  ;; Bump allocation of $len bytes, 8-aligned; grows memory or traps.
  (func $alloc (param $len i32) (result i32)
    (local $p i32) (local $end i64) (local $have i64)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    ;; In i64 so that a huge $len cannot wrap around.
    (local.set $end (i64.add (i64.extend_i32_u (local.get $p)) (i64.extend_i32_u (local.get $len))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have)) (i64.const 65535))
                             (i64.const 16))))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $p))

  ;; Result packing.
  (func $ok (param $ptr i32) (param $len i32) (result i64)
    (i64.or (i64.extend_i32_u (local.get $ptr))
            (i64.shl (i64.extend_i32_u (local.get $len)) (i64.const 32))))

  (func $err (param $ptr i32) (param $len i32) (result i64)
    (i64.or (call $ok (local.get $ptr) (local.get $len))
            (i64.const 0x8000000000000000)))

  ;; Whitespace is Rust's u8::is_ascii_whitespace: 0x20, 0x09, 0x0a, 0x0c,
  ;; 0x0d. As a bit set over 0..=32 that is bits 9, 10, 12, 13 and 32 =
  ;; 0x1_0000_3600, so the test for byte $b is, branch-free,
  ;;   $b <= 32 && (0x100003600 >> $b) & 1
  ;; written inline in flat_map:split (a call per byte costs more than it).

  ;; Reads the batch count at $ptr; -1 (as an "error" marker) when the
  ;; buffer is shorter than 4 bytes or the count cannot fit: each record
  ;; takes at least $min bytes.
  (func $batch_count (param $ptr i32) (param $len i32) (param $min i32) (result i64)
    (local $n i32)
    (if (i32.lt_u (local.get $len) (i32.const 4))
      (then (return (i64.const -1))))
    (local.set $n (i32.load (local.get $ptr)))
    (if (i64.gt_u (i64.mul (i64.extend_i32_u (local.get $n)) (i64.extend_i32_u (local.get $min)))
                  (i64.extend_i32_u (i32.sub (local.get $len) (i32.const 4))))
      (then (return (i64.const -1))))
    (i64.extend_i32_u (local.get $n)))

  ;; Checks that a string starts at $p (before $end) and returns the offset
  ;; one past its bytes, or 0 when it is not a well-formed string.
  (func $str_end (param $p i32) (param $end i32) (result i32)
    (local $l i32)
    (if (i32.lt_u (i32.sub (local.get $end) (local.get $p)) (i32.const 5))
      (then (return (i32.const 0))))
    (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x05))
      (then (return (i32.const 0))))
    (local.set $l (i32.load (i32.add (local.get $p) (i32.const 1))))
    (if (i32.gt_u (local.get $l) (i32.sub (local.get $end) (i32.add (local.get $p) (i32.const 5))))
      (then (return (i32.const 0))))
    (i32.add (i32.add (local.get $p) (i32.const 5)) (local.get $l)))

  ;; Writes the string $src[..$n] at $out; returns the end.
  (func $put_str (param $out i32) (param $src i32) (param $n i32) (result i32)
    (i32.store8 (local.get $out) (i32.const 0x05))
    (i32.store (i32.add (local.get $out) (i32.const 1)) (local.get $n))
    (memory.copy (i32.add (local.get $out) (i32.const 5)) (local.get $src) (local.get $n))
    (i32.add (i32.add (local.get $out) (i32.const 5)) (local.get $n)))

  ;; Writes the i64 $v at $out; returns the end.
  (func $put_i64 (param $out i32) (param $v i64) (result i32)
    (i32.store8 (local.get $out) (i32.const 0x03))
    (i64.store (i32.add (local.get $out) (i32.const 1)) (local.get $v))
    (i32.add (local.get $out) (i32.const 9)))

  ;; flat_map:split. A line of L bytes (5 + L input bytes) yields at most
  ;; (L + 1) / 2 words of 5 + length bytes each, under 4 * (5 + L): so an
  ;; output buffer of 4 * len + 4 bytes always suffices (computed in i64:
  ;; an input over 1 GiB fails in $alloc instead of wrapping).
  (func (export "split") (param $ptr i32) (param $len i32) (result i64)
    (local $n i64) (local $end i32) (local $p i32) (local $e i32)
    (local $out0 i32) (local $out i32) (local $words i32) (local $start i32) (local $b i32)
    (local.set $n (call $batch_count (local.get $ptr) (local.get $len) (i32.const 5)))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (call $err (i32.const 0) (i32.const 21)))))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $out0
      (call $alloc (i32.wrap_i64
        (select (i64.const 0x7fffffff)
                (i64.add (i64.mul (i64.extend_i32_u (local.get $len)) (i64.const 4)) (i64.const 4))
                (i64.gt_u (i64.mul (i64.extend_i32_u (local.get $len)) (i64.const 4)) (i64.const 0x7ffffff0))))))
    (local.set $out (i32.add (local.get $out0) (i32.const 4)))
    (local.set $p (i32.add (local.get $ptr) (i32.const 4)))
    (block $done
      (loop $records
        (br_if $done (i64.eqz (local.get $n)))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (local.set $e (call $str_end (local.get $p) (local.get $end)))
        (if (i32.eqz (local.get $e))
          (then (return (call $err (i32.const 32) (i32.const 17)))))
        (local.set $p (i32.add (local.get $p) (i32.const 5)))
        ;; The words of the line $p..$e.
        (block $line_done
          (loop $words_loop
            ;; Skip whitespace.
            (block $skipped
              (loop $skip
                (br_if $line_done (i32.ge_u (local.get $p) (local.get $e)))
                (local.set $b (i32.load8_u (local.get $p)))
                (br_if $skipped (i32.eqz (i32.and
                  (i32.le_u (local.get $b) (i32.const 32))
                  (i32.wrap_i64 (i64.and (i64.shr_u (i64.const 0x100003600) (i64.extend_i32_u (local.get $b)))
                                         (i64.const 1))))))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br $skip)))
            ;; A word: up to the next whitespace or the end of the line.
            (local.set $start (local.get $p))
            (block $word_end
              (loop $word
                (br_if $word_end (i32.ge_u (local.get $p) (local.get $e)))
                (local.set $b (i32.load8_u (local.get $p)))
                (br_if $word_end (i32.and
                  (i32.le_u (local.get $b) (i32.const 32))
                  (i32.wrap_i64 (i64.and (i64.shr_u (i64.const 0x100003600) (i64.extend_i32_u (local.get $b)))
                                         (i64.const 1)))))
                (local.set $p (i32.add (local.get $p) (i32.const 1)))
                (br $word)))
            (local.set $out (call $put_str (local.get $out) (local.get $start)
                                  (i32.sub (local.get $p) (local.get $start))))
            (local.set $words (i32.add (local.get $words) (i32.const 1)))
            (br $words_loop)))
        (local.set $p (local.get $e))
        (br $records)))
    (i32.store (local.get $out0) (local.get $words))
    (call $ok (local.get $out0) (i32.sub (local.get $out) (local.get $out0))))

  ;; map:pair. Each record grows by 14 bytes: the tuple header (07, u32 2)
  ;; and the count (03, 8 bytes).
  (func (export "pair") (param $ptr i32) (param $len i32) (result i64)
    (local $n i64) (local $count i32) (local $end i32) (local $p i32) (local $e i32)
    (local $out0 i32) (local $out i32)
    (local.set $n (call $batch_count (local.get $ptr) (local.get $len) (i32.const 5)))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (call $err (i32.const 0) (i32.const 21)))))
    (local.set $count (i32.wrap_i64 (local.get $n)))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    ;; len + 14 n <= 3.8 len: fits in i32 for any input the host can send
    ;; into a memory it has room for; otherwise $alloc traps.
    (local.set $out0 (call $alloc (i32.wrap_i64
      (i64.add (i64.extend_i32_u (local.get $len)) (i64.mul (local.get $n) (i64.const 14))))))
    (local.set $out (i32.add (local.get $out0) (i32.const 4)))
    (local.set $p (i32.add (local.get $ptr) (i32.const 4)))
    (block $done
      (loop $records
        (br_if $done (i64.eqz (local.get $n)))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (local.set $e (call $str_end (local.get $p) (local.get $end)))
        (if (i32.eqz (local.get $e))
          (then (return (call $err (i32.const 32) (i32.const 17)))))
        ;; 07 02 00 00 00, then the string as it came, then 03 1.
        (i32.store8 (local.get $out) (i32.const 0x07))
        (i32.store (i32.add (local.get $out) (i32.const 1)) (i32.const 2))
        (memory.copy (i32.add (local.get $out) (i32.const 5)) (local.get $p)
                     (i32.sub (local.get $e) (local.get $p)))
        (local.set $out (i32.add (i32.add (local.get $out) (i32.const 5))
                                 (i32.sub (local.get $e) (local.get $p))))
        (local.set $out (call $put_i64 (local.get $out) (i64.const 1)))
        (local.set $p (local.get $e))
        (br $records)))
    (i32.store (local.get $out0) (local.get $count))
    (call $ok (local.get $out0) (i32.sub (local.get $out) (local.get $out0))))

  ;; The left fold shared by reduce:sum ($sub = 0) and reduce:subtract
  ;; ($sub = 1): each group is a list of >= 1 i64 values.
  (func $fold (param $ptr i32) (param $len i32) (param $sub i32) (result i64)
    (local $n i64) (local $count i32) (local $end i32) (local $p i32)
    (local $k i32) (local $acc i64) (local $x i64) (local $out0 i32) (local $out i32)
    ;; The smallest group, [x], is 5 + 9 bytes.
    (local.set $n (call $batch_count (local.get $ptr) (local.get $len) (i32.const 14)))
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then (return (call $err (i32.const 0) (i32.const 21)))))
    (local.set $count (i32.wrap_i64 (local.get $n)))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (local.set $out0 (call $alloc (i32.add (i32.const 4) (i32.mul (local.get $count) (i32.const 9)))))
    (local.set $out (i32.add (local.get $out0) (i32.const 4)))
    (local.set $p (i32.add (local.get $ptr) (i32.const 4)))
    (block $done
      (loop $groups
        (br_if $done (i64.eqz (local.get $n)))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        ;; The list header.
        (if (i32.lt_u (i32.sub (local.get $end) (local.get $p)) (i32.const 5))
          (then (return (call $err (i32.const 64) (i32.const 29)))))
        (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x08))
          (then (return (call $err (i32.const 64) (i32.const 29)))))
        (local.set $k (i32.load (i32.add (local.get $p) (i32.const 1))))
        (if (i32.eqz (local.get $k))
          (then (return (call $err (i32.const 96) (i32.const 26)))))
        (local.set $p (i32.add (local.get $p) (i32.const 5)))
        ;; The values: each 03 + 8 bytes.
        (if (i64.gt_u (i64.mul (i64.extend_i32_u (local.get $k)) (i64.const 9))
                      (i64.extend_i32_u (i32.sub (local.get $end) (local.get $p))))
          (then (return (call $err (i32.const 64) (i32.const 29)))))
        (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x03))
          (then (return (call $err (i32.const 64) (i32.const 29)))))
        (local.set $acc (i64.load (i32.add (local.get $p) (i32.const 1))))
        (local.set $p (i32.add (local.get $p) (i32.const 9)))
        (block $folded
          (loop $values
            (local.set $k (i32.sub (local.get $k) (i32.const 1)))
            (br_if $folded (i32.eqz (local.get $k)))
            (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x03))
              (then (return (call $err (i32.const 64) (i32.const 29)))))
            (local.set $x (i64.load (i32.add (local.get $p) (i32.const 1))))
            (local.set $acc
              (if (result i64) (local.get $sub)
                (then (i64.sub (local.get $acc) (local.get $x)))
                (else (i64.add (local.get $acc) (local.get $x)))))
            (local.set $p (i32.add (local.get $p) (i32.const 9)))
            (br $values)))
        (local.set $out (call $put_i64 (local.get $out) (local.get $acc)))
        (br $groups)))
    (i32.store (local.get $out0) (local.get $count))
    (call $ok (local.get $out0) (i32.sub (local.get $out) (local.get $out0))))

  (func (export "wc_sum") (param $ptr i32) (param $len i32) (result i64)
    (call $fold (local.get $ptr) (local.get $len) (i32.const 0)))

  (func (export "subtract") (param $ptr i32) (param $len i32) (result i64)
    (call $fold (local.get $ptr) (local.get $len) (i32.const 1)))
)
