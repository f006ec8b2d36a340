//! Detached JWS (RFC 7515 compact serialization, Appendix F: `<header>..<signature>`) for
//! G2P Connect message signatures: verify incoming requests against a sender's configured
//! public key, sign our own callbacks with our private key.
//!
//! Deliberately narrow: only EdDSA (Ed25519), ES256, RS256 and PS256; `none` and HMAC are
//! refused (a shared secret cannot prove who sent a message), the header's `alg` must fit
//! the key's type (no algorithm confusion), and no `crit` extension is understood.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ed25519_dalek as ed;
use p256::ecdsa::{self as ec, signature::Signer, signature::Verifier};
use p256::pkcs8::LineEnding::LF;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::{sha2::Sha256, traits::PublicKeyParts};
use serde_json::{Map, Value};

/// Why a JWS or a key was refused. Messages never contain key material, so they are safe to log.
#[derive(Debug, thiserror::Error)]
pub enum JwsError {
    #[error("malformed JWS: {0}")]
    Malformed(&'static str),
    #[error("JWS algorithm {0:?} is forbidden")]
    ForbiddenAlg(String),
    #[error("JWS algorithm {0:?} is not supported (EdDSA, ES256, RS256, PS256 are)")]
    UnsupportedAlg(String),
    #[error("JWS algorithm {0} cannot be used with a {1} key")]
    AlgKeyMismatch(&'static str, &'static str),
    #[error("JWS header parameter not understood: {0}")]
    UnsupportedCrit(String),
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("JWS signature does not match")]
    BadSignature,
}

/// The algorithms we accept. HMAC and `none` are absent on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    EdDSA,
    ES256,
    RS256,
    PS256,
}

const ALGS: [(Alg, &str); 4] = [
    (Alg::EdDSA, "EdDSA"),
    (Alg::ES256, "ES256"),
    (Alg::RS256, "RS256"),
    (Alg::PS256, "PS256"),
];

impl Alg {
    /// The JWA name, as it appears in the `alg` header.
    pub fn as_str(self) -> &'static str {
        ALGS.iter().find(|(a, _)| *a == self).map_or("", |(_, s)| s)
    }

    fn parse(s: &str) -> Result<Alg, JwsError> {
        if s.eq_ignore_ascii_case("none") || s.starts_with("HS") {
            return Err(JwsError::ForbiddenAlg(s.into()));
        }
        let alg = ALGS.iter().find(|(_, name)| *name == s).map(|(a, _)| *a);
        alg.ok_or_else(|| JwsError::UnsupportedAlg(s.into()))
    }
}

/// RSA keys below 2048 bits are refused (RFC 7518 §3.3 requires at least that).
fn rsa_size_ok(k: &impl PublicKeyParts) -> Result<(), JwsError> {
    let bits = k.size() * 8;
    let msg = || JwsError::BadKey(format!("RSA key of {bits} bits (2048 needed)"));
    if bits < 2048 { Err(msg()) } else { Ok(()) }
}

/// A sender's public key, used to check signatures on its requests.
#[derive(Clone, Debug)]
pub struct VerifyingKey(Public);

#[derive(Clone, Debug)]
enum Public {
    Ed(ed::VerifyingKey),
    Ec(ec::VerifyingKey),
    Rsa(rsa::PublicKey),
}

