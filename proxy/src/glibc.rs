//! glibc's `memcpy` on AMD CPUs. glibc (2.33 and later, as in Debian 12) copies anything from
//! 2,112 bytes up with `rep movsb` on CPUs that announce fast `rep movsb` (FSRM), and AMD's Zen
//! cores run it much slower than glibc's own vector loop when source and destination are not
//! aligned alike (glibc bug 30994). Every body byte the proxy forwards over TLS is copied that way
//! several times (rustls copies each 16 KiB record into a buffer at a 5-byte offset before
//! sealing it), so on AMD a 1 MiB download cost about a third more CPU than it needs (bench/README).
//!
//! The only switch glibc offers is a tunable it reads from `GLIBC_TUNABLES` when a process
//! starts, so `flowtap proxy` on an AMD CPU executes itself once more, right at start (same
//! process id, same arguments and descriptors), with `rep movsb` turned off. A
//! `GLIBC_TUNABLES` that already names the tunable is left as it is, whatever its value: that is
//! how a user opts out.

use std::ffi::{OsStr, OsString};

/// The glibc tunable: sizes above which `memcpy`/`memmove` use `rep movsb`.
pub const TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold";
/// `SIZE_MAX`, i.e. never: glibc's vector loops copy everything, and its non-temporal stores still
/// take over for copies larger than the cache (a separate threshold).
pub const OFF: &str = "18446744073709551615";
/// Set for the re-executed process so that it never executes itself again, even where glibc
/// drops `GLIBC_TUNABLES` (set-user-ID or file-capability binaries).
pub const MARK: &str = "FLOWTAP_GLIBC_TUNED";

/// The `GLIBC_TUNABLES` value to start again with, or `None` to run as we are: not an AMD (or
/// Hygon, the same cores) CPU, already re-executed, or the tunable already set by the user.
pub fn tunables(current: Option<&OsStr>, cpuinfo: &str, marked: bool) -> Option<OsString> {
    if marked || !matches!(vendor(cpuinfo), Some("AuthenticAMD" | "HygonGenuine")) {
        return None;
    }
    let mut value = String::new();
    if let Some(current) = current {
        // A value that is not UTF-8 is not something to edit.
        let current = current.to_str()?;
        if current
            .split(':')
            .any(|setting| setting.split('=').next().map(str::trim) == Some(TUNABLE))
        {
            return None;
        }
        if !current.is_empty() {
            value.push_str(current);
            value.push(':');
        }
    }
    value.push_str(TUNABLE);
    value.push('=');
    value.push_str(OFF);
    Some(value.into())
}

/// The first `vendor_id` of `/proc/cpuinfo`.
fn vendor(cpuinfo: &str) -> Option<&str> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "vendor_id").then(|| value.trim())
    })
}

/// Executes the running binary again with [`tunables`] set, when there is something to set.
/// Returns only when there is nothing to do (`Ok`) or the execution failed (`Err`, and the proxy
/// runs on with glibc's defaults). Call it before any thread starts.
#[cfg(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu"))]
pub fn reexec_tuned() -> std::io::Result<()> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    // The vendor is on the first lines; a large machine's whole file is hundreds of KiB. What
    // cannot be read names no vendor: nothing to do, and nothing to warn about.
    let mut head = String::new();
    if let Ok(f) = std::fs::File::open("/proc/cpuinfo") {
        for line in std::io::BufReader::new(f)
            .lines()
            .take(8)
            .map_while(Result::ok)
        {
            head.push_str(&line);
            head.push('\n');
        }
    }
    let current = std::env::var_os("GLIBC_TUNABLES");
    let marked = std::env::var_os(MARK).is_some();
    let Some(value) = tunables(current.as_deref(), &head, marked) else {
        return Ok(());
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "flowtap".into());
    Err(std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", value)
        .env(MARK, "1")
        .exec())
}

/// Other platforms: glibc's x86 `memcpy` is not there, nothing to do.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64", target_env = "gnu")))]
pub fn reexec_tuned() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMD: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n";
    const INTEL: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n";
    const HYGON: &str = "processor\t: 0\nvendor_id\t: HygonGenuine\n";
    const SET: &str = "glibc.cpu.x86_rep_movsb_threshold=18446744073709551615";

    fn t(current: Option<&str>, cpu: &str, marked: bool) -> Option<String> {
        tunables(current.map(OsStr::new), cpu, marked).map(|v| v.into_string().unwrap())
    }

    #[test]
    fn amd_and_hygon_get_the_tunable() {
        assert_eq!(t(None, AMD, false).as_deref(), Some(SET));
        assert_eq!(t(None, HYGON, false).as_deref(), Some(SET));
        assert_eq!(t(Some(""), AMD, false).as_deref(), Some(SET));
    }

    #[test]
    fn other_tunables_are_kept() {
        assert_eq!(
            t(Some("glibc.malloc.arena_max=2"), AMD, false).as_deref(),
            Some(format!("glibc.malloc.arena_max=2:{SET}").as_str())
        );
    }

    #[test]
    fn nothing_to_do() {
        assert_eq!(t(None, INTEL, false), None, "Intel's rep movsb is fast");
        assert_eq!(t(None, "", false), None, "no /proc/cpuinfo");
        assert_eq!(t(None, AMD, true), None, "already executed once");
        // The user's own value wins, alone or among others.
        let own = "glibc.cpu.x86_rep_movsb_threshold=2112";
        assert_eq!(t(Some(own), AMD, false), None);
        let among = format!("glibc.malloc.arena_max=2:{own}");
        assert_eq!(t(Some(&among), AMD, false), None);
    }

    #[test]
    fn a_value_that_is_not_utf8_is_left_alone() {
        use std::os::unix::ffi::OsStrExt;
        let odd = OsStr::from_bytes(b"glibc.malloc.arena_max=\xff");
        assert_eq!(tunables(Some(odd), AMD, false), None);
    }
}
