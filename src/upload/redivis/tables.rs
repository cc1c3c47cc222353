//! What a Redivis table is: its kind (a table of uploads, or a file index table, protocol
//! §4.11, §4.13) read once with `GET /tables/{ref}` and kept per table; and the dataset
//! it belongs to, with the call that opens the dataset's next version when it has none.

use std::collections::HashMap;
use std::sync::Mutex;

use percent_encoding::utf8_percent_encode;
use serde::Deserialize;

use super::api::{ApiClient, ApiError, Idempotency, REF_ESCAPE};
use crate::upload::retry::CallScope;

/// Which kind of table a folder feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Each file becomes an upload whose rows Redivis imports.
    Uploads,
    /// Files are registered as they are (`isFileIndex`), in `rawFiles` batches.
    FileIndex,
}

impl TableKind {
    /// How logs and `upsync status` name it.
    pub fn label(self) -> &'static str {
        match self {
            TableKind::Uploads => "table",
            TableKind::FileIndex => "file index table",
        }
    }
}

/// The table resource, as far as upsync reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableResource {
    #[serde(default)]
    pub is_file_index: bool,
}

/// The dataset resource, as far as upsync reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatasetResource {
    /// `null` when the dataset has no unreleased version.
    #[serde(default)]
    pub next_version: Option<serde_json::Value>,
    /// The latest released version (`tag` such as `v1.0`); `null` before the first release.
    #[serde(default)]
    pub current_version: Option<serde_json::Value>,
}

impl DatasetResource {
    /// The current version's tag as a reference qualifier: `v1.0` → `v1_0`.
    pub fn current_qualifier(&self) -> Option<String> {
        let tag = self.current_version.as_ref()?.get("tag")?.as_str()?;
        is_version(tag).then(|| tag.replace('.', "_"))
    }
}

/// The kinds of the tables seen so far.
#[derive(Debug, Default)]
pub struct TableKinds {
    kinds: Mutex<HashMap<String, TableKind>>,
}

impl TableKinds {
    /// The kind of `table`, if known.
    pub fn known(&self, table: &str) -> Option<TableKind> {
        self.lock().get(table).copied()
    }

    /// The kind of `table`, asked once (`GET /tables/{ref}`) and then remembered.
    pub async fn get(
        &self,
        api: &ApiClient,
        table: &str,
        scope: &CallScope,
    ) -> Result<TableKind, ApiError> {
        if let Some(kind) = self.known(table) {
            return Ok(kind);
        }
        let resource = api.get_table(table, scope).await?;
        let kind = if resource.is_file_index {
            TableKind::FileIndex
        } else {
            TableKind::Uploads
        };
        self.lock().insert(table.to_string(), kind);
        Ok(kind)
    }

    /// Forgets `table`'s kind, so that the next [`Self::get`] asks the table again (its
    /// version was released: the check must see whether a next version exists).
    pub fn forget(&self, table: &str) {
        self.lock().remove(table);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TableKind>> {
        self.kinds.lock().expect("table kinds lock is not poisoned")
    }
}

/// `owner.dataset[:refId]` of a table reference (its version qualifier dropped):
/// `owner.ds:next.tbl` → `owner.ds`.
pub fn dataset_of(table: &str) -> Option<String> {
    let (owner, rest) = table.split_once('.')?;
    let (dataset, _) = rest.rsplit_once('.')?;
    let parts: Vec<&str> = dataset
        .split(':')
        .filter(|part| !is_version(part))
        .collect();
    Some(format!("{owner}.{}", parts.join(":")))
}

/// Whether `table` may name the unreleased version: `:next`, or no version at all.
pub fn names_next_version(table: &str) -> bool {
    let Some((_, rest)) = table.split_once('.') else {
        return false;
    };
    let Some((dataset, _)) = rest.rsplit_once('.') else {
        return false;
    };
    let mut versions = dataset.split(':').skip(1).filter(|part| is_version(part));
    versions
        .next()
        .is_none_or(|version| version.eq_ignore_ascii_case("next"))
}

/// `table` with its dataset's version qualifier replaced by `qualifier`:
/// (`owner.ds:next.tbl`, `v1_0`) → `owner.ds:v1_0.tbl`.
pub fn in_version(table: &str, qualifier: &str) -> Option<String> {
    let (owner, rest) = table.split_once('.')?;
    let (dataset, name) = rest.rsplit_once('.')?;
    let mut parts: Vec<&str> = dataset
        .split(':')
        .filter(|part| !is_version(part))
        .collect();
    parts.push(qualifier);
    Some(format!("{owner}.{}.{name}", parts.join(":")))
}

fn is_version(qualifier: &str) -> bool {
    let lower = qualifier.to_ascii_lowercase();
    let digits = lower.strip_prefix('v').unwrap_or(&lower);
    lower == "next"
        || lower == "current"
        || digits
            .split_once(['_', '.'])
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
}

/// What [`ApiClient::create_next_version`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextVersion {
    /// The dataset already had an unreleased version.
    Existed,
    /// This call created it.
    Created,
    /// Another client created it while this call was asking for one.
    CreatedElsewhere,
}

