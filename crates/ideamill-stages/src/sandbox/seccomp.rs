//! The seccomp filters bubblewrap loads before it runs a confined program
//! (`--add-seccomp-fd`): compiled to BPF once, in process.
//!
//! Two programs, because a filter has one action for all its matches:
//! - `EPERM` for what no generated test needs and an escape would: new
//!   namespaces (`unshare`, `setns`, `clone` with a namespace flag), tracing
//!   other processes, keyrings, BPF, perf events, userfaultfd, io_uring,
//!   modules, kexec, mounts, reboot, swap, the clock, quotas, handles to
//!   files by inode, and pushing keystrokes into a terminal (`TIOCSTI`);
//! - `ENOSYS` for `clone3`, whose flags sit in memory a filter cannot read:
//!   the C library then falls back to `clone`, which the first filter sees.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The compiled programs, as the bytes bubblewrap reads.
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Vec<Vec<u8>>,
}

const DENIED: &[i64] = &[
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_syslog,
    libc::SYS_vhangup,
];

/// Namespace flags `clone` may not carry.
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

impl Filters {
    /// The filters for this machine's architecture, or why there are none.
    pub fn build() -> Result<Filters, String> {
        let arch: TargetArch = std::env::consts::ARCH
            .try_into()
            .map_err(|_| format!("no seccomp filter for {}", std::env::consts::ARCH))?;
        let rule = |conditions: Vec<SeccompCondition>| {
            SeccompRule::new(conditions).map_err(|e| e.to_string())
        };
        let arg = |index, op, value| {
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| e.to_string())
        };
        let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|&call| (call, Vec::new())).collect();
        let clone_rules = NAMESPACE_FLAGS
            .iter()
            .map(|&flag| {
                let flag = flag as u64;
                rule(vec![arg(0, SeccompCmpOp::MaskedEq(flag), flag)?])
            })
            .collect::<Result<Vec<_>, String>>()?;
        denied.insert(libc::SYS_clone, clone_rules);
        denied.insert(
            libc::SYS_ioctl,
            vec![
                rule(vec![arg(1, SeccompCmpOp::Eq, libc::TIOCSTI)?])?,
                rule(vec![arg(1, SeccompCmpOp::Eq, libc::TIOCLINUX)?])?,
            ],
        );
        let deny = compile(denied, SeccompAction::Errno(libc::EPERM as u32), arch)?;
        let no_clone3 = compile(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?;
        Ok(Filters {
            programs: vec![deny, no_clone3],
        })
    }

    /// One pipe per program, its bytes written and the writing end closed:
    /// the read ends, for bubblewrap to inherit.
    pub fn pipes(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.programs
            .iter()
            .map(|bytes| {
                let (read, write) = std::io::pipe()?;
                // A few KiB: far below a pipe's capacity, so this never blocks.
                let mut write = write;
                write.write_all(bytes)?;
                drop(write);
                Ok(OwnedFd::from(read))
            })
            .collect()
    }
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<Vec<u8>, String> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, arch)
        .map_err(|e| format!("cannot build the seccomp filter: {e}"))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("cannot compile the seccomp filter: {e:?}"))?;
    Ok(program
        .iter()
        .flat_map(|instruction| {
            let mut bytes = Vec::with_capacity(8);
            bytes.extend_from_slice(&instruction.code.to_ne_bytes());
            bytes.push(instruction.jt);
            bytes.push(instruction.jf);
            bytes.extend_from_slice(&instruction.k.to_ne_bytes());
            bytes
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile() {
        let filters = Filters::build().unwrap();
        assert_eq!(filters.programs.len(), 2);
        for program in &filters.programs {
            assert!(!program.is_empty() && program.len() % 8 == 0);
        }
        assert_eq!(filters.pipes().unwrap().len(), 2);
    }
}
