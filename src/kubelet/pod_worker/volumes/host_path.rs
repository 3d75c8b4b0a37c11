//! `hostPath` volumes: the type check the kubelet makes at mount time, with its messages, and the
//! creation of `DirectoryOrCreate` (0755) and `FileOrCreate` (0644, in an existing directory).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Checks (or creates) `path` as `kind` asks; the error is the kubelet's message.
pub fn check(path: &str, kind: &str) -> Result<(), String> {
    let p = Path::new(path);
    // Follows symlinks, as the kubelet's stat does: a symlink to a directory is a directory.
    let meta = fs::metadata(p).ok();
    let ft = meta.as_ref().map(|m| m.file_type());
    let is = |pred: fn(&fs::FileType) -> bool| ft.as_ref().is_some_and(pred);
    let fail = |what: &str| {
        Err(format!(
            "hostPath type check failed: {} is not {}",
            path, what
        ))
    };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" if meta.is_none() => create_dir(p),
        "DirectoryOrCreate" | "Directory" if !is(fs::FileType::is_dir) => fail("a directory"),
        "DirectoryOrCreate" | "Directory" => Ok(()),
        "FileOrCreate" if meta.is_none() => create_file(p),
        // The kubelet's "file" is anything that exists and is not a directory.
        "FileOrCreate" | "File" if meta.is_none() || is(fs::FileType::is_dir) => fail("a file"),
        "FileOrCreate" | "File" => Ok(()),
        "Socket" if !is(FileTypeExt::is_socket) => fail("a socket file"),
        "CharDevice" if !is(FileTypeExt::is_char_device) => fail("a character device"),
        "BlockDevice" if !is(FileTypeExt::is_block_device) => fail("a block device"),
        "Socket" | "CharDevice" | "BlockDevice" => Ok(()),
        other => Err(format!("{} is an invalid volume type", other)),
    }
}

fn create_dir(p: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(p)
        .map_err(|e| format!("creating directory {}: {}", p.display(), e))
}

/// The parent directory must exist, as for the kubelet (it does not create it).
fn create_file(p: &Path) -> Result<(), String> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(p)
        .map(drop)
        .map_err(|e| format!("creating file {}: {}", p.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_checked_with_the_kubelets_messages() {
        let d = std::env::temp_dir().join(format!("tinylet-hp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let file = d.join("f");
        fs::write(&file, "x").unwrap();
        assert!(check(&s(&d), "Directory").is_ok());
        assert_eq!(
            check(&s(&file), "Directory").unwrap_err(),
            format!(
                "hostPath type check failed: {} is not a directory",
                s(&file)
            )
        );
        assert!(check(&s(&d.join("missing")), "Directory").is_err());
        assert!(check(&s(&file), "File").is_ok());
        assert!(check(&s(&d), "File")
            .unwrap_err()
            .ends_with("is not a file"));
        assert!(check(&s(&file), "Socket")
            .unwrap_err()
            .ends_with("is not a socket file"));
        assert!(check("/dev/null", "CharDevice").is_ok());
        assert!(check(&s(&file), "CharDevice")
            .unwrap_err()
            .ends_with("is not a character device"));
        assert!(check("/dev/null", "BlockDevice")
            .unwrap_err()
            .ends_with("is not a block device"));
        assert!(check(&s(&d.join("nope")), "").is_ok());
        assert!(check(&s(&d), "Bogus")
            .unwrap_err()
            .contains("invalid volume type"));

        let made = d.join("a/b");
        check(&s(&made), "DirectoryOrCreate").unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&made).unwrap().mode() & 0o7777 & !0o022, 0o755);
        assert!(check(&s(&file), "DirectoryOrCreate").is_err());
        let newf = d.join("new");
        check(&s(&newf), "FileOrCreate").unwrap();
        assert!(newf.is_file());
        assert!(check(&s(&d.join("no/such/file")), "FileOrCreate").is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
