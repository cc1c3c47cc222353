//! Certificates made by the tests: a private CA and server certificates it signs, written
//! as PEM files for the emulator (`--tls-cert`, `--tls-key`) and the daemon (`ca_file`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A private CA that signs server certificates into `dir`.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA's certificate (PEM): what `ca_file` names.
    pub ca_file: PathBuf,
}

/// A server certificate and its key, as PEM files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).expect("the certificate directory can be created");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "upsync test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key can be generated");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("the CA self-signs");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, issuer.pem()).expect("the CA certificate can be written");
        TestCa {
            issuer,
            dir: dir.to_path_buf(),
            ca_file,
        }
    }

    /// A certificate for `names` (host names or IP addresses), signed by this CA, saved as
    /// `<file>.pem` and `<file>.key`.
    pub fn server_cert(&self, file: &str, names: &[&str]) -> ServerCert {
        self.sign(file, Self::params(names))
    }

    /// Like [`Self::server_cert`], valid only in 2020.
    pub fn expired_server_cert(&self, file: &str, names: &[&str]) -> ServerCert {
        let mut params = Self::params(names);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(file, params)
    }

    fn params(names: &[&str]) -> CertificateParams {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        CertificateParams::new(names).expect("server certificate parameters")
    }

    fn sign(&self, file: &str, params: CertificateParams) -> ServerCert {
        let key = KeyPair::generate().expect("a server key can be generated");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the CA signs the server certificate");
        let paths = ServerCert {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&paths.cert, cert.pem()).expect("the certificate can be written");
        std::fs::write(&paths.key, key.serialize_pem()).expect("the key can be written");
        paths
    }
}
