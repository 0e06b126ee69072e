//! Memory copies on AMD processors with "fast short `rep movsb`" (FSRM, Zen 3 and later).
//!
//! glibc (before its fix, as in Debian 12's 2.36) copies blocks of 8 KiB and more with
//! `rep movsb` when the processor reports FSRM. On these AMD processors that instruction runs 20 to
//! 70 times slower when the destination sits a few bytes past the source modulo the 4 KiB page
//! (1.3-2.6 GB/s instead of 40-100 GB/s, measured on this project's benchmark machine). Where a
//! copy lands is up to the allocator, and a tunnel repeats the same copy for every 16 KiB TLS
//! record: decrypting cost the exporting gateway 1.2-1.5 CPU-s per GB instead of 0.5-0.6 (see
//! BENCHMARKS.md).
//!
//! glibc takes its tunables only from the environment at start, so a data-plane process that finds
//! itself on such a processor runs itself again at once, with `rep movsb` kept for copies of at
//! least [`REP_MOVSB_THRESHOLD`]; every copy it makes takes glibc's vector loop instead. An
//! operator who sets `x86_rep_movsb_threshold` in `GLIBC_TUNABLES` themselves keeps their value.

/// The variable glibc reads its tunables from, once, at process start.
pub const TUNABLES: &str = "GLIBC_TUNABLES";
/// The tunable that picks which copies use `rep movsb`.
const THRESHOLD_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// Copies below this many bytes take the vector loop: all a gateway makes (4 GiB less a byte),
/// since the slow case is not limited to any size.
const REP_MOVSB_THRESHOLD: u64 = u32::MAX as u64;

/// The processor, as `/proc/cpuinfo` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processor {
    pub amd: bool,
    pub fast_short_rep_movsb: bool,
}

impl Processor {
    /// The first processor listed in `cpuinfo` (the text of `/proc/cpuinfo`).
    pub fn from_cpuinfo(cpuinfo: &str) -> Processor {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim())
            })
        };
        Processor {
            amd: field("vendor_id") == Some("AuthenticAMD"),
            fast_short_rep_movsb: field("flags")
                .is_some_and(|flags| flags.split_whitespace().any(|f| f == "fsrm")),
        }
    }
}

/// The `GLIBC_TUNABLES` this process should run with, given the one it has; `None` if it runs as
/// it should already (not such a processor, or the threshold is set, by an operator or by the run
/// before this one).
pub fn tuned(current: Option<&str>, processor: Processor) -> Option<String> {
    if !(processor.amd && processor.fast_short_rep_movsb) {
        return None;
    }
    let current = current.unwrap_or_default();
    let set = current
        .split(':')
        .any(|tunable| tunable.split('=').next() == Some(THRESHOLD_TUNABLE));
    if set {
        return None;
    }
    let ours = format!("{THRESHOLD_TUNABLE}={REP_MOVSB_THRESHOLD}");
    Some(if current.is_empty() {
        ours
    } else {
        format!("{current}:{ours}")
    })
}

/// Runs this program again with [`tuned`] tunables if it needs them; returns only if it does not
/// (or if it cannot, which it reports on stderr: the process then runs untuned). First thing in
/// [`main`], before any thread starts.
fn run_tuned() {
    if !cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        return;
    }
    let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
        return;
    };
    let current = std::env::var(TUNABLES).ok();
    let Some(tunables) = tuned(current.as_deref(), Processor::from_cpuinfo(&cpuinfo)) else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // The running executable itself, even if its file was replaced or removed since it started.
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(TUNABLES, tunables)
        .exec();
    eprintln!(
        "warning: could not restart with glibc's memory copies tuned for this processor: {error}"
    );
}

/// The `main` of a data-plane process: [`run_tuned`] first, then `run` (which parses the
/// arguments) on a multi-threaded runtime, its result as the exit code.
pub fn main<F>(run: impl FnOnce() -> F) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    run_tuned();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run()));
    crate::process::exit_code(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN4: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
                        flags\t\t: fpu sse2 avx2 erms fsrm avx512f\n\nprocessor\t: 1\n";
    const ZEN2: &str = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 erms\n";
    const ICE_LAKE: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 erms fsrm\n";

    #[test]
    fn only_amd_processors_with_fsrm_are_tuned() {
        let zen4 = Processor::from_cpuinfo(ZEN4);
        assert_eq!(
            zen4,
            Processor {
                amd: true,
                fast_short_rep_movsb: true
            }
        );
        assert_eq!(
            tuned(None, zen4).as_deref(),
            Some("glibc.cpu.x86_rep_movsb_threshold=4294967295")
        );
        assert_eq!(tuned(None, Processor::from_cpuinfo(ZEN2)), None);
        assert_eq!(tuned(None, Processor::from_cpuinfo(ICE_LAKE)), None);
        assert_eq!(tuned(None, Processor::from_cpuinfo("")), None);
    }

    #[test]
    fn other_tunables_are_kept_and_a_set_threshold_is_left_alone() {
        let zen4 = Processor::from_cpuinfo(ZEN4);
        assert_eq!(
            tuned(Some("glibc.malloc.arena_max=2"), zen4).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=4294967295")
        );
        // An operator's own value, or the run that restarted: nothing to do (and no loop).
        let set = "glibc.malloc.arena_max=2:glibc.cpu.x86_rep_movsb_threshold=8192";
        assert_eq!(tuned(Some(set), zen4), None);
        let restarted = tuned(None, zen4).unwrap();
        assert_eq!(tuned(Some(&restarted), zen4), None);
        // A tunable whose name only starts the same is another tunable.
        assert!(tuned(Some("glibc.cpu.x86_rep_movsb_threshold_x=1"), zen4).is_some());
    }
}
