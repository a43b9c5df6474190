;; json-transform: writes {"plugin":"json-transform","input":<input>}.
;; The output is assembled in memory and written with one write_output, the most host ABI v0
;; accepts per call: the 35-byte prefix ends at 1024, where the input is read, and the
;; closing brace follows the input.
(module
  (import "loong" "input_len" (func $input_len (result i32)))
  (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (import "loong" "log" (func $log (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 989) "{\"plugin\":\"json-transform\",\"input\":")
  (data (i32.const 128) "json-transform: wrapping input")
  (func (export "run") (result i32)
    (local $n i32)
    (local.set $n (call $input_len))
    ;; One page holds 64 KiB: 1024 bytes before the input, one after it.
    (if (i32.gt_u (local.get $n) (i32.const 64511))
      (then
        (if (i32.lt_s
              (memory.grow (i32.add (i32.shr_u (local.get $n) (i32.const 16)) (i32.const 1)))
              (i32.const 0))
          (then (return (i32.const 3))))))
    (drop (call $log (i32.const 128) (i32.const 30)))
    (if (i32.lt_s (call $read_input (i32.const 1024) (local.get $n)) (i32.const 0))
      (then (return (i32.const 1))))
    (i32.store8 (i32.add (i32.const 1024) (local.get $n)) (i32.const 125))
    (if (i32.lt_s (call $write_output (i32.const 989) (i32.add (local.get $n) (i32.const 36)))
                  (i32.const 0))
      (then (return (i32.const 2))))
    (i32.const 0)))
