;; config-reader: writes {"provider.name":"<value>","secret.token":"unavailable"}
;; where the second field says "LEAKED" if the host ever hands out the
;; ungranted key. The value is written as-is (no JSON escaping). The output is
;; assembled in memory (the 18-byte head ends at 1024, where the value is read,
;; and the tail is copied after it) and written with one write_output, the most
;; host ABI v0 accepts per call.
(module
  (import "loong" "config_len" (func $config_len (param i32 i32) (result i32)))
  (import "loong" "read_config" (func $read_config (param i32 i32 i32 i32) (result i32)))
  (import "loong" "write_output" (func $write_output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "provider.name")
  (data (i32.const 16) "secret.token")
  (data (i32.const 1006) "{\"provider.name\":\"")
  (data (i32.const 64) "\",\"secret.token\":\"unavailable\"}")
  (data (i32.const 112) "\",\"secret.token\":\"LEAKED\"}")
  (func (export "run") (result i32)
    (local $n i32)
    (local $tail i32)
    (local $tail_len i32)
    (local.set $n (call $config_len (i32.const 0) (i32.const 13)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 1))))
    (if (i32.gt_u (local.get $n) (i32.const 4096)) (then (return (i32.const 2))))
    (if (i32.ne (call $read_config (i32.const 0) (i32.const 13) (i32.const 1024) (local.get $n))
                (local.get $n))
      (then (return (i32.const 3))))
    (if (i32.eq (call $config_len (i32.const 16) (i32.const 12)) (i32.const -2))
      (then (local.set $tail (i32.const 64)) (local.set $tail_len (i32.const 31)))
      (else (local.set $tail (i32.const 112)) (local.set $tail_len (i32.const 26))))
    (memory.copy (i32.add (i32.const 1024) (local.get $n)) (local.get $tail) (local.get $tail_len))
    (if (i32.lt_s
          (call $write_output
            (i32.const 1006)
            (i32.add (i32.add (local.get $n) (i32.const 18)) (local.get $tail_len)))
          (i32.const 0))
      (then (return (i32.const 4))))
    (i32.const 0)))
