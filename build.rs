fn main() {
    // Keep liblockstep.so mapped after dlclose: the retrieval thread's thread-locals and the
    // pthread_atfork hook point into it, so unmapping it would leave them dangling.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}
