//! Certificates for the TLS tests, made with the `openssl` command in a
//! temporary directory: a private CA; server certificates from it for
//! `localhost` and 127.0.0.1 (valid, expired, and for another name); two
//! client certificates from it; and a second CA that signs nothing the
//! servers trust.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct Pki {
    pub dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "rogue"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "3650",
                    "-subj",
                    &format!("/CN=ringship test {ca}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
        }
        let pki = Pki { dir };
        pki.issue("server", "ca", "/CN=localhost", "DNS:localhost,IP:127.0.0.1", None);
        pki.issue("other", "ca", "/CN=other.example", "DNS:other.example", None);
        pki.issue(
            "expired",
            "ca",
            "/CN=localhost",
            "DNS:localhost,IP:127.0.0.1",
            Some(("20200101000000Z", "20200102000000Z")),
        );
        pki.issue("client1", "ca", "/CN=client-1", "DNS:client-1", None);
        pki.issue("client2", "ca", "/CN=client-2", "DNS:client-2", None);
        pki.issue("stranger", "rogue", "/CN=stranger", "DNS:stranger", None);
        pki
    }

    /// `NAME.key` and `NAME.pem`, signed by CA `ca`, valid for 30 days or
    /// between the given dates.
    fn issue(&self, name: &str, ca: &str, subject: &str, san: &str, dates: Option<(&str, &str)>) {
        let d = self.dir.path();
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subject,
                "-addext",
                &format!("subjectAltName={san}"),
            ],
        );
        match dates {
            None => openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "30",
                    "-copy_extensions",
                    "copy",
                ],
            ),
            Some((from, to)) => {
                // `openssl ca` is the one that takes dates in the past.
                let db = d.join(format!("{name}.db"));
                std::fs::create_dir_all(&db).unwrap();
                std::fs::write(db.join("index.txt"), "").unwrap();
                std::fs::write(db.join("serial"), "1000\n").unwrap();
                let conf = format!(
                    "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\nserial = \
                     {0}/serial\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\nunique_subject = \
                     no\n[p]\ncommonName = supplied\n",
                    db.display()
                );
                std::fs::write(db.join("ca.cnf"), conf).unwrap();
                openssl(
                    d,
                    &[
                        "ca",
                        "-batch",
                        "-config",
                        &db.join("ca.cnf").display().to_string(),
                        "-cert",
                        &format!("{ca}.pem"),
                        "-keyfile",
                        &format!("{ca}.key"),
                        "-in",
                        &csr,
                        "-out",
                        &pem,
                        "-startdate",
                        from,
                        "-enddate",
                        to,
                        "-notext",
                    ],
                );
            }
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `NAME.pem` and `NAME.key`.
    pub fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (self.path(&format!("{name}.pem")), self.path(&format!("{name}.key")))
    }
}
