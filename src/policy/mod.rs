//! Policies: load, validate and snapshot a policy directory, and evaluate
//! requests against the snapshot on the assurance ladder.
//!
//! Everything is parsed and checked once at load; the request path only reads
//! an immutable [`PolicySnapshot`] behind an `Arc`. A directory that does not
//! load is refused whole with every problem located by file and line.

pub mod analysis;
pub mod catalog;
pub mod context;
pub mod diagnostics;
pub mod explain;
pub mod freshness;
pub mod ladder;
pub mod memo;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Effect, Entities, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, Response, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;

use crate::config::line_col;
use crate::decision::{Reason, Tier};
use crate::signals::{self, Signals};

pub use analysis::{AalUse, Analysis};
pub use catalog::{JourneyCatalog, JourneyEntry};
pub use context::{ContextParts, Shape};
pub use ladder::{LadderError, LadderRequest, LadderResult};
pub use memo::{Asked, CacheResult, LadderMemo, MemoKey, MemoPlan};

pub const SCHEMA_FILE: &str = "schema.cedarschema";
pub const CATALOG_FILE: &str = "journeys.toml";
pub const POLICY_EXTENSION: &str = "cedar";
/// Said of attributes that do not fit when nothing more precise is known.
const ATTRIBUTES_MISMATCH: &str = "they do not match the attribute record declared in the schema";
/// Cedar entity types stepgate builds requests with.
pub const PRINCIPAL_TYPE: &str = "User";
pub const RESOURCE_TYPE: &str = "Tenant";
pub const ACTION_TYPE: &str = "Action";
pub use crate::decision::DEFAULT_TENANT;

/// One problem in a policy directory, located as precisely as the source
/// allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Byte offset and length of the text at fault, for diagnostics that
    /// point at it.
    pub span: Option<(usize, usize)>,
    pub message: String,
    pub help: Option<String>,
}

/// Where in a file a problem is.
#[derive(Debug, Clone, Copy)]
struct Spot {
    line: usize,
    column: usize,
    offset: usize,
    len: usize,
}

impl Spot {
    fn new(text: &str, offset: usize, len: usize) -> Self {
        let (line, column) = line_col(text, offset);
        Self {
            line,
            column,
            offset,
            len,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, " (help: {help})")?;
        }
        Ok(())
    }
}

/// Why a policy directory was refused: every problem found.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("policies in `{}` were refused:\n{}", dir.display(), render(problems))]
pub struct PolicyLoadError {
    pub dir: PathBuf,
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What stepgate knows about each policy besides its Cedar text.
#[derive(Debug, Clone)]
struct PolicyInfo {
    /// The policy's id and `@reason`, as answers report them.
    reason: Reason,
    analysis: Analysis,
}

/// The policies that can apply to one journey's action, split the way the
/// ladder reads them.
pub struct JourneyPolicies {
    action: EntityUid,
    /// Every policy whose action scope can match.
    all: PolicySet,
    /// The permits among them.
    permits: PolicySet,
    /// Every policy here is independent of the level or a forbid released
    /// at a known level, so one evaluation answers every rung.
    one_pass: bool,
    /// The context fields these policies read.
    shape: Shape,
    /// How its answers are memoised; `None`: they are not.
    memo: Option<MemoPlan>,
}

impl fmt::Debug for JourneyPolicies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JourneyPolicies")
            .field("action", self.action())
            .field("one_pass", &self.one_pass())
            .finish_non_exhaustive()
    }
}

impl JourneyPolicies {
    pub fn action(&self) -> &EntityUid {
        &self.action
    }

    pub fn all(&self) -> &PolicySet {
        &self.all
    }

    pub fn permits(&self) -> &PolicySet {
        &self.permits
    }

    pub fn one_pass(&self) -> bool {
        self.one_pass
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// How this journey's answers are memoised, if they are.
    pub fn memo(&self) -> Option<&MemoPlan> {
        self.memo.as_ref()
    }

    /// Slices `policies` for one journey, keeping only those that can be
    /// satisfied or fail on it: a scope naming another action never matches
    /// (an `in` group is kept), nor does a condition that opens by testing
    /// for another journey or tier.
    fn new(
        action: EntityUid,
        entry: (&str, Tier),
        policies: &PolicySet,
        info: &HashMap<PolicyId, PolicyInfo>,
    ) -> Self {
        let (journey, tier) = entry;
        let mut all = PolicySet::new();
        let mut permits = PolicySet::new();
        let mut one_pass = true;
        let mut shape = Shape::empty();
        let mut analyses = Vec::new();
        for policy in policies.policies() {
            if matches!(policy.action_constraint(), ActionConstraint::Eq(other) if other != action)
            {
                continue;
            }
            let Some(analysis) = info.get(policy.id()).map(|i| &i.analysis) else {
                continue;
            };
            if !analysis.applies_to(journey, tier.as_str()) {
                continue;
            }
            for path in &analysis.reads {
                shape.mark(path);
            }
            // INVARIANT: ids are unique in `policies`, so neither add fails.
            let _ = all.add(policy.clone());
            if policy.effect() == Effect::Permit {
                let _ = permits.add(policy.clone());
            }
            one_pass &= analysis.aal != AalUse::Other;
            analyses.push(analysis);
        }
        Self {
            action,
            all,
            permits,
            one_pass,
            memo: MemoPlan::new(analyses, &shape),
            shape,
        }
    }
}

/// One loaded, validated policy directory.
pub struct PolicySnapshot {
    version: String,
    /// The tenant this set is for (`None`: the base set).
    tenant: Option<String>,
    /// On the base set: each tenant's set (the base policies and the
    /// tenant's own), by tenant.
    tenants: HashMap<String, Arc<PolicySnapshot>>,
    /// On a tenant's set: the tenant's own files and their text, so a
    /// later base set can be joined with them when the tenant's files are
    /// broken.
    tenant_files: Vec<(PathBuf, String)>,
    /// On a tenant's set: how many of its policies are the tenant's own.
    own: usize,
    schema: Schema,
    policies: PolicySet,
    entities: Entities,
    catalog: JourneyCatalog,
    journeys: HashMap<String, Arc<JourneyPolicies>>,
    info: HashMap<PolicyId, PolicyInfo>,
    authorizer: Authorizer,
    types: EntityTypes,
    /// Journey and attribute shapes (names and types, not values) that
    /// the schema accepted: whether it accepts attributes depends on
    /// nothing else, and checking costs a context and a validated request.
    accepted_attributes: quick_cache::sync::Cache<Box<[u8]>, ()>,
}

/// How many accepted attribute shapes a snapshot keeps.
const ACCEPTED_ATTRIBUTE_SHAPES: usize = 1024;

impl fmt::Debug for PolicySnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySnapshot")
            .field("version", &self.version)
            .field("policies", &self.info.len())
            .field("journeys", &self.catalog.journeys.len())
            .finish()
    }
}

