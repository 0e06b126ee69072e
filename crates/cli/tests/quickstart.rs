//! The README's quickstart, run as written: its shell block is taken from README.md and run by
//! bash in a network namespace of its own (so the fixed ports it names are its own, and every
//! process it leaves in the background dies with the namespace). Only step 0 is adapted: the
//! binaries are this build's, and the repository is this checkout.

mod support;

use clusterlink_testbed::netns::Wan;
use support::CLUSTERLINK;
use support::sites::can_run;

const README: &str = include_str!("../../../README.md");

/// The shell block of the section `## Quickstart, step by step`.
fn quickstart() -> String {
    let section = README
        .split_once("## Quickstart, step by step")
        .expect("the README has a quickstart")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("the quickstart has a shell block")
        .0;
    block.to_string()
}

#[test]
fn the_quickstart_works_as_written_from_a_scratch_directory() {
    if !can_run(
        "the_quickstart_works_as_written_from_a_scratch_directory",
        &["bash", "curl", "openssl", "python3"],
    ) {
        return;
    }
    let script = quickstart();
    let repository = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binaries = std::path::Path::new(CLUSTERLINK).parent().unwrap();
    // Step 0 as this checkout runs it: already built, in debug.
    let adapted = script
        .replace("cargo build --release\n", "")
        .replace(
            "REPO=$PWD",
            &format!("REPO={}", repository.canonicalize().unwrap().display()),
        )
        .replace("$REPO/target/release", &binaries.display().to_string());
    assert_ne!(adapted, script, "step 0 changed; adapt this test to it");
    let scratch = tempfile::tempdir().unwrap();
    let wan = Wan::create(&["quickstart"], &[]).expect("a namespace");
    let site = wan.site("quickstart").unwrap();
    // Into files, not pipes: the processes the block leaves in the background hold its output
    // open, and the test waits for the shell, not for them.
    let (out_path, err_path) = (scratch.path().join("out"), scratch.path().join("err"));
    let status = site
        .command("bash")
        .args(["-c", &adapted])
        .current_dir(scratch.path())
        // gwctl's saved contexts go here, not into the user's ~/.config.
        .env("GWCTL_CONFIG", scratch.path().join("gwctl.yaml"))
        .env("TMPDIR", scratch.path())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .status()
        .unwrap();
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    // The last step is the refused manifest, so the block ends with gwctl's failure.
    assert_eq!(status.code(), Some(1), "{stderr}");
    let said = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    for expected in [
        // openssl verify of step 1.
        "default_fabric/server1/cert.pem: OK",
        // python's directory listing, fetched through the tunnel in step 4.
        "Directory listing for /",
        // The peer probed reachable, and the example policies listed back in step 5.
        "server1",
        "name: deny-firefox",
        // The client, app=curl from the client-attribute table, is still served after step 5,
        // and explain says which policies let it through on both sides.
        "still served after step 5",
        "egress@client1: allow (default/allow-all) → ingress@server1: allow (default/allow-all)",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{said}");
    }
    let peers = stdout
        .lines()
        .find(|l| l.starts_with("server1 "))
        .unwrap_or_default();
    assert!(
        peers.contains("True"),
        "server1 is not reachable: {peers:?}\n{said}"
    );
    // Step 5's apply warns of the unknown-client rule it brings into force.
    assert!(
        stderr.contains("default/deny-firefox selects clients by attribute"),
        "{said}"
    );
    // Step 6: the broken manifest is refused, naming the field, as the README shows.
    assert!(
        stderr.contains("document 1 failed: spec.sources[1].peer: required"),
        "{said}"
    );
    // Nothing was written into the repository.
    assert!(!repository.join("default_fabric").exists());
    drop(wan);
}
