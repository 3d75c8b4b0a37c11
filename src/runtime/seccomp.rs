//! Seccomp profiles for the OCI spec's `linux.seccomp`: the runtime's default profile (the same
//! allow list containerd's CRI gives `RuntimeDefault` containers), and `Localhost` profiles read
//! from JSON files in the Docker/containerd format.
//!
//! The default profile is kept as static lists of syscall names, not as an embedded JSON
//! document, so it costs a few KiB of the binary; the JSON runc reads is made per container,
//! because part of it depends on the container's capabilities.

use serde_json::{json, Map, Value};
use std::path::Path;

/// What a container's seccomp profile resolved to.
#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    Unconfined,
    RuntimeDefault,
    /// A profile file's contents (Docker/containerd format), from `Localhost`.
    Custom(Value),
}

/// Allowed for every container.
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset",
    "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old",
    "epoll_pwait", "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group", "faccessat", "faccessat2", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat",
    "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid",
    "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage",
    "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid",
    "getuid32", "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1",
    "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit",
    "io_uring_enter", "io_uring_register", "io_uring_setup", "ipc", "kill", "landlock_add_rule",
    "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lchown32", "lgetxattr",
    "link", "linkat", "listen", "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek",
    "lsetxattr", "lstat", "lstat64", "madvise", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause", "pidfd_open",
    "pidfd_send_signal", "pipe", "pipe2", "poll", "ppoll", "ppoll_time64", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64",
    "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg",
    "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget",
    "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socket",
    "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx",
    "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill",
    "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create", "timerfd_gettime",
    "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times", "tkill", "truncate",
    "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime", "utimensat",
    "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
    "writev",
    // Allowed on kernels >= 4.8, where seccomp can no longer be bypassed with ptrace.
    "ptrace",
];

/// personality(2) values every container may set (PER_LINUX, PER_LINUX32, UNAME26 variants,
/// and the query 0xffffffff).
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// Syscalls allowed only to containers that hold a capability.
#[rustfmt::skip]
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "name_to_handle_at",
            "open_tree", "perf_event_open", "quotactl", "quotactl_fd", "setdomainname",
            "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// The namespace flags of clone(2) a container without CAP_SYS_ADMIN may not pass (NEWNS,
/// NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWCGROUP).
const CLONE_NAMESPACE_FLAGS: u64 =
    0x0002_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000 | 0x0200_0000;

const ENOSYS: u32 = 38;

/// This machine's architecture and the others its kernel runs binaries of, as libseccomp names
/// them (what containerd lists for the same architecture).
fn native_arches() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"],
        "riscv64" => &["SCMP_ARCH_RISCV64"],
        "s390x" => &["SCMP_ARCH_S390", "SCMP_ARCH_S390X"],
        _ => &[],
    }
}

/// Syscalls only some architectures have.
fn arch_syscalls() -> &'static [&'static str] {
    match std::env::consts::ARCH {
        "x86_64" => &["arch_prctl", "modify_ldt"],
        "x86" => &["modify_ldt"],
        "aarch64" | "arm" => &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
        "riscv64" => &["riscv_flush_icache"],
        "s390x" => &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
        _ => &[],
    }
}

/// The `linux.seccomp` object for `profile`, given the container's bounding capabilities;
/// None when unconfined.
pub fn oci(profile: &Profile, caps: &[String]) -> Result<Option<Value>, String> {
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => Ok(Some(runtime_default(caps))),
        Profile::Custom(v) => convert(v, caps).map(Some),
    }
}

fn allow(names: &[&str]) -> Value {
    json!({"names": names, "action": "SCMP_ACT_ALLOW"})
}

