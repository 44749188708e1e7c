;; A WASI 0.2 command component in the component text format: its wasi:cli/run writes a
;; message to stdout through wasi:cli/stdout, then calls wasi:cli/exit with ok (status 0)
;; or err (status 1). tests/support.py fills in the message, its length and the status.
(component
  (import "wasi:io/error@0.2.0" (instance $io-error
    (export "error" (type (sub resource)))
  ))
  (alias export $io-error "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $error'))
    (export "error" (type $err (eq $error')))
    (export "output-stream" (type $os (sub resource)))
    (type $stream-error (variant (case "last-operation-failed" (own $err)) (case "closed")))
    (export "stream-error" (type $se (eq $stream-error)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $se)))))
  ))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $os'))
    (export "output-stream" (type $os (eq $os')))
    (export "get-stdout" (func (result (own $os))))
  ))
  (import "wasi:cli/exit@0.2.0" (instance $exit
    (export "exit" (func (param "status" (result))))
  ))

  (core module $Mem (memory (export "memory") 1))
  (core instance $mem (instantiate $Mem))
  (alias core export $mem "memory" (core memory $memory))

  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush") (memory $memory)))
  (core func $exit (canon lower (func $exit "exit")))

  (core module $Main
    (import "host" "memory" (memory 1))
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "write" (func $write (param i32 i32 i32 i32)))
    (import "host" "exit" (func $exit (param i32)))
    (data (i32.const 16) "@MESSAGE@")
    (func (export "run") (result i32)
      (call $write (call $get-stdout) (i32.const 16) (i32.const @LENGTH@) (i32.const 0))
      (call $exit (i32.const @STATUS@))
      (i32.const 0))
  )
  (core instance $main (instantiate $Main
    (with "host" (instance
      (export "memory" (memory $memory))
      (export "get-stdout" (func $get-stdout))
      (export "write" (func $write))
      (export "exit" (func $exit))
    ))
  ))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance))
)
