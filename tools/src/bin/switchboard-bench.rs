//! The benchmarks (docs/benchmarks.md); they live in the library as
//! `tools::bench`.

fn main() -> anyhow::Result<()> {
    tools::bench::main()
}
