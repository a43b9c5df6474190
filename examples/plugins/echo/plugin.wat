;; echo: reads the input at offset 1024 and writes it back unchanged.
(module
  (import "loong" "input_len" (func $input_len (result i32)))
  (import "loong" "read_input" (func $read_input (param i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "run") (result i32)
    (local $n i32)
    (local.set $n (call $input_len))
    ;; One page holds 64 KiB; grow to fit larger inputs.
    (if (i32.gt_u (local.get $n) (i32.const 64512))
      (then
        (if (i32.lt_s
              (memory.grow (i32.add (i32.shr_u (local.get $n) (i32.const 16)) (i32.const 1)))
              (i32.const 0))
          (then (return (i32.const 3))))))
    (if (i32.lt_s (call $read_input (i32.const 1024) (local.get $n)) (i32.const 0))
      (then (return (i32.const 1))))
    (if (i32.lt_s (call $write_output (i32.const 1024) (local.get $n)) (i32.const 0))
      (then (return (i32.const 2))))
    (i32.const 0)))