impl VerifyingKey {
    /// Reads a PEM public key: SPKI (`BEGIN PUBLIC KEY`) for Ed25519, P-256 or RSA, or
    /// PKCS#1 (`BEGIN RSA PUBLIC KEY`). Certificates and private keys are refused.
    pub fn from_pem(pem: &str) -> Result<Self, JwsError> {
        let pem = pem.trim();
        let parsers: [fn(&str) -> Option<Public>; 4] = [
            |p| Some(Public::Ed(ed::VerifyingKey::from_public_key_pem(p).ok()?)),
            |p| Some(Public::Ec(ec::VerifyingKey::from_public_key_pem(p).ok()?)),
            |p| Some(Public::Rsa(rsa::PublicKey::from_public_key_pem(p).ok()?)),
            |p| Some(Public::Rsa(rsa::PublicKey::from_pkcs1_pem(p).ok()?)),
        ];
        let public = parsers.iter().find_map(|parse| parse(pem));
        let public = public.ok_or_else(|| JwsError::BadKey("not a PEM public key".into()))?;
        if let Public::Rsa(k) = &public {
            rsa_size_ok(k)?;
        }
        Ok(VerifyingKey(public))
    }

    /// Reads a public JWK: `OKP`/`Ed25519`, `EC`/`P-256` or `RSA`. Private members are ignored.
    pub fn from_jwk(jwk: &str) -> Result<Self, JwsError> {
        let bad = |m: &str| JwsError::BadKey(format!("JWK: {m}"));
        let jwk: Map<String, Value> = serde_json::from_str(jwk).map_err(|_| bad("not JSON"))?;
        let text = |name: &str| jwk.get(name).and_then(Value::as_str).unwrap_or_default();
        let bytes = |name: &str| B64.decode(text(name)).map_err(|_| bad(name));
        let public = match (text("kty"), text("crv")) {
            ("OKP", "Ed25519") => {
                let x = <[u8; 32]>::try_from(bytes("x")?).map_err(|_| bad("x"))?;
                Public::Ed(ed::VerifyingKey::from_bytes(&x).map_err(|_| bad("x"))?)
            }
            ("EC", "P-256") => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("P-256 coordinates must be 32 bytes"));
                }
                let point = [&[4u8][..], &x, &y].concat();
                Public::Ec(ec::VerifyingKey::from_sec1_bytes(&point).map_err(|_| bad("x, y"))?)
            }
            ("RSA", _) => {
                let int = |name| Ok(rsa::BoxedUint::from_be_slice_vartime(&bytes(name)?));
                let key = rsa::PublicKey::new(int("n")?, int("e")?);
                Public::Rsa(key.map_err(|e| bad(&e.to_string()))?)
            }
            _ => return Err(bad("want kty/crv OKP/Ed25519, EC/P-256 or RSA")),
        };
        if let Public::Rsa(k) = &public {
            rsa_size_ok(k)?;
        }
        Ok(VerifyingKey(public))
    }

    /// Whether `alg` is meant for this type of key: the guard against algorithm confusion.
    fn fits(&self, alg: Alg) -> bool {
        matches!(
            (&self.0, alg),
            (Public::Ed(_), Alg::EdDSA)
                | (Public::Ec(_), Alg::ES256)
                | (Public::Rsa(_), Alg::RS256 | Alg::PS256)
        )
    }

    /// Key type for logs and errors: `Ed25519`, `P-256` or `RSA`.
    pub fn kind(&self) -> &'static str {
        match self.0 {
            Public::Ed(_) => "Ed25519",
            Public::Ec(_) => "P-256",
            Public::Rsa(_) => "RSA",
        }
    }

    /// The key as SPKI PEM, e.g. to show in configuration.
    pub fn to_pem(&self) -> String {
        match &self.0 {
            Public::Ed(k) => k.to_public_key_pem(LF),
            Public::Ec(k) => k.to_public_key_pem(LF),
            Public::Rsa(k) => k.to_public_key_pem(LF),
        }
        .expect("a valid public key always encodes")
    }
}

/// Our own private key, used to sign outgoing callbacks, with the `alg` it signs with and
/// an optional default `kid`.
pub struct SigningKey {
    key: Private,
    alg: Alg,
    kid: Option<String>,
}

enum Private {
    Ed(ed::SigningKey),
    Ec(ec::SigningKey),
    Rsa(rsa::PrivateKey),
}

/// Shows only what is safe to log, so configs holding a key can derive `Debug`.
impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?}, kid {:?})", self.alg, self.kid)
    }
}

