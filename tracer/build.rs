//! Builds the eBPF object from `tracer-ebpf` and leaves it in `OUT_DIR` for
//! `include_bytes_aligned!`. aya-build emits `rerun-if-changed` for the eBPF crate's
//! directory, so editing it and building the tracer always rebuilds the object.

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tracer-ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/../tracer-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
