//! Reference LZW tool built on the `weezl` crate (MSB bit order, 8-bit symbols).
//!
//! Usage:
//!   weezl-ref encode            < raw   > stream
//!   weezl-ref decode            < stream > raw      (exit 1 and a message on stderr if rejected)
//!   weezl-ref bench-decode FILE ROUNDS            (prints best seconds and output bytes)
use std::io::{Read, Write};
use std::time::Instant;
use weezl::{decode::Decoder, encode::Encoder, BitOrder};

fn read_stdin() -> Vec<u8> {
    let mut data = Vec::new();
    std::io::stdin().read_to_end(&mut data).expect("read stdin");
    data
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("encode") => {
            let out = Encoder::new(BitOrder::Msb, 8).encode(&read_stdin()).expect("encode");
            std::io::stdout().write_all(&out).unwrap();
        }
        Some("decode") => match Decoder::new(BitOrder::Msb, 8).decode(&read_stdin()) {
            Ok(out) => std::io::stdout().write_all(&out).unwrap(),
            Err(err) => {
                eprintln!("rejected: {:?}", err);
                std::process::exit(1);
            }
        },
        Some("bench-decode") => {
            let data = std::fs::read(&args[2]).expect("read input");
            let rounds: usize = args[3].parse().expect("rounds");
            let mut best = f64::MAX;
            let mut size = 0;
            for _ in 0..rounds {
                let start = Instant::now();
                let out = Decoder::new(BitOrder::Msb, 8).decode(&data).expect("decode");
                best = best.min(start.elapsed().as_secs_f64());
                size = out.len();
            }
            println!("{} {}", best, size);
        }
        _ => {
            eprintln!("usage: weezl-ref encode|decode|bench-decode FILE ROUNDS");
            std::process::exit(2);
        }
    }
}
