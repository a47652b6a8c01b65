//! Signed access tokens: who a connection speaks for, proved by a
//! signature the server checks with a public key.
//!
//! A token is a JSON Web Token signed with Ed25519 (`alg: EdDSA`), so any
//! JWT tool can read or mint one: `base64url(header) "." base64url(claims)
//! "." base64url(signature)`, the signature over the first two parts. The
//! claims say what the bearer may do (`scope`), for whom (`tenant`, `node`)
//! and until when (`exp`, seconds since the Unix epoch). Servers hold only
//! the public key; whoever holds the private key (an operator, a control
//! plane) mints tokens. The safekeepers use them today and the page
//! service will take the same tokens at its handshake.
//!
//! Pure: the clock is a parameter, keys and tokens are bytes; nothing here
//! reads a file. Every check of a token happens before anything in it is
//! trusted, and every bound is checked before anything is allocated.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The longest token accepted, in bytes.
pub const TOKEN_BYTES_MAX: usize = 4096;

/// What a token lets its bearer do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// A safekeeper talking to its peers (flush reports, recovery fetches);
    /// `node` names it.
    SafekeeperPeer,
    /// A compute control: creates timelines and runs elections.
    ComputeControl,
    /// A pageserver: streams committed WAL and reports what it persisted.
    Pageserver,
    /// A compute reading pages (the page service).
    Compute,
    /// Everything, for operators.
    Admin,
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// What the bearer may do.
    pub scope: Scope,
    /// The tenant it is limited to (32 hex digits), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The safekeeper it speaks for (with `SafekeeperPeer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
    /// Expiry, seconds since the Unix epoch; none never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Why a token or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`TOKEN_BYTES_MAX`].
    #[error("token of {0} bytes: at most {TOKEN_BYTES_MAX} are accepted")]
    TooLong(usize),
    /// Not three base64url parts, or not JSON where JSON belongs.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Signed with another algorithm than Ed25519.
    #[error("token algorithm {0:?}: only EdDSA is accepted")]
    Algorithm(String),
    /// The signature does not verify with the server's key.
    #[error("token signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// Its expiry.
        exp: u64,
        /// The time it was checked.
        now: u64,
    },
    /// A key file that is not an Ed25519 key in PEM.
    #[error("not an Ed25519 {0} key in PEM (PKCS#8 / SubjectPublicKeyInfo)")]
    BadKey(&'static str),
}

/// The server's side: checks tokens with a public key.
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    key: VerifyingKey,
}

impl TokenVerifier {
    /// From a public key in PEM (`-----BEGIN PUBLIC KEY-----`, as
    /// `openssl pkey -pubout` writes it).
    pub fn from_pem(pem: &str) -> Result<TokenVerifier, TokenError> {
        let key =
            VerifyingKey::from_public_key_pem(pem).map_err(|_| TokenError::BadKey("public"))?;
        Ok(TokenVerifier { key })
    }

    /// Checks `token` at time `now` (seconds since the Unix epoch) and
    /// returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::TooLong(token.len()));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = serde_json::from_slice(&decode_part(header)?)
            .map_err(|_| TokenError::Malformed("header is not JSON"))?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm(header.alg));
        }
        let signature: [u8; 64] = decode_part(signature)?
            .try_into()
            .map_err(|_| TokenError::Malformed("signature is not 64 bytes"))?;
        let signed_len = token.len() - signature_part_len(token);
        let signed = token
            .get(..signed_len)
            .ok_or(TokenError::Malformed("signature boundary"))?;
        self.key
            .verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&decode_part(claims)?)
            .map_err(|_| TokenError::Malformed("claims are not the expected JSON"))?;
        if let Some(exp) = claims.exp
            && exp <= now
        {
            return Err(TokenError::Expired { exp, now });
        }
        Ok(claims)
    }
}

/// The bytes of the last part and its dot.
fn signature_part_len(token: &str) -> usize {
    token.rfind('.').map_or(0, |dot| token.len() - dot)
}

fn decode_part(part: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed("a part is not base64url"))
}

/// The issuer's side: mints tokens with a private key.
pub struct TokenSigner {
    key: SigningKey,
}

