//! This machine's name, as process rows, status files and events record it.

/// This machine's name (`gethostname`), or `localhost` if it has none.
pub fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy();
    if name.is_empty() {
        "localhost".into()
    } else {
        name.into_owned()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostname_is_the_kernels_nodename() {
        let name = super::hostname();
        assert!(!name.is_empty());
        if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            assert_eq!(name, kernel.trim_end());
        }
    }
}
