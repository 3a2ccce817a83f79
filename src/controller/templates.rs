//! Template status: whether each GpuTemplate can run tasks. Checked on every
//! admission pass (templates are few) and written only when it changes.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::Context;
use crate::domain::template::template_status;
use crate::resources::{GpuTemplate, managers};

/// Template statuses written and not yet seen in the cache: UID → resourceVersion written against.
#[derive(Default)]
pub struct Written(Mutex<HashMap<String, Option<String>>>);

/// Writes the Ready condition of templates whose status is not current;
/// `full` checks every template, else only those whose spec changed since
/// their status was written.
pub async fn sync(ctx: &Context, written: &Written, full: bool) {
    let now = Timestamp::now();
    for template in ctx.caches.templates.state() {
        // A status already written for this generation is current: whether
        // the input schema compiles depends on the spec alone. Compiling
        // every template's schema on every admission pass cost a tenth of
        // the controller's CPU under a backlog; a full pass checks all.
        let observed = template.status.as_ref().and_then(|s| s.observed_generation);
        if !full && observed.is_some() && observed == template.metadata.generation {
            continue;
        }
        let uid = template.metadata.uid.clone().unwrap_or_default();
        let Some(status) = template_status(&template, now) else {
            continue;
        };
        {
            let written = written.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if written.get(&uid) == Some(&template.resource_version()) {
                continue; // our write has not reached the cache yet
            }
        }
        let api: Api<GpuTemplate> = Api::namespaced(ctx.client.clone(), &template.namespace().unwrap_or_default());
        let patch = json!({
            "apiVersion": GpuTemplate::api_version(&()),
            "kind": GpuTemplate::kind(&()),
            "metadata": { "name": template.name_any(), "resourceVersion": template.resource_version() },
            "status": status,
        });
        let params = PatchParams::apply(managers::CONTROLLER).force();
        match api.patch_status(&template.name_any(), &params, &Patch::Apply(&patch)).await {
            Ok(_) => {
                let mut written = written.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if written.len() > 10_000 {
                    written.clear();
                }
                written.insert(uid, template.resource_version());
            }
            Err(error) => tracing::debug!(template = %template.name_any(), %error, "writing template status failed"),
        }
    }
}