impl PolicySnapshot {
    /// Content hash of the schema, catalog and policy files.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn catalog(&self) -> &JourneyCatalog {
        &self.catalog
    }

    pub fn policy_count(&self) -> usize {
        self.info.len()
    }

    /// The Cedar principal for a user id.
    pub fn principal(&self, user_id: &str) -> EntityUid {
        self.types.principal(user_id)
    }

    /// The Cedar resource for a tenant (empty: the default tenant).
    pub fn resource(&self, tenant: &str) -> EntityUid {
        self.types.resource(tenant)
    }

    /// The Cedar action of a catalogued journey.
    pub fn action(&self, journey: &str) -> Option<&EntityUid> {
        self.journeys.get(journey).map(|j| j.action())
    }

    /// The policies that can apply to a catalogued journey.
    pub fn journey_policies(&self, journey: &str) -> Option<&JourneyPolicies> {
        self.journeys.get(journey).map(Arc::as_ref)
    }

    /// The same, shared, for a request to hold on to once resolved.
    pub fn journey_shared(&self, journey: &str) -> Option<Arc<JourneyPolicies>> {
        self.journeys.get(journey).cloned()
    }

    /// Every loaded policy.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn is_authorized(&self, request: &Request, policies: &PolicySet) -> Response {
        self.authorizer
            .is_authorized(request, policies, &self.entities)
    }

    /// A freshness rule's largest authentication age in seconds
    /// (`@max_age`); `None` for any other policy.
    pub fn max_age(&self, id: &PolicyId) -> Option<u32> {
        self.info.get(id).and_then(|i| i.analysis.max_age)
    }

    /// The level from which a forbid no longer fires (at a fresh
    /// authentication, for a freshness rule); `None` when the assurance
    /// level never releases it.
    pub fn released_at(&self, id: &PolicyId) -> Option<i64> {
        match self.info.get(id).map(|i| i.analysis.aal) {
            Some(AalUse::ReleasedAt(level)) => Some(level),
            _ => None,
        }
    }

    /// The reason to report for a policy.
    pub fn reason(&self, id: &PolicyId) -> Reason {
        match self.info.get(id) {
            Some(info) => info.reason.clone(),
            None => Reason {
                policy_id: id.to_string(),
                message: String::new(),
            },
        }
    }

    /// Neutral probe signals and the action of a catalogued journey.
    fn probe(&self, journey: &str) -> Option<(Signals, &EntityUid)> {
        let entry = self.catalog.get(journey)?;
        let action = self.action(journey)?;
        Some((probe_signals(journey, entry.tier, false), action))
    }

    /// Explains why caller attributes do not fit the schema, without
    /// revealing any signal: the attributes are checked inside a context of
    /// neutral probe signals.
    pub fn explain_attributes(
        &self,
        journey: &str,
        attributes: &std::collections::BTreeMap<String, crate::decision::AttrValue>,
    ) -> String {
        match self.probe(journey) {
            Some((signals, action)) => self.explain(&signals, action, attributes),
            None => ATTRIBUTES_MISMATCH.to_owned(),
        }
    }

    /// Cedar's schema-directed parser names unknown attributes; for a
    /// primitive of the wrong type (which it does not check) each attribute
    /// is tried alone.
    fn explain(
        &self,
        signals: &Signals,
        action: &EntityUid,
        attributes: &std::collections::BTreeMap<String, crate::decision::AttrValue>,
    ) -> String {
        let json = ContextParts::full(signals, attributes)
            .and_then(|parts| parts.at(crate::decision::Aal::One))
            .ok()
            .and_then(|context| context.to_json_value().ok());
        let Some(json) = json else {
            return ATTRIBUTES_MISMATCH.to_owned();
        };
        match cedar_policy::Context::from_json_value(json, Some((&self.schema, action))) {
            Err(err) => {
                let mut message = err.to_string();
                if let Some(help) = err.help() {
                    message.push_str(&format!(" ({help})"));
                }
                message
            }
            Ok(_) => attributes
                .iter()
                .find(|(key, value)| {
                    let single =
                        std::collections::BTreeMap::from([((*key).clone(), (*value).clone())]);
                    !self.accepts(signals, action, &single)
                })
                .map(|(key, _)| {
                    format!("`attributes.{key}` does not have the type the schema declares for it")
                })
                .unwrap_or_else(|| ATTRIBUTES_MISMATCH.to_owned()),
        }
    }

    /// Checks caller attributes against the journey's schema before anything
    /// else runs, so a refused request never reaches the store. Requests
    /// without attributes always fit: that was checked at load.
    pub fn check_attributes(
        &self,
        journey: &str,
        attributes: &std::collections::BTreeMap<String, crate::decision::AttrValue>,
    ) -> Result<(), String> {
        if attributes.is_empty() {
            return Ok(());
        }
        let mut shape = Vec::with_capacity(64);
        context::write_str(&mut shape, 0, journey);
        context::write_attribute_types(&mut shape, attributes);
        let shape = shape.into_boxed_slice();
        if self.accepted_attributes.get(&shape).is_some() {
            return Ok(());
        }
        let Some((signals, action)) = self.probe(journey) else {
            return Err(format!("journey `{journey}` is not in the catalog"));
        };
        if self.accepts(&signals, action, attributes) {
            self.accepted_attributes.insert(shape, ());
            Ok(())
        } else {
            Err(self.explain(&signals, action, attributes))
        }
    }

    /// What is wrong with gateway routes against these policies: a route
    /// whose journey is not in the catalog, or an attribute read as a type
    /// the schema does not declare for it. Each problem names the route as
    /// `gateway.routes[i]`; none: every route fits.
    pub fn route_problems(&self, routes: &[crate::config::RouteConfig]) -> Vec<String> {
        use crate::config::AttributeType;
        use crate::decision::AttrValue;
        let mut problems = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            if self.action(&route.journey).is_none() {
                problems.push(format!(
                    "`gateway.routes[{i}].journey`: `{}` is not a journey in the catalog",
                    route.journey
                ));
                continue;
            }
            for (name, attribute) in &route.attributes {
                let sample = match attribute.kind {
                    AttributeType::String => AttrValue::String(String::new()),
                    AttributeType::Long => AttrValue::Long(0),
                    AttributeType::Bool => AttrValue::Bool(false),
                };
                let one = std::collections::BTreeMap::from([(name.clone(), sample)]);
                if self.check_attributes(&route.journey, &one).is_err() {
                    problems.push(format!(
                        "`gateway.routes[{i}].attributes.{name}`: journey `{}` has no attribute `{name}` of type `{}` in the schema",
                        route.journey,
                        attribute.kind.as_str()
                    ));
                }
            }
        }
        problems
    }

    /// Whether Cedar accepts a request with these signals and attributes.
    fn accepts(
        &self,
        signals: &Signals,
        action: &EntityUid,
        attributes: &std::collections::BTreeMap<String, crate::decision::AttrValue>,
    ) -> bool {
        ContextParts::full(signals, attributes)
            .and_then(|parts| parts.at(crate::decision::Aal::One))
            .is_ok_and(|context| {
                Request::new(
                    self.types.principal("probe"),
                    action.clone(),
                    self.types.resource(""),
                    context,
                    Some(&self.schema),
                )
                .is_ok()
            })
    }

    /// Loads and validates a policy directory.
    pub fn load(dir: &Path) -> Result<Self, PolicyLoadError> {
        Self::check(dir).snapshot
    }

    /// Loads and validates a policy directory and every tenant set under
    /// its `tenants` directory, with the warnings about what loads but
    /// deserves a look. A problem in any tenant's files refuses the whole
    /// directory (at start there is no last good set to fall back on).
    pub fn check(dir: &Path) -> Checked {
        let Reloaded {
            mut checked,
            refused_tenants,
        } = Self::check_tenants(dir, None);
        if let (Ok(_), false) = (&checked.snapshot, refused_tenants.is_empty()) {
            checked.snapshot = Err(PolicyLoadError {
                dir: dir.to_owned(),
                problems: refused_tenants
                    .into_iter()
                    .flat_map(|(_, err)| err.problems)
                    .collect(),
            });
        }
        checked
    }

    /// [`Self::check`] for a reload while `serving` serves: the base set
    /// must load, but a tenant whose files are refused keeps the set it
    /// had in `serving` (none: it is served the base set, as before it
    /// had a directory), without holding up the other tenants.
    pub fn check_reload(dir: &Path, serving: &PolicySnapshot) -> Reloaded {
        Self::check_tenants(dir, Some(serving))
    }

    fn check_tenants(dir: &Path, serving: Option<&PolicySnapshot>) -> Reloaded {
        let mut loader = Loader::new(dir);
        let loaded = loader.load();
        let mut warnings = std::mem::take(&mut loader.warnings);
        let mut base = match loaded {
            Ok(base) => base,
            Err(()) => {
                return Reloaded {
                    checked: Checked {
                        warnings,
                        snapshot: Err(loader.fail()),
                    },
                    refused_tenants: Vec::new(),
                };
            }
        };
        // Every tenant is built on the very base texts just checked, not
        // on what the files hold a moment later.
        let base_files = std::mem::take(&mut loader.read_files);
        let (tenants, misnamed) = match tenant_dirs(dir) {
            Ok(found) => found,
            Err(problems) => {
                return Reloaded {
                    checked: Checked {
                        warnings,
                        snapshot: Err(PolicyLoadError {
                            dir: dir.to_owned(),
                            problems,
                        }),
                    },
                    refused_tenants: Vec::new(),
                };
            }
        };
        let mut refused_tenants: Vec<(String, PolicyLoadError)> = misnamed
            .into_iter()
            .map(|(name, problem)| {
                let error = PolicyLoadError {
                    dir: dir.to_owned(),
                    problems: vec![problem],
                };
                (name, error)
            })
            .collect();
        let mut broken_base = Vec::new();
        for (tenant, tenant_dir) in tenants {
            let kept = serving.and_then(|s| s.tenants.get(&tenant));
            let build = |files: Option<Vec<(PathBuf, String)>>| {
                let mut loader = Loader::new(dir);
                loader.tenant = Some((tenant.clone(), tenant_dir.clone()));
                loader.base_files = Some(base_files.clone());
                loader.tenant_files = files;
                let built = loader.load();
                (loader, built)
            };
            let (mut loader, built) = build(None);
            let refusal = match built {
                // A tenant whose own policies all vanished (an emptied
                // file, a half-written checkout) is refused: deleting the
                // directory is how a tenant is removed.
                Ok(set) if set.own == 0 => Some(PolicyLoadError {
                    dir: tenant_dir.clone(),
                    problems: vec![located(
                        &tenant_dir,
                        None,
                        format!(
                            "tenant `{tenant}` has no policy of its own (an emptied file?); remove the directory to remove the tenant"
                        ),
                        None,
                    )],
                }),
                Ok(set) => {
                    // The base set's own warnings were given once already.
                    warnings.extend(
                        loader
                            .warnings
                            .drain(..)
                            .filter(|w| w.file.starts_with(&tenant_dir)),
                    );
                    base.tenants.insert(tenant.clone(), Arc::new(set));
                    None
                }
                Err(()) => Some(loader.fail()),
            };
            let Some(refusal) = refusal else {
                continue;
            };
            // The tenant's last good files, on the new base set: a base
            // change reaches every tenant, or it is refused.
            if let Some(kept) = kept {
                match build(Some(kept.tenant_files.clone())) {
                    (_, Ok(set)) => {
                        base.tenants.insert(tenant.clone(), Arc::new(set));
                    }
                    (mut loader, Err(())) => {
                        let mut problems = loader.fail().problems;
                        for problem in &mut problems {
                            problem.message = format!(
                                "tenant `{tenant}`'s last good policies do not fit this base set: {}",
                                problem.message
                            );
                        }
                        broken_base.extend(problems);
                    }
                }
            }
            refused_tenants.push((tenant, refusal));
        }
        if !broken_base.is_empty() {
            return Reloaded {
                checked: Checked {
                    warnings,
                    snapshot: Err(PolicyLoadError {
                        dir: dir.to_owned(),
                        problems: broken_base,
                    }),
                },
                refused_tenants,
            };
        }
        Reloaded {
            checked: Checked {
                warnings,
                snapshot: Ok(base),
            },
            refused_tenants,
        }
    }

    /// The set that judges `tenant`'s requests: its own, or the base set
    /// when it has none.
    pub fn for_tenant(self: &Arc<Self>, tenant: &str) -> Arc<PolicySnapshot> {
        self.own_set(tenant)
            .cloned()
            .unwrap_or_else(|| self.clone())
    }

    /// [`Self::for_tenant`], borrowed.
    pub fn tenant_set(&self, tenant: &str) -> &PolicySnapshot {
        self.own_set(tenant).map_or(self, Arc::as_ref)
    }

    /// `tenant`'s own set, if it has one (an empty tenant is the default
    /// one).
    fn own_set(&self, tenant: &str) -> Option<&Arc<PolicySnapshot>> {
        if self.tenants.is_empty() {
            return None;
        }
        let tenant = if tenant.is_empty() {
            DEFAULT_TENANT
        } else {
            tenant
        };
        self.tenants.get(tenant)
    }

    /// The tenant this set is for; `None` for the base set.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Each tenant's set, by tenant, in name order (none on a tenant's set).
    pub fn tenant_sets(&self) -> Vec<(&str, &PolicySnapshot)> {
        let mut sets: Vec<_> = self
            .tenants
            .iter()
            .map(|(tenant, set)| (tenant.as_str(), set.as_ref()))
            .collect();
        sets.sort_by_key(|(tenant, _)| *tenant);
        sets
    }

    /// Each tenant's set's version, by tenant (empty for a tenant's set).
    pub fn tenant_versions(&self) -> std::collections::BTreeMap<&str, &str> {
        self.tenants
            .iter()
            .map(|(tenant, set)| (tenant.as_str(), set.version()))
            .collect()
    }
}