impl SigningKey {
    /// Reads an unencrypted PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) for Ed25519, P-256
    /// or RSA, or OpenSSL's legacy `BEGIN EC PRIVATE KEY` / `BEGIN RSA PRIVATE KEY`.
    /// RSA keys sign with RS256 unless [`SigningKey::with_alg`] picks PS256.
    pub fn from_pem(pem: &str) -> Result<Self, JwsError> {
        let pem = pem.trim();
        let parsers: [fn(&str) -> Option<Private>; 5] = [
            |p| Some(Private::Ed(ed::SigningKey::from_pkcs8_pem(p).ok()?)),
            |p| Some(Private::Ec(ec::SigningKey::from_pkcs8_pem(p).ok()?)),
            |p| Some(Private::Ec(p256::SecretKey::from_sec1_pem(p).ok()?.into())),
            |p| Some(Private::Rsa(rsa::PrivateKey::from_pkcs8_pem(p).ok()?)),
            |p| Some(Private::Rsa(rsa::PrivateKey::from_pkcs1_pem(p).ok()?)),
        ];
        let key = parsers.iter().find_map(|parse| parse(pem));
        let key =
            key.ok_or_else(|| JwsError::BadKey("not an unencrypted PEM private key".into()))?;
        if let Private::Rsa(k) = &key {
            rsa_size_ok(k)?;
        }
        Ok(SigningKey::new(key))
    }

    /// Ed25519 signs with EdDSA, P-256 with ES256, RSA with RS256 (see [`SigningKey::with_alg`]).
    fn new(key: Private) -> SigningKey {
        let alg = match key {
            Private::Ed(_) => Alg::EdDSA,
            Private::Ec(_) => Alg::ES256,
            Private::Rsa(_) => Alg::RS256,
        };
        SigningKey {
            key,
            alg,
            kid: None,
        }
    }

    /// A fresh Ed25519 key from the OS random source: the recommended key for PIL itself.
    pub fn generate_ed25519() -> SigningKey {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("OS random source unavailable");
        SigningKey::new(Private::Ed(ed::SigningKey::from_bytes(&seed)))
    }

    /// Picks the algorithm; only RSA keys have a choice (RS256 or PS256).
    pub fn with_alg(mut self, alg: Alg) -> Result<Self, JwsError> {
        let key = self.verifying_key();
        if !key.fits(alg) {
            return Err(JwsError::AlgKeyMismatch(alg.as_str(), key.kind()));
        }
        self.alg = alg;
        Ok(self)
    }

    /// Sets the `kid` put in headers when [`sign_detached`] is given none.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The matching public key, e.g. for a self-check or to publish.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(match &self.key {
            Private::Ed(k) => Public::Ed(k.verifying_key()),
            Private::Ec(k) => Public::Ec(*k.verifying_key()),
            Private::Rsa(k) => Public::Rsa(k.to_public_key()),
        })
    }

    /// The private key as unencrypted PKCS#8 PEM, for storing a generated key.
    pub fn to_pkcs8_pem(&self) -> String {
        let pem = match &self.key {
            Private::Ed(k) => k.to_pkcs8_pem(LF),
            Private::Ec(k) => k.to_pkcs8_pem(LF),
            Private::Rsa(k) => k.to_pkcs8_pem(LF),
        };
        pem.expect("a valid private key always encodes").to_string()
    }

    /// The public key as SPKI PEM, to hand to the parties who verify our callbacks.
    pub fn public_pem(&self) -> String {
        self.verifying_key().to_pem()
    }
}