impl ApiClient {
    /// `GET /tables/{ref}`.
    pub async fn get_table(
        &self,
        table: &str,
        scope: &CallScope,
    ) -> Result<TableResource, ApiError> {
        let url = self.absolute(&Self::table_path(table));
        let what = format!("table.get of {table}");
        self.send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
            http.get(&url)
        })
        .await
    }

    /// `GET /datasets/{ref}`.
    pub async fn get_dataset(
        &self,
        dataset: &str,
        scope: &CallScope,
    ) -> Result<DatasetResource, ApiError> {
        let url = self.absolute(&dataset_path(dataset));
        let what = format!("dataset.get of {dataset}");
        self.send_json(&what, Idempotency::Repeatable, scope, &url, &|http| {
            http.get(&url)
        })
        .await
    }

    /// Opens the next version of `dataset` unless it has one, as the official client's
    /// `create_next_version(if_not_exists=True)` does: `GET` the dataset, and only when its
    /// `nextVersion` is null `POST {dataset}/versions`. The post is not repeated after a
    /// lost answer or a refusal: the dataset is read again, and a next version that exists
    /// by then (ours, or another client's) is the answer.
    pub async fn create_next_version(
        &self,
        dataset: &str,
        scope: &CallScope,
    ) -> Result<NextVersion, ApiError> {
        if self
            .get_dataset(dataset, scope)
            .await?
            .next_version
            .is_some()
        {
            return Ok(NextVersion::Existed);
        }
        let url = self.absolute(&format!("{}/versions", dataset_path(dataset)));
        let what = format!("versions.post of {dataset}");
        let posted = self
            .send(&what, Idempotency::Once, scope, &url, &|http| {
                http.post(&url).header(reqwest::header::CONTENT_LENGTH, 0)
            })
            .await;
        let err = match posted {
            Ok(_) => return Ok(NextVersion::Created),
            Err(err) if err.shutdown => return Err(err),
            Err(err) => err,
        };
        match self.get_dataset(dataset, scope).await?.next_version {
            Some(_) if err.maybe_processed && err.status.is_none_or(|s| s >= 500) => {
                Ok(NextVersion::Created)
            }
            Some(_) => Ok(NextVersion::CreatedElsewhere),
            None => Err(err),
        }
    }
}

/// `/datasets/{ref}` with the reference percent-encoded (`:` as `%3A`).
fn dataset_path(dataset: &str) -> String {
    format!("/datasets/{}", utf8_percent_encode(dataset, REF_ESCAPE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_of_a_table_drops_the_version_only() {
        assert_eq!(dataset_of("owner.ds:next.tbl").as_deref(), Some("owner.ds"));
        assert_eq!(
            dataset_of("owner.ds:7br5:v1_0.tbl:x").as_deref(),
            Some("owner.ds:7br5")
        );
        assert_eq!(dataset_of("owner.ds.tbl").as_deref(), Some("owner.ds"));
        assert_eq!(dataset_of("nodots"), None);
    }

    #[test]
    fn a_table_names_the_next_version_unless_it_names_a_released_one() {
        assert!(names_next_version("owner.ds:next.tbl"));
        assert!(names_next_version("owner.ds:7br5:NEXT.tbl"));
        assert!(names_next_version("owner.ds.tbl"));
        assert!(!names_next_version("owner.ds:v1_0.tbl"));
        assert!(!names_next_version("owner.ds:current.tbl"));
        assert!(!names_next_version("nodots"));
    }

    #[test]
    fn a_table_moves_to_another_version_by_its_qualifier() {
        assert_eq!(
            in_version("owner.ds:next.tbl", "v1_0").as_deref(),
            Some("owner.ds:v1_0.tbl")
        );
        assert_eq!(
            in_version("owner.ds:7br5:next.tbl:x", "v2_0").as_deref(),
            Some("owner.ds:7br5:v2_0.tbl:x")
        );
        let dataset: DatasetResource =
            serde_json::from_str(r#"{"nextVersion": null, "currentVersion": {"tag": "v3.0"}}"#)
                .unwrap();
        assert_eq!(dataset.current_qualifier().as_deref(), Some("v3_0"));
        assert!(dataset.next_version.is_none());
    }
}