/// Logs the warnings of a policy set that was loaded.
pub fn log_warnings(set: &str, version: &str, warnings: &[Problem]) {
    for warning in warnings {
        tracing::warn!(
            policy.set = set,
            policy.version = version,
            problem = %warning,
            "policy warning (`stepgate policy validate` shows it in context)"
        );
    }
}

/// A policy directory's snapshot, or why it was refused, and its warnings.
#[derive(Debug)]
pub struct Checked {
    pub snapshot: Result<PolicySnapshot, PolicyLoadError>,
    pub warnings: Vec<Problem>,
}

/// The entity types stepgate builds requests with, parsed once.
#[derive(Debug, Clone)]
struct EntityTypes {
    principal: EntityTypeName,
    resource: EntityTypeName,
    action: EntityTypeName,
}

impl EntityTypes {
    /// Fails only if the constants above stop being Cedar type names.
    fn new() -> Result<Self, String> {
        let parse = |name: &str| EntityTypeName::from_str(name).map_err(|e| e.to_string());
        Ok(Self {
            principal: parse(PRINCIPAL_TYPE)?,
            resource: parse(RESOURCE_TYPE)?,
            action: parse(ACTION_TYPE)?,
        })
    }

    fn principal(&self, user_id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.principal.clone(), EntityId::new(user_id))
    }

    /// An empty tenant is the default tenant.
    fn resource(&self, tenant: &str) -> EntityUid {
        let tenant = if tenant.is_empty() {
            DEFAULT_TENANT
        } else {
            tenant
        };
        EntityUid::from_type_name_and_id(self.resource.clone(), EntityId::new(tenant))
    }

    fn action(&self, journey: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(self.action.clone(), EntityId::new(journey))
    }
}

