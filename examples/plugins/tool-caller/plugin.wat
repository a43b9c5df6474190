;; tool-caller: calls the tool `echo` through loongd (host ABI v0's `call_tool`) with its own
;; input and writes echo's answer. A call loongd refuses writes
;; {"code":C,"error":{"kind":K,"message":M}} instead, C being call_tool's code
;; (-1 bad pointer or length, -2 denied, -3 the tool failed, -4 depth or budget exceeded).
;; Its manifest declares the `invoke_tool` capability, without which every call is denied.
(module
  (import "loong" "input_len" (func $input_len (result i32)))
  (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (import "loong" "call_tool" (func $call_tool (param i32 i32 i32 i32) (result i32)))
  (import "loong" "read_result" (func $read_result (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  ;; The tool's name.
  (data (i32.const 0) "echo")
  ;; What a refused call's output starts with; the code's digit is at 109.
  (data (i32.const 100) "{\"code\":-0,\"error\":")
  (data (i32.const 80) "null")
  (func (export "run") (result i32)
    (local $n i32)
    (local $r i32)
    (local $got i32)
    ;; The input, at 64 KiB (at most 64 KiB of it).
    (local.set $n (call $input_len))
    (if (i32.gt_u (local.get $n) (i32.const 65536))
      (then (return (i32.const 1))))
    (if (i32.lt_s (call $read_input (i32.const 65536) (local.get $n)) (i32.const 0))
      (then (return (i32.const 1))))
    (local.set $r
      (call $call_tool (i32.const 0) (i32.const 4) (i32.const 65536) (local.get $n)))
    (if (i32.ge_s (local.get $r) (i32.const 0))
      (then
        ;; The result, at 128 KiB (at most 128 KiB of it), written as this call's output.
        (if (i32.gt_u (local.get $r) (i32.const 131072))
          (then (return (i32.const 2))))
        (local.set $got (call $read_result (i32.const 131072) (local.get $r)))
        (if (i32.lt_s (call $write_output (i32.const 131072) (local.get $got)) (i32.const 0))
          (then (return (i32.const 3))))
        (return (i32.const 0))))
    ;; Refused: the code's digit, then the error object (null when there is none).
    (i32.store8 (i32.const 109) (i32.sub (i32.const 48) (local.get $r)))
    (local.set $got (call $read_result (i32.const 119) (i32.const 60000)))
    (if (i32.lt_s (local.get $got) (i32.const 0))
      (then
        (memory.copy (i32.const 119) (i32.const 80) (i32.const 4))
        (local.set $got (i32.const 4))))
    (i32.store8 (i32.add (i32.const 119) (local.get $got)) (i32.const 125))
    (if (i32.lt_s
          (call $write_output (i32.const 100) (i32.add (local.get $got) (i32.const 20)))
          (i32.const 0))
      (then (return (i32.const 3))))
    (i32.const 0)))
