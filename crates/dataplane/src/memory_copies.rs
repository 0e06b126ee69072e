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
//!
//! It does so once: the restarted process carries [`RESTARTED`] and never restarts again, even
//! if the tunable did not reach it. And never when the process runs with raised privileges
//! (setuid, or file capabilities such as `cap_net_bind_service` to bind port 443): glibc then
//! drops `GLIBC_TUNABLES`, so a restart would change nothing. Both cases, and the restart itself,
//! are said on stderr. [`CHOICE`] lets an operator turn the restart off, or make it on any
//! processor (harmless elsewhere: the copies only take another loop).

/// The variable glibc reads its tunables from, once, at process start.
pub const TUNABLES: &str = "GLIBC_TUNABLES";
/// Set in the environment of the restarted process: it must not restart again.
pub const RESTARTED: &str = "CLUSTERLINK_MEMORY_COPIES_RESTARTED";
/// `auto` (the default: restart on AMD processors with FSRM), `off`, or `on` (on any processor).
pub const CHOICE: &str = "CLUSTERLINK_MEMORY_COPIES";
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

/// What a starting data-plane process does about its memory copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Runs as it is.
    AsIs,
    /// Runs again with these `GLIBC_TUNABLES`.
    Restart(String),
    /// Would need the tunable but runs as it is; why, for the operator.
    Untuned(&'static str),
}

/// What the process should do on `processor`, with the `GLIBC_TUNABLES` it has (`current`), the
/// operator's [`CHOICE`], whether it is the restarted run, and whether it runs with raised
/// privileges (`secure`, the kernel's AT_SECURE).
pub fn start(
    processor: Processor,
    current: Option<&str>,
    choice: Option<&str>,
    restarted: bool,
    secure: bool,
) -> Start {
    let processor = match choice {
        Some("off") => return Start::AsIs,
        Some("on") => Processor {
            amd: true,
            fast_short_rep_movsb: true,
        },
        _ => processor,
    };
    let Some(tunables) = tuned(current, processor) else {
        return Start::AsIs;
    };
    if restarted {
        return Start::Untuned(
            "the restarted process did not get the tunable; running untuned rather than restarting again",
        );
    }
    if secure {
        return Start::Untuned(
            "the process runs with raised privileges (setuid or file capabilities), under which glibc ignores GLIBC_TUNABLES; running untuned (set GLIBC_TUNABLES in a wrapper that drops them, or grant the port another way)",
        );
    }
    Start::Restart(tunables)
}

/// Whether the kernel started this process in secure-execution mode (AT_SECURE: setuid, setgid
/// or file capabilities). Unknown counts as yes: then no restart is tried.
fn secure_execution() -> bool {
    /// The auxiliary vector's entry type for AT_SECURE.
    const AT_SECURE: u64 = 23;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return true;
    };
    auxv.chunks_exact(16)
        .map(|entry| {
            let word =
                |at: usize| u64::from_ne_bytes(entry[at..at + 8].try_into().unwrap_or_default());
            (word(0), word(8))
        })
        .find(|(kind, _)| *kind == AT_SECURE)
        .is_none_or(|(_, value)| value != 0)
}

/// Runs this program again with [`tuned`] tunables if it needs them (see [`start`]); returns
/// only if it does not (or if it cannot, which it reports on stderr: the process then runs
/// untuned). First thing in [`main`], before any thread starts.
fn run_tuned() {
    if !cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        return;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let current = std::env::var(TUNABLES).ok();
    let choice = std::env::var(CHOICE).ok();
    let restarted = std::env::var_os(RESTARTED).is_some();
    let program = std::env::args().next().unwrap_or_default();
    let decided = start(
        Processor::from_cpuinfo(&cpuinfo),
        current.as_deref(),
        choice.as_deref(),
        restarted,
        restarted || secure_execution(),
    );
    let tunables = match decided {
        Start::AsIs => return,
        Start::Untuned(why) => {
            eprintln!(
                "warning: {program}: glibc's memory copies are not tuned for this processor: {why}"
            );
            return;
        }
        Start::Restart(tunables) => tunables,
    };
    eprintln!(
        "{program}: restarting once with {TUNABLES}={tunables}: glibc's memory copies are slow on this processor (AMD, fast short rep movsb) otherwise; {CHOICE}=off turns this off"
    );
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    // The running executable itself, even if its file was replaced or removed since it started.
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(TUNABLES, tunables)
        .env(RESTARTED, "1")
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

    #[test]
    fn a_process_restarts_at_most_once_and_never_with_raised_privileges() {
        let zen4 = Processor::from_cpuinfo(ZEN4);
        let wanted = tuned(None, zen4).unwrap();
        assert_eq!(
            start(zen4, None, None, false, false),
            Start::Restart(wanted.clone())
        );
        // glibc dropped the tunable on the way (or the environment was cleaned): no second try.
        assert!(matches!(
            start(zen4, None, None, true, false),
            Start::Untuned(_)
        ));
        // setuid or file capabilities: glibc would drop it again, every time.
        let Start::Untuned(why) = start(zen4, None, None, false, true) else {
            panic!("restarted under AT_SECURE");
        };
        assert!(why.contains("raised privileges"), "{why}");
        // Tuned already (an operator's value, or the restart worked): nothing to say.
        assert_eq!(start(zen4, Some(&wanted), None, true, true), Start::AsIs);
    }

    #[test]
    fn an_operator_can_turn_the_restart_off_or_on() {
        let zen4 = Processor::from_cpuinfo(ZEN4);
        let intel = Processor::from_cpuinfo(ICE_LAKE);
        assert_eq!(start(zen4, None, Some("off"), false, false), Start::AsIs);
        assert!(matches!(
            start(intel, None, Some("on"), false, false),
            Start::Restart(_)
        ));
        assert_eq!(start(intel, None, Some("auto"), false, false), Start::AsIs);
    }

    #[test]
    fn this_test_runs_without_raised_privileges() {
        // Read from the real auxiliary vector: a test binary is never setuid.
        assert!(!super::secure_execution());
    }
}