/// Collects problems while loading, so one pass reports them all.
struct Loader {
    dir: PathBuf,
    /// Loading a tenant's set: its name and directory, whose policy files
    /// join the base set's (forbids only).
    tenant: Option<(String, PathBuf)>,
    /// The base set's files as already read (a tenant's set is built on
    /// exactly those), instead of the disk.
    base_files: Option<Vec<(PathBuf, String)>>,
    /// The tenant's policy files as given (its last good ones), instead
    /// of its directory.
    tenant_files: Option<Vec<(PathBuf, String)>>,
    /// Every file read, in order.
    read_files: Vec<(PathBuf, String)>,
    /// Policies read from the tenant's own files.
    own: usize,
    problems: Vec<Problem>,
    /// What loads but deserves a look; never refuses the directory.
    warnings: Vec<Problem>,
    hasher: blake3::Hasher,
}

/// A policy file's text, kept so errors can be located in it.
struct SourceFile {
    path: PathBuf,
    text: String,
}

impl Loader {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            tenant: None,
            base_files: None,
            tenant_files: None,
            read_files: Vec::new(),
            own: 0,
            problems: Vec::new(),
            warnings: Vec::new(),
            hasher: blake3::Hasher::new(),
        }
    }

    fn problem(&mut self, file: &Path, at: Option<Spot>, message: impl Into<String>) {
        self.problems.push(located(file, at, message.into(), None));
    }

    fn warning(&mut self, file: &Path, at: Option<Spot>, message: impl Into<String>) {
        self.warnings.push(located(file, at, message.into(), None));
    }

    /// Records a Cedar diagnostic as a problem, located by its first label.
    fn diagnostic(&mut self, file: &Path, text: &str, diag: &dyn Diagnostic) {
        let problem = from_diagnostic(file, text, diag);
        self.problems.push(problem);
    }

    fn read(&mut self, path: &Path) -> Option<String> {
        let given = self
            .base_files
            .iter()
            .chain(self.tenant_files.iter())
            .flatten()
            .find(|(p, _)| p == path)
            .map(|(_, text)| text.clone());
        match given.map_or_else(|| std::fs::read_to_string(path), Ok) {
            Ok(text) => {
                self.read_files.push((path.to_owned(), text.clone()));
                // Name and content both feed the version, so a rename is a
                // new version too.
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                self.hasher.update(name.unwrap_or_default().as_bytes());
                self.hasher.update(&[0]);
                self.hasher.update(&(text.len() as u64).to_le_bytes());
                self.hasher.update(text.as_bytes());
                Some(text)
            }
            Err(err) => {
                self.problem(path, None, format!("cannot read: {err}"));
                None
            }
        }
    }

    fn fail(&mut self) -> PolicyLoadError {
        PolicyLoadError {
            dir: self.dir.clone(),
            problems: std::mem::take(&mut self.problems),
        }
    }

    /// Loads the directory; on `Err`, `problems` says why.
    fn load(&mut self) -> Result<PolicySnapshot, ()> {
        if !self.dir.is_dir() {
            let dir = self.dir.clone();
            self.problem(
                &dir,
                None,
                "is not a directory (set `policies_dir` in the config or pass --policies)",
            );
            return Err(());
        }
        let schema_path = self.dir.join(SCHEMA_FILE);
        let schema_text = self.read(&schema_path);
        let schema =
            schema_text
                .clone()
                .and_then(|text| match Schema::from_cedarschema_str(&text) {
                    Ok((schema, warnings)) => {
                        for warning in warnings {
                            self.warnings
                                .push(from_diagnostic(&schema_path, &text, &warning));
                        }
                        Some(schema)
                    }
                    Err(err) => {
                        self.diagnostic(&schema_path, &text, &err);
                        None
                    }
                });
        let catalog_path = self.dir.join(CATALOG_FILE);
        let catalog_text = self.read(&catalog_path);
        let catalog = catalog_text
            .as_deref()
            .and_then(|text| self.parse_catalog(&catalog_path, text));
        let files = self.policy_files();
        let ParsedPolicies {
            policies,
            as_written,
            info,
            sources,
        } = self.parse_policies(&files);

        let (Some(schema), Some(catalog)) = (schema, catalog) else {
            return Err(());
        };
        let types = match EntityTypes::new() {
            Ok(types) => types,
            Err(err) => {
                self.problem(&schema_path, None, err);
                return Err(());
            }
        };
        // Validated as written, so each error points into its file: a
        // freshness rule's joined age test reads an attribute the schema
        // always declares (checked with the catalog below).
        self.validate(&schema, &as_written, &info, &sources);
        let texts = (schema_text.as_deref(), catalog_text.as_deref());
        let actions = self.check_catalog(
            &schema,
            &types,
            (&schema_path, &catalog_path),
            texts,
            &catalog,
        );
        let entities = match schema.action_entities() {
            Ok(entities) => entities,
            Err(err) => {
                self.problem(&schema_path, None, err.to_string());
                return Err(());
            }
        };
        if !self.problems.is_empty() {
            return Err(());
        }
        let hash = self.hasher.finalize();
        let info: HashMap<PolicyId, PolicyInfo> =
            info.into_iter().map(|(id, (info, _))| (id, info)).collect();
        let journeys: HashMap<String, Arc<JourneyPolicies>> = actions
            .into_iter()
            .filter_map(|(name, uid)| {
                let tier = catalog.get(&name)?.tier;
                let sliced = JourneyPolicies::new(uid, (&name, tier), &policies, &info);
                Some((name, Arc::new(sliced)))
            })
            .collect();
        let mut unpermitted: Vec<&String> = journeys
            .iter()
            .filter(|(_, sliced)| sliced.permits.is_empty())
            .map(|(name, _)| name)
            .collect();
        unpermitted.sort();
        for name in unpermitted {
            let header = format!("[journeys.{name}]");
            let at = catalog_text
                .as_deref()
                .and_then(|text| text.find(&header).map(|o| Spot::new(text, o, header.len())));
            self.warning(
                &catalog_path,
                at,
                format!("no permit policy applies to journey `{name}`, so every request for it is denied"),
            );
        }
        let tenant_files = match &self.tenant {
            Some((_, tenant_dir)) => self
                .read_files
                .iter()
                .filter(|(p, _)| p.starts_with(tenant_dir))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        Ok(PolicySnapshot {
            version: hash.to_hex().chars().take(16).collect(),
            tenant: self.tenant.as_ref().map(|(name, _)| name.clone()),
            tenant_files,
            own: self.own,
            tenants: HashMap::new(),
            schema,
            policies,
            entities,
            catalog,
            journeys,
            info,
            authorizer: Authorizer::new(),
            types,
            accepted_attributes: quick_cache::sync::Cache::new(ACCEPTED_ATTRIBUTE_SHAPES),
        })
    }

    fn parse_catalog(&mut self, path: &Path, text: &str) -> Option<JourneyCatalog> {
        match toml::from_str::<JourneyCatalog>(text) {
            Ok(catalog) => {
                let bad: Vec<String> = catalog
                    .names()
                    .filter(|n| !catalog::valid_name(n))
                    .map(str::to_owned)
                    .collect();
                for name in bad {
                    let at = text.find(&name).map(|o| Spot::new(text, o, name.len()));
                    self.problem(
                        path,
                        at,
                        format!(
                            "journey `{name}`: names are lowercase letters, digits and `_`, starting with a letter, at most {} bytes",
                            catalog::MAX_JOURNEY_NAME
                        ),
                    );
                }
                if catalog.journeys.is_empty() {
                    self.problem(path, None, "defines no journeys");
                }
                Some(catalog)
            }
            Err(err) => {
                let at = err.span().map(|s| Spot::new(text, s.start, s.len()));
                self.problem(path, at, err.message().to_owned());
                None
            }
        }
    }

    fn policy_files(&mut self) -> Vec<PathBuf> {
        let given = |files: &[(PathBuf, String)], dir: &Path| -> Vec<PathBuf> {
            let mut paths: Vec<PathBuf> = files
                .iter()
                .map(|(p, _)| p.clone())
                .filter(|p| {
                    p.parent() == Some(dir) && p.extension().is_some_and(|e| e == POLICY_EXTENSION)
                })
                .collect();
            paths.sort();
            paths
        };
        let listed = match &self.base_files {
            Some(files) => Ok(given(files, &self.dir)),
            None => cedar_files(&self.dir),
        };
        let mut files = match listed {
            Ok(files) => files,
            Err(err) => {
                let dir = self.dir.clone();
                self.problem(&dir, None, format!("cannot list: {err}"));
                return Vec::new();
            }
        };
        if files.is_empty() {
            let dir = self.dir.clone();
            self.problem(&dir, None, "holds no `*.cedar` policy files");
        }
        if let Some((tenant, tenant_dir)) = &self.tenant {
            let (tenant, tenant_dir) = (tenant.clone(), tenant_dir.clone());
            if self.tenant_files.is_none() {
                // What a tenant might expect to be read, and is not.
                for stray in strays(&tenant_dir) {
                    let message = format!(
                        "tenant `{tenant}` may hold only `*.{POLICY_EXTENSION}` files directly in its directory (the base set's schema and catalog apply)"
                    );
                    self.problem(&stray, None, message);
                }
            }
            let listed = match &self.tenant_files {
                Some(files) => Ok(given(files, &tenant_dir)),
                None => cedar_files(&tenant_dir),
            };
            files.extend(listed.unwrap_or_else(|err| {
                self.problem(&tenant_dir, None, format!("cannot list: {err}"));
                Vec::new()
            }));
        }
        files
    }

    /// Parses every file, renames each policy to its `@id` and checks the
    /// annotations stepgate relies on.
    fn parse_policies(&mut self, files: &[PathBuf]) -> ParsedPolicies {
        let mut set = PolicySet::new();
        let mut as_written = PolicySet::new();
        let mut info: HashMap<PolicyId, (PolicyInfo, usize)> = HashMap::new();
        let mut sources = Vec::new();
        for path in files {
            let Some(text) = self.read(path) else {
                continue;
            };
            let parsed = match PolicySet::from_str(&text) {
                Ok(parsed) => parsed,
                Err(errs) => {
                    for err in errs.iter() {
                        self.diagnostic(path, &text, err);
                    }
                    continue;
                }
            };
            if parsed.templates().next().is_some() {
                self.problem(path, None, "policy templates are not supported");
            }
            let source_index = sources.len();
            for policy in parsed.policies() {
                let at = locate_policy(&text, policy);
                let Some(id) = policy.annotation("id").map(str::to_owned) else {
                    self.problem(path, at, "policy has no `@id(\"...\")` annotation");
                    continue;
                };
                if id.trim().is_empty() {
                    self.problem(path, at, "`@id` must not be empty");
                    continue;
                }
                // A forbid is what a STEP_UP or DENY answer is explained by,
                // so it must say why; a permit may rely on its id.
                let reason = match policy.annotation("reason").map(str::trim) {
                    Some(reason) if !reason.is_empty() => reason.to_owned(),
                    _ if policy.effect() == cedar_policy::Effect::Forbid => {
                        self.problem(
                            path,
                            at,
                            format!("forbid policy `{id}` has no `@reason(\"...\")` annotation"),
                        );
                        continue;
                    }
                    _ => format!("permitted by policy `{id}`"),
                };
                // A tenant tightens the base set, never loosens it.
                if let Some((tenant, tenant_dir)) = &self.tenant
                    && path.starts_with(tenant_dir)
                    && policy.effect() != cedar_policy::Effect::Forbid
                {
                    let message = format!(
                        "policy `{id}`: tenant `{tenant}` may only add forbid policies; permits belong in the base set"
                    );
                    self.problem(path, at, message);
                    continue;
                }
                let policy_id = PolicyId::new(&id);
                if let Some((_, other)) = info.get(&policy_id) {
                    let other = sources
                        .get(*other)
                        .map(|s: &SourceFile| s.path.display().to_string())
                        .unwrap_or_default();
                    self.problem(
                        path,
                        at,
                        format!("policy id `{id}` is already used in `{other}`"),
                    );
                    continue;
                }
                // A freshness rule is evaluated with its age test joined.
                let fresh = match policy.annotation(freshness::ANNOTATION).map(|text| {
                    let age = freshness::parse(text)?;
                    Ok::<_, String>((age, freshness::rewrite(policy, policy_id.clone(), age)?))
                }) {
                    None => None,
                    Some(Ok(fresh)) => Some(fresh),
                    Some(Err(message)) => {
                        self.problem(path, at, format!("policy `{id}`: {message}"));
                        continue;
                    }
                };
                let effective = match &fresh {
                    Some((_, rewritten)) => rewritten.clone(),
                    None => policy.new_id(policy_id.clone()),
                };
                if let Err(err) = set.add(effective.clone()) {
                    self.problem(path, at, err.to_string());
                    continue;
                }
                let written = match &fresh {
                    Some(_) => policy.new_id(policy_id.clone()),
                    None => effective.clone(),
                };
                if let Err(err) = as_written.add(written) {
                    self.problem(path, at, err.to_string());
                    continue;
                }
                let analysis = match &fresh {
                    Some((age, _)) => analysis::analyse_fresh(policy, &effective, *age),
                    None => analysis::analyse(policy),
                };
                if analysis.aal == AalUse::Other {
                    self.warning(
                        path,
                        at,
                        format!(
                            "policy `{id}` reads `context.authn.aal` other than in `unless {{ context.authn.aal >= N }}`, or `context.authn.seconds_since_auth` other than through `@max_age`: its journeys are evaluated once per rung of the ladder, not once"
                        ),
                    );
                }
                let reason = Reason {
                    policy_id: id,
                    message: reason,
                };
                info.insert(policy_id, (PolicyInfo { reason, analysis }, source_index));
                if self
                    .tenant
                    .as_ref()
                    .is_some_and(|(_, tenant_dir)| path.starts_with(tenant_dir))
                {
                    self.own += 1;
                }
            }
            sources.push(SourceFile {
                path: path.clone(),
                text,
            });
        }
        ParsedPolicies {
            policies: set,
            as_written,
            info,
            sources,
        }
    }

    /// Strict validation against the schema, each error located in the file
    /// its policy came from.
    fn validate(
        &mut self,
        schema: &Schema,
        policies: &PolicySet,
        info: &HashMap<PolicyId, (PolicyInfo, usize)>,
        sources: &[SourceFile],
    ) {
        let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
        // Each problem is located in the file its policy came from.
        let locate = |id: &PolicyId, diag: &dyn Diagnostic| match info
            .get(id)
            .and_then(|(_, index)| sources.get(*index))
        {
            Some(source) => from_diagnostic(&source.path, &source.text, diag),
            None => located(&self.dir, None, diag.to_string(), None),
        };
        let errors: Vec<Problem> = result
            .validation_errors()
            .map(|e| locate(e.policy_id(), e))
            .collect();
        let warnings: Vec<Problem> = result
            .validation_warnings()
            .map(|w| locate(w.policy_id(), w))
            .collect();
        for problem in errors {
            push_once(&mut self.problems, problem);
        }
        for warning in warnings {
            push_once(&mut self.warnings, warning);
        }
    }

    /// Every journey needs an action in the schema whose context accepts
    /// stepgate's signals, and every action needs a journey.
    fn check_catalog(
        &mut self,
        schema: &Schema,
        types: &EntityTypes,
        (schema_path, catalog_path): (&Path, &Path),
        (schema_text, catalog_text): (Option<&str>, Option<&str>),
        catalog: &JourneyCatalog,
    ) -> HashMap<String, EntityUid> {
        // The schema's `action` line naming the journey, and its catalog
        // table.
        let in_schema = |name: &str| {
            let text = schema_text?;
            let mut offset = 0;
            for line in text.split_inclusive('\n') {
                if line.trim_start().starts_with("action")
                    && let Some(at) = line.find(name)
                {
                    return Some(Spot::new(text, offset + at, name.len()));
                }
                offset += line.len();
            }
            None
        };
        let in_catalog = |name: &str| {
            let text = catalog_text?;
            let header = format!("[journeys.{name}]");
            text.find(&header).map(|o| Spot::new(text, o, header.len()))
        };
        let mut actions = HashMap::new();
        let declared: Vec<String> = schema
            .actions()
            .map(|uid| uid.id().unescaped().to_owned())
            .collect();
        for name in declared.iter().filter(|n| catalog.get(n).is_none()) {
            self.problem(
                schema_path,
                in_schema(name),
                format!("action `{name}` has no journey in {CATALOG_FILE}; add `[journeys.{name}]` with its tier there"),
            );
        }
        let probe_principal = types.principal("probe");
        let probe_resource = types.resource("");
        for (name, entry) in &catalog.journeys {
            if !declared.contains(name) {
                self.problem(
                    catalog_path,
                    in_catalog(name),
                    format!("journey `{name}` has no `action \"{name}\"` in {SCHEMA_FILE}"),
                );
                continue;
            }
            let (uid, p, r) = (types.action(name), &probe_principal, &probe_resource);
            let probed = [true, false]
                .into_iter()
                .try_for_each(|optional| probe(schema, p, &uid, r, name, entry.tier, optional));
            if let Err(message) = probed {
                self.problem(
                    schema_path,
                    in_schema(name),
                    format!(
                        "action `{name}` must apply to principal `{PRINCIPAL_TYPE}` and resource `{RESOURCE_TYPE}`, and its context must accept stepgate's signals with no attributes (declare journey attributes optional): {message}"
                    ),
                );
                continue;
            }
            actions.insert(name.clone(), uid);
        }
        actions
    }
}