/// The default profile: everything not allowed fails with EPERM.
pub fn runtime_default(caps: &[String]) -> Value {
    let mut rules = vec![allow(ALLOWED)];
    for p in PERSONALITIES {
        rules.push(json!({
            "names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}],
        }));
    }
    if !arch_syscalls().is_empty() {
        rules.push(allow(arch_syscalls()));
    }
    let has = |c: &str| caps.iter().any(|x| x == c);
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            rules.push(allow(names));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without namespace flags (threads, fork); clone3 cannot be filtered by its
        // arguments, so it answers ENOSYS and the C library falls back to clone.
        let index = if std::env::consts::ARCH == "s390x" {
            1
        } else {
            0
        };
        rules.push(json!({
            "names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": native_arches(),
        "syscalls": rules,
    })
}

/// Reads a `Localhost` profile: `relative` (the pod's `localhostProfile`) under `root`.
pub fn load_localhost(root: &Path, relative: &str) -> Result<Value, String> {
    let rel = Path::new(relative);
    if relative.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "seccompProfile.localhostProfile {:?}: must be a relative path under the seccomp profile root, without '..'",
            relative
        ));
    }
    let path = root.join(rel);
    let text = std::fs::read(&path)
        .map_err(|e| format!("cannot load seccomp profile {}: {}", path.display(), e))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "cannot load seccomp profile {}: invalid JSON: {}",
            path.display(),
            e
        )
    })?;
    // Catch what the conversion would refuse now, with the file's name.
    convert(&v, &[]).map_err(|e| format!("seccomp profile {}: {}", path.display(), e))?;
    Ok(v)
}

/// A Docker/containerd-format profile to the OCI form: `archMap` resolved for this machine,
/// `name`/`names` merged, rules whose `includes`/`excludes` (capabilities, architectures) do
/// not match this container dropped.
fn convert(p: &Value, caps: &[String]) -> Result<Value, String> {
    let obj = p.as_object().ok_or("the profile must be a JSON object")?;
    let default_action = obj
        .get("defaultAction")
        .and_then(Value::as_str)
        .ok_or("defaultAction: required")?;
    check_action(default_action).map_err(|e| format!("defaultAction: {}", e))?;
    let mut out = Map::new();
    out.insert("defaultAction".into(), json!(default_action));
    if let Some(e) = obj.get("defaultErrnoRet") {
        out.insert("defaultErrnoRet".into(), e.clone());
    }
    let native = native_arches();
    let mut arches: Vec<String> = Vec::new();
    for a in obj
        .get("architectures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        arches.push(a.as_str().ok_or("architectures: not a string")?.into());
    }
    // archMap: the entry for this machine brings its sub-architectures.
    for m in obj
        .get("archMap")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let main = m["architecture"].as_str().unwrap_or_default();
        if native.first() == Some(&main) {
            arches.push(main.into());
            for s in m["subArchitectures"].as_array().into_iter().flatten() {
                arches.extend(s.as_str().map(String::from));
            }
        }
    }
    arches.dedup();
    if !arches.is_empty() {
        out.insert("architectures".into(), json!(arches));
    }
    if let Some(f) = obj.get("flags") {
        out.insert("flags".into(), f.clone());
    }
    let mut rules = Vec::new();
    for (i, s) in obj
        .get("syscalls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = |e: &str| format!("syscalls[{}]: {}", i, e);
        let mut names: Vec<Value> = s["names"].as_array().cloned().unwrap_or_default();
        if let Some(n) = s["name"].as_str() {
            names.push(json!(n));
        }
        if names.is_empty() || names.iter().any(|n| !n.is_string()) {
            return Err(at("names: a non-empty list of syscall names is required"));
        }
        let action = s["action"].as_str().ok_or_else(|| at("action: required"))?;
        check_action(action).map_err(|e| at(&format!("action: {}", e)))?;
        if !applies(&s["includes"], &s["excludes"], caps) {
            continue;
        }
        let mut rule = json!({"names": names, "action": action});
        for k in ["errnoRet", "args"] {
            if !s[k].is_null() {
                rule[k] = s[k].clone();
            }
        }
        rules.push(rule);
    }
    out.insert("syscalls".into(), json!(rules));
    Ok(Value::Object(out))
}

/// A rule's `includes` (all of caps, one of arches) and `excludes` (any of caps or arches).
fn applies(includes: &Value, excludes: &Value, caps: &[String]) -> bool {
    let arch = native_arches().first().copied().unwrap_or_default();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let (inc_caps, inc_arches) = (strs(&includes["caps"]), strs(&includes["arches"]));
    if !inc_caps.iter().all(|c| caps.contains(c)) {
        return false;
    }
    if !inc_arches.is_empty() && !inc_arches.iter().any(|a| a == arch) {
        return false;
    }
    let (exc_caps, exc_arches) = (strs(&excludes["caps"]), strs(&excludes["arches"]));
    !exc_caps.iter().any(|c| caps.contains(c)) && !exc_arches.iter().any(|a| a == arch)
}

