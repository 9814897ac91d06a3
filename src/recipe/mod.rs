//! YAML recipes: the format ([`schema`]), rule matching ([`rules`]), llama.cpp's preset mixes
//! ([`presets`]) and the per-tensor plan ([`plan`]).
//!
//! All YAML parsing of the project lives in this module.

pub mod pipeline;
pub mod plan;
pub mod presets;
pub mod rules;
pub mod schema;
pub mod search;
pub mod search_alloc;

pub use plan::{build_plan, Plan, PlanEntry, PlanOptions, Reason, TensorDesc};
pub use presets::{ModelInfo, Preset};
pub use schema::{Base, FallbackMode, Recipe, RecipeFile, Rule, RuleSpec, Target, TensorKind};
