//! API keys: `rk_live_…` strings that clients present as `Authorization:
//! Bearer …`. Only a SHA-256 of a key is stored, in a Secret of type
//! `runplane.dev/api-key` labelled with its account; the key itself is shown
//! once, when it is created. Revoking a key deletes its Secret, and the
//! gateway's Secret cache forgets it within moments.
//!
//! Keys live in a namespace of their own (the gateway's `--namespace`), one
//! that no GpuAccount lists: whoever may create Secrets in a namespace could
//! store a hash there for any account. `create` refuses such a namespace, and
//! the gateway refuses keys it finds in one.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client, ResourceExt};
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::resources::{GpuAccount, labels, managers};

/// The Secret type of API keys.
pub const SECRET_TYPE: &str = "runplane.dev/api-key";
/// The data key holding the hex SHA-256 of the API key.
pub const HASH_KEY: &str = "sha256";
/// Annotation with the first characters of the key, to tell keys apart in listings.
pub const PREFIX_ANNOTATION: &str = "runplane.dev/key-prefix";
/// What every key starts with.
pub const KEY_PREFIX: &str = "rk_live_";

const KEY_CHARS: usize = 40;
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 6;

/// A new random API key: `rk_live_` and 40 alphanumeric characters (~238 bits).
pub fn generate_key() -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..KEY_CHARS).map(|_| char::from(rng.sample(rand::distr::Alphanumeric))).collect();
    format!("{KEY_PREFIX}{suffix}")
}

/// A new key id, which is also the name of its Secret: `rk-<12 hex>`.
pub fn generate_id() -> String {
    format!("rk-{}", hex::encode(rand::rng().random::<[u8; 6]>()))
}

/// Hex SHA-256 of a key, as stored.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The part of a key that listings show.
pub fn shown_prefix(key: &str) -> String {
    key.chars().take(SHOWN_CHARS).collect()
}

/// Whether a Secret holds the hash `hash` (hex); compared in constant time.
pub fn secret_matches(secret: &Secret, hash: &str) -> bool {
    let Some(stored) = secret.data.as_ref().and_then(|d| d.get(HASH_KEY)) else {
        return false;
    };
    let stored = stored.0.as_slice();
    stored.len() == hash.len() && bool::from(stored.ct_eq(hash.as_bytes()))
}

/// The account a key Secret belongs to.
pub fn account_of(secret: &Secret) -> Option<&str> {
    secret.metadata.labels.as_ref()?.get(labels::ACCOUNT).map(String::as_str)
}

/// The key from an `Authorization: Bearer <key>` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The Secret that stores `key` for `account`.
pub fn key_secret(id: &str, namespace: &str, account: &str, key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(id.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (labels::ACCOUNT.to_string(), account.to_string()),
                (labels::MANAGED_BY.to_string(), labels::MANAGED_BY_VALUE.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(PREFIX_ANNOTATION.to_string(), shown_prefix(key))])),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(BTreeMap::from([(HASH_KEY.to_string(), ByteString(hash_key(key).into_bytes()))])),
        ..Default::default()
    }
}

/// Errors of the key commands.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("namespace {0:?} does not exist; create it or pass --namespace with the gateway's namespace")]
    NoNamespace(String),
    #[error("no GpuAccount named {0:?}")]
    NoAccount(String),
    #[error(
        "namespace {namespace:?} is listed by GpuAccount {account:?}: keys stored where a tenant may create Secrets are refused by the gateway; use the gateway's own namespace (--namespace)"
    )]
    TenantNamespace { namespace: String, account: String },
    #[error("no API key {id:?} in namespace {namespace:?}")]
    NoKey { id: String, namespace: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// A stored key, as listings show it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    pub id: String,
    pub account: String,
    pub prefix: String,
    pub created: String,
}

