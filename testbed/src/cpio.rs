//! A writer for the cpio "newc" format, the format of a Linux initramfs. Archives can be
//! concatenated: the kernel unpacks each in turn, so a small archive appended to a cached one
//! adds or replaces files.

use std::io::{self, Write};

/// Mode bits of the entries.
pub const DIR: u32 = 0o040_000;
pub const FILE: u32 = 0o100_000;
pub const SYMLINK: u32 = 0o120_000;

/// A newc archive being written to `out`.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            written: 0,
            next_inode: 1,
        }
    }

    /// A directory (`mode` is the permission bits).
    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, DIR | mode, &[])
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, FILE | mode, data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, SYMLINK | 0o777, target.as_bytes())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry_with_inode("TRAILER!!!", 0, &[], 0)?;
        // Pad to a 512-byte boundary, as cpio(1) does.
        let pad = (512 - (self.written % 512)) % 512;
        self.write(&vec![0; usize::try_from(pad).unwrap_or(0)])?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        self.entry_with_inode(path.trim_start_matches('/'), mode, data, inode)
    }

    fn entry_with_inode(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        inode: u32,
    ) -> io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file over 4 GiB"))?;
        let name_len = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let links = if mode & DIR == DIR { 2 } else { 1 };
        let header = format!(
            "070701{inode:08x}{mode:08x}{uid:08x}{gid:08x}{links:08x}{mtime:08x}{size:08x}\
             {dev_major:08x}{dev_minor:08x}{rdev_major:08x}{rdev_minor:08x}{name_len:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dev_major = 0,
            dev_minor = 0,
            rdev_major = 0,
            rdev_minor = 0,
            check = 0,
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad4()?;
        self.write(data)?;
        self.pad4()
    }

    fn pad4(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4)) % 4;
        self.write(&[0; 3][..usize::try_from(pad).unwrap_or(0)])
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_end_with_the_trailer() {
        let mut archive = CpioWriter::new(Vec::new());
        archive.dir("bin", 0o755).expect("dir");
        archive.file("/init", 0o755, b"#!/bin/sh\n").expect("file");
        archive.symlink("bin/sh", "busybox").expect("symlink");
        let bytes = archive.finish().expect("finish");
        assert_eq!(bytes.len() % 512, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("070701"));
        // The header is 110 bytes; "bin\0" ends at 114, already 4-aligned.
        assert_eq!(&bytes[110..114], b"bin\0");
        let init = text.find("init\0").expect("the file's name");
        let data = text.find("#!/bin/sh").expect("the file's data");
        assert_eq!(data % 4, 0, "data starts 4-aligned");
        assert!(data > init);
        assert!(text.contains("TRAILER!!!"));
        // Mode of the symlink: 0o120777.
        assert!(text.contains(&format!("{:08x}", SYMLINK | 0o777)));
    }
}
