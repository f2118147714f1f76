//! Installed Debian packages, read from `/var/lib/dpkg/status` in an image's layers.

use std::collections::BTreeMap;

/// `name:arch` → version for every package dpkg considers installed.
pub fn installed(status: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(status);
    let mut out = BTreeMap::new();
    for para in text.split("\n\n") {
        let mut name = None;
        let mut arch = None;
        let mut version = None;
        let mut installed = false;
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (true, Some(n), Some(a), Some(v)) = (installed, name, arch, version) {
            out.insert(format!("{n}:{a}"), v.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_installed_packages_only() {
        let status = b"Package: bc\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.07.1-3+b1\nDescription: x\n more\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\nPackage: libc6\nStatus: install ok installed\nArchitecture: arm64\nMulti-Arch: same\nVersion: 2.36-9+deb12u7\n";
        let p = super::installed(status);
        assert_eq!(p.len(), 2);
        assert_eq!(p["bc:amd64"], "1.07.1-3+b1");
        assert_eq!(p["libc6:arm64"], "2.36-9+deb12u7");
    }
}