/// Signs `payload` and returns `<b64url header>..<b64url signature>`; the header is
/// `{"alg":..}` plus `kid` (the argument, else the key's own) when there is one.
/// Panics only if the OS random source fails while making an RSA signature.
pub fn sign_detached(payload: &[u8], key: &SigningKey, kid: Option<&str>) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), key.alg.as_str().into());
    if let Some(kid) = kid.or(key.kid()) {
        header.insert("kid".into(), kid.into());
    }
    let header = B64.encode(Value::Object(header).to_string());
    let input = format!("{header}.{}", B64.encode(payload));
    let input = input.as_bytes();
    let sig = match (&key.key, key.alg) {
        (Private::Ed(k), _) => k.sign(input).to_vec(),
        (Private::Ec(k), _) => Signer::<ec::Signature>::sign(k, input).to_vec(),
        (Private::Rsa(k), Alg::PS256) => k.pss_sign::<Sha256>(input).expect("RSA-PSS signing"),
        (Private::Rsa(k), _) => k.pkcs1v15_sign::<Sha256>(input).expect("RSA signing"),
    };
    format!("{header}..{}", B64.encode(sig))
}

/// A detached JWS taken apart: the header as sent (it is signed as is), parsed, and the signature.
type Parts<'a> = (&'a str, Map<String, Value>, Vec<u8>);

fn parse(jws: &str) -> Result<Parts<'_>, JwsError> {
    let bad = JwsError::Malformed;
    let mut parts = jws.trim().split('.');
    let [Some(header), Some(""), Some(sig), None] = [(); 4].map(|()| parts.next()) else {
        return Err(bad("want <header>..<signature> with an empty payload part"));
    };
    let b64 = |part, what| B64.decode(part).map_err(|_| bad(what));
    let (json, sig) = (
        b64(header, "header is not base64url")?,
        b64(sig, "bad signature base64url")?,
    );
    let Ok(Value::Object(map)) = serde_json::from_slice(&json) else {
        return Err(bad("header is not a JSON object"));
    };
    Ok((header, map, sig))
}

/// The unverified `kid` of a detached JWS, to pick the sender's key before verifying.
/// Never trust it for anything else.
pub fn peek_kid(jws: &str) -> Result<Option<String>, JwsError> {
    let (_, header, _) = parse(jws)?;
    Ok(header.get("kid").and_then(Value::as_str).map(Into::into))
}