fn check_action(a: &str) -> Result<(), String> {
    const ACTIONS: &[&str] = &[
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    ];
    if ACTIONS.contains(&a) {
        Ok(())
    } else {
        Err(format!("unknown action {:?}", a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(profile: &Value, name: &str) -> bool {
        profile["syscalls"].as_array().unwrap().iter().any(|r| {
            r["action"] == "SCMP_ACT_ALLOW"
                && r["args"].is_null()
                && r["names"].as_array().unwrap().contains(&json!(name))
        })
    }

    #[test]
    fn default_profile_depends_on_capabilities() {
        let p = runtime_default(&["CAP_CHOWN".into()]);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(allowed(&p, "read") && allowed(&p, "ptrace"));
        assert!(!allowed(&p, "unshare") && !allowed(&p, "mount") && !allowed(&p, "keyctl"));
        assert!(!allowed(&p, "clone"), "clone only without namespace flags");
        let clone3 = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"] == json!(["clone3"]))
            .unwrap();
        assert_eq!(clone3["errnoRet"], 38);
        let admin = runtime_default(&["CAP_SYS_ADMIN".into()]);
        assert!(allowed(&admin, "unshare") && allowed(&admin, "clone"));
        assert!(!admin.to_string().contains("ERRNO\",\"errnoRet\":38"));
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(p["architectures"][0], "SCMP_ARCH_X86_64");
            assert!(allowed(&p, "arch_prctl"));
        }
        // Small enough to write per container.
        assert!(p.to_string().len() < 12_000, "{}", p.to_string().len());
    }

    #[test]
    fn docker_format_profiles_convert() {
        let p = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "archMap": [{"architecture": native_arches().first().copied().unwrap_or("SCMP_ARCH_X86_64"), "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [
                {"name": "read", "action": "SCMP_ACT_ALLOW"},
                {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_FOWNER"]}},
            ],
        });
        let o = convert(&p, &["CAP_CHOWN".into()]).unwrap();
        assert_eq!(o["syscalls"].as_array().unwrap().len(), 2);
        assert_eq!(o["syscalls"][0]["names"], json!(["read"]));
        assert_eq!(o["syscalls"][1]["errnoRet"], 1);
        if !native_arches().is_empty() {
            assert_eq!(o["architectures"].as_array().unwrap().len(), 2);
        }
        let o = convert(&p, &["CAP_SYS_ADMIN".into(), "CAP_FOWNER".into()]).unwrap();
        assert_eq!(o["syscalls"][1]["names"], json!(["mount"]));
        assert_eq!(o["syscalls"].as_array().unwrap().len(), 2);
        assert!(convert(&json!({"defaultAction": "NOPE"}), &[])
            .unwrap_err()
            .contains("NOPE"));
        assert!(convert(&json!({"syscalls": []}), &[])
            .unwrap_err()
            .contains("defaultAction"));
    }

    #[test]
    fn localhost_profiles_are_read_under_the_root() {
        let root = std::env::temp_dir().join(format!("tinylet-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        std::fs::write(
            root.join("profiles/ok.json"),
            r#"{"defaultAction":"SCMP_ACT_LOG"}"#,
        )
        .unwrap();
        std::fs::write(root.join("profiles/bad.json"), "{not json").unwrap();
        assert!(load_localhost(&root, "profiles/ok.json").is_ok());
        let e = load_localhost(&root, "profiles/missing.json").unwrap_err();
        assert!(
            e.contains("missing.json") && e.contains("No such file"),
            "{}",
            e
        );
        assert!(load_localhost(&root, "profiles/bad.json")
            .unwrap_err()
            .contains("invalid JSON"));
        assert!(load_localhost(&root, "../etc/passwd")
            .unwrap_err()
            .contains("'..'"));
        assert!(load_localhost(&root, "/etc/passwd").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