/// Adds a problem unless one is already reported at the same place: the
/// validator reports a mistake once per action it applies to, and one report
/// per place is enough to fix it.
fn push_once(list: &mut Vec<Problem>, problem: Problem) {
    let seen = list.iter().any(|p| {
        p.file == problem.file
            && p.line == problem.line
            && p.column == problem.column
            && p.line.is_some()
    });
    if !seen {
        list.push(problem);
    }
}

/// The `*.cedar` files directly in `dir`, sorted.
fn cedar_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == POLICY_EXTENSION))
        .collect();
    files.sort();
    Ok(files)
}

/// Sub-directories, schemas and catalogs in a tenant's directory: nothing
/// there is read.
fn strays(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut strays: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with('.')
                && (p.is_dir()
                    || name == SCHEMA_FILE
                    || name == CATALOG_FILE
                    || p.extension().is_some_and(|e| e == "cedarschema"))
        })
        .collect();
    strays.sort();
    strays
}

/// The directory of a policy set that holds tenants' own policies, one
/// directory per tenant: `tenants/<tenant>/*.cedar`.
pub const TENANTS_DIR: &str = "tenants";

/// The tenant directories of the policy set in `dir`, by tenant, sorted
/// (none when there is no `tenants` directory), and the directories whose
/// names are no tenant id, each with its problem. Names starting with `.`
/// are skipped.
///
/// # Errors
/// The `tenants` directory exists but cannot be listed.
#[expect(
    clippy::type_complexity,
    reason = "two lists, read once by the one caller"
)]
fn tenant_dirs(
    dir: &Path,
) -> Result<(Vec<(String, PathBuf)>, Vec<(String, Problem)>), Vec<Problem>> {
    let root = dir.join(TENANTS_DIR);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Vec::new(), Vec::new()));
        }
        Err(err) => {
            return Err(vec![located(
                &root,
                None,
                format!("cannot list: {err}"),
                None,
            )]);
        }
    };
    let mut tenants = Vec::new();
    let mut misnamed = Vec::new();
    for path in entries.filter_map(Result::ok).map(|e| e.path()) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A Kubernetes volume's own links.
        if name.starts_with("..") {
            continue;
        }
        if !path.is_dir() {
            let message = format!(
                "`{name}`: `{TENANTS_DIR}` holds only one directory per tenant (`{TENANTS_DIR}/<tenant>/*.cedar`)"
            );
            misnamed.push((name, located(&path, None, message, None)));
            continue;
        }
        if name.starts_with('.') {
            let message = "a tenant directory's name may not start with `.`".to_owned();
            misnamed.push((name, located(&path, None, message, None)));
            continue;
        }
        let valid = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| "a tenant directory's name must be UTF-8".to_owned())
            .and_then(|n| {
                crate::identifiers::check("tenant", n).map_err(|e| e.to_string())?;
                if n.len() > crate::admission::MAX_TENANT {
                    return Err(format!(
                        "a tenant id is at most {} bytes; no request could name this one",
                        crate::admission::MAX_TENANT
                    ));
                }
                Ok(())
            });
        match valid {
            Ok(()) => tenants.push((name, path)),
            Err(message) => misnamed.push((name, located(&path, None, message, None))),
        }
    }
    tenants.sort();
    Ok((tenants, misnamed))
}