/// Checks that `jws` is a detached JWS over `payload` made with the private half of `key`.
pub fn verify_detached(jws: &str, payload: &[u8], key: &VerifyingKey) -> Result<(), JwsError> {
    let (raw_header, header, sig) = parse(jws)?;
    let Some(Value::String(alg)) = header.get("alg") else {
        return Err(JwsError::Malformed("header has no string \"alg\""));
    };
    let alg = Alg::parse(alg)?;
    // We implement no extension, so any `crit` (RFC 7515 §4.1.11) is refused; so are RFC 7797
    // unencoded payloads (`"b64":false`), which would change what was signed.
    if let Some(crit) = header.get("crit") {
        return Err(JwsError::UnsupportedCrit(format!("crit {crit}")));
    }
    if header.get("b64").is_some_and(|b| *b != Value::Bool(true)) {
        return Err(JwsError::UnsupportedCrit("b64".into()));
    }
    if !key.fits(alg) {
        return Err(JwsError::AlgKeyMismatch(alg.as_str(), key.kind()));
    }
    let input = format!("{raw_header}.{}", B64.encode(payload));
    let input = input.as_bytes();
    let ok = match (&key.0, alg) {
        (Public::Ed(k), Alg::EdDSA) => {
            ed::Signature::from_slice(&sig).is_ok_and(|s| k.verify_strict(input, &s).is_ok())
        }
        (Public::Ec(k), Alg::ES256) => {
            ec::Signature::from_slice(&sig).is_ok_and(|s| k.verify(input, &s).is_ok())
        }
        (Public::Rsa(k), Alg::RS256) => k.pkcs1v15_verify::<Sha256>(input, &sig).is_ok(),
        (Public::Rsa(k), Alg::PS256) => k.pss_verify::<Sha256>(input, &sig).is_ok(),
        _ => false, // excluded by `fits` above
    };
    ok.then_some(()).ok_or(JwsError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn ec_key() -> SigningKey {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).unwrap();
        SigningKey {
            key: Private::Ec(ec::SigningKey::from_slice(&seed).unwrap()),
            alg: Alg::ES256,
            kid: None,
        }
    }

    fn rsa_pem(bits: usize) -> String {
        let k = rsa::PrivateKey::new(&mut getrandom::SysRng, bits).unwrap();
        k.to_pkcs8_pem(LF).unwrap().to_string()
    }

    /// RSA key generation is slow, so every test shares one 2048-bit key.
    fn rsa_key(alg: Alg) -> SigningKey {
        static PEM: OnceLock<String> = OnceLock::new();
        SigningKey::from_pem(PEM.get_or_init(|| rsa_pem(2048)))
            .unwrap()
            .with_alg(alg)
            .unwrap()
    }

    fn all_keys() -> Vec<SigningKey> {
        vec![
            SigningKey::generate_ed25519(),
            ec_key(),
            rsa_key(Alg::RS256),
            rsa_key(Alg::PS256),
        ]
    }

    /// Builds a validly signed detached JWS with an arbitrary header, to test header rules.
    fn signed_with_header(header: &str, payload: &[u8], key: &SigningKey) -> String {
        let Private::Ed(k) = &key.key else {
            panic!("test helper wants an Ed25519 key")
        };
        let h = B64.encode(header);
        let sig = k.sign(format!("{h}.{}", B64.encode(payload)).as_bytes());
        format!("{h}..{}", B64.encode(sig.to_bytes()))
    }

    const MSG: &[u8] = br#"{"header":{"message_id":"m-1"},"message":{"amount":"10.00"}}"#;

    #[test]
    fn round_trip_every_key_type_through_pem() {
        for key in all_keys() {
            let alg = key.alg();
            let key = SigningKey::from_pem(&key.to_pkcs8_pem())
                .unwrap()
                .with_alg(alg)
                .unwrap();
            let public = VerifyingKey::from_pem(&key.public_pem()).unwrap();
            let jws = sign_detached(MSG, &key, Some("pil-2026"));
            verify_detached(&jws, MSG, &public).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            let (_, header, _) = parse(&jws).unwrap();
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(peek_kid(&jws).unwrap().as_deref(), Some("pil-2026"));
            assert!(jws.contains(".."));
        }
    }

    #[test]
    fn keys_are_shareable_and_debug_hides_secrets() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<SigningKey>();
        shareable::<VerifyingKey>();
        let key = SigningKey::generate_ed25519().with_kid("k1");
        assert_eq!(format!("{key:?}"), r#"SigningKey(EdDSA, kid Some("k1"))"#);
    }

    #[test]
    fn kid_defaults_to_the_keys_own() {
        let key = SigningKey::generate_ed25519().with_kid("k1");
        assert_eq!(
            peek_kid(&sign_detached(MSG, &key, None))
                .unwrap()
                .as_deref(),
            Some("k1")
        );
        assert_eq!(
            peek_kid(&sign_detached(MSG, &key, Some("k2")))
                .unwrap()
                .as_deref(),
            Some("k2")
        );
        let bare = SigningKey::generate_ed25519();
        assert_eq!(peek_kid(&sign_detached(MSG, &bare, None)).unwrap(), None);
    }

    #[test]
    fn tampered_payload_and_signature_fail() {
        for key in all_keys() {
            let jws = sign_detached(MSG, &key, None);
            let err =
                verify_detached(&jws, b"{\"amount\":\"99.00\"}", &key.verifying_key()).unwrap_err();
            assert!(
                matches!(err, JwsError::BadSignature),
                "{:?}: {err}",
                key.alg()
            );
            // Flip one signature byte.
            let (h, s) = jws.split_once("..").unwrap();
            let mut sig = B64.decode(s).unwrap();
            sig[5] ^= 1;
            let bad = format!("{h}..{}", B64.encode(sig));
            assert!(matches!(
                verify_detached(&bad, MSG, &key.verifying_key()),
                Err(JwsError::BadSignature)
            ));
        }
    }

    #[test]
    fn wrong_key_of_same_type_fails() {
        let rsa_other = SigningKey::from_pem(&rsa_pem(2048)).unwrap();
        let pairs = [
            (
                SigningKey::generate_ed25519(),
                SigningKey::generate_ed25519(),
            ),
            (ec_key(), ec_key()),
            (rsa_key(Alg::RS256), rsa_other),
        ];
        for (signer, other) in pairs {
            let jws = sign_detached(MSG, &signer, None);
            assert!(matches!(
                verify_detached(&jws, MSG, &other.verifying_key()),
                Err(JwsError::BadSignature)
            ));
        }
    }

    #[test]
    fn none_and_hmac_are_forbidden() {
        let key = SigningKey::generate_ed25519().verifying_key();
        let fake_sig = B64.encode([7u8; 32]);
        for alg in ["none", "None", "NONE", "HS256", "HS384", "HS512"] {
            let h = B64.encode(format!(r#"{{"alg":"{alg}"}}"#));
            for jws in [format!("{h}.."), format!("{h}..{fake_sig}")] {
                assert!(
                    matches!(
                        verify_detached(&jws, MSG, &key),
                        Err(JwsError::ForbiddenAlg(_))
                    ),
                    "{alg}"
                );
            }
        }
        let h = B64.encode(r#"{"alg":"ES512"}"#);
        assert!(matches!(
            verify_detached(&format!("{h}..{fake_sig}"), MSG, &key),
            Err(JwsError::UnsupportedAlg(_))
        ));
    }

    #[test]
    fn alg_that_does_not_fit_the_key_is_refused() {
        let keys = all_keys();
        for signer in &keys {
            for verifier in &keys {
                let fits = signer.verifying_key().kind() == verifier.verifying_key().kind();
                let res = verify_detached(
                    &sign_detached(MSG, signer, None),
                    MSG,
                    &verifier.verifying_key(),
                );
                if !fits {
                    assert!(
                        matches!(res, Err(JwsError::AlgKeyMismatch(..))),
                        "{:?} vs {}",
                        signer.alg(),
                        verifier.verifying_key().kind()
                    );
                }
            }
        }
        // A header claiming RS256 over a genuine Ed25519 signature must not pass either.
        let ed = SigningKey::generate_ed25519();
        let jws = signed_with_header(r#"{"alg":"RS256"}"#, MSG, &ed);
        assert!(matches!(
            verify_detached(&jws, MSG, &ed.verifying_key()),
            Err(JwsError::AlgKeyMismatch(..))
        ));
        assert!(SigningKey::generate_ed25519().with_alg(Alg::RS256).is_err());
        assert!(ec_key().with_alg(Alg::EdDSA).is_err());
    }

    #[test]
    fn header_rules() {
        let key = SigningKey::generate_ed25519();
        let public = key.verifying_key();
        let check =
            |header: &str| verify_detached(&signed_with_header(header, MSG, &key), MSG, &public);
        check(r#"{"alg":"EdDSA","typ":"JOSE"}"#).unwrap();
        assert!(matches!(
            check(r#"{"alg":"EdDSA","crit":["exp"],"exp":1}"#),
            Err(JwsError::UnsupportedCrit(_))
        ));
        assert!(matches!(
            check(r#"{"alg":"EdDSA","b64":false,"crit":["b64"]}"#),
            Err(JwsError::UnsupportedCrit(_))
        ));
        assert!(matches!(
            check(r#"{"alg":"EdDSA","b64":false}"#),
            Err(JwsError::UnsupportedCrit(_))
        ));
        for not_object in [
            r#"["alg","EdDSA"]"#,
            r#""EdDSA""#,
            "null",
            "42",
            "{",
            r#"{"alg":"EdDSA"} x"#,
        ] {
            assert!(
                matches!(check(not_object), Err(JwsError::Malformed(_))),
                "{not_object}"
            );
        }
        assert!(matches!(
            check(r#"{"kid":"k"}"#),
            Err(JwsError::Malformed(_))
        ));
        assert!(matches!(
            check(r#"{"alg":["EdDSA"]}"#),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn non_detached_jws_is_refused() {
        let key = SigningKey::generate_ed25519();
        let (h, s) = sign_detached(MSG, &key, None)
            .split_once("..")
            .map(|(h, s)| (h.to_owned(), s.to_owned()))
            .unwrap();
        let attached = format!("{h}.{}.{s}", B64.encode(MSG));
        assert!(matches!(
            verify_detached(&attached, MSG, &key.verifying_key()),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let key = SigningKey::generate_ed25519();
        let public = key.verifying_key();
        let good = sign_detached(MSG, &key, None);
        let h = good.split('.').next().unwrap();
        let cases = [
            "",
            ".",
            "..",
            "...",
            "a.b",
            "a..b..c",
            "!!..!!",
            "e30..",
            "e30..e30",
            "é..é",
            "eyJhbGciOiJFZERTQSJ9..AA==",
            &format!("{h}..AAAA"),
            &format!("{h}.."),
            &format!("{h}..{}", "A".repeat(10_000)),
            &format!("{h}..+/+/"),
            &format!("{good}."),
        ];
        for jws in cases {
            assert!(verify_detached(jws, MSG, &public).is_err(), "{jws:?}");
            let _ = peek_kid(jws);
        }
        // Every one-character change of a good token must fail, for every key type.
        for key in all_keys() {
            let good = sign_detached(MSG, &key, None);
            for (i, c) in good.char_indices() {
                let swapped = if c == 'A' { 'B' } else { 'A' };
                let bad = format!("{}{swapped}{}", &good[..i], &good[i + 1..]);
                assert!(
                    verify_detached(&bad, MSG, &key.verifying_key()).is_err(),
                    "{:?} changed at {i}",
                    key.alg()
                );
            }
        }
    }

    #[test]
    fn key_parsing() {
        let ed = SigningKey::generate_ed25519();
        assert!(matches!(
            VerifyingKey::from_pem("not a key"),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            VerifyingKey::from_pem(&ed.to_pkcs8_pem()),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            SigningKey::from_pem(&ed.public_pem()),
            Err(JwsError::BadKey(_))
        ));
        assert!(matches!(
            SigningKey::from_pem(&rsa_pem(1024)),
            Err(JwsError::BadKey(_))
        ));
        // SEC1 and PKCS#1 legacy PEM forms.
        let ec = ec_key();
        let Private::Ec(k) = &ec.key else {
            unreachable!()
        };
        let sec1 = p256::SecretKey::from(k).to_sec1_pem(LF).unwrap();
        assert_eq!(
            SigningKey::from_pem(&sec1).unwrap().public_pem(),
            ec.public_pem()
        );
        let rsa = rsa_key(Alg::RS256);
        let Private::Rsa(k) = &rsa.key else {
            unreachable!()
        };
        use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
        let pkcs1 = k.to_pkcs1_pem(LF).unwrap();
        assert_eq!(
            SigningKey::from_pem(&pkcs1).unwrap().public_pem(),
            rsa.public_pem()
        );
        let pkcs1_pub = k.to_public_key().to_pkcs1_pem(LF).unwrap();
        assert_eq!(
            VerifyingKey::from_pem(&pkcs1_pub).unwrap().to_pem(),
            rsa.public_pem()
        );
    }

    #[test]
    fn jwk_public_keys() {
        let ed = SigningKey::generate_ed25519();
        let Public::Ed(k) = ed.verifying_key().0 else {
            unreachable!()
        };
        let jwk = format!(
            r#"{{"kty":"OKP","crv":"Ed25519","x":"{}"}}"#,
            B64.encode(k.as_bytes())
        );
        verify_detached(
            &sign_detached(MSG, &ed, None),
            MSG,
            &VerifyingKey::from_jwk(&jwk).unwrap(),
        )
        .unwrap();

        let ec = ec_key();
        let Public::Ec(k) = ec.verifying_key().0 else {
            unreachable!()
        };
        let point = k.to_sec1_bytes();
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-256","x":"{}","y":"{}"}}"#,
            B64.encode(&point[1..33]),
            B64.encode(&point[33..])
        );
        verify_detached(
            &sign_detached(MSG, &ec, None),
            MSG,
            &VerifyingKey::from_jwk(&jwk).unwrap(),
        )
        .unwrap();

        let rsa = rsa_key(Alg::PS256);
        let Public::Rsa(k) = rsa.verifying_key().0 else {
            unreachable!()
        };
        let (n, e) = (
            k.n().to_be_bytes_trimmed_vartime(),
            k.e().to_be_bytes_trimmed_vartime(),
        );
        let jwk = format!(
            r#"{{"kty":"RSA","n":"{}","e":"{}"}}"#,
            B64.encode(n),
            B64.encode(e)
        );
        verify_detached(
            &sign_detached(MSG, &rsa, None),
            MSG,
            &VerifyingKey::from_jwk(&jwk).unwrap(),
        )
        .unwrap();

        for bad in [
            "",
            "[]",
            r#"{"kty":"oct","k":"c2VjcmV0"}"#,
            r#"{"kty":"OKP","crv":"Ed25519","x":"AAAA"}"#,
            r#"{"kty":"EC","crv":"P-256","x":"!","y":"A"}"#,
        ] {
            assert!(
                matches!(VerifyingKey::from_jwk(bad), Err(JwsError::BadKey(_))),
                "{bad}"
            );
        }
    }

    /// Published vectors (RFC 7515 A.2 RS256, A.3 ES256; RFC 8037 A.4 EdDSA), made detached:
    /// proves our signing input and base64url handling agree with other implementations.
    #[test]
    fn rfc_known_answer_vectors() {
        const RFC7515_PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
        let rsa = r#"{"kty":"RSA","e":"AQAB","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"}"#;
        let rs256 = "eyJhbGciOiJSUzI1NiJ9..cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
        let ec = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
        let es256 = "eyJhbGciOiJFUzI1NiJ9..DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
        let ed =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let eddsa = "eyJhbGciOiJFZERTQSJ9..hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
        let claims = B64.decode(RFC7515_PAYLOAD).unwrap();
        for (jwk, jws, payload) in [
            (rsa, rs256, &claims[..]),
            (ec, es256, &claims[..]),
            (ed, eddsa, b"Example of Ed25519 signing"),
        ] {
            let key = VerifyingKey::from_jwk(jwk).unwrap();
            verify_detached(jws, payload, &key).unwrap_or_else(|e| panic!("{}: {e}", key.kind()));
            assert!(matches!(
                verify_detached(jws, b"other", &key),
                Err(JwsError::BadSignature)
            ));
            // The same key, read back from its SPKI PEM form, accepts it too.
            verify_detached(
                jws,
                payload,
                &VerifyingKey::from_pem(&key.to_pem()).unwrap(),
            )
            .unwrap();
        }
        // An RS256 signature relabelled PS256 must not pass under the same RSA key.
        let ps = format!(
            "{}..{}",
            B64.encode(r#"{"alg":"PS256"}"#),
            rs256.split_once("..").unwrap().1
        );
        assert!(matches!(
            verify_detached(&ps, &claims, &VerifyingKey::from_jwk(rsa).unwrap()),
            Err(JwsError::BadSignature)
        ));
    }
}
