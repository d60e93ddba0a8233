//! `ringship`: look at a ring directory, read-only (`ringship stat DIR`,
//! `verify DIR`, `dump DIR`); docs/INSPECT.md.

fn main() {
    std::process::exit(ringship::inspect::main(std::env::args_os()));
}
