// The kernel object is built here, so a plain `cargo build` of the agent can
// never embed a stale or missing one. With the `lab` feature (the tests
// crate's) the lab's XDP_PASS helper object is built too.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let meta = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ebpf_dir = meta
        .parent()
        .ok_or_else(|| anyhow!("no workspace"))?
        .join("lb-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    let features: &[&str] = if std::env::var_os("CARGO_FEATURE_LAB").is_some() {
        &["lab"]
    } else {
        &[]
    };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: ebpf_dir,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