/// A policy set loaded for a reload: the base set with every tenant set
/// that loaded, and the tenants whose files were refused (each keeps the
/// set it was serving, if it had one).
#[derive(Debug)]
pub struct Reloaded {
    pub checked: Checked,
    pub refused_tenants: Vec<(String, PolicyLoadError)>,
}

/// What `Loader::parse_policies` read from the policy files.
struct ParsedPolicies {
    /// As evaluated: each renamed to its `@id`, freshness rules with their
    /// age test joined.
    policies: PolicySet,
    /// The same policies as their files spell them (for validation, whose
    /// errors then carry the file's positions).
    as_written: PolicySet,
    info: HashMap<PolicyId, (PolicyInfo, usize)>,
    sources: Vec<SourceFile>,
}

/// A problem at `at` in `file`.
fn located(file: &Path, at: Option<Spot>, message: String, help: Option<String>) -> Problem {
    Problem {
        file: file.to_owned(),
        line: at.map(|s| s.line),
        column: at.map(|s| s.column),
        span: at.map(|s| (s.offset, s.len)),
        message,
        help,
    }
}

/// A Cedar diagnostic as a problem, located by its first label.
fn from_diagnostic(file: &Path, text: &str, diag: &dyn Diagnostic) -> Problem {
    let at = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| Spot::new(text, label.offset(), label.len()));
    located(
        file,
        at,
        diag.to_string(),
        diag.help().map(|h| h.to_string()),
    )
}

