// mimalloc, the allocator DataFusion's CLI and Python bindings ship with: a
// search answer allocates a string or two per hit, SQL an array per batch
// and column. Against the system allocator it took the 1M-event peer
// queries' p50 from 0.90-0.93 ms to 0.84-0.88 ms (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    verbatim::cli::main()
}
