//! Layer rewrite throughput: `cargo bench --bench layer -- <mode> <layer.tar>`.
//! Modes: `normalise` (canonical tar + sha256, no compression) and `full` (the rewrite the
//! build does: canonical tar + diff_id + gzip + blob digest). Prints MB/s of input; run it
//! under `/usr/bin/time -f %M` for peak memory (bench/layer.sh does).

use std::io::{self, Write};
use std::time::Instant;

use kci_build::layer::{self, HashWriter, Section};

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [mode, path] = args.as_slice() else {
        eprintln!("usage: layer <normalise|full> <layer.tar>");
        std::process::exit(1);
    };
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let t0 = Instant::now();
    let (entries, out_bytes) = match mode.as_str() {
        "normalise" => {
            let mut sink = HashWriter::new(io::sink());
            let c = layer::canonicalize(Section::whole(file)?, 1_717_200_000, &mut sink)?;
            (c.entries, sink.digest().1)
        }
        "full" => {
            let mut gz = layer::gzip(HashWriter::new(io::sink()));
            let c = layer::canonicalize(Section::whole(file)?, 1_717_200_000, &mut gz)?;
            let mut blob = gz.finish()?;
            blob.flush()?;
            (c.entries, blob.digest().1)
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(1);
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{mode} {path}: {} MB in, {} MB out, {entries} entries, {secs:.2} s, {:.0} MB/s",
        len / 1_000_000,
        out_bytes / 1_000_000,
        len as f64 / 1e6 / secs
    );
    Ok(())
}