/// Where a policy starts in its file: at its `@id` annotation, which is
/// unique, or else where its text is found as Cedar prints it.
fn locate_policy(text: &str, policy: &cedar_policy::Policy) -> Option<Spot> {
    let by_id = policy.annotation("id").and_then(|id| {
        let needle = format!("@id(\"{id}\")");
        text.find(&needle).map(|o| Spot::new(text, o, needle.len()))
    });
    by_id.or_else(|| {
        let printed = policy.to_cedar()?;
        text.find(printed.as_str())
            .map(|o| Spot::new(text, o, printed.len()))
    })
}

/// Builds a request with default signals and no attributes for one action and
/// lets Cedar check it against the schema, with the optional signals present
/// or absent.
fn probe(
    schema: &Schema,
    principal: &EntityUid,
    action: &EntityUid,
    resource: &EntityUid,
    journey: &str,
    tier: Tier,
    optional: bool,
) -> Result<(), String> {
    let signals = probe_signals(journey, tier, optional);
    let parts = ContextParts::full(&signals, &Default::default()).map_err(|e| e.to_string())?;
    let context = parts
        .at(crate::decision::Aal::One)
        .map_err(|e| e.to_string())?;
    Request::new(
        principal.clone(),
        action.clone(),
        resource.clone(),
        context,
        Some(schema),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Neutral signals for schema probes: nothing known, nothing counted; with
/// `optional`, every optional field is present, so the schema must declare
/// each of them (and, without it, must not require any).
fn probe_signals(journey: &str, tier: Tier, optional: bool) -> Signals {
    let age = optional.then_some(0);
    Signals {
        journey: journey.to_owned(),
        tier,
        authn: signals::AuthnSignals {
            amr: Vec::new(),
            seconds_since_auth: age,
        },
        device: Default::default(),
        ip: signals::IpSignals {
            asn: optional.then_some(0),
            as_org: optional.then(String::new),
            anonymity: optional.then(Default::default),
            ..Default::default()
        },
        geo: signals::GeoSignals {
            status: signals::GeoStatus::NotConfigured,
            country: optional.then(String::new),
            country_known: optional.then_some(false),
            distance_km: age,
            speed_kmh: age,
            impossible_travel: optional.then_some(false),
        },
        behaviour: signals::BehaviourSignals {
            seconds_since_last_success: age,
            ..Default::default()
        },
        risk: crate::decision::Risk {
            score: 0,
            level: crate::decision::RiskLevel::Low,
            contributions: Vec::new(),
        },
    }
}
