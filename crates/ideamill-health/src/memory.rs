//! Giving freed heap memory back to the system, and unmapping code an idle
//! process no longer runs.

/// Bodies from this size up are followed by [`give_back_freed`].
pub const LARGE_BUFFER: usize = 1024 * 1024;

/// Return the heap's free pages to the system. glibc gives freed memory
/// back only from the top of a heap, so a few small allocations that
/// another thread (a store connection's, say) makes while a large body is
/// parsed pin the megabytes freed below them, for as long as they live; a
/// mill that takes such bodies now and then would keep each one's size.
/// Call after a large buffer and what was parsed from it are dropped: it
/// walks malloc's free lists and releases their whole pages.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases pages of free chunks, under malloc's
    // own locks; it touches no memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Unmap the program's read-only file pages (this binary's code and
/// constants, and its libraries') from this process, and return how many
/// bytes of mappings were advised. Starting up runs code an idle process
/// never runs again (argument and configuration parsing, migrations, the
/// first connections), and the kernel maps the pages around each page it
/// faults in, so an idle supervisor and engine kept some 10 MiB of code
/// resident between them that they no longer ran (`ideamill bench health`).
/// The pages stay in the page cache: the ones still run are mapped again
/// at their next use by a minor fault, without a disk read.
///
/// Only private, read-only mappings of the program's files (this binary
/// and shared objects, which stay mapped for the life of the process) that
/// hold no private (copy-on-write) page are advised, so no byte the process
/// sees changes: relocated data (RELRO), written data, the heap and any
/// other file's mapping are left alone.
pub fn unmap_idle_code() -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let exe = std::env::current_exe().unwrap_or_default();
    let mut advised = 0;
    for (start, end) in read_only_program_mappings(&smaps, &exe) {
        #[cfg(target_os = "linux")]
        // SAFETY: [start, end) is a private read-only mapping of a file with
        // no private page, so dropping its page-table entries changes no
        // byte the process sees: each page is mapped again from the same
        // file's page cache when next used.
        let done = unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) == 0
        };
        #[cfg(not(target_os = "linux"))]
        let done = false;
        if done {
            advised += end - start;
        }
    }
    advised
}

/// The address ranges of `smaps`' private read-only mappings (`r--p`,
/// `r-xp`) of `exe` or of a shared object whose `Anonymous` size is zero.
fn read_only_program_mappings(smaps: &str, exe: &std::path::Path) -> Vec<(usize, usize)> {
    let program = |path: &str| {
        let path = std::path::Path::new(path);
        path.is_absolute()
            && (path == exe
                || path
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().contains(".so")))
    };
    let mut found = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            // A mapping's header: range, perms, offset, device and inode,
            // one space apart, then the path (which may hold spaces) after
            // padding.
            let perms = fields.next().unwrap_or("");
            let path = line.splitn(6, ' ').nth(5).unwrap_or("").trim_start();
            current = (matches!(perms, "r--p" | "r-xp") && program(path) && end > start)
                .then_some((start, end));
        } else if first == "Anonymous:"
            && let Some(range) = current.take()
            && fields.next() == Some("0")
        {
            found.push(range);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_programs_read_only_mappings_without_private_pages_are_chosen() {
        let smaps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 1234 /usr/bin/ideamill
Rss:                 400 kB
Anonymous:             0 kB
55d0c0100000-55d0c0900000 r-xp 00100000 fe:01 1234 /usr/bin/ideamill
Anonymous:             0 kB
55d0c0900000-55d0c0a00000 r--p 00900000 fe:01 1234 /usr/bin/ideamill
Anonymous:           120 kB
55d0c0a00000-55d0c0a10000 rw-p 00a00000 fe:01 1234 /usr/bin/ideamill
Anonymous:            64 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Anonymous:           900 kB
7f0000000000-7f0000010000 r--s 00000000 fe:01 99 /dev/shm/x.so
Anonymous:             0 kB
7f0000080000-7f0000090000 r--p 00000000 fe:01 98 /work/data/notes.txt
Anonymous:             0 kB
7f00000a0000-7f00000b0000 r--p 00000000 fe:01 97                         /opt/x.so dir/notes.txt
Anonymous:             0 kB
7f00000c0000-7f00000d0000 r-xp 00000000 fe:01 96                         /opt/my tools/libz.so.1
Anonymous:             0 kB
7f0000100000-7f0000200000 r-xp 00000000 fe:01 77 /usr/lib/libc.so.6
Anonymous:             0 kB
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
";
        assert_eq!(
            read_only_program_mappings(smaps, std::path::Path::new("/usr/bin/ideamill")),
            vec![
                (0x55d0c0000000, 0x55d0c0100000),
                (0x55d0c0100000, 0x55d0c0900000),
                (0x7f00000c0000, 0x7f00000d0000),
                (0x7f0000100000, 0x7f0000200000),
            ]
        );
    }

    #[test]
    fn unmapped_code_leaves_resident_memory_and_runs_again() {
        let before = ideamill_sys::process::rss_bytes();
        let advised = unmap_idle_code();
        let after = ideamill_sys::process::rss_bytes();
        assert!(advised > 0, "no mapping was advised");
        assert!(after < before, "RSS {before} -> {after} bytes");
        // Code, constants and relocated data (vtables, formatting) still
        // work: each page comes back from the file.
        let text = format!(
            "{:?}",
            std::collections::BTreeMap::from([(1, "one"), (2, "two")])
        );
        assert_eq!(text, r#"{1: "one", 2: "two"}"#);
    }
}
