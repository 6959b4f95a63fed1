//! Test clients: random secrets, their `sha256:` hashes, and `[clients.ID]` tables.

use sha2::{Digest, Sha256};

/// A client as the tests know it: the plaintext secret stays here, the file holds its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestClient {
    pub id: String,
    pub secret: String,
    pub audiences: Vec<String>,
    pub scopes: Vec<String>,
    pub token_ttl: Option<String>,
    pub disabled: bool,
}

impl TestClient {
    /// A client with a fresh random secret, no audiences and no scopes.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            secret: random_secret(),
            audiences: Vec::new(),
            scopes: Vec::new(),
            token_ttl: None,
            disabled: false,
        }
    }

    #[must_use]
    pub fn secret(mut self, secret: &str) -> Self {
        secret.clone_into(&mut self.secret);
        self
    }

    #[must_use]
    pub fn audiences(mut self, audiences: &[&str]) -> Self {
        self.audiences = audiences.iter().map(|&a| a.to_owned()).collect();
        self
    }

    #[must_use]
    pub fn scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|&s| s.to_owned()).collect();
        self
    }

    #[must_use]
    pub fn token_ttl(mut self, ttl: &str) -> Self {
        self.token_ttl = Some(ttl.to_owned());
        self
    }

    #[must_use]
    pub fn disabled(mut self) -> Self {
        self.disabled = true;
        self
    }

    /// The client's table in `clients.toml`.
    pub fn to_toml(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| toml_string(s))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut table = format!(
            "[clients.{}]\nsecret_hashes = [{}]\naudiences = [{}]\nscopes = [{}]\ndisabled = {}\n",
            toml_string(&self.id),
            toml_string(&secret_hash(&self.secret)),
            list(&self.audiences),
            list(&self.scopes),
            self.disabled,
        );
        if let Some(ttl) = &self.token_ttl {
            table.push_str(&format!("token_ttl = {}\n", toml_string(ttl)));
        }
        table
    }
}

/// 128 random bits as 32 hex digits, the shape of the secrets tokendealer generates.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    hex::encode(bytes)
}

/// `sha256:` and the hex SHA-256 of the secret, as `clients.toml` stores it.
pub fn secret_hash(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// A TOML basic string. JSON's string escapes are a subset of TOML's.
pub fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_of_test_is_the_documented_one() {
        assert_eq!(
            secret_hash("test"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn ids_with_dots_are_quoted() {
        let toml = TestClient::new("a.b").to_toml();
        assert!(toml.starts_with("[clients.\"a.b\"]\n"), "{toml}");
    }
}
