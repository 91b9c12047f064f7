use std::path::Path;

fn main() {
    // Keep liblockstep.so mapped after dlclose: the retrieval thread's thread-locals and the
    // pthread_atfork hook point into it, so unmapping it would leave them dangling.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");

    // The SONAME carries the ABI version, so a program linked against this library refuses a
    // future one with another ABI at load time instead of misreading its structs.
    let abi = abi_version();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liblockstep.so.{abi}");
    link_soname_in_profile_dir(abi);

    println!("cargo:rerun-if-changed=build.rs");
    for path in ABI_SOURCES {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// `SYNC_ABI_VERSION` from the C ABI's source (src/ffi.rs, or src/ffi/mod.rs): one number
/// for the C constant and the SONAME.
fn abi_version() -> u32 {
    ABI_SOURCES
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .find_map(|source| {
            source.lines().find_map(|line| {
                let rest = line
                    .trim()
                    .strip_prefix("pub const SYNC_ABI_VERSION: u32 = ")?;
                rest.strip_suffix(';')?.trim().parse().ok()
            })
        })
        .expect("src/ffi.rs or src/ffi/mod.rs defines pub const SYNC_ABI_VERSION: u32 = N;")
}

const ABI_SOURCES: [&str; 2] = ["src/ffi.rs", "src/ffi/mod.rs"];

/// Programs linked against `target/<profile>/liblockstep.so` (the C tests, examples, the PHP
/// extension and nginx module built in the tree) now record `liblockstep.so.N` as needed: a
/// `liblockstep.so.N -> liblockstep.so` link beside the library lets them find it there, as
/// an installed copy's symlink does. Best effort: without it only in-tree C programs fail.
///
/// Cargo asks build scripts to write only below OUT_DIR; this one link is the exception, and
/// kept harmless: it is made only when nothing of that name exists (so rebuilds, concurrent
/// builds and a file someone put there are left alone: idempotent), it is relative (a moved
/// target directory keeps it valid), and only in a directory laid out as cargo's
/// <target>/<profile>/build/<pkg>-<hash>/out. Installs never ship it: scripts/install.sh
/// and the .deb make their own links.
fn link_soname_in_profile_dir(abi: u32) {
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        return;
    };
    // OUT_DIR is <target>/<profile>/build/lockstep-<hash>/out.
    let mut up = Path::new(&out_dir).ancestors();
    if up.nth(2).and_then(Path::file_name) != Some("build".as_ref()) {
        return;
    }
    let Some(profile_dir) = up.next() else {
        return;
    };
    let link = profile_dir.join(format!("liblockstep.so.{abi}"));
    if std::fs::symlink_metadata(&link).is_err() {
        let _ = std::os::unix::fs::symlink("liblockstep.so", &link);
    }
}