impl TokenSigner {
    /// From a private key in PEM (`-----BEGIN PRIVATE KEY-----`, PKCS#8,
    /// as `openssl genpkey -algorithm ed25519` writes it).
    pub fn from_pem(pem: &str) -> Result<TokenSigner, TokenError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|_| TokenError::BadKey("private"))?;
        Ok(TokenSigner { key })
    }

    /// From the 32-byte secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> TokenSigner {
        TokenSigner {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The private key in PEM: PKCS#8 version 1 as RFC 8410 gives it for
    /// Ed25519 (the form `openssl genpkey -algorithm ed25519` writes and
    /// every openssl reads; version 2, which adds the public key, is not
    /// read by openssl 3.0).
    pub fn private_pem(&self) -> String {
        /// SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING
        /// { OCTET STRING (32 bytes) } }, up to the seed.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.key.to_bytes());
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    }

    /// The matching public key in PEM, for the servers.
    pub fn public_pem(&self) -> Result<String, TokenError> {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        self.key
            .verifying_key()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|_| TokenError::BadKey("public"))
    }

    /// A token carrying `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: Some("JWT".into()),
        };
        // Serialising these plain structs cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let claims = serde_json::to_vec(claims).unwrap_or_default();
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims));
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.to_bytes()));
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(seed: u8) -> (TokenSigner, TokenVerifier) {
        let signer = TokenSigner::from_seed(&[seed; 32]);
        let verifier =
            TokenVerifier::from_pem(&signer.public_pem().expect("pem")).expect("public key");
        (signer, verifier)
    }

    fn peer(node: u32, exp: Option<u64>) -> Claims {
        Claims {
            scope: Scope::SafekeeperPeer,
            tenant: None,
            node: Some(node),
            exp,
        }
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_claims() {
        let (signer, verifier) = pair(1);
        let claims = peer(2, Some(2_000));
        let token = signer.mint(&claims);
        assert_eq!(verifier.verify(&token, 1_000), Ok(claims));
        let back = TokenSigner::from_pem(&signer.private_pem()).expect("private key");
        assert_eq!(back.mint(&peer(3, None)), signer.mint(&peer(3, None)));
    }

    #[test]
    fn keys_in_openssl_forms_are_read() {
        // `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout`.
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOdHlZ/e8xP3XDHIRsS3XrfwcvbkbmlBvAwZxReI4JJ6\n-----END PRIVATE KEY-----\n";
        let signer = TokenSigner::from_pem(private).expect("openssl's private key");
        assert_eq!(signer.private_pem(), private);
        let verifier = TokenVerifier::from_pem(&signer.public_pem().expect("pem")).expect("public");
        let token = signer.mint(&peer(1, None));
        assert!(verifier.verify(&token, 0).is_ok());
    }

    #[test]
    fn forged_damaged_expired_and_oversized_tokens_are_refused() {
        let (signer, verifier) = pair(1);
        let (other, _) = pair(2);
        let token = signer.mint(&peer(2, Some(2_000)));
        assert_eq!(
            verifier.verify(&other.mint(&peer(2, None)), 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verifier.verify(&token, 2_000),
            Err(TokenError::Expired {
                exp: 2_000,
                now: 2_000
            })
        );
        // The claims of one token with the signature of another.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"scope":"admin"}"#);
        let forged = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
        assert_eq!(verifier.verify(&forged, 0), Err(TokenError::BadSignature));
        let none_alg = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(
            verifier.verify(&none_alg, 0),
            Err(TokenError::Algorithm("none".into()))
        );
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!.!.!",
            &token[..token.len() - 3],
        ] {
            assert!(verifier.verify(bad, 0).is_err(), "{bad:?} accepted");
        }
        // Every single-character change is refused.
        for at in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).expect("ascii");
            if changed != token {
                assert!(
                    verifier.verify(&changed, 0).is_err(),
                    "change at {at} accepted"
                );
            }
        }
        let long = "a".repeat(TOKEN_BYTES_MAX + 1);
        assert_eq!(
            verifier.verify(&long, 0),
            Err(TokenError::TooLong(long.len()))
        );
        assert!(TokenVerifier::from_pem("not a key").is_err());
    }
}
