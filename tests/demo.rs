//! `lockstep demo`, the README's main job, runs to the end and shows lockstep activations.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;

use support::*;

#[test]
fn demo_shows_every_server_activating_each_version_together() {
    let out = Command::new(bin())
        .args([
            "demo",
            "--servers",
            "3",
            "--cycles",
            "4",
            "--interval",
            "1s",
        ])
        .env("LOCKSTEP_LIBRARY", library())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("libfaketime"), "{text}");
    assert!(text.contains("ROTATION    by web-"), "{text}");
    assert!(text.contains("RETRIEVAL   web-"), "{text}");
    let activations = text.matches("on 3/3 web servers").count();
    assert_eq!(activations, 4, "{text}");
    assert!(
        !text.contains("every server serves the same data: NO"),
        "{text}"
    );
    assert!(
        text.contains("the scheduled change promo:winter=25% went live at exactly"),
        "{text}"
    );
    assert!(text.contains("Summary over 4 activations"), "{text}");
}