/// Creates a key for `account` in `namespace`; returns (id, key).
pub async fn create(client: Client, namespace: &str, account: &str) -> Result<(String, String), KeyError> {
    if Api::<Namespace>::all(client.clone()).get_opt(namespace).await?.is_none() {
        return Err(KeyError::NoNamespace(namespace.into()));
    }
    let accounts = Api::<GpuAccount>::all(client.clone()).list(&ListParams::default()).await?.items;
    if !accounts.iter().any(|a| a.name_any() == account) {
        return Err(KeyError::NoAccount(account.into()));
    }
    if let Some(tenant) = accounts.iter().find(|a| a.spec.namespaces.iter().any(|ns| ns == namespace)) {
        return Err(KeyError::TenantNamespace { namespace: namespace.into(), account: tenant.name_any() });
    }
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let key = generate_key();
    let params = PostParams { field_manager: Some(managers::API.into()), ..Default::default() };
    loop {
        let id = generate_id();
        match secrets.create(&params, &key_secret(&id, namespace, account, &key)).await {
            Ok(_) => return Ok((id, key)),
            // A clash of random ids: draw another.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The keys in `namespace`, of one account or all.
pub async fn list(client: Client, namespace: &str, account: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let selector = match account {
        Some(account) => format!("{}={account}", labels::ACCOUNT),
        None => labels::ACCOUNT.to_string(),
    };
    let params = ListParams::default().labels(&selector).fields(&format!("type={SECRET_TYPE}"));
    let mut keys: Vec<KeyInfo> = secrets
        .list(&params)
        .await?
        .items
        .into_iter()
        .map(|s| KeyInfo {
            id: s.name_any(),
            account: account_of(&s).unwrap_or_default().to_string(),
            prefix: s.annotations().get(PREFIX_ANNOTATION).cloned().unwrap_or_default(),
            created: s.metadata.creation_timestamp.as_ref().map(super::wire::timestamp).unwrap_or_default(),
        })
        .collect();
    keys.sort_by(|a, b| (&a.account, &a.created, &a.id).cmp(&(&b.account, &b.created, &b.id)));
    Ok(keys)
}

/// Revokes a key: deletes its Secret (only if it is an API key Secret).
pub async fn revoke(client: Client, namespace: &str, id: &str) -> Result<KeyInfo, KeyError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let not_found = || KeyError::NoKey { id: id.into(), namespace: namespace.into() };
    let secret = secrets.get_opt(id).await?.ok_or_else(not_found)?;
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return Err(not_found());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: secret.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match secrets.delete(id, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Err(not_found()),
        Err(e) => return Err(e.into()),
    }
    Ok(KeyInfo {
        id: id.into(),
        account: account_of(&secret).unwrap_or_default().to_string(),
        prefix: secret.annotations().get(PREFIX_ANNOTATION).cloned().unwrap_or_default(),
        created: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_well_formed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("rk_live_"));
        assert_eq!(a.len(), KEY_PREFIX.len() + KEY_CHARS);
        assert!(a[KEY_PREFIX.len()..].chars().all(|c| c.is_ascii_alphanumeric()));
        let id = generate_id();
        assert!(id.starts_with("rk-") && id.len() == 15, "{id}");
    }

    #[test]
    fn a_secret_stores_only_the_hash() {
        let key = "rk_live_abcdefghijklmnop";
        let secret = key_secret("rk-1", "runplane-system", "acme", key);
        assert_eq!(secret.type_.as_deref(), Some(SECRET_TYPE));
        assert_eq!(account_of(&secret), Some("acme"));
        let stored = &secret.data.as_ref().unwrap()[HASH_KEY].0;
        assert_eq!(stored.len(), 64);
        assert!(!String::from_utf8_lossy(stored).contains("abcdefgh"));
        assert_eq!(secret.annotations()[PREFIX_ANNOTATION], "rk_live_abcdef", "listings show only a prefix");
        assert!(secret_matches(&secret, &hash_key(key)));
        assert!(!secret_matches(&secret, &hash_key("rk_live_other")));
        assert!(!secret_matches(&secret, "short"));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer("Bearer rk_live_x"), Some("rk_live_x"));
        assert_eq!(bearer("bearer  rk_live_x "), Some("rk_live_x"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
